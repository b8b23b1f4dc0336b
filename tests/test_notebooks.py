"""The six notebooks and the solutions of their exercises, each executed once with papermill, with
small parameters on the micro profile.

The notebooks run in order in one process (`make test` keeps a file's tests in one process),
sharing one run folder and one feature cache (as `make reports` does), so notebooks 04-06 reuse
the records 01-03 wrote and the solutions (`notebooks/solutions/`, run after the six) reuse the
runs, cached view logits and view features of the notebooks they answer. They also share one
Jupyter kernel, as `make reports` does (`tptlib.workbook.Kernel`; `tests/test_workbook_paper.py`
runs `make reports` itself): its namespace is emptied before each notebook, so every notebook starts
from nothing it did not define itself, while the libraries imported once stay loaded. A notebook
passes when every cell runs without an error and every cell whose output is a deterministic fact
(tagged `check:<key>`) prints exactly the text `tests/notebook_outputs.json` holds for it, on
standard output, and nothing else.
"""
import json
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))
IN_ORDER = [*NOTEBOOKS, *SOLUTIONS]
EXPECTED = json.loads((ROOT / "tests" / "notebook_outputs.json").read_text())
# every sample count a notebook declares, cut to the same small size
SMALL = {"limit": 12, "batch_size": 8, "variant_limit": 12, "ensemble_n": 12, "check_n": 12, "sweep_limit": 12,
         # the grids cut to two points each: every cell still runs, on fewer settings
         "steps_grid": [1, 4], "online_tasks": ["A"], "coop_inits": ["a photo of a", None], "coop_lengths": [4],
         "coop_variant_tasks": ["A"], "stream_seeds": [0, 1], "vote_n": 12}


def test_every_expected_output_belongs_to_a_tagged_cell():
    for stem, cells in EXPECTED.items():
        nb = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), as_version=4)
        tags = {t for c in nb.cells for t in c.metadata.get("tags", [])}
        assert {f"check:{k}" for k in cells} <= tags, stem


def test_every_notebook_with_exercises_has_its_solutions():
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        if any(c.cell_type == "markdown" and c.source.lstrip().startswith("## Exercises") for c in nb.cells):
            assert ROOT / "notebooks" / "solutions" / f"{path.stem}_solutions.ipynb" in SOLUTIONS, path.name


def test_notebooks_are_committed_without_outputs():
    for path in IN_ORDER:
        nb = nbformat.read(str(path), as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name


def checked_cells(nb, stem: str) -> dict[str, list]:
    """The outputs of the cells tagged `check:<key>`, by key (every key must have an expected output)."""
    expected = EXPECTED.get(stem, {})
    found = {}
    for cell in nb.cells:
        tag = next((t for t in cell.metadata.get("tags", []) if t.startswith("check:")), None)
        if cell.cell_type == "code" and tag:
            key = tag.split(":", 1)[1]
            assert key in expected, f"{stem}: cell tagged {tag} has no expected output in notebook_outputs.json"
            found[key] = cell.get("outputs", [])
    return found


def printed(outputs) -> list[tuple[str, str]]:
    """A cell's outputs as (kind, text): consecutive writes to one stream joined, as a reader sees
    them; a display or a result is (its output type, its plain text)."""
    shown = []
    for out in outputs:
        if out.output_type == "stream":
            if shown and shown[-1][0] == out.name:
                shown[-1] = (out.name, shown[-1][1] + out.text)
            else:
                shown.append((out.name, out.text))
        else:
            shown.append((out.output_type, out.get("data", {}).get("text/plain", out.get("evalue", ""))))
    return shown


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The chain's folder. Under pytest-xdist the chain must run in one process only: a second
    process would run it again (and each notebook's test would only see part of it)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):       # the processes' folders share the session's folder
        try:
            (tmp_path_factory.getbasetemp().parent / "notebook-chain").mkdir()
        except FileExistsError:
            pytest.fail("the notebook chain is already running in another pytest-xdist process: run the suite "
                        "with --dist loadfile (as `make test` does) so that this file's tests stay in one process")
    return tmp_path_factory.mktemp("workbook")


@pytest.fixture(scope="module")
def executed(workdir):
    """Each notebook's outcome once it has run: the executed notebook, or the exception that stopped it."""
    return {}


@pytest.fixture(scope="module")
def kernel(workdir):
    """One Jupyter kernel for the whole sequence (`tptlib.workbook.Kernel`, as `make reports` has),
    started in `workdir` with one feature cache for all notebooks: 03's TPT runs encode the views
    that 06's methods then read. Figures are drawn without being rendered into the notebooks."""
    from tptlib.workbook import Kernel
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg", TPTLIB_FEATURE_CACHE=str(workdir / "runs" / "features"))
    with Kernel(cwd=workdir, env=env) as k:
        yield k


def execute(src: Path, workdir: Path, kernel):
    """Run `src` with papermill into `workdir` (parameters SMALL, the shared run folder) in the
    shared kernel, emptied first; the executed notebook. Raises papermill's error, naming the
    cell, if a cell fails."""
    from tptlib.workbook import notebook_parameters, run_notebook
    params = {k: v for k, v in SMALL.items() if k in notebook_parameters(src)}
    params["runs_dir"] = str(workdir / "runs")
    out = run_notebook(src, workdir, params, kernel=kernel, html=False, save_each_cell=False)
    return nbformat.read(str(out), as_version=4)


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", IN_ORDER, ids=[p.stem for p in IN_ORDER])
def test_notebook_runs_and_prints_its_checked_outputs(notebook, workdir, executed, kernel):
    for src in IN_ORDER[:IN_ORDER.index(notebook) + 1]:   # the ones before first (it reads their runs), once
        if src.stem not in executed:
            try:
                executed[src.stem] = execute(src, workdir, kernel)
            except Exception as exc:                     # noqa: BLE001 (reported by that notebook's test)
                executed[src.stem] = exc
    outcome = executed[notebook.stem]
    if isinstance(outcome, Exception):
        raise outcome
    cells = checked_cells(outcome, notebook.stem)
    assert set(cells) == set(EXPECTED.get(notebook.stem, {})), notebook.stem
    for key, outputs in cells.items():
        assert printed(outputs) == [("stdout", EXPECTED[notebook.stem][key])], f"{notebook.stem}: check:{key}"
