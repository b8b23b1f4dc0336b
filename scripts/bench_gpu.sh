#!/usr/bin/env bash
# The GPU benchmark (`make bench-gpu`): engine vs. faithful reference, ViT-B-16 (real shape, random
# weights unless BENCH_PRETRAINED is set), 64 views, 1 step, amp (fp16 autocast with loss scaling,
# the authors' setting), at 200 and at 1000 classes on one CUDA device. Prints the tables and writes
# bench/bench-cuda-200.json, bench-cuda-1000.json and bench-cuda-1000-jacobian.json. Budget: under 5 minutes on one
# H100 (model load and warm-up included); a third run at 1000 classes adds --jacobian.
#
# Overrides (environment):
#   BENCH_DEVICE=cuda       device (cpu works, for checking this script)
#   BENCH_QUICK=1           tiny settings (few classes, views and samples) to check the script quickly
#   BENCH_MODEL=ViT-B-16    BENCH_PRETRAINED=<tag or file>   BENCH_PRECISION=amp
#   BENCH_OUT=bench         where the JSON files go
#   PYTHON=.venv/bin/python the interpreter (default: .venv/bin/python if present, else python3)
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE="${BENCH_DEVICE:-cuda}"
MODEL="${BENCH_MODEL:-ViT-B-16}"
OUT="${BENCH_OUT:-bench}"
if [[ "$DEVICE" == cuda* ]]; then PRECISION="${BENCH_PRECISION:-amp}"; else PRECISION="${BENCH_PRECISION:-fp32}"; fi

if [[ "$DEVICE" == cuda* ]]; then
  "$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench_gpu.sh: no CUDA device visible to torch " + torch.__version__ + "; set BENCH_DEVICE=cpu to check the script")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
fi

common=(--model "$MODEL" --device "$DEVICE" --precision "$PRECISION" --steps 1)
[[ -n "${BENCH_PRETRAINED:-}" ]] && common+=(--pretrained "$BENCH_PRETRAINED")

if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
  # shapes of the real runs scaled down: checks the script and the JSON paths, not the speed
  runs=("--classes 20 --views 16 --batch-size 2 --samples 2 --reference-samples 1 --warmup 0"
        "--classes 201 --views 10 --batch-size 1 --samples 1 --reference-samples 1 --warmup 0 --class-chunk 100"
        "--classes 3 --views 10 --batch-size 1 --samples 1 --reference-samples 1 --warmup 0 --jacobian")
  names=(20 201 3-jacobian)
else
  # per run on one H100 (estimates, about 1 minute each): model load, views and warm-up ~30 s,
  # engine 128 samples (~5 s), reference 32 samples (~5-10 s), FLOP count and matmul peak ~3 s
  # class chunks bound the engine's text-tower activations (about batch x chunk/classes x 1 GB
  # at 1000 classes under amp) well under the reference's (~15 GB at 1000 classes)
  # the third run adds the first step from the context Jacobian (computed in setup, reported apart)
  runs=("--classes 200 --views 64 --batch-size 16 --samples 128 --reference-samples 32 --warmup 1 --class-chunk 50"
        "--classes 1000 --views 64 --batch-size 16 --samples 128 --reference-samples 32 --warmup 1 --class-chunk 128"
        "--classes 1000 --views 64 --batch-size 16 --samples 128 --reference-samples 8 --warmup 1 --class-chunk 128 --jacobian")
  names=(200 1000 1000-jacobian)
fi

mkdir -p "$OUT"
status=0
for i in "${!runs[@]}"; do
  json="$OUT/bench-${DEVICE%%:*}-${names[$i]}.json"
  echo
  echo "=== tpt bench ${names[$i]}: $MODEL, $DEVICE, $PRECISION, ${runs[$i]} ==="
  # shellcheck disable=SC2086  # the run's options are meant to split into words
  if ! "$PYTHON" -m tptlib.bench "${common[@]}" ${runs[$i]} --json "$json"; then
    echo "bench_gpu.sh: the ${names[$i]}-class run failed" >&2
    status=1
  fi
done
exit "$status"
