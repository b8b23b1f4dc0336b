"""The researcher's path: the whole workbook on the `paper` profile, end to end.

A data root holds the 15 datasets of TPT's Tables 1 and 2 in their real layouts (ImageNet's
WordNet-id folders, ImageNet-V2's 0..999, the CoOp split files, FGVC-Aircraft's official files;
`fake_datasets.py`), a few images each: the profile finds and loads every one of them. The six
notebooks (06 with every peer method, the feature cache and the published peers' table) then run
with papermill as `make reports PROFILE=paper ...` runs them, with a small random-weight open_clip
architecture in place of ViT-B/16 (`_helpers.write_tiny_clip`), on a root that holds ImageNet,
ImageNet-R, a CoOp-split dataset and FGVC-Aircraft, and not ImageNet-A, the focus of 02 and 06: the
notebooks run the tasks that are there and say which are missing.
"""
import html
import json
import re

import nbformat
import pytest

from _helpers import write_tiny_clip
from fake_datasets import ALL_TASKS, build_paper_root
from tptlib import workbook

NOTEBOOKS = sorted(workbook.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _reports(tmp_path, root, html: bool):
    """`make reports PROFILE=paper ...` into tmp_path/reports (HTML export is tested in test_workbook.py):
    the six notebooks in one kernel, emptied before each."""
    model = write_tiny_clip(tmp_path / "model")
    out = tmp_path / "reports"
    args = ["--all", "--out", str(out), "-p", "profile", '"paper"', "-p", "model", json.dumps(str(model)),
            "-p", "data_root", json.dumps(str(root)), "-p", "device", '"cpu"', "-p", "limit", "2",
            "-p", "runs_dir", json.dumps(str(tmp_path / "runs")),
            # the grids of 03, 04 and 06 cut to one or two points: every cell runs, on fewer settings
            "-p", "sweep_tasks", '["R"]', "-p", "steps_grid", "[1, 2]", "-p", "online_tasks", '["R"]',
            "-p", "coop_inits", '["a photo of a"]', "-p", "coop_lengths", "[4]", "-p", "coop_variant_tasks", '["R"]',
            "-p", "stream_seeds", "[0, 1]"]
    assert workbook.main(args + ([] if html else ["--no-html"])) == 0
    return out


def _text_outputs(report) -> str:
    nb = nbformat.read(str(report), as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts += ["".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def test_profile_takes_the_datasets_present_and_names_the_missing(tmp_path):
    root = build_paper_root(tmp_path / "data", ["R", "DTD", "Aircraft"])
    prof = workbook.profile("paper", data_root=str(root), device="cpu")
    assert prof.tasks == ["R", "DTD", "Aircraft"] and prof.id_task is None
    assert set(prof.missing) == set(ALL_TASKS) - {"R", "DTD", "Aircraft"}
    assert "expected 200 class folders" in prof.missing["A"]
    assert prof.focus_task("A") == ("R", "A is missing under data_root; using R instead")
    assert prof.task_name("dtd") == "DTD" and prof.task_name("Count") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none of the paper profile's datasets"):
        workbook.profile("paper", data_root=str(tmp_path / "empty"), device="cpu")
    with pytest.raises(ValueError, match="not an existing folder"):
        workbook.profile("paper", data_root=str(tmp_path / "absent"), device="cpu")


def test_every_dataset_of_the_paper_profile_loads_from_its_real_layout(tmp_path):
    root = build_paper_root(tmp_path / "data")
    prof = workbook.profile("paper", data_root=str(root), device="cpu")
    assert prof.tasks == ALL_TASKS and not prof.missing and prof.id_task == "I"
    for name in ALL_TASKS:
        task = prof.load_task(name)
        assert len(task) == 3 and len({y for _, y in task.samples}) == 3, name
        assert len(task.classnames) == {"I": 1000, "V": 1000, "K": 1000, "A": 200, "R": 200}.get(name, len(task.classnames))
        assert task.load_image(0).size == (44, 36), name


#: the end-to-end run's datasets: ImageNet (WordNet-id folders, the in-distribution column), ImageNet-R
#: (a 200-class subset, a shift), a CoOp split file and the FGVC-Aircraft files; every layout of the 15,
#: ImageNet-V2's 0..999 folders included, is loaded by the test above
PRESENT = ["I", "R", "DTD", "Aircraft"]


@pytest.mark.notebooks
def test_the_whole_workbook_runs_on_the_paper_profile_and_names_the_missing_dataset(tmp_path):
    """One run of the six notebooks: every present dataset reaches the tables, and the missing ones
    (ImageNet-A, the focus task of 02 and 06, among them) are named everywhere."""
    present = PRESENT
    skipped = f"skipped: {sorted(set(ALL_TASKS) - set(present))}"
    root = build_paper_root(tmp_path / "data", present)
    out = _reports(tmp_path, root, html=False)
    for nb in NOTEBOOKS:
        assert (out / nb.name).is_file(), nb.name
        run = html.unescape(workbook.index_entry(out / nb.name)["run"])   # what a report says about its run, if it says it
        assert not run or ("not found under data_root" in run and skipped in run), nb.name
    run = html.unescape(workbook.index_entry(out / NOTEBOOKS[0].name)["run"])
    assert "profile paper" in run and "tiny-test-clip" in run
    assert all(f"'{t}'" in run for t in present), run
    for report in ("04_benchmark_reproduction", "06_beyond_tpt"):
        tables = _text_outputs(out / f"{report}.ipynb")
        assert all(t in tables for t in present), report
    for report in ("02_entropy_filtering", "06_beyond_tpt"):     # their focus task is A: the first shift present instead
        note = re.search(r"A is missing under data_root; using (\w+) instead", _text_outputs(out / f"{report}.ipynb"))
        assert note and note.group(1) in present, report
    index = (out / "index.html").read_text()
    assert all(f'href="{nb.name}"' in index for nb in NOTEBOOKS)
    assert index.count('class="finding"') == len(NOTEBOOKS)
    assert "not found under data_root" in index
