"""`tptlib.runs`: the record store, resume, bad samples, refusals, `load_run` (in one process).

The runs use the micro-CLIP architecture with seeded random weights (fast on a CPU; what is tested
is the bookkeeping, not accuracy) on a fake EuroSAT (10 classes, a CoOp split file) built in a
temporary folder (conftest.py's fixtures, _helpers.py's builders).
"""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

import tptlib as tpt
from _helpers import make_eurosat, read_store, without_timing
from tptlib import runs
from tptlib.data import load_task
from tptlib.engine import Engine
from tptlib.runs.concurrency import FolderLock

N_SAMPLES = 12
EUROSAT_SAMPLES = N_SAMPLES      # the fake EuroSAT of conftest's data_root
VIEWS = 8


def tpt_method():
    return tpt.TPT(selection_p=0.25)         # keeps 2 of the 8 views


@pytest.fixture(scope="module")
def reference(clip, task, tmp_path_factory):
    """An uninterrupted TPT run to compare others with."""
    return runs.evaluate(clip, task, tpt_method(), tmp_path_factory.mktemp("ref") / "run",
                         n_views=VIEWS, batch_size=4, progress=False)


# --- records ----------------------------------------------------------------------------------

def test_records_hold_one_consistent_row_per_sample(reference, task):
    rec = reference.records
    assert rec["idx"].tolist() == list(range(N_SAMPLES))
    assert rec["label"].tolist() == [label for _, label in task.samples]
    assert rec["path"].tolist() == [path for path, _ in task.samples]
    for row in rec.itertuples():
        assert row.error is None
        assert row.logits.dtype == np.float32 and row.logits.shape == (10,)
        assert row.pred == int(np.argmax(row.logits)) == row.top5[0]
        assert len(row.top5) == 5 and row.correct == (row.pred == row.label)
        assert row.correct5 == (row.label in row.top5)
        assert row.pred_before == int(np.argmax(row.logits_before)) == row.top5_before[0]
        logp = torch.tensor(row.logits).double().log_softmax(-1)
        assert row.entropy_after == pytest.approx(float(-(logp.exp() * logp).sum()), rel=1e-6)
        assert np.isfinite(row.loss)
        assert len(row.kept) == 2 and len(row.view_preds) == VIEWS
        assert row.kept_correct == pytest.approx(np.mean([row.view_preds[k] == row.label for k in row.kept]))
        assert row.seconds > 0 and not row.fp32_retry
    s = reference.summary
    assert (s["n"], s["n_expected"], s["n_errors"], s["n_scored"], s["complete"]) == (12, 12, 0, 12, True)
    assert s["top1"] == pytest.approx(100 * rec["correct"].astype(float).mean())
    assert s["top1_before"] == pytest.approx(100 * rec["correct_before"].astype(float).mean())
    assert s["mean_loss"] == pytest.approx(rec["loss"].mean())


def test_run_folder_holds_parameters_and_no_pickle(reference, clip, task):
    stored = json.loads((reference.out / "run.json").read_text())["params"]
    assert stored == runs.run_params(clip, task, tpt_method().bind(clip, task), seed=0, n_views=VIEWS, limit=None)
    assert stored["method"]["config"]["selection_p"] == 0.25
    assert stored["model"]["name"] == "micro-clip" and stored["task"]["size"] == N_SAMPLES
    assert sorted(p.name for p in reference.out.iterdir()) == ["lock", "records.sqlite", "run.json", "run.log"]


def test_zeroshot_rows_have_no_loss_and_no_kept_views(clip, task, tmp_path):
    res = runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "zs", n_views=VIEWS, limit=4, progress=False)
    rec = res.records
    assert len(rec) == 4 and rec["loss"].isna().all() and rec["kept_correct"].isna().all()
    assert all(k == [] for k in rec["kept"])
    assert (rec["pred"] == rec["pred_before"]).all()
    assert res.summary["mean_loss"] is None and res.summary["n_expected"] == 4


def test_load_run_reads_the_run_without_a_model(reference):
    loaded = runs.load_run(reference.out)
    assert loaded.summary == reference.summary
    assert loaded.records.drop(columns=["logits", "logits_before"]).equals(
        reference.records.drop(columns=["logits", "logits_before"]))
    assert np.array_equal(loaded.logits(), reference.logits())
    assert loaded.logits(before=True).shape == (N_SAMPLES, 10)


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(runs.RunError, match="no run.json"):
        runs.load_run(tmp_path)


# --- resume -----------------------------------------------------------------------------------

def interrupt_at_batch(n: int):
    """An `on_batch` hook that raises KeyboardInterrupt (Ctrl-C) before the run's n-th engine batch."""
    calls = []

    def stop(samples, rows):
        calls.append(rows)
        if len(calls) == n:
            raise KeyboardInterrupt
    return stop


def test_an_interrupted_run_resumes_without_losing_or_doubling_rows(clip, task, reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, tpt_method(), tmp_path / "run", n_views=VIEWS, batch_size=4, progress=False,
                      on_batch=interrupt_at_batch(3))
    partial = runs.load_run(tmp_path / "run")
    assert partial.records["idx"].tolist() == list(range(8)) and not partial.summary["complete"]

    resumed = runs.evaluate(clip, task, tpt_method(), tmp_path / "run", n_views=VIEWS, batch_size=4, progress=False)
    assert read_store(tmp_path / "run" / "records.sqlite") == read_store(reference.out / "records.sqlite")
    assert without_timing(resumed.summary) == without_timing(reference.summary)
    log = (tmp_path / "run" / "run.log").read_text()
    assert "8 of this process's 12 samples already recorded; 4 to evaluate" in log


def test_a_finished_run_is_not_evaluated_again(clip, task, reference):
    def fail(samples, rows):
        raise AssertionError("the engine was called for a finished run")

    again = runs.evaluate(clip, task, tpt_method(), reference.out, n_views=VIEWS, batch_size=2, progress=False,
                          on_batch=fail)
    assert len(again.records) == N_SAMPLES


def test_batch_size_does_not_change_the_records(clip, task, reference, tmp_path):
    single = runs.evaluate(clip, task, tpt_method(), tmp_path / "b1", n_views=VIEWS, batch_size=1, limit=4,
                           progress=False)
    first = reference.records.iloc[:4]
    assert single.records["pred"].tolist() == first["pred"].tolist()
    np.testing.assert_allclose(single.records["loss"], first["loss"], rtol=1e-5)
    np.testing.assert_allclose(single.logits(), reference.logits()[:4], rtol=1e-4, atol=1e-4)


def test_views_built_by_loader_workers_give_the_same_records(clip, task, reference, tmp_path):
    res = runs.evaluate(clip, task, tpt_method(), tmp_path / "w", n_views=VIEWS, limit=4, batch_size=4,
                        workers=1, progress=False)
    assert read_store(tmp_path / "w" / "records.sqlite") == read_store(reference.out / "records.sqlite")[:4]
    assert res.summary["n"] == 4


def test_rows_left_in_a_rank_store_are_merged_and_not_redone(clip, task, reference, tmp_path):
    # a killed 2-process job leaves records.rank1.sqlite; a later 1-process run takes those rows over
    out = tmp_path / "run"
    shutil.copytree(reference.out, out)
    with sqlite3.connect(out / "records.sqlite") as conn:
        conn.execute("DELETE FROM records WHERE idx % 2 = 0")        # rank 0's rows were never written
    (out / "records.sqlite").rename(out / "records.rank1.sqlite")
    assert runs.load_run(out).records["idx"].tolist() == list(range(1, N_SAMPLES, 2))

    evaluated = []
    runs.evaluate(clip, task, tpt_method(), out, n_views=VIEWS, batch_size=N_SAMPLES, progress=False,
                  on_batch=lambda samples, rows: evaluated.append((samples, rows)))
    # one batch of all the slots, the recorded samples' slots empty
    assert evaluated == [(list(range(0, N_SAMPLES, 2)), N_SAMPLES)]
    assert not (out / "records.rank1.sqlite").exists()
    rows, ref = read_store(out / "records.sqlite"), read_store(reference.out / "records.sqlite")
    assert [r[:2] for r in rows] == [r[:2] for r in ref]
    np.testing.assert_allclose([r[2] for r in rows], [r[2] for r in ref], rtol=1e-5)


def test_fp32_retries_and_engine_warnings_reach_the_records_and_the_run_log(clip, task, tmp_path, monkeypatch):
    real = Engine.run_batch

    def first_sample_retried(self, views):
        logging.getLogger("tptlib.engine").warning("out of memory with class_chunk=10; retrying with class_chunk=5")
        results = real(self, views)
        results[0]["fp32_retry"] = True
        return results

    monkeypatch.setattr(Engine, "run_batch", first_sample_retried)
    res = runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, limit=4, batch_size=2,
                        progress=False)
    assert res.records["fp32_retry"].tolist() == [True, False, True, False]
    assert res.summary["n_fp32_retries"] == 2
    log = (tmp_path / "run" / "run.log").read_text()
    assert log.count("tptlib.engine WARNING: out of memory with class_chunk=10; retrying with class_chunk=5") == 2


# --- bad input --------------------------------------------------------------------------------

def test_unreadable_and_missing_images_become_error_rows(clip, tmp_path):
    task = load_task("eurosat", make_eurosat(tmp_path / "data", n=6, corrupt=(2,), missing=(4,)))
    res = runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, batch_size=4, progress=False)
    rec = res.records
    assert rec["idx"].tolist() == list(range(6))
    errors = dict(zip(rec["idx"], rec["error"]))
    assert errors[2].startswith("CorruptImageError") and task.samples[2][0] in errors[2]
    assert errors[4].startswith("MissingImageError") and task.samples[4][0] in errors[4]
    assert all(errors[i] is None for i in (0, 1, 3, 5))
    assert rec.loc[rec["idx"] == 2, "pred"].isna().all() and rec.loc[rec["idx"] == 2, "correct"].isna().all()
    s = res.summary
    assert (s["n"], s["n_errors"], s["n_scored"], s["complete"]) == (6, 2, 4, True)
    scored = rec[rec["error"].isna()]
    assert s["top1"] == pytest.approx(100 * scored["correct"].astype(float).mean())
    assert "2 error rows" in s["note"]
    logits = res.logits()
    assert np.isnan(logits[[2, 4]]).all() and np.isfinite(logits[[0, 1, 3, 5]]).all()
    log = (tmp_path / "run" / "run.log").read_text()
    assert "sample 2: CorruptImageError" in log and "sample 4: MissingImageError" in log


def test_other_parameters_on_the_same_folder_are_refused(clip, task, reference):
    before = read_store(reference.out / "records.sqlite")
    with pytest.raises(runs.RunMismatchError) as err:
        runs.evaluate(clip, task, tpt.TPT(selection_p=0.25, lr=0.01), reference.out, n_views=VIEWS, seed=1,
                      progress=False)
    msg = str(err.value)
    assert "method.config.lr: 0.005 in the folder, 0.01 now" in msg
    assert "seed: 0 in the folder, 1 now" in msg
    assert "n_views" not in msg and "--out" in msg
    with pytest.raises(runs.RunMismatchError, match=r"limit: None in the folder, 5 now"):
        runs.evaluate(clip, task, tpt_method(), reference.out, n_views=VIEWS, limit=5, progress=False)
    assert read_store(reference.out / "records.sqlite") == before


def test_a_held_lock_refuses_a_second_run_and_names_the_holder(clip, task, tmp_path):
    runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, limit=2, progress=False)
    holder = FolderLock(tmp_path / "run")
    holder.acquire()
    try:
        with pytest.raises(runs.RunLockedError, match=r"in use by another run \(pid \d+ on "):
            runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, limit=2, progress=False)
    finally:
        holder.release()
    runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, limit=2, progress=False)


def test_evaluate_refuses_bad_arguments(clip, task, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "r", batch_size=0)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "r", rank=2, world_size=2)


def test_summarize_excludes_error_rows_from_accuracy(reference):
    rec = reference.records.copy()
    rec.loc[0, "error"] = "CorruptImageError: x"
    for col in ("correct", "correct5", "correct_before", "correct5_before"):
        rec[col] = rec[col].astype("boolean")
        rec.loc[0, col] = pd.NA
    rec.at[0, "logits"] = None
    rec.at[0, "logits_before"] = None
    s = runs.summarize(rec)
    assert (s["n"], s["n_errors"], s["n_scored"]) == (12, 1, 11)
    assert s["top1"] == pytest.approx(100 * reference.records["correct"][1:].astype(float).mean())


def test_a_changed_sample_listing_refuses_to_resume(tmp_path):
    from tptlib.runs import run_params
    from tptlib.data.base import Task
    from tptlib.methods import ZeroShot

    class _Clip:
        name, pretrained, precision = "micro-clip", None, "fp32"

    a = Task("toy", ["x", "y"], [(str(tmp_path / "x" / "0.png"), 0), (str(tmp_path / "y" / "0.png"), 1)], tmp_path)
    b = Task("toy", ["x", "y"], list(reversed(a.samples)), tmp_path)
    pa = run_params(_Clip(), a, ZeroShot(), seed=0, n_views=64, limit=None)
    pb = run_params(_Clip(), b, ZeroShot(), seed=0, n_views=64, limit=None)
    assert pa["task"]["samples"] != pb["task"]["samples"]
    assert pa == run_params(_Clip(), a, ZeroShot(), seed=0, n_views=64, limit=None)
