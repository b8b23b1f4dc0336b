"""Online TPT (`TPT(reset=False)`): the context and AdamW's state carried over the stream, checked
against a hand-written loop with one persistent AdamW; exact replay of the stored updates; a
resumed `tpt.evaluate` run; what a run records and what is refused."""
import pytest
import torch

import tptlib as tpt
from test_runs import N_SAMPLES, VIEWS, interrupt_at_batch
from tptlib import runs
from tptlib.methods.registry import listing
from tptlib.objectives import marginal_entropy, select_confident
from tptlib.prompts import build_prompt_text

EUROSAT_SAMPLES = N_SAMPLES      # the fake EuroSAT of conftest's data_root
SETTINGS = {"steps": 2, "lr": 5e-2, "selection_p": 0.3}


@pytest.fixture(scope="module")
def feats(tiny):
    views = torch.randn(4, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return tiny.encode_views(views)                                   # [4, 16, D]


def carried_loop(clip, classnames, feats, steps, lr, selection_p):
    """Online TPT by hand: one context and one AdamW for the whole stream, never reset."""
    prompt = build_prompt_text(clip, classnames)
    ctx = prompt.init_ctx.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([ctx], lr=lr, weight_decay=0.01)
    scale, logits = clip.logit_scale, []
    encode = lambda c: prompt.class_features(clip.model, c.unsqueeze(0))[0]    # noqa: E731
    for f in feats:                                                   # [V, D], in stream order
        with torch.no_grad():
            kept = select_confident(scale * f @ encode(ctx.detach()).T, selection_p)
        for _ in range(steps):
            loss = marginal_entropy(scale * f[kept] @ encode(ctx).T)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits.append(scale * f[0] @ encode(ctx.detach()).T)
    return torch.stack(logits)


def test_online_tpt_is_one_context_and_one_adamw_over_the_stream(tiny, classnames, feats):
    engine = tpt.Engine(tiny, tpt.TPT(reset=False, **SETTINGS), classnames)
    first, _ = engine.run_views(None, feats[:2])                      # the state goes on to the next batch
    second, _ = engine.run_views(None, feats[2:])
    online = torch.cat([first.logits, second.logits])
    assert (online - carried_loop(tiny, classnames, feats, **SETTINGS)).abs().max() < 1e-4
    episodic, _ = tpt.Engine(tiny, tpt.TPT(**SETTINGS), classnames).run_views(None, feats)
    assert (online[0] - episodic.logits[0]).abs().max() < 1e-4       # the first sample starts from V_0 too
    assert (online[1:] - episodic.logits[1:]).abs().max() > 1e-3     # the later ones do not
    zero_shot, _ = tpt.Engine(tiny, tpt.ZeroShot(), classnames).run_views(None, feats)
    assert (torch.cat([first.logits_before, second.logits_before]) - zero_shot.logits).abs().max() < 1e-4


def test_replayed_updates_rebuild_the_state_exactly(tiny, classnames, feats):
    method = tpt.TPT(reset=False, **SETTINGS)
    whole, _ = tpt.Engine(tiny, method, classnames).run_views(None, feats)
    resumed = tpt.Engine(tiny, method, classnames)
    resumed.replay(whole.updates[:3])
    last, _ = resumed.run_views(None, feats[3:])
    assert torch.equal(last.logits[0], whole.logits[3])
    assert float(whole.updates[-1]["step"]) == 4 * SETTINGS["steps"]


@pytest.mark.slow
def test_an_interrupted_online_tpt_run_resumes_to_the_uninterrupted_records(clip, task, tmp_path):
    method = tpt.TPT(reset=False, selection_p=0.25, lr=5e-2)
    whole = runs.evaluate(clip, task, method, tmp_path / "whole", n_views=VIEWS, batch_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False,
                      on_batch=interrupt_at_batch(3))
    resumed = runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    for column in ("idx", "pred", "logits"):
        assert [str(v) for v in resumed.records[column]] == [str(v) for v in whole.records[column]], column
    assert resumed.summary["stream_seed"] == 0


def test_a_run_records_reset_only_when_it_is_off_and_the_kind_follows():
    assert "reset" not in tpt.TPT().config() and tpt.TPT().kind == "episodic" and not tpt.TPT().online
    online = tpt.TPT(reset=False)
    assert online.config()["reset"] is False and online.kind == "online" and online.online
    assert tpt.CTPT(reset=False).online
    listed = {row["name"]: row["kind"] for row in listing()}
    assert listed["tpt"] == "episodic"


@pytest.mark.parametrize("extra, message", [({"jacobian": True}, "jacobian"), ({"cocoop_ckpt": "x.pt"}, "cocoop_ckpt")])
def test_what_cannot_carry_one_context_is_refused(extra, message):
    with pytest.raises(ValueError, match=f"reset=False .*{message}"):
        tpt.TPT(reset=False, **extra)
    with pytest.raises(ValueError, match="reset must be true or false"):
        tpt.TPT(reset="no")
