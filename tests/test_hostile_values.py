"""Hostile inputs, 1: nothing non-finite is ever scored.

NaN or inf in a hyperparameter, in weights (the logit scale included) or in a CoOp context is
refused before any work, with no run folder created; NaN or inf met during a run (views, logits,
loss, gradient, in any precision) makes that sample an error row that says why, and every other
sample is scored exactly as in a clean run. The runs use the micro-CLIP architecture with seeded
random weights on a fake EuroSAT (conftest.py's fixtures).
"""
from __future__ import annotations

import dataclasses
import math
import sqlite3

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tptlib as tpt
from _helpers import assert_one_line_refusal, read_store, run_cli
from tptlib import cli, runs
from tptlib.clip import CheckpointError
from tptlib.engine import Engine

VIEWS = 8
N = 6
EUROSAT_SAMPLES = N             # conftest's data_root


def tpt_method(**kw):
    return tpt.TPT(selection_p=0.25, **kw)        # keeps 2 of the 8 views


@pytest.fixture(scope="module")
def clean(clip, task, tmp_path_factory):
    return runs.evaluate(clip, task, tpt_method(), tmp_path_factory.mktemp("clean") / "run", n_views=VIEWS,
                         batch_size=3, progress=False)


def eval_args(weights, root, out, *extra) -> list[str]:
    return ["eval", "--model", "micro", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root),
            "--views", "10", "--out", str(out), "--no-progress", *extra]


# --- hyperparameters: refused before work ------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"lr": math.inf}, "tpt: lr must be a finite number > 0 and <= 1e+37; got inf"),
    ({"lr": math.nan}, "tpt: lr must be a finite number > 0 and <= 1e+37; got nan"),
    ({"lr": -math.inf}, "tpt: lr must be a finite number > 0 and <= 1e+37; got -inf"),
    ({"lr": 0.0}, "tpt: lr must be a finite number > 0 and <= 1e+37; got 0.0"),
    ({"lr": 1e38}, "tpt: lr must be a finite number > 0 and <= 1e+37; got 1e+38"),   # AdamW's first step would overflow
    ({"lr": "5e-3"}, "tpt: lr must be a finite number > 0 and <= 1e+37; got '5e-3'"),
    ({"selection_p": math.nan}, "tpt: selection_p must be a finite number > 0 and <= 1; got nan"),
    ({"selection_p": math.inf}, "tpt: selection_p must be a finite number > 0 and <= 1; got inf"),
    ({"selection_p": 1.5}, "tpt: selection_p must be a finite number > 0 and <= 1; got 1.5"),
    ({"steps": -1}, "tpt: steps must be an integer in 0..1000; got -1"),
    ({"steps": 10 ** 12}, "tpt: steps must be an integer in 0..1000; got 1000000000000"),
    ({"steps": 1.5}, "tpt: steps must be an integer in 0..1000; got 1.5"),
    ({"steps": math.inf}, "tpt: steps must be an integer in 0..1000; got inf"),
    ({"steps": True}, "tpt: steps must be an integer in 0..1000; got True"),
    ({"weight_decay": math.nan}, "tpt: weight_decay must be a finite number >= 0 and <= 1; got nan"),
    ({"weight_decay": 2.0}, "tpt: weight_decay must be a finite number >= 0 and <= 1; got 2.0"),
    ({"n_ctx": 0}, "tpt: n_ctx must be an integer >= 1 or none; got 0"),
])
def test_tpt_refuses_hyperparameters_that_are_not_finite_or_out_of_range(kwargs, message):
    with pytest.raises(ValueError) as err:
        tpt.TPT(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "tpt: lr must be a finite number > 0 and <= 1e+37; got nan"),
    (["--lr", "inf"], "tpt: lr must be a finite number > 0 and <= 1e+37; got inf"),
    (["--lr=-inf"], "tpt: lr must be a finite number > 0 and <= 1e+37; got -inf"),
    (["--lr", "-0.1"], "tpt: lr must be a finite number > 0 and <= 1e+37; got -0.1"),
    (["--selection-p", "nan"], "tpt: selection_p must be a finite number > 0 and <= 1; got nan"),
    (["--selection-p", "2"], "tpt: selection_p must be a finite number > 0 and <= 1; got 2.0"),
    (["--steps", "-1"], "tpt: steps must be an integer in 0..1000; got -1"),
    (["--steps", "99999999999"], "tpt: steps must be an integer in 0..1000; got 99999999999"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0; got -1"),
    (["--workers", "-2"], "argument --workers: must be an integer >= 0; got -2"),
    (["--n-ctx", "0"], "tpt: n_ctx must be an integer >= 1 or none; got 0"),
    (["--limit", "-3"], "argument --limit: must be an integer >= 1; got -3"),
    (["--views", "5000"], "n_views must be an integer in 1..1024; got 5000"),
    (["--batch-size", "100000"], "batch_size must be an integer in 1..1024; got 100000"),
])
def test_the_command_line_refuses_them_before_a_folder_exists(weights, data_root, tmp_path, capsys, flags, message):
    code, err = run_cli(eval_args(weights, data_root, tmp_path / "run", *flags), capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists()


# --- weights and checkpoints: refused before work ----------------------------------------------

def poisoned_weights(weights, path, name: str, value: float, dtype=None):
    state = load_file(str(weights))
    tensor = state[name].clone() if dtype is None else state[name].to(dtype)
    tensor.view(-1)[0] = value
    state[name] = tensor
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("name, value, dtype, message", [
    ("logit_scale", math.nan, None, "non-finite values (NaN or inf) in logit_scale"),
    ("logit_scale", math.inf, None, "non-finite values (NaN or inf) in logit_scale"),
    ("logit_scale", 1e4, None, "logit_scale 10000 makes the temperature exp(logit_scale) = inf"),
    ("text_projection", math.nan, None, "non-finite values (NaN or inf) in text_projection"),
    ("positional_embedding", -math.inf, torch.float16, "non-finite values (NaN or inf) in positional_embedding"),
    ("ln_final.weight", math.nan, torch.bfloat16, "non-finite values (NaN or inf) in ln_final.weight"),
])
def test_weights_holding_nan_or_inf_are_refused_when_loaded(weights, tmp_path, capsys, name, value, dtype, message):
    bad = poisoned_weights(weights, tmp_path / "bad.safetensors", name, value, dtype)
    with pytest.raises(CheckpointError) as err:
        tpt.load_clip("micro", pretrained=str(bad))
    assert message in str(err.value) and str(bad) in str(err.value)


def test_the_command_line_refuses_poisoned_weights_before_a_folder_exists(weights, data_root, tmp_path, capsys):
    bad = poisoned_weights(weights, tmp_path / "bad.safetensors", "logit_scale", math.nan)
    code, err = run_cli(eval_args(bad, data_root, tmp_path / "run"), capsys)
    assert_one_line_refusal(code, err, "non-finite values (NaN or inf) in logit_scale")
    assert not (tmp_path / "run").exists()


def test_a_model_poisoned_after_loading_is_refused_before_the_run(weights, task, tmp_path):
    clip = tpt.load_clip("micro", pretrained=str(weights))
    clip.model.logit_scale.fill_(math.nan)
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in logit_scale"):
        runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values, bad", [
    ([3e38, 3e38], False),                  # finite, though their float32 sum overflows to inf
    ([1.0, math.nan], True), ([1.0, math.inf], True), ([-math.inf, math.inf], True), ([], False),
], ids=["overflowing-sum", "nan", "inf", "both-infinities", "empty"])
def test_non_finite_tensors_are_found_whatever_their_sum(values, bad):
    from tptlib.checks import nonfinite_tensors
    tensors = {"w": torch.tensor(values, dtype=torch.float32), "ids": torch.tensor([1, 2])}
    assert nonfinite_tensors(tensors) == (["w"] if bad else [])


def coop_checkpoint(clip, path, value=None):
    ctx = tpt_method().prepare(clip, ["a", "b"]).prompt.init_ctx.clone().cpu()
    if value is not None:
        ctx[1, 3] = value
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 50}, path)
    return path


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_coop_context_holding_nan_or_inf_is_refused_before_the_folder_exists(clip, task, weights, data_root,
                                                                              tmp_path, capsys, value):
    ckpt = coop_checkpoint(clip, tmp_path / "coop.pth", value)
    method = tpt.make_method("tpt-coop", coop_ckpt=str(ckpt), selection_p=0.25)
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in ctx"):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, progress=False)
    assert not (tmp_path / "run").exists()
    code, err = run_cli(eval_args(weights, data_root, tmp_path / "run", "--method", "tpt-coop",
                                  "--coop-ckpt", str(ckpt)), capsys)
    assert_one_line_refusal(code, err, "non-finite values (NaN or inf) in ctx", str(ckpt))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_views": 10 ** 6}, "n_views must be an integer in 1..1024; got 1000000"),
    ({"n_views": 2}, "selection_p=0.25 keeps no view out of 2"),
    ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ({"limit": 2.5}, "limit must be an integer; got 2.5"),
    ({"batch_size": 0}, "batch_size must be an integer in 1..1024; got 0"),
    ({"workers": -1}, "workers must be an integer >= 0; got -1"),
])
def test_evaluate_refuses_bad_arguments_before_the_folder_exists(clip, task, tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        runs.evaluate(clip, task, tpt_method(), tmp_path / "run", **{"n_views": VIEWS, **kwargs})
    assert str(err.value).startswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (lambda clip, task: (dataclasses.replace(clip, std=(0.0, 0.2, 0.2)), task), "clip.std[0] must be > 0; got 0"),
    (lambda clip, task: (dataclasses.replace(clip, mean=(math.nan, 0.5, 0.5)), task),
     "clip.mean[0] must be a finite number; got nan"),
    (lambda clip, task: (clip, dataclasses.replace(task, min_crop_scale=math.nan)),
     "task eurosat: min_crop_scale must be a finite number; got nan"),
    (lambda clip, task: (clip, dataclasses.replace(task, samples=[(task.samples[0][0], 10)])),
     "task eurosat: 1 samples have a label that is not an integer in 0..9"),
])
def test_a_clip_or_task_that_would_give_non_finite_views_is_refused(clip, task, tmp_path, change, message):
    clip, task = change(clip, task)
    with pytest.raises(ValueError) as err:
        runs.evaluate(clip, task, tpt.ZeroShot(), tmp_path / "run", n_views=VIEWS, progress=False)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "run").exists()


def test_a_method_config_with_a_non_finite_number_is_refused(clip, task, tmp_path):
    class Odd(tpt.ZeroShot):
        def config(self):
            return {**super().config(), "temperature": math.nan}

    with pytest.raises(ValueError, match="method zeroshot: temperature must be finite; got nan"):
        runs.evaluate(clip, task, Odd(), tmp_path / "run", n_views=VIEWS, progress=False)
    assert not (tmp_path / "run").exists()


# --- during a run: error rows, the rest identical ----------------------------------------------

def assert_others_identical(run_dir, clean, bad: set[int]) -> None:
    rows = {r[0]: r for r in read_store(run_dir / "records.sqlite")}
    ref = {r[0]: r for r in read_store(clean.out / "records.sqlite")}
    assert set(rows) == set(ref)
    for i in ref:
        if i in bad:
            assert rows[i][1:] == (None, None, None)           # no prediction, loss or logits
        else:
            assert rows[i] == ref[i]


def test_non_finite_logits_in_a_result_make_an_error_row(clip, task, clean, tmp_path, monkeypatch):
    real = Engine.run_batch

    def poison_sample_4(self, views):
        results = real(self, views)
        if views.shape[0] == 3 and len(poison_sample_4.calls) == 1:
            results[1]["logits"][2] = math.nan                  # batch [3, 4, 5]: sample 4
        poison_sample_4.calls.append(views.shape[0])
        return results

    poison_sample_4.calls = []
    monkeypatch.setattr(Engine, "run_batch", poison_sample_4)
    res = runs.evaluate(clip, task, tpt_method(), tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    errors = dict(zip(res.records["idx"], res.records["error"]))
    assert errors[4] == ("NonFiniteResult: view 0's logits after adaptation are not finite "
                         "(NaN or inf in 1 of 10 classes)")
    assert all(errors[i] is None for i in range(N) if i != 4)
    assert (res.summary["n_errors"], res.summary["n_scored"]) == (1, N - 1)
    assert_others_identical(tmp_path / "run", clean, {4})
    assert "sample 4: NonFiniteResult" in (tmp_path / "run" / "run.log").read_text()


def test_views_holding_nan_make_an_error_row_and_are_not_run(clip, task, clean, tmp_path, monkeypatch):
    from tptlib.runs import loop as evaluation

    real = evaluation.task_views

    def nan_views_for_sample_1(clip_, task_, i, seed=0, n_views=64):
        views = real(clip_, task_, i, seed=seed, n_views=n_views)
        return views.fill_(math.inf) if i == 1 else views

    monkeypatch.setattr(evaluation, "task_views", nan_views_for_sample_1)
    res = runs.evaluate(clip, task, tpt_method(), tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    errors = dict(zip(res.records["idx"], res.records["error"]))
    assert errors[1] == "NonFiniteResult: the views of the image are not finite"
    assert_others_identical(tmp_path / "run", clean, {1})


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_loss_that_stays_non_finite_makes_an_error_row_in_any_precision(weights, task, tmp_path, monkeypatch,
                                                                         precision):
    from tptlib.methods import tpt as tpt_module

    real = tpt_module.tune

    def sample_0_never_finite(*args, **kwargs):
        loss, nonfinite = real(*args, **kwargs)
        if not calls or args[2].shape[0] == 1:                  # the first batch [0, 1], and its fp32 retry [0]
            nonfinite[0] = True
        calls.append(args[2].shape[0])
        return loss, nonfinite

    calls = []
    monkeypatch.setattr(tpt_module, "tune", sample_0_never_finite)
    clip = tpt.load_clip("micro", pretrained=str(weights), precision=precision)
    res = runs.evaluate(clip, task, tpt_method(), tmp_path / "run", n_views=VIEWS, batch_size=2, limit=4,
                        progress=False)
    errors = dict(zip(res.records["idx"], res.records["error"]))
    expected = "NonFiniteResult: the loss or its gradient was not finite at a tuning step"
    assert errors[0] == expected + (" (in fp32 too)" if precision == "bf16" else "")
    assert [errors[i] for i in (1, 2, 3)] == [None] * 3
    assert res.summary["n_scored"] == 3


def test_a_diverging_learning_rate_scores_nothing(clip, task, tmp_path, capsys):
    res = runs.evaluate(clip, task, tpt_method(lr=1e37, steps=2), tmp_path / "run", n_views=VIEWS, batch_size=3,
                        progress=False)
    assert all(str(e).startswith("NonFiniteResult: ") for e in res.records["error"])
    s = res.summary
    assert (s["n"], s["n_errors"], s["n_scored"]) == (N, N, 0)
    assert all(math.isnan(s[k]) for k in ("top1", "top1_before", "ece", "ece_before"))
    assert cli.main(["show", str(tmp_path / "run")]) == 0
    report = capsys.readouterr().out
    assert "ECE      n/a" in report and "top-1    n/a" in report and "6 errors" in report


def test_stored_rows_with_non_finite_logits_are_read_as_error_rows(clean, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(clean.out, out)
    nan_logits = np.full(10, np.nan, dtype="<f4").tobytes()
    with sqlite3.connect(out / "records.sqlite") as conn:      # as a tptlib that did not check would store it
        conn.execute("UPDATE records SET logits = ? WHERE idx = 2", (nan_logits,))
    loaded = runs.load_run(out)
    assert loaded.records["error"][2] == "NonFiniteResult: the stored logits are not finite"
    assert (loaded.summary["n_errors"], loaded.summary["n_scored"]) == (1, N - 1)
    assert np.isfinite(loaded.summary["ece"])
    kept = loaded.records["idx"] != 2
    assert loaded.summary["top1"] == pytest.approx(100 * clean.records["correct"][kept].astype(float).mean())
