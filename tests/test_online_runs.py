"""Online methods through `tpt.evaluate`: the seeded stream order in run.json, exact resume from the
stored state updates, the refusal of sharded runs; the feature cache; the cost and calibration in the
summary and in `tpt show`. Same fixtures as test_runs.py (conftest.py: micro-CLIP architecture with random
weights on a fake EuroSAT of 12 images)."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

import tptlib as tpt
from _helpers import make_eurosat, read_store, without_timing
from test_runs import N_SAMPLES, VIEWS, interrupt_at_batch
from tptlib import cli, runs

EUROSAT_SAMPLES = N_SAMPLES
pytestmark = pytest.mark.slow          # each test runs the engine over a task (seconds each); the fast ones
                                       # on the methods' state and refusals are in test_peers.py


def online_methods():
    return [tpt.TDA(multiview=True, selection_p=0.25), tpt.DMN(n_views=VIEWS, memory_size=1, selection_p=0.25)]


@pytest.fixture(scope="module", params=["tda", "dmn"])
def uninterrupted(request, clip, task, tmp_path_factory):  # noqa: F811
    method = online_methods()[["tda", "dmn"].index(request.param)]
    out = tmp_path_factory.mktemp(request.param) / "run"
    return method, runs.evaluate(clip, task, method, out, n_views=VIEWS, batch_size=3, progress=False)


def test_an_online_run_follows_the_seeded_order_recorded_in_run_json(uninterrupted):
    method, result = uninterrupted
    stream = json.loads((result.out / "run.json").read_text())["params"]["stream"]
    assert stream["seed"] == 0 and sorted(stream["order"]) == list(range(N_SAMPLES))
    assert stream["order"] == runs.params.stream_order(N_SAMPLES, 0) != list(range(N_SAMPLES))
    with sqlite3.connect(result.out / "records.sqlite") as conn:
        rows = conn.execute("SELECT pos, idx, state_update IS NOT NULL FROM stream ORDER BY pos").fetchall()
    assert rows == [(p, i, 1) for p, i in enumerate(stream["order"])]
    assert result.summary["stream_seed"] == 0 and result.summary["complete"]


def test_an_interrupted_online_run_resumes_to_the_uninterrupted_records(uninterrupted, clip, task, tmp_path):  # noqa: F811
    method, reference = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False,
                      on_batch=interrupt_at_batch(3))
    assert len(runs.load_run(tmp_path / "run").records) == 6
    resumed = runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    assert read_store(tmp_path / "run" / "records.sqlite") == read_store(reference.out / "records.sqlite")
    assert without_timing(resumed.summary) == without_timing(reference.summary)


def test_the_state_matters_so_the_resume_is_a_real_check(clip, task, tmp_path):  # noqa: F811
    # the same samples in another order give other logits: the caches are doing something. (TDA only:
    # the random-weight model maps every image to nearly one feature, so DMN's memory read-out is the
    # same whoever is in it; test_peers.py follows DMN's memory over a stream of distinct features.)
    method = online_methods()[0]
    a, b = (runs.evaluate(clip, task, method, tmp_path / str(s), n_views=VIEWS, batch_size=3, progress=False,
                          stream_seed=s).logits() for s in (0, 1))
    assert np.abs(a - b).max() > 1e-4


def test_a_sharded_online_run_is_refused(clip, task, tmp_path):  # noqa: F811
    with pytest.raises(runs.RunError, match="online method.*cannot be shared out among 2 processes"):
        runs.evaluate(clip, task, tpt.TDA(), tmp_path / "run", n_views=VIEWS, rank=0, world_size=2, progress=False)
    assert not (tmp_path / "run").exists()


def test_another_stream_seed_on_the_same_folder_is_refused(uninterrupted, clip, task, tmp_path):  # noqa: F811
    method, reference = uninterrupted
    with pytest.raises(runs.RunMismatchError, match="stream"):
        runs.evaluate(clip, task, method, reference.out, n_views=VIEWS, batch_size=3, progress=False, stream_seed=5)


def test_the_feature_cache_gives_the_records_of_a_run_without_it(clip, task, tmp_path):  # noqa: F811
    cache = tmp_path / "features"
    plain = runs.evaluate(clip, task, tpt.ZERO(), tmp_path / "zero", n_views=VIEWS, batch_size=4, progress=False)
    first = runs.evaluate(clip, task, tpt.ZERO(), tmp_path / "zero-c", n_views=VIEWS, batch_size=4, progress=False,
                          feature_cache=cache)
    assert first.summary["cached_features"] == 0.0
    second = runs.evaluate(clip, task, tpt.MTA(), tmp_path / "mta-c", n_views=VIEWS, batch_size=4, progress=False,
                           feature_cache=cache)
    assert second.summary["cached_features"] == 1.0
    mta = runs.evaluate(clip, task, tpt.MTA(), tmp_path / "mta", n_views=VIEWS, batch_size=4, progress=False)
    for cached, fresh in ((first, plain), (second, mta)):
        assert cached.records["pred"].tolist() == fresh.records["pred"].tolist()
        np.testing.assert_allclose(cached.logits(), fresh.logits(), rtol=1e-5, atol=1e-5)
    assert second.summary["image_seconds_per_sample"] > 0          # the tower time measured by the first run
    zs = runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "zs-c", n_views=VIEWS, progress=False,
                       feature_cache=cache)                         # reads view 0 of the stored 8
    assert zs.summary["cached_features"] == 1.0
    assert len(list(cache.iterdir())) == 1


def test_summary_and_show_give_calibration_time_and_memory(uninterrupted, capsys):
    _, result = uninterrupted
    s = result.summary
    assert len(s["reliability"]) == 15 and sum(b["count"] for b in s["reliability"]) == N_SAMPLES
    assert 0 <= s["ece20"] <= 100 and s["peak_mem_mib"] >= 0
    assert s["seconds_per_sample"] == pytest.approx(s["image_seconds_per_sample"] + s["method_seconds_per_sample"])
    assert cli.main(["show", str(result.out)]) == 0
    text = capsys.readouterr().out
    for fragment in ("ECE20", "20 bins", "reliability (15 bins", "image tower", "peak", "permutation seeded by 0"):
        assert fragment in text, fragment


# --- online runs, the feature cache and the costs inside checked run folders -------------------

def count_rows(seen: list[int]):
    """An `on_batch` hook that records how many rows each engine batch is given."""
    return lambda samples, rows: seen.append(rows)


def test_an_online_run_keeps_empty_slots_and_unreadable_images_out_of_its_state(clip, tmp_path):
    from tptlib.data import load_task

    bad = load_task("eurosat", make_eurosat(tmp_path / "data", corrupt=(2,), missing=(5,)))
    order = runs.params.stream_order(N_SAMPLES, 0)
    seen = []
    result = runs.evaluate(clip, bad, online_methods()[0], tmp_path / "run", n_views=VIEWS, batch_size=5,
                           progress=False, on_batch=count_rows(seen))
    # blocks of 5 stream positions (the last one 2 samples and 3 empty slots); the method is given the
    # readable samples of each block only
    blocks = [order[k:k + 5] for k in range(0, N_SAMPLES, 5)]
    assert seen == [sum(i not in (2, 5) for i in block) for block in blocks]
    with sqlite3.connect(result.out / "records.sqlite") as conn:
        rows = conn.execute("SELECT pos, idx, state_update IS NOT NULL FROM stream ORDER BY pos").fetchall()
    assert rows == [(p, i, int(i not in (2, 5))) for p, i in enumerate(order)]
    assert result.summary["n_errors"] == 2 and result.summary["complete"]
    assert result.batches["n"].tolist() == seen

    # interrupted at its second block and resumed: the records of the uninterrupted run, to the bit
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, bad, online_methods()[0], tmp_path / "again", n_views=VIEWS, batch_size=5, progress=False,
                      on_batch=interrupt_at_batch(2))
    runs.evaluate(clip, bad, online_methods()[0], tmp_path / "again", n_views=VIEWS, batch_size=5, progress=False)
    assert read_store(tmp_path / "again" / "records.sqlite") == read_store(result.out / "records.sqlite")


def test_an_online_run_resumed_with_another_batch_size_goes_on_from_its_stream(uninterrupted, clip, task,  # noqa: F811
                                                                                tmp_path):
    method, reference = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False,
                      on_batch=interrupt_at_batch(3))
    seen = []
    resumed = runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=4, progress=False,
                            on_batch=count_rows(seen))
    assert seen == [2, 4]                   # positions 6, 7 (the block 4..7), then 8..11
    assert resumed.records["pred"].tolist() == reference.records["pred"].tolist()
    np.testing.assert_allclose(resumed.logits(), reference.logits(), rtol=1e-5, atol=1e-5)


def test_a_larger_limit_on_an_online_run_is_refused_naming_its_stream(uninterrupted, clip, task, tmp_path):  # noqa: F811
    method, _ = uninterrupted
    runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, limit=4, progress=False)
    with pytest.raises(runs.RunMismatchError, match="stream order is a permutation of its first") as err:
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    assert f"({N_SAMPLES} items)" in str(err.value)          # the orders shortened, not printed whole


def test_an_online_run_from_before_the_digests_resumes_from_its_stream(uninterrupted, clip, task, tmp_path):  # noqa: F811
    from test_hostile_runs import make_legacy

    method, reference = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False,
                      on_batch=interrupt_at_batch(3))
    make_legacy(tmp_path / "run")          # store layout 1 (with its batches and stream tables), no `inputs`
    resumed = runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    assert read_store(tmp_path / "run" / "records.sqlite") == read_store(reference.out / "records.sqlite")
    assert len(resumed.batches) == len(reference.batches) == 4
    assert "run.json predates input digests" in (tmp_path / "run" / "run.log").read_text()


def test_with_a_feature_cache_the_records_are_those_of_a_run_without_it_to_the_bit(clip, task, tmp_path):  # noqa: F811
    # fresh features are encoded with their whole block, and an episodic method runs on whole blocks,
    # as without a cache: on the CPU in fp32 the records agree to the bit, however the run was resumed
    cache = tmp_path / "features"
    plain = runs.evaluate(clip, task, tpt.MTA(), tmp_path / "mta", n_views=VIEWS, batch_size=5, progress=False)
    calls, stop = [], interrupt_at_batch(2)
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, tpt.MTA(), tmp_path / "mta-c", n_views=VIEWS, batch_size=5, progress=False,
                      limit=7, feature_cache=cache, on_batch=lambda samples, rows: calls.append(rows) or stop(samples, rows))
    seen = []
    cached = runs.evaluate(clip, task, tpt.MTA(), tmp_path / "mta-c", n_views=VIEWS, batch_size=5, progress=False,
                           feature_cache=cache, on_batch=count_rows(seen))
    assert calls == [5, 5] and seen == [5, 5]              # whole blocks, the empty slots included
    assert read_store(cached.out / "records.sqlite") == read_store(plain.out / "records.sqlite")
    assert 0 < cached.summary["cached_features"] < 1
    online = runs.evaluate(clip, task, online_methods()[0], tmp_path / "tda-c", n_views=VIEWS, batch_size=3,
                           progress=False, feature_cache=cache)
    assert online.summary["cached_features"] == 1.0


def test_a_rank_store_merged_before_is_not_counted_twice_in_the_costs(clip, task, tmp_path):  # noqa: F811
    # a merge killed between its commit and the deletion of the rank store leaves rows and batches
    # that are already in records.sqlite; the next run on the folder merges neither twice
    out = tmp_path / "run"
    first = runs.evaluate(clip, task, tpt.ZeroShot(), out, n_views=VIEWS, batch_size=4, progress=False)
    shutil.copy(out / "records.sqlite", out / "records.rank1.sqlite")
    again = runs.evaluate(clip, task, tpt.ZeroShot(), out, n_views=VIEWS, batch_size=4, progress=False)
    assert not (out / "records.rank1.sqlite").exists()
    assert len(again.batches) == len(first.batches) == 3 and again.summary["n"] == N_SAMPLES
