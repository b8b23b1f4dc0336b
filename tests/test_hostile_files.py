"""Hostile inputs, 7: every file a run writes is created safely.

A run never writes through a name in its folder that is a symbolic link, a hard link or not a
regular file (a named pipe, a folder): the folder is refused before anything is written, and the
file the name points to is unchanged. run.json is written to an exclusive temporary file and
renamed; the store's layout is created whole or not at all, so a full disk while it is made
leaves nothing that blocks the next run. The runs use the micro-CLIP architecture with seeded
random weights on a fake EuroSAT (test_runs.py's helpers).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from _helpers import ForkedCommand, assert_one_line_refusal, read_store, run_cli
from test_hostile_values import N, VIEWS
from tptlib import runs
from tptlib.runs import store as store_module

import tptlib as tpt

EUROSAT_SAMPLES = N             # conftest's data_root, as test_hostile_values'
REPO = Path(__file__).resolve().parents[1]


def evaluate(clip, task, out, **kw):
    kw = {"n_views": VIEWS, "batch_size": 3, "progress": False, **kw}
    return runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), out, **kw)


@pytest.fixture(scope="module")
def finished(clip, task, tmp_path_factory):
    return evaluate(clip, task, tmp_path_factory.mktemp("finished") / "run")


@pytest.fixture
def victim(tmp_path):
    """A file outside the run folder that a link in the folder points to."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("keep me\n")
    return path


def snapshot(folder: Path) -> dict[str, object]:
    """Each entry of `folder`: its bytes, or what kind of entry it is (a link with its target)."""
    out = {}
    for p in sorted(folder.iterdir()):
        out[p.name] = (f"link to {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file()
                       else "not a file")
    return out


def partial_copy(finished, tmp_path, keep: int) -> Path:
    """The finished run with only its first `keep` records, as if it had been interrupted."""
    out = tmp_path / "run"
    shutil.copytree(finished.out, out)
    (out / "lock").unlink()
    with sqlite3.connect(out / "records.sqlite") as conn:
        conn.execute("DELETE FROM records WHERE idx >= ?", (keep,))
    return out


OWN_NAMES = ["lock", "run.json.tmp", "run.log", "records.sqlite", "records.sqlite-journal", "records.sqlite.new",
             "records.rank1.sqlite", "run.json"]


@pytest.mark.parametrize("name", OWN_NAMES)
def test_a_link_in_a_run_folder_is_refused_and_its_target_unchanged(clip, task, finished, tmp_path, victim, name):
    out = partial_copy(finished, tmp_path, keep=3)
    if (out / name).exists():
        (out / name).unlink()
    os.symlink(victim, out / name)
    before = snapshot(out)
    with pytest.raises(runs.RunError, match=rf"{name} is a symbolic link \(to {victim}\).*remove it") as err:
        evaluate(clip, task, out)
    assert "\n" not in str(err.value)
    assert victim.read_text() == "keep me\n" and snapshot(out) == before


@pytest.mark.parametrize("name", ["lock", "run.json.tmp", "run.log", "records.sqlite-journal"])
def test_a_link_in_a_new_folder_is_refused_before_anything_is_written(clip, task, tmp_path, victim, name):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / name)
    with pytest.raises(runs.RunError, match="is a symbolic link"):
        evaluate(clip, task, out)
    assert victim.read_text() == "keep me\n" and sorted(os.listdir(out)) == [name]


def test_a_dangling_link_is_refused_and_nothing_is_created_where_it_points(clip, task, tmp_path):
    out, target = tmp_path / "run", tmp_path / "elsewhere" / "lock"
    out.mkdir()
    target.parent.mkdir()
    os.symlink(target, out / "lock")
    with pytest.raises(runs.RunError, match="lock is a symbolic link"):
        evaluate(clip, task, out)
    assert not target.exists() and os.listdir(target.parent) == []


@pytest.mark.parametrize("name", ["lock", "run.log", "records.sqlite"])
def test_a_hard_link_in_a_run_folder_is_refused_and_the_other_name_unchanged(clip, task, finished, tmp_path, name):
    out = partial_copy(finished, tmp_path, keep=3)
    other = tmp_path / "backup"
    if name == "records.sqlite":
        os.link(out / name, other)             # a backup made with `cp -l`: a resume would write into it too
    else:
        other.write_text("keep me\n")
        (out / name).unlink(missing_ok=True)
        os.link(other, out / name)
    was = other.read_bytes()
    with pytest.raises(runs.RunError, match=rf"{name} is a hard link"):
        evaluate(clip, task, out)
    assert other.read_bytes() == was


@pytest.mark.parametrize("name", ["lock", "run.json.tmp", "run.log", "records.sqlite", "run.json"])
def test_a_named_pipe_in_a_run_folder_is_refused_without_hanging(clip, task, finished, tmp_path, name):
    out = partial_copy(finished, tmp_path, keep=3)
    if (out / name).exists():
        (out / name).unlink()
    os.mkfifo(out / name)
    before = snapshot(out)
    with pytest.raises(runs.RunError, match=rf"{name} is a named pipe"):
        evaluate(clip, task, out)
    assert snapshot(out) == before


def test_a_leftover_temporary_run_json_is_replaced_and_the_run_completes(clip, task, finished, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json.tmp").write_text('{"params": {"half written')    # a write killed before its rename
    result = evaluate(clip, task, out)
    assert result.summary["n"] == N and not (out / "run.json.tmp").exists()
    assert read_store(out / "records.sqlite") == read_store(finished.out / "records.sqlite")


def test_a_store_whose_creation_fails_leaves_no_store_and_the_next_run_completes(clip, task, finished, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "run"
    real = store_module._ensure_side_tables

    def disk_full(conn):
        real(conn)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "_ensure_side_tables", disk_full)
    with pytest.raises(runs.RunError, match=r"cannot create the records store .* no store was left behind") as err:
        evaluate(clip, task, out)
    assert "\n" not in str(err.value)
    assert not any(name.startswith("records.") for name in os.listdir(out))
    monkeypatch.undo()
    result = evaluate(clip, task, out)
    assert result.summary["n"] == N
    assert read_store(out / "records.sqlite") == read_store(finished.out / "records.sqlite")


def test_a_store_left_half_made_by_a_kill_is_replaced(clip, task, finished, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with sqlite3.connect(out / "records.sqlite.new") as conn:         # a creation killed before its rename
        conn.execute("CREATE TABLE records (idx INTEGER)")
    evaluate(clip, task, out)
    assert sorted(os.listdir(out)) == ["lock", "records.sqlite", "run.json", "run.log"]
    assert read_store(out / "records.sqlite") == read_store(finished.out / "records.sqlite")


@pytest.mark.slow
def test_a_full_disk_while_the_folder_is_made_is_one_line_and_the_run_then_completes(weights, data_root, tmp_path,
                                                                                   capsys):
    out = tmp_path / "run"
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(data_root), "--views", "8",
            "--method", "zeroshot", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = ForkedCommand(args, env, tmp_path, tmp_path, file_size_limit=8192)    # its own process, the disk "full"
    _, stderr = proc.communicate(timeout=300)
    assert_one_line_refusal(proc.returncode, stderr.replace("WARNING:root:No pretrained weights loaded for "
                                                                 "model 'micro-clip'. Model initialized randomly.\n", ""),
                            "cannot create the records store", "no store was left behind")
    assert not any(name.startswith("records.") for name in os.listdir(out))
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert runs.load_run(out).summary["n"] == N


def test_the_command_line_refuses_a_linked_lock_in_one_line(weights, data_root, finished, tmp_path, victim, capsys):
    out = partial_copy(finished, tmp_path, keep=3)
    os.symlink(victim, out / "lock")
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(data_root), "--views", "8",
            "--method", "zeroshot", "--out", str(out), "--no-progress"]
    code, err = run_cli(args, capsys)
    assert_one_line_refusal(code, err, "lock is a symbolic link", "remove it")
    assert victim.read_text() == "keep me\n"
