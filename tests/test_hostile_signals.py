"""Hostile inputs, 10: Ctrl-C and SIGTERM at any moment, paths too long, named pipes.

The `tpt` program ends on SIGINT / SIGTERM in one line with exit status 130 / 143, whether it is
still importing, loading the model or running, with no traceback and no "Exception ignored"; the
run then resumes to the records of an uninterrupted run. A path too long for the file system or a
named pipe where a file is expected is a one-line refusal with exit status 2 (an image that is a
pipe: an error row), never a traceback or a hang. The runs use the micro-CLIP architecture with
seeded random weights on a fake EuroSAT (test_runs.py's helpers).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import assert_one_line_refusal, make_eurosat, read_store, run_cli
from test_hostile_cli import eval_args as cli_eval_args
from tptlib import runs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_eurosat(tmp_path_factory.mktemp("data"), n=24)


def eval_args(weights, root, out, *extra) -> list[str]:
    """A TPT run of 64 views per sample: long enough to be interrupted while it runs."""
    return cli_eval_args(weights, root, out, "--method", "tpt", "--views", "64", "--batch-size", "2", *extra)


def start(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tptlib.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd, **kw)


def assert_one_line_end(proc: subprocess.Popen, signum: int) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    name = signal.Signals(signum).name
    assert err == f"tpt: interrupted ({name}); what was finished is kept: run the same command again to resume.\n"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.25, 0.6, 1.5, 3.0])     # importing, loading the model, running
def test_a_signal_at_any_moment_is_one_line_and_its_exit_status(weights, data_root, tmp_path, signum, delay):
    proc = start(eval_args(weights, data_root, tmp_path / "run"), tmp_path)
    time.sleep(delay)
    proc.send_signal(signum)
    assert_one_line_end(proc, signum)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_view_workers_is_one_line_and_leaves_no_process(weights, data_root,
                                                                                       tmp_path):
    proc = start(eval_args(weights, data_root, tmp_path / "run", "--workers", "2"), tmp_path,
                 start_new_session=True)
    time.sleep(3.0)
    os.killpg(proc.pid, signal.SIGINT)                # as a terminal's Ctrl-C: the program and its workers
    assert_one_line_end(proc, signal.SIGINT)
    time.sleep(1.0)
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == []


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_records_of_an_uninterrupted_one(weights, tmp_path, capsys):
    root = make_eurosat(tmp_path / "data", n=6)
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root), "--views", "32",
            "--batch-size", "2", "--no-progress"]
    for delay in (2.0, 2.5):
        proc = start([*args, "--out", str(tmp_path / "run")], tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        assert proc.returncode in (0, 143)
    code, err = run_cli([*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert run_cli([*args, "--out", str(tmp_path / "clean")], capsys)[0] == 0
    assert read_store(tmp_path / "run" / "records.sqlite") == read_store(tmp_path / "clean" / "records.sqlite")
    assert runs.load_run(tmp_path / "run").summary["n"] == 6


# --- paths too long, named pipes -----------------------------------------------------------------

LONG = "x" * 300


@pytest.mark.parametrize("args", [
    ["eval", "--task", "eurosat", "--root", "{data}/" + LONG, "--out", "{tmp}/run"],
    ["eval", "--task", "eurosat", "--root", "{data}", "--out", "{tmp}/" + LONG],
    ["eval", "--task", "eurosat", "--root", "{data}", "--out", "{tmp}/run", "--split-dir", "{tmp}/" + LONG],
    ["eval", "--task", "eurosat", "--root", "{data}", "--out", "{tmp}/run", "--pretrained", "{tmp}/" + LONG],
    ["eval", "--task", "eurosat", "--root", "{data}", "--out", "{tmp}/run", "--feature-cache", "{tmp}/" + LONG],
    ["eval", "--task", "eurosat", "--root", "{data}", "--out", "{tmp}/run", "--method", "tpt-coop",
     "--coop-ckpt", "{tmp}/" + LONG + ".pt", "--views", "16"],
    ["eval", "--task", "micro:A", "--root", "{tmp}/" + LONG, "--out", "{tmp}/run"],
    ["show", "{tmp}/" + LONG],
    ["compare", "{tmp}/" + LONG, "{tmp}/run"],
    ["data", "check", "--task", "eurosat", "--root", "{tmp}/" + LONG],
])
def test_a_path_too_long_is_one_line(weights, data_root, tmp_path, capsys, args):
    args = [a.format(tmp=tmp_path, data=data_root) for a in args]
    if "--pretrained" not in args and args[0] == "eval":
        args += ["--pretrained", str(weights)]
    code, err = run_cli([*args, "--views", "4"] if args[0] == "eval" and "--views" not in args else args, capsys)
    assert_one_line_refusal(code, err)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def pipes(tmp_path):
    """A copy of a small fake EuroSAT in which named pipes stand where files are expected."""
    root = make_eurosat(tmp_path / "data", n=3)
    os.mkfifo(tmp_path / "weights.safetensors")
    os.mkfifo(tmp_path / "ctx.pt")
    return root


@pytest.mark.parametrize("where, message", [
    ("weights", "weights.safetensors"),
    ("ckpt", "ctx.pt"),
    ("split", "split_zhou_EuroSAT.json"),
])
def test_a_named_pipe_where_a_file_is_expected_is_one_line(weights, pipes, tmp_path, capsys, where, message):
    args = ["eval", "--task", "eurosat", "--root", str(pipes), "--out", str(tmp_path / "run"), "--views", "16",
            "--no-progress", "--pretrained", str(tmp_path / "weights.safetensors" if where == "weights" else weights)]
    if where == "ckpt":
        args += ["--method", "tpt-coop", "--coop-ckpt", str(tmp_path / "ctx.pt")]
    if where == "split":
        split = pipes / "eurosat" / "split_zhou_EuroSAT.json"
        split.unlink()
        os.mkfifo(split)
    code, err = run_cli(args, capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists()


def test_an_image_that_is_a_named_pipe_is_an_error_row(weights, pipes, tmp_path, capsys):
    image = pipes / "eurosat" / "2750" / "class1" / "img1.jpg"
    image.unlink()
    os.mkfifo(image)
    args = ["eval", "--task", "eurosat", "--root", str(pipes), "--out", str(tmp_path / "run"), "--views", "4",
            "--method", "zeroshot", "--no-progress", "--pretrained", str(weights)]
    assert run_cli(args, capsys)[0] == 0
    records = runs.load_run(tmp_path / "run").records
    assert records["error"].notna().tolist() == [False, True, False]
    assert "not a regular file" in records["error"][1]


def test_a_run_json_that_is_a_named_pipe_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "run.json")
    code, err = run_cli(["show", str(tmp_path / "run")], capsys)
    assert_one_line_refusal(code, err)
