"""Running the workbook: papermill with checked parameters, atomic reports, shared run folders.

    python -m tptlib.workbook notebooks/01_zero_shot_baselines.ipynb --out reports -p limit 200
    python -m tptlib.workbook --all --out reports -p profile paper -p model ViT-B-16 ...
    python -m tptlib.workbook --index --out reports      # rebuild reports/index.html

`--all` runs the six numbered notebooks in order and then writes `index.html`: the reports, each with
its one-line finding and headline table (`write_index`).

Papermill only warns about a parameter the notebook does not declare; here that is an error, so
a typo never silently runs the defaults. A report is written under a temporary name and moved into
place when the notebook finished without error, so `reports/` never holds a half-run notebook.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class UnknownParameterError(ValueError):
    """A parameter the notebook's `parameters` cell does not declare."""


def notebook_parameters(path: str | Path) -> dict:
    """The parameters a notebook declares in its `parameters`-tagged cell: name -> default (as text)."""
    import tempfile

    import nbformat
    import papermill as pm
    nb = nbformat.read(str(path), as_version=4)
    if "kernelspec" not in nb.metadata:       # papermill needs one to inspect; the kernel is chosen at run time
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / Path(path).name
        nbformat.write(nb, str(copy))
        return {name: info["default"] for name, info in pm.inspect_notebook(str(copy)).items()}


def check_parameters(path: str | Path, params: dict) -> None:
    declared = notebook_parameters(path)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise UnknownParameterError(f"{Path(path).name} has no parameter(s) {unknown}; it declares {sorted(declared)}")


def run_notebook(path: str | Path, out_dir: str | Path, params: dict | None = None, kernel: str = "python3",
                 html: bool = True, cwd: str | Path | None = None) -> Path:
    """Execute one notebook with papermill into `out_dir/<name>.ipynb` (+ HTML, full and --no-input)."""
    import papermill as pm
    path, out_dir = Path(path), Path(out_dir)
    params = dict(params or {})
    check_parameters(path, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / path.name
    tmp = out_dir / f".{path.stem}.partial.ipynb"
    # A report is read, not watched: progress bars inside the kernel would leave stale "0%" lines in
    # it. The kernel inherits this environment; the command line reports progress per notebook.
    # The notebooks' runs share one feature cache beside their run folders, so that a view encoded
    # by one notebook's run (TPT's in 03) is not encoded again by another's (the peers in 06).
    runs_root = Path(cwd or Path.cwd()) / str(params.get("runs_dir", "runs"))
    settings = {"TQDM_DISABLE": "1", "TPTLIB_FEATURE_CACHE": os.environ.get("TPTLIB_FEATURE_CACHE")
                or str(runs_root / "features")}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        pm.execute_notebook(str(path), str(tmp), parameters=params, kernel_name=kernel, language="python",
                            cwd=str(cwd or Path.cwd()), progress_bar=False)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    os.replace(tmp, final)
    if html:
        _export_html(final, out_dir / f"{path.stem}.html", no_input=False)
        _export_html(final, out_dir / f"{path.stem}.report.html", no_input=True)
    return final


def _export_html(notebook: Path, target: Path, no_input: bool) -> None:
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter()
    exporter.exclude_input = no_input
    exporter.exclude_input_prompt = no_input
    exporter.exclude_output_prompt = no_input
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, target)


@dataclass
class Profile:
    """What a notebook runs on: the model and the tasks of the paper's two tables.

    On the `paper` profile the task lists hold only the datasets found under `data_root`; `missing`
    maps each dataset that is not there to the reason its loader gave, so a notebook can run the
    tasks that are present and say which are not.
    """

    name: str
    model: str
    pretrained: str | None
    data_root: str | None
    device: str
    id_task: str | None             # the in-distribution task (ImageNet / micro:I); None when missing
    ood_tasks: list[str]            # natural distribution shifts (Table 1)
    cross_tasks: list[str]          # other label sets (Table 2)
    missing: dict[str, str] = field(default_factory=dict)    # task -> why it is not available
    _loaded: dict = field(default_factory=dict, repr=False)  # task -> Task, loaded once per profile

    @property
    def tasks(self) -> list[str]:
        return [*([self.id_task] if self.id_task else []), *self.ood_tasks, *self.cross_tasks]

    def load_clip(self, precision: str = "auto"):
        from .clip import load_clip
        return load_clip(self.model, pretrained=self.pretrained, device=self.device, precision=precision)

    def load_task(self, name: str):
        """The task `name` of this profile (loaded once, then reused)."""
        if name not in self._loaded:
            from .data import load_task
            self._loaded[name] = load_task(name, root=None if name.startswith("micro:") else self.data_root)
        return self._loaded[name]

    def load_tasks(self, names=None, default=None) -> dict:
        """`{name: Task}` for `names`, or for `default` (the profile's tasks) when `names` is None.

        The defaults are the tasks that are present; a task named explicitly is loaded as asked, so
        a missing one raises its loader's error.
        """
        chosen = list(names) if names is not None else list(self.tasks if default is None else default)
        return {name: self.load_task(name) for name in chosen}

    def task_name(self, short: str | None) -> str | None:
        """A task named the same way on both profiles ("A", "Count") as this profile names it
        ("micro:A" / "A"); None when the profile has no such task or it is missing."""
        if not short:
            return None
        for name in self.tasks:
            if _short(name).lower() == str(short).lower() or name.lower() == str(short).lower():
                return name
        return None

    def focus_task(self, short: str | None, fallback=None) -> tuple[str, str]:
        """The task a notebook looks at closely: `short` when the profile has it, else the first of
        `fallback` (default: the natural shifts, then every task). Returns `(name, note)`; the note
        says why another task was taken, or is empty."""
        name = self.task_name(short)
        if name:
            return name, ""
        pool = list(fallback if fallback is not None else [*self.ood_tasks, *self.tasks])
        if not pool:
            raise ValueError(f"profile {self.name} has no task to look at")
        why = ("is missing under data_root" if self.name == "paper" and short and _short(short) in self.missing
               else "is not a task of this profile")
        return pool[0], (f"{short} {why}; using {_short(pool[0])} instead" if short else "")

    def describe(self, clip, task_names, limit, seed) -> str:
        """The lines a notebook prints after loading: model, weights, tasks, and what is missing."""
        weights = clip.pretrained or ("the shipped micro-CLIP weights" if self.name == "micro"
                                      else "random weights (shape-only run)")
        lines = [f"profile {self.name}: model {clip.name} with {weights} on {clip.device}",
                 f"tasks: {[_short(t) for t in task_names]} | first {limit} samples each, seed {seed}"]
        if self.missing:
            lines.append(f"not found under data_root {self.data_root}, skipped: {sorted(self.missing)}")
        return "\n".join(lines)

    def missing_table(self):
        """One row per dataset of the profile that is not under `data_root`, with the reason."""
        import pandas as pd
        return pd.DataFrame([{"task": t, "reason": r.split(" (Looked in")[0]} for t, r in self.missing.items()],
                            columns=["task", "reason"])


PAPER_ID = "I"
PAPER_OOD = ["A", "V", "R", "K"]
PAPER_CROSS = ["Flower102", "DTD", "Pets", "Cars", "UCF101", "Caltech101", "Food101", "SUN397", "Aircraft", "eurosat"]


def _short(name: str) -> str:
    return name.split(":", 1)[1] if name.lower().startswith("micro:") else name


def profile(name: str = "micro", model: str | None = None, pretrained: str | None = None,
            data_root: str | None = None, device: str | None = None) -> Profile:
    """The `micro` (offline default) or `paper` profile, with any notebook parameter overriding it.

    The paper profile loads each of its 15 datasets under `data_root` once: the ones whose folder
    is not there (or does not match the dataset's layout) are left out of the task lists and named,
    with the loader's reason, in `Profile.missing`; a root holding none of them is an error.
    """
    device = device or ("cuda" if _cuda_available() else "cpu")
    if name == "micro":
        from .micro import sets
        return Profile("micro", model or "micro", pretrained, data_root, device, "micro:I",
                       [f"micro:{t}" for t in sets.SHIFTED],
                       [f"micro:{t}" for t in sets.MICRO_TASKS if t not in ("I", "A-pool", *sets.SHIFTED)])
    if name == "paper":
        if not data_root:
            raise ValueError("the paper profile needs data_root: the folder holding ImageNet, imagenet-a, ... "
                             "(see `tpt data check`)")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise ValueError(f"data_root {str(root)!r} is not an existing folder")
        prof = Profile("paper", model or "ViT-B-16", pretrained if model else (pretrained or "openai"),
                       str(root), device, PAPER_ID, list(PAPER_OOD), list(PAPER_CROSS))
        from .data import DatasetLayoutError
        for task in [PAPER_ID, *PAPER_OOD, *PAPER_CROSS]:
            try:
                prof.load_task(task)
            except DatasetLayoutError as exc:
                prof.missing[task] = str(exc)
        if len(prof.missing) == len(PAPER_OOD) + len(PAPER_CROSS) + 1:
            raise ValueError(f"none of the paper profile's datasets was found under {root}; e.g. "
                             f"{prof.missing['A']} (`tpt data list` prints the expected folders)")
        prof.id_task = None if PAPER_ID in prof.missing else PAPER_ID
        prof.ood_tasks = [t for t in PAPER_OOD if t not in prof.missing]
        prof.cross_tasks = [t for t in PAPER_CROSS if t not in prof.missing]
        return prof
    raise ValueError(f"profile must be 'micro' or 'paper'; got {name!r}")


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def run_dir(runs_root: str | Path, clip, task, method, *, limit: int | None = None, seed: int = 0,
            n_views: int = 64) -> Path:
    """The run folder notebooks share for one (model, task, method, limit, seed, views) combination.

    Notebooks that ask for the same combination get the same folder, so a later notebook reuses the
    records an earlier one wrote instead of recomputing them.
    """
    key = json.dumps({"model": clip.name, "pretrained": clip.pretrained, "precision": clip.precision,
                      "task": task.name, "method": method.config(), "limit": limit, "seed": seed,
                      "n_views": n_views}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(s))  # noqa: E731
    return Path(runs_root) / f"{safe(clip.name)}__{safe(task.name)}__{safe(method.name)}__{digest}"


def view_logits(runs_root: str | Path, clip, task, *, limit: int | None = None, seed: int = 0,
                n_views: int = 64, batch_size: int = 16):
    """Zero-shot logits of every view of a task's first `limit` samples, cached under `runs_root`.

    Returns `(logits [N, V, C] tensor, labels [N] array)`, as `tptlib.analysis.view_logits` computes
    them (views `task_views(..., seed)`, the ones `evaluate` builds). The cache file is keyed like
    `run_dir` (model, task and its sample listing, limit, seed, views), so notebooks that ask for the
    same views share one computation, as they share runs.
    """
    import numpy as np
    import torch

    from .analysis import view_logits as compute
    from .files import write_atomic
    from .methods import ZeroShot
    from .runs.features import images_digest
    from .runs.params import samples_digest
    n = len(task) if limit is None else min(limit, len(task))
    folder = run_dir(runs_root, clip, task, ZeroShot(), limit=n, seed=seed, n_views=n_views)
    digest = f"{samples_digest(task)}-{images_digest(task, range(n))[:16]}"      # listing and image content
    path = folder.with_name(folder.name.replace("__zeroshot__", "__views__")) / f"views-{digest}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            logits, labels = stored["logits"], stored["labels"].numpy().astype(np.int64)
            if logits.shape[:2] == (n, n_views) and labels.shape == (n,):
                return logits, labels
        except Exception as exc:          # a damaged file (torch's and pickle's own error types)
            logging.getLogger("tptlib.workbook").warning("%s cannot be read (%s: %s); computed again",
                                                         path, type(exc).__name__, exc)
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")   # as in a report (run_notebook)
    logits, labels = compute(clip, task, range(n), seed=seed, n_views=n_views, batch_size=batch_size,
                             progress=not quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"logits": logits.float(), "labels": torch.as_tensor(labels)}, buffer)
    write_atomic(path, buffer.getvalue())
    return logits, labels


# ------------------------------------------------------------------------------------------------
# the reports index

#: Cell tags the index reads from an executed notebook: the run it describes (first report that
#: has one), each report's one-line finding, and its headline table.
INDEX_TAGS = {"run": "index:run", "finding": "index:finding", "headline": "index:headline"}


def _cell_outputs_html(cell) -> str:
    """A code cell's outputs as HTML: tables as they render, Markdown rendered, text as <pre>."""
    import html

    from nbconvert.filters.markdown import markdown2html
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(f"<pre>{html.escape(''.join(out.get('text', '')).rstrip())}</pre>")
            continue
        data = out.get("data", {})
        if "text/html" in data:
            parts.append("".join(data["text/html"]))
        elif "text/markdown" in data:
            parts.append(markdown2html("".join(data["text/markdown"])))
        elif "text/plain" in data:
            parts.append(f"<pre>{html.escape(''.join(data['text/plain']))}</pre>")
    return "\n".join(parts)


def index_entry(report: str | Path) -> dict:
    """What the index shows of one executed notebook: title, purpose, run, finding and headline (HTML)."""
    import html

    import nbformat
    from nbconvert.filters.markdown import markdown2html
    report = Path(report)
    nb = nbformat.read(str(report), as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), report.stem)
    lines = first.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines else report.stem
    purpose = "\n".join(lines[1:]).strip().split("\n\n")[0]
    entry = {"stem": report.stem, "title": html.escape(title), "purpose": markdown2html(purpose) if purpose else ""}
    for key, tag in INDEX_TAGS.items():
        cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
        entry[key] = "\n".join(_cell_outputs_html(c) for c in cells)
    return entry


_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.links a { margin-right: 1em; } .finding { background: #f4f8fb; border-left: 4px solid #4a90c2; padding: .4em .8em; }
table { border-collapse: collapse; font-size: 90%; margin: .6em 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
pre { white-space: pre-wrap; }
"""


def write_index(out_dir: str | Path) -> Path:
    """Write `out_dir/index.html`: every executed report `NN_*.ipynb` in `out_dir`, each with its title,
    purpose, one-line finding and headline table, and links to the report with and without code.

    The finding and the table are the outputs of the cells tagged `index:finding` and
    `index:headline`, so every number on the page was computed by the report it comes from.
    """
    import html
    out_dir = Path(out_dir)
    reports = sorted(out_dir.glob("[0-9][0-9]_*.ipynb"))
    entries = [index_entry(r) for r in reports]
    run = next((e["run"] for e in entries if e["run"]), "")
    body = ["<h1>TPT workbook: the reports</h1>",
            "<p>Each report is an executed notebook of the workbook; start with the findings below and open a "
            "report for the figures, the intervals and the reasoning behind each number.</p>"]
    if run:
        body.append(f"<h3>This run</h3>{run}")
    for e in entries:
        links = " ".join(f'<a href="{html.escape(name)}">{label}</a>' for name, label in
                         [(f"{e['stem']}.report.html", "report"), (f"{e['stem']}.html", "report with code"),
                          (f"{e['stem']}.ipynb", "notebook")] if (out_dir / name).exists())
        body += [f"<h2>{e['title']}</h2>", e["purpose"], f'<p class="links">{links}</p>']
        if e["finding"]:
            body.append(f'<div class="finding">{e["finding"]}</div>')
        body.append(e["headline"])
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>TPT workbook reports</title>"
            f"<style>{_INDEX_STYLE}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    target = out_dir / "index.html"
    tmp = target.with_name(".index.html.partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tptlib.workbook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebook files (default with --all: every notebooks/NN_*.ipynb)")
    ap.add_argument("--out", default="reports", help="report folder (default: reports)")
    ap.add_argument("--all", action="store_true", help="run every numbered notebook in order")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter (VALUE parsed as JSON when it can be: 200, true, [\"A\"])")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--no-html", action="store_true")
    ap.add_argument("--index", action="store_true",
                    help="write OUT/index.html from the reports in OUT (done after --all anyway)")
    args = ap.parse_args(argv)
    if args.index and not args.notebooks and not args.all:
        print(f"[workbook] index: {write_index(args.out)}", flush=True)
        return 0
    paths = [Path(p) for p in args.notebooks] or (sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) if args.all else [])
    if not paths:
        ap.error("name notebooks or pass --all")
    params = {name: _parse_value(value) for name, value in args.param}
    for path in paths:                       # check every notebook before running any
        check_parameters(path, {k: v for k, v in params.items() if k in notebook_parameters(path)}
                         if args.all else params)
    if args.all:
        known = set().union(*(notebook_parameters(p) for p in paths))
        unknown = sorted(set(params) - known)
        if unknown:
            raise UnknownParameterError(f"no notebook declares parameter(s) {unknown}; declared: {sorted(known)}")
    for path in paths:
        own = {k: v for k, v in params.items() if k in notebook_parameters(path)}
        print(f"[workbook] {path.name} -> {args.out}/ {own or ''}", flush=True)
        start = time.perf_counter()
        run_notebook(path, args.out, own, kernel=args.kernel, html=not args.no_html)
        print(f"[workbook] {path.name} done in {time.perf_counter() - start:.0f} s", flush=True)
    if args.all or args.index:
        print(f"[workbook] index: {write_index(args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UnknownParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
