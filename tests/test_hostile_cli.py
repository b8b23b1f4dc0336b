"""Hostile inputs, 6: every user error is one line, `tpt: error: ...`, exit status 2, no traceback,
and no run folder left behind: a device this machine lacks, a weights file that is truncated or
foreign, an --out that is a file or empty, a folder that is not a run, a bad command line, a closed
pipe."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _helpers import assert_one_line_refusal, make_eurosat, run_cli
from tptlib import cli

REPO = Path(__file__).resolve().parents[1]
EUROSAT_SAMPLES = 4             # conftest's data_root


def eval_args(weights, root, out, *extra) -> list[str]:
    return ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root), "--views", "10",
            "--method", "zeroshot", "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("device, message", [
    ("cuda:7", "device cuda:7 is not available"),
    ("cuda", "device cuda is not available"),
    ("tpu", "unknown device 'tpu'"),
    ("cpu:x", "unknown device 'cpu:x'"),
    ("meta", "device meta cannot run a model here"),
])
def test_a_device_this_machine_lacks(weights, data_root, tmp_path, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    code, err = run_cli(eval_args(weights, data_root, tmp_path / "run", "--device", device), capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists()


def truncated(weights, path):
    path.write_bytes(weights.read_bytes()[:5000])


def foreign(weights, path):
    save_file({"classifier.weight": torch.zeros(3, 4)}, str(path))


def garbage(weights, path):
    path.write_bytes(os.urandom(4096))


def empty(weights, path):
    path.write_bytes(b"")


def pickled(weights, path):
    torch.save({"logit_scale": torch.zeros(())}, path)        # a .pt where micro weights are safetensors


@pytest.mark.parametrize("make, name, message", [
    (truncated, "w.safetensors", "as micro-CLIP weights, a safetensors file"),
    (foreign, "w.safetensors", "does not fit the micro-CLIP architecture"),
    (garbage, "w.safetensors", "as micro-CLIP weights, a safetensors file"),
    (empty, "w.safetensors", "as micro-CLIP weights, a safetensors file"),
    (pickled, "w.pt", "as micro-CLIP weights, a safetensors file"),
])
def test_a_weights_file_that_is_truncated_or_foreign(weights, data_root, tmp_path, capsys, make, name, message):
    bad = tmp_path / name
    make(weights, bad)
    code, err = run_cli(eval_args(bad, data_root, tmp_path / "run"), capsys)
    assert_one_line_refusal(code, err, message, str(bad))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make, message", [
    (truncated, "cannot read"), (garbage, "cannot read"), (foreign, "does not fit the RN50 architecture"),
])
def test_an_open_clip_checkpoint_that_is_truncated_or_foreign(weights, data_root, tmp_path, capsys, make, message):
    bad = tmp_path / "rn50.safetensors"
    make(weights, bad)
    args = ["eval", "--model", "RN50", "--pretrained", str(bad), "--task", "eurosat", "--root", str(data_root),
            "--out", str(tmp_path / "run")]
    code, err = run_cli(args, capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_or_empty(weights, data_root, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    code, err = run_cli(eval_args(weights, data_root, notes), capsys)
    assert_one_line_refusal(code, err, f"--out {notes} is a file, not a folder")
    assert notes.read_text() == "keep me"
    code, err = run_cli(eval_args(weights, data_root, ""), capsys)
    assert_one_line_refusal(code, err, "argument --out: must name a folder")


@pytest.mark.parametrize("args, message", [
    (["eval", "--task", "eurosat"], "eval: the following arguments are required: --out"),
    (["eval", "--task", "micro:Nope", "--out", "{tmp}/run"], "unknown micro set 'Nope'"),
    (["eval", "--task", "eurosat", "--root", "{tmp}/nowhere", "--out", "{tmp}/run"], "EuroSAT: expected the CoOp split file"),
    (["eval", "--task", "micro:I", "--limit", "0", "--out", "{tmp}/run"], "argument --limit: must be an integer >= 1; got 0"),
    (["eval", "--task", "micro:I", "--views", "1e3", "--out", "{tmp}/run"], "argument --views: invalid positive_int value: '1e3'"),
    (["evaluate"], "argument <command>: invalid choice: 'evaluate'"),
    (["show", "{tmp}"], "is not a run folder: it has no run.json"),
    (["show", "{tmp}/nowhere"], "is not a run folder: it has no run.json"),
    (["show", "{tmp}/notes.txt"], "is a file, not a folder"),
    (["compare", "{tmp}", "{tmp}/nowhere"], "is not a run folder"),
    (["data", "check", "--task", "eurosat", "--root", "{tmp}/notes.txt"], "EuroSAT: expected the CoOp split file"),
])
def test_a_bad_command_line_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "notes.txt").write_text("x")
    code, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_runs_of_other_tasks_are_not_compared(weights, data_root, tmp_path, capsys):
    other = make_eurosat(tmp_path / "other", n=3)
    assert cli.main(eval_args(weights, data_root, tmp_path / "a")) == 0
    assert cli.main(eval_args(weights, other, tmp_path / "b")) == 0
    capsys.readouterr()
    code, err = run_cli(["compare", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and err.startswith("tpt: error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_a_closed_pipe_is_one_line(weights, data_root, tmp_path):
    for out in ("a", "b"):
        assert cli.main(eval_args(weights, data_root, tmp_path / out)) == 0
    read, write = os.pipe()
    os.close(read)                                    # like `| head -1` once head has exited
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, "-m", "tptlib.cli", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
                              stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "tpt: error: the output was closed before all of it was written (a pipe into head?)\n"
