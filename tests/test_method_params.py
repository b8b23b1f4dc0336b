"""Methods as data: each parameter is a field with its type and range, checked in one place, and
`config()`, `--set` and `tpt methods` come from the fields. A new method is one class and one
registry row: a toy method registered here runs through `tpt eval` end to end."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import tptlib as tpt
from _helpers import make_eurosat, random_micro_weights
from tptlib import cli
from tptlib.methods.base import Method
from tptlib.methods.fixed import fixed_output
from tptlib.methods.params import param
from tptlib.methods.registry import METHODS, MethodInfo, listing, make_method, register
from tptlib.methods.text import prompt_features


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return random_micro_weights(tmp_path_factory.mktemp("w") / "micro_random.safetensors")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_eurosat(tmp_path_factory.mktemp("data"), n=6)


def eval_args(weights, root, out, *extra) -> list[str]:
    return ["eval", "--model", "micro", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root),
            "--views", "10", "--limit", "4", "--out", str(out), "--no-progress", *extra]


# --- validation in one place ------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, message", [
    ("tpt", {"steps": 1.5}, "tpt: steps must be an integer in 0..1000; got 1.5"),
    ("tpt", {"lr": float("nan")}, "tpt: lr must be a finite number > 0 and <= 1e+37; got nan"),
    ("tpt", {"selection_p": 0}, "tpt: selection_p must be a finite number > 0 and <= 1; got 0"),
    ("tpt", {"ctx_init": "   "}, "tpt: ctx_init must be a phrase of at least one word"),
    ("tpt", {"n_ctx": 0}, "tpt: n_ctx must be an integer >= 1 or none; got 0"),
    ("tpt", {"jacobian": "yes"}, "tpt: jacobian must be true or false; got 'yes'"),
    ("ctpt", {"lambda_": -1.0}, "ctpt: lambda_ must be a finite number >= 0; got -1.0"),
    ("zero", {"gamma": 1.5}, "zero: gamma must be a finite number > 0 and <= 1; got 1.5"),
    ("zero", {"templates": "nope"}, "zero: templates must be a template set (tpt, tip7,"),
    ("tda", {"entropy_window": [0.5, 0.2]}, "tda: entropy_window must be a pair of finite numbers"),
    ("tda", {"pos_capacity": 0}, "tda: pos_capacity must be an integer >= 1; got 0"),
    ("dmn", {"weight": -1.0}, "dmn: weight must be a finite number >= 0; got -1.0"),
    ("ensemble", {"templates": "all"}, "ensemble: templates must be one of 'openai', 'simple'; got 'all'"),
    ("zeroshot", {"template": "a photo"}, "zeroshot: template must contain '{}'"),
])
def test_a_parameter_out_of_range_is_refused_naming_it(name, kwargs, message):
    with pytest.raises(ValueError) as err:
        make_method(name, **kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_methods_are_frozen_and_their_config_comes_from_the_fields():
    method = tpt.TPT(steps=2)
    with pytest.raises(AttributeError):
        method.steps = 3
    assert method.config() == {"name": "tpt", "steps": 2, "lr": 0.005, "selection_p": 0.1, "ctx_init": "a photo of a",
                               "n_ctx": None, "weight_decay": 0.01}
    assert "seed" in tpt.TPT(ctx_init="").config() and "seed" in tpt.TPT(ctx_init=None).config()
    assert tpt.ZERO(faithful_fallback=False).config()["faithful_fallback"] is False
    assert "faithful_fallback" not in tpt.ZERO().config()
    assert tpt.CTPT().config()["lambda"] == 20.0
    assert tpt.TDA(entropy_window=[0.1, 0.6]).config()["entropy_window"] == [0.1, 0.6]


def test_per_dataset_settings_given_explicitly_survive_the_task():
    tda = tpt.TDA(pos_alpha=1.5).for_dataset("R")
    assert (tda.pos_alpha, tda.pos_beta, tda.templates) == (1.5, 8.0, "openai80")
    assert tpt.TDA().for_dataset("R").pos_alpha == 1.0
    assert tpt.DMN(weight=0.0).for_dataset("A").weight == 0.0


def test_tpt_records_the_context_it_resolves_to(tiny, classnames):
    task = tpt.Task("toy", classnames, [], Path("."), paper_dataset=None)
    assert tpt.TPT().bind(tiny, task).n_ctx == 4                          # "a photo of a": 4 tokens
    assert tpt.TPT(ctx_init="a photo of a big").bind(tiny, task).n_ctx == 5
    assert tpt.TPT(ctx_init=None, n_ctx=8).bind(tiny, task).config()["n_ctx"] == 8
    assert tpt.TPT(ctx_init="", seed=3).bind(tiny, task).config()["seed"] == 3
    with pytest.raises(ValueError, match="n_ctx=8 would be ignored: the context starts as ctx_init 'a photo of a', 4"):
        tpt.TPT(n_ctx=8).bind(tiny, task)
    assert tpt.TPT(n_ctx=4).bind(tiny, task) == tpt.TPT().bind(tiny, task)


def test_every_method_lists_its_parameters_with_what_they_accept():
    rows = {r["name"]: r for r in listing()}
    assert rows["tpt"]["accepts"]["steps"] == "an integer in 0..1000"
    assert "fast_text" not in rows["tpt"]["defaults"]                 # speed only
    assert rows["tda"]["per_dataset"] == ["pos_alpha", "pos_beta", "templates", "multiview"]
    assert rows["tpt-coop"]["requires"] == "coop_ckpt"


# --- the command line: --set read by the fields -------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (("--method", "zero", "--set", "gamma=lots"), "tpt: error: zero: gamma must be a finite number > 0 and <= 1; "
                                                  "got 'lots'"),
    (("--method", "zero", "--set", "gamma=0"), "tpt: error: zero: gamma must be a finite number > 0 and <= 1; got 0.0"),
    (("--method", "tda", "--set", "entropy_window=0.3"), "tpt: error: tda: entropy_window must be a pair"),
    (("--method", "tpt", "--steps", "two"), "tpt: error: tpt: steps must be an integer in 0..1000; got 'two'"),
    (("--method", "tpt", "--ctx-init", "  "), "tpt: error: tpt: ctx_init must be a phrase of at least one word"),
    (("--method", "tpt", "--n-ctx", "8"), "tpt: error: tpt: n_ctx=8 would be ignored"),
    (("--method", "zero", "--set", "steps=2"), "tpt: error: method 'zero' takes no parameter steps"),
    (("--method", "tpt", "--steps", "2", "--set", "steps=3"), "tpt: error: steps given both"),
])
def test_method_parameters_are_checked_at_the_door(weights, data_root, tmp_path, capsys, extra, message):
    assert cli.main(eval_args(weights, data_root, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_random_start_records_its_seed_and_resumes_only_with_it(weights, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(eval_args(weights, data_root, out, "--ctx-init", "", "--set", "seed=1")) == 0
    config = json.loads((out / "run.json").read_text())["params"]["method"]["config"]
    assert (config["ctx_init"], config["seed"], config["n_ctx"]) == ("", 1, 4)
    assert cli.main(eval_args(weights, data_root, out, "--ctx-init", "", "--set", "seed=2")) == 2
    assert "seed" in capsys.readouterr().err


# --- a new method: one class, one registry row --------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Tempered(Method):
    """CLIP zero-shot with its logits divided by a temperature (the argmax is zero-shot's)."""

    name = "tempered"
    adapts = False
    paper = "a test's toy"

    temperature: float = param(2.0, "divides the logits", kind="float", low=0.0, low_open=True)

    def _prepare(self, clip, classnames):
        return prompt_features(clip, classnames)

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        out = fixed_output(clip, prepared, view_feats)
        out.logits = out.logits / self.temperature
        return out


@pytest.fixture
def toy_registered():
    register(MethodInfo("tempered", "zero-shot at a temperature", Tempered))
    yield
    METHODS.pop("tempered")


def test_a_new_method_is_one_class_and_one_registry_row(toy_registered, weights, data_root, tmp_path, capsys):
    toy, zs = tmp_path / "toy", tmp_path / "zs"
    assert cli.main(eval_args(weights, data_root, toy, "--method", "tempered", "--set", "temperature=4")) == 0
    assert cli.main(eval_args(weights, data_root, zs, "--method", "zeroshot")) == 0
    params = json.loads((toy / "run.json").read_text())["params"]
    assert params["method"] == {"name": "tempered", "config": {"name": "tempered", "temperature": 4.0}}
    records = tpt.load_run(toy).records
    assert len(records) == 4
    assert cli.main(["compare", str(toy), str(zs)]) == 0                # the same argmax as zero-shot
    capsys.readouterr()
    assert cli.main(eval_args(weights, data_root, tmp_path / "bad", "--method", "tempered",
                              "--set", "temperature=-1")) == 2
    assert capsys.readouterr().err.startswith("tpt: error: tempered: temperature must be a finite number > 0")
    assert cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "tempered" in listed and "temperature=2.0  divides the logits" in listed
