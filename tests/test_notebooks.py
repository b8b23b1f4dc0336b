"""The six notebooks and the solutions of their exercises, executed under nbval (lax) with small
parameters on the micro profile.

Each notebook is parameterised with papermill (`prepare_only`) into a temporary folder and run by
nbval in a subprocess, in order, sharing one run folder (as `make reports` does), so notebooks 04-06
reuse the records 01-03 wrote and the solutions (`notebooks/solutions/`, run after the six) reuse
the runs, cached view logits and view features of the notebooks they answer. Cells whose output is
a deterministic fact carry a tag `check:<key>`; their expected output is in
`tests/notebook_outputs.json` and nbval compares it strictly.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))
EXPECTED = json.loads((ROOT / "tests" / "notebook_outputs.json").read_text())
# every sample count a notebook declares, cut to the same small size
SMALL = {"limit": 24, "batch_size": 8, "variant_limit": 24, "ensemble_n": 24, "check_n": 24}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("workbook")


def _prepare(src: Path, dst: Path, runs_dir: Path) -> Path:
    import papermill as pm

    from tptlib.workbook import check_parameters, notebook_parameters
    params = {k: v for k, v in SMALL.items() if k in notebook_parameters(src)}
    params["runs_dir"] = str(runs_dir)
    check_parameters(src, params)
    pm.execute_notebook(str(src), str(dst), parameters=params, prepare_only=True, kernel_name="python3",
                        language="python")
    nb = nbformat.read(str(dst), as_version=4)
    expected = EXPECTED.get(src.stem, {})
    for cell in nb.cells:
        tag = next((t for t in cell.metadata.get("tags", []) if t.startswith("check:")), None)
        if cell.cell_type == "code" and tag:
            key = tag.split(":", 1)[1]
            assert key in expected, f"{src.name}: cell tagged {tag} has no expected output in notebook_outputs.json"
            cell.source = "# NBVAL_CHECK_OUTPUT\n" + cell.source
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=expected[key])]
            cell.execution_count = 1          # nbval compares only cells that were "run" in the reference
    nbformat.write(nb, str(dst))
    return dst


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
    for path in [*NOTEBOOKS, *SOLUTIONS]:
        nb = nbformat.read(str(path), as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name


@pytest.mark.parametrize("notebook", [*NOTEBOOKS, *SOLUTIONS], ids=[p.stem for p in [*NOTEBOOKS, *SOLUTIONS]])
def test_notebook_runs_under_nbval(notebook, workdir):
    prepared = _prepare(notebook, workdir / notebook.name, workdir / "runs")
    # one feature cache for all notebooks, as `make reports` has (tptlib.workbook): 03's TPT runs encode
    # the views that 06's methods then read
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg",
           "TPTLIB_FEATURE_CACHE": str(workdir / "runs" / "features")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                           "--nbval-cell-timeout", "900", str(prepared)],
                          cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
