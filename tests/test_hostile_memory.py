"""Hostile inputs, 11: memory bounded by what a run needs.

A batch never holds more slots than the run has samples (one sample with --batch-size 1000 runs a
block of one, not of a thousand empty view stacks), and a block whose views cannot fit in the memory
available is refused before any is built, with the size it would need and what to lower. The runs
use the micro-CLIP architecture with seeded random weights on a fake EuroSAT (test_runs.py's
helpers).
"""
from __future__ import annotations

import pytest

import tptlib as tpt
from _helpers import assert_one_line_refusal, read_store, run_cli
from test_hostile_cli import eval_args
from test_hostile_values import N, VIEWS
from tptlib import memory, runs
from tptlib.runs import loop


EUROSAT_SAMPLES = N             # conftest's data_root, as test_hostile_values'


@pytest.fixture
def blocks_seen(monkeypatch):
    """The shapes of the view stacks the run builds."""
    seen = []
    real = loop._Views.__getitem__

    def spy(self, k):
        slots, stacked, errors, cached = real(self, k)
        seen.append((len(slots), None if stacked is None else tuple(stacked.shape)))
        return slots, stacked, errors, cached

    monkeypatch.setattr(loop._Views, "__getitem__", spy)
    return seen


def run(clip, task, out, **kw):
    return runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), out, n_views=VIEWS, progress=False, **kw)


def test_one_sample_is_not_padded_to_a_thousand_slots(clip, task, tmp_path, blocks_seen):
    result = run(clip, task, tmp_path / "big", limit=1, batch_size=1000)
    assert result.summary["n"] == 1 and result.summary["n_errors"] == 0
    assert blocks_seen == [(1, (1, VIEWS, 3, clip.image_size, clip.image_size))]
    run(clip, task, tmp_path / "one", limit=1, batch_size=1)
    assert read_store(tmp_path / "big" / "records.sqlite") == read_store(tmp_path / "one" / "records.sqlite")


def test_a_batch_larger_than_the_task_runs_the_task_in_one_block(clip, task, tmp_path, blocks_seen):
    result = run(clip, task, tmp_path / "run", batch_size=1024)
    assert result.summary["n"] == len(task)
    assert [n for n, _ in blocks_seen] == [len(task)]


def test_a_block_that_cannot_fit_is_refused_before_any_view_is_built(clip, task, tmp_path, monkeypatch,
                                                                     blocks_seen):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 50 * 2**20)      # 50 MiB free
    with pytest.raises(runs.RunError) as err:
        runs.evaluate(clip, task, tpt.TPT(), tmp_path / "run", n_views=1024, batch_size=64, progress=False)
    message = str(err.value)
    n = len(task)
    need = 2 * n * 1024 * 3 * clip.image_size ** 2 * 4 / 2**30
    assert f"a block of {n} samples x 1024 views of {clip.image_size}x{clip.image_size} px needs {need:,.1f} GiB" \
        in message
    assert "0.0 GiB available; lower --batch-size (or --views)" in message
    assert blocks_seen == [] and not (tmp_path / "run").exists()


def test_the_command_line_refuses_a_block_that_cannot_fit_in_one_line(weights, data_root, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    code, err = run_cli(eval_args(weights, data_root, tmp_path / "run", "--method", "tpt", "--views", "1024",
                                  "--batch-size", "1024"),
                        capsys)
    assert_one_line_refusal(code, err, "needs", "GiB available; lower --batch-size (or --views)")
    assert not (tmp_path / "run").exists()


def test_the_memory_available_is_measured():
    free = memory.available_bytes("cpu")
    assert free is None or free > 0


@pytest.mark.parametrize("high_water_mark", [True, False], ids=["VmHWM", "sampled"])
def test_the_peak_memory_of_a_stage_is_what_it_allocated(monkeypatch, high_water_mark):
    import torch
    if not high_water_mark:
        monkeypatch.setattr(memory, "reset_hwm", lambda: False)   # where the peak cannot be reset
    elif not memory.reset_hwm():
        pytest.skip("this system cannot reset its peak resident set size")
    mib = 2 ** 20
    with memory.PeakMemory(torch.device("cpu")) as small:
        pass
    with memory.PeakMemory(torch.device("cpu")) as big:
        x = torch.empty(96 * mib // 4)
        x.fill_(1.0)                       # touched: resident
        del x
    assert small.peak < 8 * mib
    assert 90 * mib <= big.peak <= 110 * mib
