"""Runs across real processes: SIGKILL and resume, two commands on one folder, torchrun sharding.

Each test starts `python -m tptlib.cli eval` in processes of their own (`_helpers.ForkedCommand`:
forked from a server that has imported the command's libraries; torchrun starts its own), on the
micro-CLIP architecture with random weights and a fake EuroSAT (see conftest.py), and compares the
records with a run of the same command, uninterrupted, made in the test process through
`tptlib.cli.main`.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import ForkedCommand, make_eurosat, read_store
from tptlib import cli, runs

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def eval_args(weights: Path, root: Path, out: Path, batch_size: int) -> list[str]:
    return ["eval", "--model", "micro", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root),
            "--method", "tpt", "--selection-p", "0.25", "--views", "8", "--batch-size", str(batch_size),
            "--out", str(out)]


def child_env(**extra) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(args: list[str], **env) -> ForkedCommand:
    """`python -m tptlib.cli ARGS` in a process of its own (forked with its libraries loaded)."""
    return ForkedCommand(args, child_env(**env), REPO, Path(args[args.index("--out") + 1]).parent)


def n_rows(out: Path) -> int:
    if not (out / "records.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(out / "records.sqlite", timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:        # the table is not created yet
        return 0


@pytest.fixture(scope="module")
def setup(weights, tmp_path_factory):
    return weights, make_eurosat(tmp_path_factory.mktemp("procs") / "data", n=30)


def test_resume_after_kill_loses_nothing(setup, tmp_path):
    weights, root = setup
    assert cli.main(eval_args(weights, root, tmp_path / "uninterrupted", 2) + ["--no-progress"]) == 0

    out, rng, counts = tmp_path / "killed", random.Random(0), []
    for _ in range(3):
        target = n_rows(out) + rng.randint(1, 4)
        proc = start(eval_args(weights, root, out, 2))
        while proc.poll() is None and n_rows(out) < target:    # let it record a random number of new rows,
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))                     # then kill it at a random moment (often mid-batch)
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr}"
        counts.append(n_rows(out))
    assert counts == sorted(counts) and 0 < counts[0] and counts[-1] < 30, counts

    proc = start(eval_args(weights, root, out, 2))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "30 of 30 recorded, 0 errors" in stdout
    assert read_store(out / "records.sqlite") == read_store(tmp_path / "uninterrupted" / "records.sqlite")
    log = (out / "run.log").read_text()
    assert log.count("resuming run") == 3
    assert f"{counts[-1]} of this process's 30 samples already recorded" in log


@pytest.mark.parametrize("method,settings", [("tda", ["multiview=true"]), ("dpe", ["dataset=A"])], ids=["tda", "dpe"])
def test_an_online_run_killed_and_resumed_equals_the_uninterrupted_one(setup, tmp_path, method, settings):
    # an online method over the views: each prediction depends on the state (TDA's caches, DPE's
    # prototypes, whose replay redoes each sample's optimisation step) the samples before it in the
    # stream left; a killed run must rebuild it exactly from the stored updates (BoostAdapter's replay
    # is TDA's kind: test_adapters resumes it in process)
    weights, root = setup
    extra = [arg for setting in settings + ["selection_p=0.25"] for arg in ("--set", setting)]
    args = lambda out: [a if a != "tpt" else method for a in eval_args(weights, root, out, 2)   # noqa: E731
                        if a not in ("--selection-p", "0.25")] + extra
    assert cli.main(args(tmp_path / "uninterrupted") + ["--no-progress"]) == 0
    out, rng = tmp_path / "killed", random.Random(1)
    for _ in range(1):
        target = n_rows(out) + rng.randint(1, 6)
        proc = start(args(out))
        while proc.poll() is None and n_rows(out) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr}"
    assert 0 < n_rows(out) < 30
    proc = start(args(out))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert read_store(out / "records.sqlite") == read_store(tmp_path / "uninterrupted" / "records.sqlite")
    stream = "SELECT pos, idx, state_update FROM stream ORDER BY pos"
    with sqlite3.connect(out / "records.sqlite") as a, sqlite3.connect(tmp_path / "uninterrupted" / "records.sqlite") as b:
        assert a.execute(stream).fetchall() == b.execute(stream).fetchall()


def test_a_second_command_on_the_same_folder_refuses(setup, tmp_path, capsys):
    weights, root = setup
    out = tmp_path / "run"
    first = start(eval_args(weights, root, out, 1) + ["--limit", "12"])
    while first.poll() is None and n_rows(out) == 0:
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended too early for the test"
    assert cli.main(eval_args(weights, root, out, 1) + ["--limit", "12"]) == 2    # this process is the second
    assert f"is in use by another run (pid {first.pid} on " in capsys.readouterr().err
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    rows = read_store(out / "records.sqlite")
    assert [r[0] for r in rows] == list(range(12))


def test_torchrun_two_processes_equal_one(setup, tmp_path):
    weights, root = setup
    torch.set_num_threads(1)                # as torchrun's workers (OMP_NUM_THREADS=1): same float sums
    try:
        assert cli.main(eval_args(weights, root, tmp_path / "one", 1) + ["--no-progress"]) == 0
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "tptlib.cli", *eval_args(weights, root, tmp_path / "two", 1)],
                          cwd=REPO, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("30 of 30 recorded") == 1            # rank 0 prints the merged summary
    two = tmp_path / "two"
    assert sorted(p.name for p in two.glob("records*.sqlite")) == ["records.sqlite"]
    merged, single = read_store(two / "records.sqlite"), read_store(tmp_path / "one" / "records.sqlite")
    assert [r[:2] for r in merged] == [r[:2] for r in single]     # ids and predictions
    np.testing.assert_allclose([r[2] for r in merged], [r[2] for r in single], rtol=1e-6)
    np.testing.assert_allclose(np.stack([np.frombuffer(r[3], "<f4") for r in merged]),
                               np.stack([np.frombuffer(r[3], "<f4") for r in single]), rtol=1e-5, atol=1e-5)
    log = (two / "run.log").read_text()
    assert "rank1 tptlib.run_log INFO: 0 of this process's 15 samples" in log
    assert "merged 30 rows from 2 processes" in log
    assert runs.load_run(two).summary["n"] == 30
