"""The run plan: one validation pass that `tpt eval` and `evaluate` share, then the loop."""
from __future__ import annotations

import pytest

import tptlib as tpt
from _helpers import make_eurosat, random_micro_weights, read_store
from tptlib import runs


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tpt.load_clip("micro", pretrained=str(random_micro_weights(tmp_path_factory.mktemp("w") / "m.safetensors")))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tpt.load_task("eurosat", make_eurosat(tmp_path_factory.mktemp("data"), n=6))


def test_a_plan_is_checked_before_the_folder_exists_and_records_the_bound_method(clip, task, tmp_path):
    run = runs.plan(clip, task, tpt.TPT(selection_p=0.25), tmp_path / "run", n_views=8, limit=4)
    assert not (tmp_path / "run").exists()
    assert run.method.n_ctx == 4 and run.params["method"]["config"]["n_ctx"] == 4     # what the phrase resolves to
    assert run.expected == 4 and run.stream is None
    with pytest.raises(ValueError, match="selection_p=0.1 keeps no view out of 8"):
        runs.plan(clip, task, tpt.TPT(), tmp_path / "run", n_views=8)
    with pytest.raises(ValueError, match="n_views must be an integer in 1..1024"):
        runs.plan(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=0)
    with pytest.raises(runs.RunError, match="online method"):
        runs.plan(clip, task, tpt.TDA(), tmp_path / "run", n_views=8, rank=0, world_size=2)
    assert not (tmp_path / "run").exists()


def test_evaluate_of_a_plan_is_evaluate_of_its_arguments(clip, task, tmp_path):
    method = tpt.TPT(selection_p=0.25)
    planned = runs.evaluate(runs.plan(clip, task, method, tmp_path / "a", n_views=8, limit=4, progress=False))
    direct = runs.evaluate(clip, task, method, tmp_path / "b", n_views=8, limit=4, progress=False)
    assert planned.params == direct.params
    assert read_store(tmp_path / "a" / "records.sqlite") == read_store(tmp_path / "b" / "records.sqlite")
    with pytest.raises(TypeError, match="takes the plan alone"):
        runs.evaluate(runs.plan(clip, task, method, tmp_path / "c", n_views=8), limit=2)


def test_a_finished_run_is_read_back_without_preparing_its_text_side(clip, task, tmp_path, monkeypatch):
    prepared = []
    real = tpt.TPT._prepare

    def spy(self, clip, classnames):
        prepared.append(len(classnames))
        return real(self, clip, classnames)

    monkeypatch.setattr(tpt.TPT, "_prepare", spy)
    first = runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), tmp_path / "run", n_views=8, limit=4, progress=False)
    assert len(prepared) == 1
    again = runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), tmp_path / "run", n_views=8, limit=4, progress=False)
    assert len(prepared) == 1 and again.records.equals(first.records)      # read back: nothing prepared
    more = runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), tmp_path / "run", n_views=8, limit=6, progress=False)
    assert len(prepared) == 2 and len(more.records) == 6                     # extended: work to do, prepared
