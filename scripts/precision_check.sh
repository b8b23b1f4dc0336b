#!/usr/bin/env bash
# How much lower precision changes TPT's predictions (`make precision`): every task runs TPT in
# fp32 and in each lower precision, on the same samples and views, and `tpt compare` counts the
# samples whose top-1 class changed and the largest logit difference. Ends with one table.
#
# Default: the micro profile on all eight micro sets (300 samples each), on the CPU, bf16 against
# fp32 (about 5 minutes on 2 cores). On a CUDA device it compares amp (fp16 autocast, the authors'
# setting) and bf16 against fp32.
#
# Overrides (environment):
#   TASKS="micro:I micro:A ..."   LIMIT=300   DEVICE=cpu|cuda   PRECISIONS="bf16" (CPU) / "amp bf16" (CUDA)
#   MODEL=micro  PRETRAINED=<tag or file>  ROOT=<data root>   RUNS=runs/precision   BATCH=16
#   WORKERS=0    processes building views ahead of the model (view building dominates on a GPU)
#   PYTHON=.venv/bin/python
# Runs are ordinary run folders: an interrupted check resumes where it stopped.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE="${DEVICE:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
if [[ "$DEVICE" == cuda* ]]; then PRECISIONS="${PRECISIONS:-amp bf16}"; else PRECISIONS="${PRECISIONS:-bf16}"; fi
TASKS="${TASKS:-micro:I micro:V2 micro:Sketch micro:R micro:A micro:Colour micro:Fill micro:Count}"
LIMIT="${LIMIT:-300}"
MODEL="${MODEL:-micro}"
RUNS="${RUNS:-runs/precision}"
BATCH="${BATCH:-16}"
WORKERS="${WORKERS:-0}"

model=(--model "$MODEL")
[[ -n "${PRETRAINED:-}" ]] && model+=(--pretrained "$PRETRAINED")
[[ -n "${ROOT:-}" ]] && model+=(--root "$ROOT")

tpt() { "$PYTHON" -m tptlib.cli "$@"; }
slug() { echo "${1//[:\/]/-}"; }

compared=()
for task in $TASKS; do
  base="$RUNS/$(slug "$MODEL")/$(slug "$task")"
  for precision in fp32 $PRECISIONS; do
    echo "--- $task, $precision"
    tpt eval "${model[@]}" --task "$task" --method tpt --limit "$LIMIT" --device "$DEVICE" \
      --precision "$precision" --batch-size "$BATCH" --workers "$WORKERS" --out "$base-$precision" --no-progress >/dev/null
  done
  for precision in $PRECISIONS; do
    json="$base-fp32-vs-$precision.json"
    rc=0
    tpt compare "$base-fp32" "$base-$precision" --json > "$json" || rc=$?
    (( rc <= 1 )) || exit "$rc"                                  # 1: some top-1 changed; 2: not comparable
    compared+=("$json")
  done
done

"$PYTHON" - "${compared[@]}" <<'PY'
import json, sys
from pathlib import Path

rows = []
for path in sys.argv[1:]:
    c = json.loads(Path(path).read_text())
    precision = next((b for key, a, b in c["differences"] if key == "model.precision"), "?")
    rows.append((c["task"], precision, c["n"], c["n"] - c["same_top1"], c["same_top1_pct"],
                 c["max_abs_logit_diff"], c["mean_abs_logit_diff"], c["top1_a"], c["top1_b"]))
print()
print(f"{'task':<8} {'precision':<9} {'n':>5} {'changed':>7} {'same top-1':>10} {'max |dlogit|':>12} "
      f"{'mean |dlogit|':>13} {'top-1 fp32':>10} {'top-1 low':>9}")
for r in rows:
    print(f"{r[0]:<8} {r[1]:<9} {r[2]:>5} {r[3]:>7} {r[4]:>9.2f}% {r[5]:>12.3g} {r[6]:>13.3g} {r[7]:>9.2f}% {r[8]:>8.2f}%")
for precision in sorted({r[1] for r in rows}):
    sel = [r for r in rows if r[1] == precision]
    n, changed = sum(r[2] for r in sel), sum(r[3] for r in sel)
    print(f"all      {precision:<9} {n:>5} {changed:>7} {100 * (n - changed) / n:>9.2f}% "
          f"{max(r[5] for r in sel):>12.3g}")
PY
