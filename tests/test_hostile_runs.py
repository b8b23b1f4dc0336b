"""Hostile inputs, 5: a run folder is what it says.

Records are only adopted by the run.json they were written under; a corrupt run.json or store is a
clear error that changes nothing in the folder; an input file replaced at the same path is refused
on resume; a bad command never creates or touches a folder; a larger limit extends a finished run.
The runs use the micro-CLIP architecture with seeded random weights on a fake EuroSAT.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import tptlib as tpt
from _helpers import make_eurosat, random_micro_weights, read_store
from test_hostile_values import N, VIEWS
from tptlib import cli, runs

EUROSAT_SAMPLES = N             # conftest's data_root, as in test_hostile_values.py


def method(**kw):
    return tpt.TPT(selection_p=0.25, **kw)


def evaluate(clip, task, out, **kw):
    kw = {"n_views": VIEWS, "batch_size": 3, "progress": False, **kw}
    return runs.evaluate(clip, task, kw.pop("method", None) or method(), out, **kw)


@pytest.fixture(scope="module")
def finished(clip, task, tmp_path_factory):
    return evaluate(clip, task, tmp_path_factory.mktemp("finished") / "run")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished run folder, to damage."""
    out = tmp_path / "run"
    shutil.copytree(finished.out, out)
    return out


def no_engine(samples, rows):
    """An `on_batch` hook for a run that must not evaluate anything."""
    raise AssertionError("the engine ran")


# --- records are adopted by their own run.json only --------------------------------------------

def test_records_without_a_run_json_are_not_adopted(clip, task, copy):
    (copy / "run.json").unlink()
    before = snapshot(copy)
    with pytest.raises(runs.RunError, match=r"holds records \(records.sqlite\) but no run.json"):
        evaluate(clip, task, copy, on_batch=no_engine)
    assert snapshot(copy) == before


def test_a_run_json_edited_by_hand_does_not_adopt_the_records(clip, task, copy):
    doc = json.loads((copy / "run.json").read_text())
    doc["params"]["method"]["config"]["lr"] = 0.01                    # as if the run had been made with 0.01
    (copy / "run.json").write_text(json.dumps(doc, indent=2))
    before = snapshot(copy)
    with pytest.raises(runs.RunError, match="was not written under this folder's run.json"):
        evaluate(clip, task, copy, method=method(lr=0.01), on_batch=no_engine)
    with pytest.raises(runs.RunError, match="was not written under this folder's run.json"):
        runs.load_run(copy)
    assert snapshot(copy) == before


def test_records_copied_from_another_run_are_not_adopted(clip, task, finished, tmp_path):
    other = evaluate(clip, task, tmp_path / "seed1", seed=1, limit=2)
    shutil.copy(finished.out / "records.sqlite", other.out / "records.sqlite")
    before = snapshot(other.out)
    with pytest.raises(runs.RunError, match="was not written under this folder's run.json"):
        evaluate(clip, task, other.out, seed=1, limit=2, on_batch=no_engine)
    assert snapshot(other.out) == before


@pytest.mark.parametrize("text, message", [
    ('{"params": {"model": ', "cannot be read (JSONDecodeError"),
    ("\udcff garbage", "cannot be read ("),
    ("[1, 2, 3]", "does not hold a run's parameters"),
    ('{"params": {"task": {"name": "x"}}}', "missing or of the wrong type: model.name, task.size"),
    ('{"params": {"model": {"name": "m"}, "task": {"name": "t", "size": "6", "n_classes": 10}, '
     '"method": {"name": "tpt"}, "limit": null}}', "of the wrong type: task.size)"),
    ('{"params": {"model": {"name": "m"}, "task": {"name": "t", "size": 6, "n_classes": true}, '
     '"method": {"name": "tpt"}, "limit": -1.5}}', "of the wrong type: task.n_classes, limit)"),
])
def test_a_corrupt_run_json_is_a_clear_error_that_changes_nothing(clip, task, copy, capsys, text, message):
    (copy / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    before = snapshot(copy)
    for attempt in (lambda: evaluate(clip, task, copy), lambda: runs.load_run(copy)):
        with pytest.raises(runs.RunError) as err:
            attempt()
        assert message in str(err.value) and "nothing was changed" in str(err.value)
    assert cli.main(["show", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tpt: error: {copy / 'run.json'} ") and err.count("\n") == 1
    assert snapshot(copy) == before


def drop_records_table(path):
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE records")


def foreign_database(path):
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"this is not a database, just text" * 100), "file is not a database"),
    (lambda p: p.write_bytes(p.read_bytes()[:3000]), "records store"),
    (drop_records_table, "it has no records table"),
    (foreign_database, "it holds the tables ['notes'], not a records store's"),
])
def test_a_corrupt_records_store_is_a_clear_error_that_changes_nothing(clip, task, copy, capsys, damage, message):
    damage(copy / "records.sqlite")
    before = snapshot(copy)
    for attempt in (lambda: evaluate(clip, task, copy), lambda: runs.load_run(copy)):
        with pytest.raises(runs.RunError) as err:
            attempt()
        assert message in str(err.value) and str(copy / "records.sqlite") in str(err.value)
    assert cli.main(["show", str(copy)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert snapshot(copy) == before


def test_a_run_folder_of_another_task_is_refused(clip, finished, tmp_path):
    other_task = tpt.load_task("eurosat", make_eurosat(tmp_path / "other", n=4))
    before = snapshot(finished.out)
    with pytest.raises(runs.RunMismatchError, match="task.samples"):
        evaluate(clip, other_task, finished.out)
    assert snapshot(finished.out) == before


# --- input files are pinned by content ---------------------------------------------------------

@pytest.mark.slow
def test_a_weights_file_replaced_at_the_same_path_is_refused_on_resume(task, tmp_path):
    path = random_micro_weights(tmp_path / "w.safetensors")
    out = tmp_path / "run"
    evaluate(tpt.load_clip("micro", pretrained=str(path)), task, out, limit=2)
    state = load_file(str(path))
    state["logit_scale"] = state["logit_scale"] + 0.5               # another model, same file name
    save_file(state, str(path))
    before = snapshot(out)
    with pytest.raises(runs.RunMismatchError, match=r"inputs.model.weights.sha256: '[0-9a-f]{64}' in the folder") as err:
        evaluate(tpt.load_clip("micro", pretrained=str(path)), task, out, limit=2)
    assert "it was replaced or changed at its path" in str(err.value)
    assert snapshot(out) == before


def test_a_coop_context_replaced_at_the_same_path_is_refused_on_resume(clip, task, tmp_path):
    import torch

    ckpt = tmp_path / "coop.pth"
    ctx = method().prepare(clip, ["a"]).prompt.init_ctx.clone().cpu()
    torch.save({"state_dict": {"ctx": ctx}}, ckpt)
    evaluate(clip, task, tmp_path / "run", limit=2, method=method(coop_ckpt=str(ckpt)))
    torch.save({"state_dict": {"ctx": ctx * 1.5}}, ckpt)
    with pytest.raises(runs.RunMismatchError, match=r"inputs.method.coop_ckpt.sha256"):
        evaluate(clip, task, tmp_path / "run", limit=2, method=method(coop_ckpt=str(ckpt)))


def test_a_split_file_replaced_at_the_same_path_is_refused_on_resume(clip, tmp_path):
    root = make_eurosat(tmp_path / "data", n=4)
    evaluate(clip, tpt.load_task("eurosat", root), tmp_path / "run", method=tpt.ZeroShot())
    split = root / "eurosat" / "split_zhou_EuroSAT.json"
    doc = json.loads(split.read_text())
    doc["val"] = doc["train"][:3]                                   # the test list is unchanged
    split.write_text(json.dumps(doc))
    with pytest.raises(runs.RunMismatchError, match=r"inputs.task.split_file.sha256"):
        evaluate(clip, tpt.load_task("eurosat", root), tmp_path / "run", method=tpt.ZeroShot())


# --- run folders written before the digests ----------------------------------------------------

def make_legacy(out: Path) -> None:
    """The folder as the tptlib before input digests wrote it: no `inputs`, store layout 1."""
    doc = json.loads((out / "run.json").read_text())
    del doc["params"]["inputs"]
    (out / "run.json").write_text(json.dumps(doc, indent=2) + "\n")
    with sqlite3.connect(out / "records.sqlite") as conn:
        conn.execute("DROP TABLE run")
        conn.execute("PRAGMA user_version = 1")


def test_a_folder_from_before_the_digests_resumes_and_is_pinned(clip, task, copy, finished):
    make_legacy(copy)
    assert runs.load_run(copy).summary["n"] == N                    # readable as it is
    resumed = evaluate(clip, task, copy, on_batch=no_engine)
    assert read_store(copy / "records.sqlite") == read_store(finished.out / "records.sqlite")
    assert json.loads((copy / "run.json").read_text())["params"] == json.loads(
        (finished.out / "run.json").read_text())["params"]
    assert "run.json predates input digests: pinned model.weights" in (copy / "run.log").read_text()
    assert resumed.summary["n"] == N and runs.load_run(copy).summary["n"] == N


def test_a_folder_from_before_the_digests_is_refused_if_an_input_changed_since(clip, task, copy, weights):
    make_legacy(copy)
    later = (copy / "run.json").stat().st_mtime + 3600
    split = Path(task.meta["input_files"]["split_file"])
    stat = split.stat()
    os.utime(split, (later, later))
    try:
        before = snapshot(copy)
        with pytest.raises(runs.RunMismatchError, match=r"task.split_file \(.*\) was modified .* after the run started"):
            evaluate(clip, task, copy)
        assert snapshot(copy) == before
    finally:
        os.utime(split, (stat.st_atime, stat.st_mtime))


# --- the limit ---------------------------------------------------------------------------------



@pytest.mark.slow
def test_a_larger_limit_extends_a_finished_run(clip, task, finished, tmp_path):
    out = tmp_path / "run"
    evaluate(clip, task, out, limit=2)
    ran = []
    count = lambda samples, rows: ran.append(len(samples))                    # noqa: E731
    extended = evaluate(clip, task, out, limit=5, on_batch=count)
    assert sum(ran) == 3                                            # samples 2, 3, 4 only
    assert read_store(out / "records.sqlite") == read_store(finished.out / "records.sqlite")[:5]
    assert extended.summary["n"] == extended.summary["n_expected"] == 5 and extended.summary["complete"]
    assert json.loads((out / "run.json").read_text())["params"]["limit"] == 5
    assert "limit changed from 2 to 5" in (out / "run.log").read_text()

    ran.clear()
    whole = evaluate(clip, task, out, limit=None, on_batch=count)
    assert sum(ran) == 1 and read_store(out / "records.sqlite") == read_store(finished.out / "records.sqlite")
    assert whole.summary["complete"]


def test_a_smaller_limit_than_the_recorded_rows_is_refused(clip, task, copy):
    before = snapshot(copy)
    with pytest.raises(runs.RunMismatchError) as err:
        evaluate(clip, task, copy, limit=3)
    assert "limit: None in the folder, 3 now" in str(err.value)
    assert "3 recorded samples lie beyond the new limit, from sample 3" in str(err.value)
    assert snapshot(copy) == before


@pytest.mark.slow
def test_the_command_line_extends_a_run_with_a_larger_limit(weights, data_root, tmp_path, capsys):
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(data_root), "--views", "10",
            "--method", "zeroshot", "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main([*args, "--limit", "2"]) == 0
    assert cli.main([*args, "--limit", "4"]) == 0
    assert "samples  4 of 4 recorded" in capsys.readouterr().out


# --- what --out names --------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["", "   ", None])
def test_an_empty_out_is_refused(clip, task, out):
    with pytest.raises(runs.RunError, match=r"the run folder \(--out\) is empty"):
        evaluate(clip, task, out)
    with pytest.raises(runs.RunError, match=r"the run folder \(--out\) is empty"):
        runs.load_run(out)


def test_an_out_that_is_a_file_is_refused_and_left_alone(clip, task, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    with pytest.raises(runs.RunError, match="is a file, not a folder"):
        evaluate(clip, task, path)
    with pytest.raises(runs.RunError, match="cannot create the run folder"):
        evaluate(clip, task, path / "run")
    assert path.read_text() == "my notes"


def test_a_folder_that_is_not_a_run_folder_is_refused_and_left_alone(clip, task, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(runs.RunError, match=r"is a folder that is not a run folder and not empty \(it holds holiday.jpg\)"):
        evaluate(clip, task, tmp_path / "photos")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["holiday.jpg"]


def test_a_folder_whose_run_files_are_not_files_is_refused(clip, task, tmp_path):
    (tmp_path / "run" / "run.log").mkdir(parents=True)
    with pytest.raises(runs.RunError, match=r"not a run folder and not empty \(it holds run.log\)"):
        evaluate(clip, task, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.log"]


def test_an_unwritable_folder_is_refused_in_one_line(weights, data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else real_access(p, mode))
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(data_root), "--views", "10",
            "--out", str(out), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == f"tpt: error: the run folder {out} is not writable; a run writes its records there. " \
                  "Choose a writable --out (tpt show reads a finished run without writing).\n"


def test_a_lock_that_cannot_be_created_is_refused(clip, task, copy, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if Path(path) == copy / "lock":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(runs.RunError, match=r"cannot write in the run folder .* \(Permission denied\)"):
        evaluate(clip, task, copy)


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_folder_is_refused(clip, task, copy):
    (copy / "lock").unlink()
    copy.chmod(0o555)
    try:
        with pytest.raises(runs.RunError, match="not writable"):
            evaluate(clip, task, copy)
        assert runs.load_run(copy).summary["n"] == N
    finally:
        copy.chmod(0o755)
