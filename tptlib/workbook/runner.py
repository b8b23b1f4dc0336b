"""Running the workbook: papermill with checked parameters, atomic reports, shared run folders.

    python -m tptlib.workbook notebooks/01_zero_shot_baselines.ipynb --out reports -p limit 200
    python -m tptlib.workbook --all --out reports -p profile paper -p model ViT-B-16 ...
    python -m tptlib.workbook --index --out reports      # rebuild reports/index.html

`--all` runs the six numbered notebooks in order and then writes `index.html`: the reports, each with
its one-line finding and headline table (`write_index`). The notebooks of one command run in one
Jupyter kernel (`Kernel`), its namespace emptied and its figures closed before each, so every
notebook starts from nothing it did not define itself while torch and open_clip are imported once.

Papermill only warns about a parameter the notebook does not declare; here that is an error, so
a typo never silently runs the defaults. A report is written under a temporary name and moved into
place when the notebook finished without error, so `reports/` never holds a half-run notebook.
Each report is also exported as HTML that opens offline (`export_html`: math as MathML, no CDN).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .export import export_html
from .index import write_index

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"


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


def report_environment(params: dict, cwd: str | Path | None = None) -> dict:
    """The environment a report's kernel runs in: this one, plus the two settings every report has.

    A report is read, not watched: progress bars inside the kernel would leave stale "0%" lines in
    it (the command line reports progress per notebook). The notebooks' runs share one feature
    cache beside their run folders, so that a view encoded by one notebook's run (TPT's in 03) is
    not encoded again by another's (the peers in 06).
    """
    runs_root = Path(cwd or Path.cwd()) / str(params.get("runs_dir", "runs"))
    return dict(os.environ, TQDM_DISABLE="1",
                TPTLIB_FEATURE_CACHE=os.environ.get("TPTLIB_FEATURE_CACHE") or str(runs_root / "features"))


class Kernel:
    """One Jupyter kernel for several notebooks, started in `cwd` with `env` (default: this process's):

        with Kernel(env=report_environment(params)) as kernel:
            run_notebook(a, "reports", params, kernel=kernel)
            run_notebook(b, "reports", params, kernel=kernel)

    `run_notebook` empties its namespace (`%reset -f`) and closes its figures before each notebook
    (`fresh`), so a notebook sees nothing an earlier one defined; modules stay imported.
    """

    def __init__(self, name: str = "python3", cwd: str | Path | None = None, env: dict | None = None):
        self.name, self.cwd, self.env = name, Path(cwd or Path.cwd()), env
        self.manager = None

    def __enter__(self) -> "Kernel":
        from jupyter_client.manager import KernelManager
        self.manager = KernelManager(kernel_name=self.name)
        self.manager.start_kernel(cwd=str(self.cwd), env=dict(os.environ) if self.env is None else self.env)
        return self

    def __exit__(self, *exc) -> None:
        self.manager.shutdown_kernel(now=True)

    def fresh(self) -> None:
        """Empty the namespace and close the figures: the next notebook starts from nothing."""
        client = self.manager.blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=120)
            reply = client.execute_interactive(
                "get_ipython().run_line_magic('reset', '-f')\nimport sys\n"
                "if 'matplotlib.pyplot' in sys.modules: sys.modules['matplotlib.pyplot'].close('all')",
                timeout=120, output_hook=lambda msg: None)
        finally:
            client.stop_channels()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the kernel could not be emptied: {reply['content']}")


def run_notebook(path: str | Path, out_dir: str | Path, params: dict | None = None, kernel: str | Kernel = "python3",
                 html: bool = True, cwd: str | Path | None = None, save_each_cell: bool = True) -> Path:
    """Execute one notebook with papermill into `out_dir/<name>.ipynb` (+ HTML, full and --no-input).

    kernel: a kernel name (a `Kernel` of its own, started in `cwd` with `report_environment`), or a
    running `Kernel` shared with other notebooks (emptied first; it runs where and how it was started,
    and `cwd` is not used).
    save_each_cell: write the partial report after every cell (to watch a long run), else once.
    """
    import papermill as pm
    path, out_dir = Path(path), Path(out_dir)
    params = dict(params or {})
    check_parameters(path, params)                        # before any kernel starts
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / path.name
    tmp = out_dir / f".{path.stem}.partial.ipynb"
    own = None if isinstance(kernel, Kernel) else Kernel(kernel, cwd, report_environment(params, cwd))
    with own or contextlib.nullcontext(kernel) as k:      # a kernel of its own, for this notebook alone
        k.fresh()
        pm.execute_notebook(str(path), str(tmp), parameters=params, kernel_name=k.name, language="python",
                            cwd=str(k.cwd), km=k.manager, progress_bar=False,
                            request_save_on_cell_execute=save_each_cell)
    os.replace(tmp, final)
    if html:
        export_html(final, out_dir / f"{path.stem}.html", no_input=False)
        export_html(final, out_dir / f"{path.stem}.report.html", no_input=True)
    return final


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
    total = time.perf_counter()
    with Kernel(args.kernel, env=report_environment(params)) as kernel:    # one kernel for the command's notebooks
        for path in paths:
            own = {k: v for k, v in params.items() if k in notebook_parameters(path)}
            print(f"[workbook] {path.name} -> {args.out}/ {own or ''}", flush=True)
            start = time.perf_counter()
            run_notebook(path, args.out, own, kernel=kernel, html=not args.no_html)
            print(f"[workbook] {path.name} done in {time.perf_counter() - start:.0f} s", flush=True)
    if args.all or args.index:
        print(f"[workbook] index: {write_index(args.out)}", flush=True)
    print(f"[workbook] {len(paths)} notebook(s) in {time.perf_counter() - total:.0f} s", flush=True)
    return 0
