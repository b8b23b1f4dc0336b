"""`tpt diagnose`: the measurements of what one TPT step does, on a small task with known bookkeeping."""
import math

import pandas as pd

import pytest

import tptlib as tpt
from tptlib.analysis.diagnose import COLUMNS, diagnose, diagnosis_table, format_table

EUROSAT_SAMPLES = 24            # conftest's data_root


@pytest.fixture(scope="module")
def setup(clip, task):
    """The micro-CLIP architecture with random weights on a fake EuroSAT of 24 images (conftest.py)."""
    return clip, task


def test_diagnosis_counts_add_up(setup):
    clip, task = setup
    r = diagnose(clip, task, n=12, method=tpt.TPT(lr=0.5), n_views=20, batch_size=12, progress=False)
    assert r["n"] == 12
    # fixed - broken is the accuracy difference; every flip is a changed prediction
    assert math.isclose(r["tpt"] - r["zero_shot"], 100 * (r["fixed"] - r["broken"]) / 12, abs_tol=1e-6)
    assert r["changed"] >= 100 * (r["fixed"] + r["broken"]) / 12 - 1e-6
    assert math.isclose(r["kept_avg"] - r["zero_shot"], 100 * (r["kept_fixed"] - r["kept_broken"]) / 12, abs_tol=1e-6)
    assert r["wording_min"] <= r["wording_max"] and r["margin_cos"] >= 0 and r["feature_1mcos"] > 0


def test_no_step_changes_nothing(setup):
    clip, task = setup
    r = diagnose(clip, task, n=8, method=tpt.TPT(steps=0), n_views=20, batch_size=8, progress=False)
    assert r["changed"] == 0 and r["fixed"] == r["broken"] == 0 and r["tpt"] == r["zero_shot"]
    assert r["max_dlogit"] < 1e-5 and math.isnan(r["feature_1mcos"])     # equal up to rounding


def test_table_has_one_row_per_task_and_prints(setup):
    clip, task = setup
    r = diagnose(clip, task, n=8, n_views=20, batch_size=8, progress=False)
    frame = diagnosis_table([r, {**r, "task": "other"}])
    assert list(frame.index) == ["eurosat", "other"] and list(frame.columns) == list(COLUMNS.values())
    text = format_table(frame)
    assert text.splitlines()[0].split()[0] == "task" and len(text.splitlines()) == 3


def test_plot_has_three_intervals_per_task_around_their_estimates(setup):
    import matplotlib
    matplotlib.use("Agg")
    from tptlib.analysis.diagnose import plot_diagnosis

    clip, task = setup
    r = diagnose(clip, task, n=8, n_views=20, batch_size=8, progress=False)
    frame = diagnosis_table([r, {**r, "task": "other", "tpt": 100.0, "fixed": 8, "broken": 0}])
    ax = plot_diagnosis(frame)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero-shot", "kept views' average", "TPT"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 2 and ticks[1].startswith("other\nTPT 8/0")
    for container in ax.containers:                     # one errorbar series per method, one point per task
        points, _, (bars,) = container.lines
        ys = points.get_ydata()
        assert len(ys) == 2
        for y, seg in zip(ys, bars.get_segments()):
            assert seg[0][1] <= y + 1e-9 and y - 1e-9 <= seg[1][1]      # the interval holds the estimate
    assert "n = 8 per task" in ax.get_title()


# ----------------------------------------------------------------------------- the first step's properties
import torch  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from tptlib.analysis.diagnose import format_pooled, share_of_zero_gain  # noqa: E402
from tptlib.analysis.first_step import (class_specific_change, first_step, pair_gradients, sign_efficiency,  # noqa: E402
                                        step_response, summarize_first_step, toward, transfer, view_agreement)


class LinearTower:
    """Class features ``h_c + M_c ctx`` (unnormalised); ``additive``: one M for every class."""

    def __init__(self, C=5, D=6, n_ctx=2, W=3, additive=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.h = torch.randn(C, D, generator=g)
        M = torch.randn(1 if additive else C, D, n_ctx * W, generator=g)
        self.M = M.expand(C, -1, -1)

    def class_features(self, model, ctx, chunk=None):
        return self.h + torch.einsum("cdk,bk->bcd", self.M, ctx.flatten(1))


def test_class_specific_change_known_cases():
    before = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 0.5, 0.0]])
    same = class_specific_change(before, before + torch.tensor([[0.7], [-2.0]]))     # every class alike
    assert same["share"].abs().max() < 1e-6 and same["span"].abs().max() < 1e-6
    one = class_specific_change(before, before + torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(one["share"], torch.tensor(0.75 ** 0.5)) and torch.allclose(one["span"], torch.tensor(1.0))
    assert one["margin"].tolist() == [2.0, 1.5] and torch.allclose(one["reach"], torch.tensor([0.5, 1 / 1.5]))
    assert class_specific_change(before, before)["share"].isnan().all()


def test_an_additive_text_tower_moves_every_class_alike():
    feats = torch.nn.functional.normalize(torch.randn(4, 3, 6), dim=-1)
    ctx0, delta = torch.randn(4, 2, 3), 0.1 * torch.randn(4, 2, 3)
    shares = []
    for additive in (True, False):
        tower = LinearTower(additive=additive)
        before = step_response(None, tower, ctx0, torch.zeros_like(delta), feats, 10.0)[:, 0]
        after = step_response(None, tower, ctx0, delta, feats, 10.0)[:, 0]
        shares.append(class_specific_change(before, after)["share"])
    assert shares[0].max() < 1e-3 < 0.1 < shares[1].min()          # zero up to float32 rounding


def test_sign_efficiency_view_agreement_transfer_and_toward_known_cases():
    assert torch.allclose(sign_efficiency(torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 3.0, 0.0]])),
                          torch.tensor([1.0, 0.5]))
    assert sign_efficiency(torch.zeros(1, 3)).isnan().all()
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    assert view_agreement(f, torch.tensor([[1]])).item() == 1.0 and view_agreement(f, torch.tensor([[2]])).item() == 0
    assert view_agreement(f, torch.tensor([[1, 2]])).item() == 0.5
    dk = torch.tensor([[1.0, -1.0, 0.0]])
    assert torch.allclose(transfer(dk, dk)["cos"], torch.ones(1)) and torch.allclose(transfer(dk, 2 * dk)["gain"], torch.tensor([2.0]))
    assert transfer(dk, torch.full((1, 3), 5.0))["gain"].item() == 0.0           # a common shift carries nothing
    before = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    after = torch.tensor([[1.5, 1.2, 0.0], [2.5, 1.0, 0.0]])
    assert toward(before, after, torch.tensor([1, 1])).tolist() == [True, False]


def test_pair_gradients_measure_the_gap_that_decides_the_sample():
    tower = LinearTower(C=5, D=6, n_ctx=2, W=3)
    g = torch.Generator().manual_seed(2)
    view0 = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=-1)
    ctx0 = 0.1 * torch.randn(3, 2, 3, generator=g)
    order = torch.einsum("bd,bcd->bc", view0, tower.class_features(None, ctx0)).argsort(1, descending=True)
    top, kept_class = order[:, 0], torch.stack([order[0, 1], order[1, 3], order[2, 0]])   # the third: view 0's own
    length = torch.full((3,), 0.05)
    same = view0[:, None].expand(-1, 4, -1)                                   # kept views = view 0
    pair = pair_gradients(None, tower, ctx0, view0, same, 10.0, top, kept_class, torch.randn(3, 2, 3, generator=g), length)
    assert torch.allclose(pair["transfer"][:2], torch.ones(2), atol=1e-6) and pair["transfer"][2].isnan()
    assert pair["reach"][2].isnan() and pair["align"][2].isnan()
    # the tower is linear in the context, so the gap moves by exactly reach * gap along its own gradient
    def gap(ctx):
        z = 10.0 * torch.einsum("bd,bcd->bc", view0, tower.class_features(None, ctx))
        return z.gather(1, top[:, None])[:, 0] - z.gather(1, kept_class[:, None])[:, 0]
    gap0 = gap(ctx0)
    ctx = ctx0.clone().requires_grad_(True)
    gap(ctx).sum().backward()
    step = -ctx.grad / ctx.grad.flatten(1).norm(dim=1).view(-1, 1, 1) * 0.05
    assert torch.allclose(gap(ctx0 + step)[:2], (gap0 * (1 - pair["reach"]))[:2], atol=1e-5)
    assert torch.allclose(pair_gradients(None, tower, ctx0, view0, same, 10.0, top, kept_class, ctx.grad, length)["align"][:2],
                          torch.ones(2), atol=1e-6)                           # TPT's gradient is that pull: 1
    additive = pair_gradients(None, LinearTower(additive=True), ctx0, view0, same, 10.0, top, kept_class, ctx.grad, length)
    assert additive["reach"][:2].abs().max() < 1e-6                           # an additive tower cannot re-rank


def test_first_step_is_tpts_first_step_and_the_gradient_step_has_its_length():
    method = tpt.TPT(lr=0.05, selection_p=0.5)
    tower = LinearTower(C=5, D=6, n_ctx=2, W=3)
    prepared = SimpleNamespace(prompt=SimpleNamespace(init_ctx=0.1 * torch.randn(2, 3)), meta_net=None, init_feats=None,
                               text=tower)
    clip = SimpleNamespace(model=None, logit_scale=10.0)
    feats = torch.nn.functional.normalize(torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    fs = first_step(clip, method, prepared, feats)
    ctx0 = prepared.prompt.init_ctx.expand(4, -1, -1)
    # AdamW's first step: lr * g / (|g| + eps) after the decay lr * wd * ctx, i.e. a sign step
    sign_step = method.lr * torch.sign(fs.d_grad) - method.lr * method.weight_decay * ctx0
    assert (fs.d_sign - sign_step).abs().max() < 1e-3 * method.lr
    assert torch.allclose(fs.d_sign.flatten(1).norm(dim=1), fs.d_grad.flatten(1).norm(dim=1))
    assert torch.allclose(fs.sign, step_response(None, tower, ctx0, fs.d_sign, feats[:, :1], 10.0)[:, 0])
    assert torch.allclose(fs.sign_cos, sign_efficiency(-fs.d_grad), atol=1e-6)
    r = summarize_first_step(fs, fs.logits.argmax(1))
    assert r["sign_broken"] + r["sign_fixed"] <= 4 and r["sign_fixed"] == r["grad_fixed"] == 0   # labels = view 0's


def test_diagnose_reports_the_first_step_and_zero(setup):
    clip, task = setup
    r = diagnose(clip, task, n=12, method=tpt.TPT(lr=0.5), n_views=20, batch_size=6, progress=False)
    assert (r["sign_fixed"], r["sign_broken"]) == (r["fixed"], r["broken"])     # the sign step is TPT's one step
    assert 0 <= r["specific_share"] <= 1 and 0 < r["sign_cos"] <= 1 and -1 <= r["view_cos"] <= 1
    assert math.isclose(r["zero"] - r["zero_shot"], 100 * (r["zero_fixed"] - r["zero_broken"]) / 12, abs_tol=1e-6)


def test_share_of_zero_gain_pools_counts_over_tasks():
    rows = [{"task": "micro:V2-dev", "n": 100, "fixed": 6, "broken": 2, "zero_fixed": 12, "zero_broken": 4, "changed": 10.0},
            {"task": "micro:A-dev", "n": 300, "fixed": 10, "broken": 6, "zero_fixed": 30, "zero_broken": 6, "changed": 2.0},
            {"task": "micro:I-dev", "n": 100, "fixed": 0, "broken": 9, "zero_fixed": 0, "zero_broken": 0, "changed": 9.0}]
    frame = pd.DataFrame([{"n": r["n"], "fixed": r["fixed"], "broken": r["broken"], "ZERO fixed": r["zero_fixed"],
                           "ZERO broken": r["zero_broken"], "changed %": r["changed"]} for r in rows],
                         index=[r["task"] for r in rows])
    s = share_of_zero_gain(frame, ["micro:V2-dev", "micro:A-dev"])
    assert s["n"] == 400 and (s["tpt_fixed"], s["tpt_broken"]) == (16, 8)
    assert math.isclose(s["tpt_gain"], 2.0) and math.isclose(s["zero_gain"], 8.0) and math.isclose(s["share"], 0.25)
    assert math.isclose(s["changed"], 4.0) and 0 < s["zero_p"] < s["tpt_p"] < 1
    line = format_pooled(frame)
    assert line.startswith("pooled over V2-dev, A-dev (n = 400)") and line.endswith("share of ZERO's gain 0.25")
    assert format_pooled(frame.loc[["micro:I-dev"]]) == ""
