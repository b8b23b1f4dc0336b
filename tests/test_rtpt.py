"""R-TPT against the port of its authors' code (`tptlib.reference_adapters.RTPTReference`) on the same
features -- random ones through a tiny CLIP's text tower and the micro-CLIP's own features of micro:A --,
its loss and ensemble weights on features with a known answer, and a run through `tpt eval`."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import tptlib as tpt
from _helpers import assert_one_line_refusal, run_cli
from test_peers import micro_a  # noqa: F401
from tptlib import reference_adapters as ref
from tptlib.methods.rtpt import RTPT, mean_entropy_objective, reliability_weights


def sign_views(n: int, v: int, d: int, seed: int) -> torch.Tensor:
    """Views whose entries are +-1/sqrt(d) (d a power of 4): unit norm and every cosine exact in fp32,
    so each view's similarity to itself is exactly 1.0 and the authors' `>= 1.0` rule leaves it out."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, 1, d, generator=g)
    return torch.sign(centre + 1.5 * torch.randn(n, v, d, generator=g)) / math.sqrt(d)


def authors_for(clip, classnames, method: RTPT, **kwargs) -> ref.RTPTReference:
    return ref.RTPTReference(clip, classnames, steps=method.steps, lr=method.lr, selection_p=method.selection_p,
                             **kwargs)


def check_against_authors(clip, classnames, method, feats, authors, tol):
    """`method` on `feats` `[B, V, D]` and the port sample by sample: the same kept views, first loss,
    context shift, ensemble weights and prediction, logits within `tol`."""
    out = method.run(clip, method.prepare(clip, classnames), feats)
    weights = reliability_weights(feats)
    for b in range(feats.shape[0]):
        r = authors.predict(feats[b])
        assert out.kept[b].tolist() == r["kept"]
        assert float(out.loss[b]) == pytest.approx(r["loss"], abs=1e-5)
        shift = float((authors.ctx.detach() - authors.ctx_init_state).norm())
        assert float(out.extra["ctx_shift"][b]) == pytest.approx(shift, rel=1e-3)
        assert (weights[b] - r["weights"]).abs().max() < 1e-5
        assert int(out.logits[b].argmax()) == int(r["logits"].argmax())
        assert (out.logits[b] - r["logits"]).abs().max() < tol
    return out


def test_rtpt_equals_the_authors_code_on_exact_random_features(tiny, classnames):
    feats = sign_views(4, 64, 64, seed=0)
    assert torch.equal(torch.diagonal(feats @ feats.transpose(1, 2), dim1=1, dim2=2), torch.ones(4, 64))
    method = RTPT(lr=5e-2, steps=2)
    out = check_against_authors(tiny, classnames, method, feats, authors_for(tiny, classnames, method), 1e-4)
    plain = tpt.TPT(lr=5e-2, steps=2).run(tiny, tpt.TPT(lr=5e-2, steps=2).prepare(tiny, classnames), feats)
    assert (out.logits - plain.logits).abs().max() > 1e-2          # the ensemble is not view 0's logits


def test_each_view_is_left_out_of_its_own_neighbours_whatever_the_rounding(tiny, classnames):
    feats = F.normalize(torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    diagonal = torch.diagonal(feats @ feats.transpose(1, 2), dim1=1, dim2=2)
    assert (diagonal < 1.0).any() and (diagonal >= 1.0).any()      # fp32 rounding goes both ways here
    method = RTPT()
    check_against_authors(tiny, classnames, method, feats, authors_for(tiny, classnames, method, exact_self=True),
                          1e-4)
    literal = authors_for(tiny, classnames, method)                # their rule as written keeps some selves
    b = int((diagonal < 1.0).any(dim=1).float().argmax())
    assert (literal.predict(feats[b])["weights"] - reliability_weights(feats[b:b + 1])[0]).abs().max() > 1e-3


def test_the_loss_is_the_mean_entropy_of_the_kept_views_not_the_marginal_entropy(tiny, classnames):
    feats = sign_views(2, 64, 64, seed=1)
    method = RTPT()
    out = method.run(tiny, method.prepare(tiny, classnames), feats)
    classes = method.prepare(tiny, classnames).init_feats
    for b in range(2):
        logits = tiny.logit_scale * feats[b] @ classes.T
        kept = logits[out.kept[b]]
        assert out.kept[b].tolist() == torch.argsort(tpt.entropy(logits))[:6].tolist()
        assert float(out.loss[b]) == pytest.approx(float(tpt.entropy(kept).mean()), abs=1e-5)
        assert float(tpt.marginal_entropy(kept)) - float(out.loss[b]) > 1e-3
    one = mean_entropy_objective(feats[:1, :3], classes.unsqueeze(0), 10.0)
    assert float(one) == pytest.approx(float(tpt.entropy(10.0 * feats[0, :3] @ classes.T).mean()), abs=1e-6)


def test_the_weights_go_to_the_typical_views():
    g = torch.Generator().manual_seed(3)
    centre = F.normalize(torch.randn(16, generator=g), dim=0)
    views = F.normalize(centre + 0.3 * torch.randn(40, 16, generator=g), dim=-1)
    views[7] = -centre                                             # one view far from all the others
    weights = reliability_weights(views.unsqueeze(0))[0]
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(weights[7]) < 1e-6 and int(weights.argmax()) != 7
    flatter = reliability_weights(views.unsqueeze(0), temperature=1.0)[0]
    assert float(flatter.max()) < float(weights.max())
    assert float(reliability_weights(views.unsqueeze(0), neighbours=39)[0, 7]) < 1e-6


def test_rtpt_needs_more_views_than_its_neighbours():
    RTPT().check_views(64)
    RTPT(neighbours=10).check_views(16)
    with pytest.raises(ValueError, match="rtpt: each view's reliability averages its 20 most similar other views; "
                                         "16 views per sample have 15"):
        RTPT().check_views(16)


def test_rtpt_is_registered_with_the_authors_defaults():
    method = tpt.make_method("rtpt")
    assert (method.steps, method.lr, method.selection_p, method.ctx_init) == (1, 5e-3, 0.1, "a photo of a")
    assert (method.neighbours, method.temperature, method.kind) == (20, 0.01, "episodic")
    with pytest.raises(ValueError, match="takes no parameter"):
        tpt.make_method("rtpt", coop_ckpt="x.pth")
    with pytest.raises(ValueError, match="rtpt: temperature must be a finite number > 0"):
        tpt.make_method("rtpt", temperature=0.0)


@pytest.mark.slow
def test_rtpt_equals_the_authors_code_on_micro_features(micro_a):  # noqa: F811
    clip, task, feats = micro_a
    method = RTPT().bind(clip, task)
    authors = authors_for(clip, task.classnames, method, exact_self=True)
    out = check_against_authors(clip, task.classnames, method, feats, authors, 1e-3)
    plain = tpt.TPT().run(clip, tpt.TPT().prepare(clip, task.classnames), feats)
    assert (out.logits - plain.logits).abs().max() > 0.1           # the ensemble moved the logits


@pytest.mark.slow
def test_tpt_eval_runs_rtpt_on_micro_a(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["eval", "--task", "micro:A", "--limit", "16", "--method", "rtpt", "--out", str(out),
                         "--no-progress"], capsys)
    assert code == 0, err
    run = tpt.load_run(out)
    assert len(run.records) == 16 and 0.0 <= run.summary["top1"] <= 100.0 and math.isfinite(run.summary["ece"])
    config = json.loads((out / "run.json").read_text())["params"]["method"]["config"]
    assert (config["name"], config["neighbours"], config["temperature"]) == ("rtpt", 20, 0.01)
    code, err = run_cli(["eval", "--task", "micro:A", "--limit", "2", "--method", "rtpt", "--views", "16",
                         "--out", str(tmp_path / "few"), "--no-progress"], capsys)
    assert_one_line_refusal(code, err, "16 views per sample have 15")


def test_online_rtpt_carries_one_context_and_one_adamw_over_the_stream(tiny, classnames):
    """`RTPT(reset=False)` (TPT's online switch, inherited): the context and AdamW's state go on from
    sample to sample, under R-TPT's loss and with its weighted prediction, and replay rebuilds them."""
    from tptlib.objectives import select_confident
    from tptlib.prompts import build_prompt_text
    settings = {"steps": 2, "lr": 5e-2, "selection_p": 0.3, "neighbours": 5}
    feats = tiny.encode_views(torch.randn(4, 16, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    method = RTPT(reset=False, **settings)
    engine = tpt.Engine(tiny, method, classnames)
    first, _ = engine.run_views(None, feats[:2])
    second, _ = engine.run_views(None, feats[2:])
    online = torch.cat([first.logits, second.logits])

    prompt = build_prompt_text(tiny, classnames)                        # the same by hand
    ctx = prompt.init_ctx.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([ctx], lr=settings["lr"], weight_decay=0.01)
    scale, expected = tiny.logit_scale, []
    encode = lambda c: prompt.class_features(tiny.model, c.unsqueeze(0))    # noqa: E731  [1, C, D]
    for f in feats:
        with torch.no_grad():
            kept = select_confident(scale * f @ encode(ctx.detach())[0].T, settings["selection_p"])
        for _ in range(settings["steps"]):
            loss = mean_entropy_objective(f[kept][None], encode(ctx), scale).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            w = reliability_weights(f[None], settings["neighbours"], method.temperature)[0]
            expected.append(w @ (scale * f @ encode(ctx.detach())[0].T))
    assert (online - torch.stack(expected)).abs().max() < 1e-4
    episodic, _ = tpt.Engine(tiny, RTPT(**settings), classnames).run_views(None, feats)
    assert (online[0] - episodic.logits[0]).abs().max() < 1e-4         # the first sample starts from V_0 too
    assert (online[1:] - episodic.logits[1:]).abs().max() > 1e-3       # the later ones do not
    resumed = tpt.Engine(tiny, method, classnames)
    resumed.replay([*first.updates, second.updates[0]])
    last, _ = resumed.run_views(None, feats[3:])
    assert torch.equal(last.logits[0], online[3])
