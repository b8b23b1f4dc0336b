"""The core against open_clip and against the faithful one-sample reference, on real architectures
with random weights."""
import logging

import pytest
import torch
import torch.nn.functional as F

import tptlib as tpt
from tptlib.prompts import build_prompt_text


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 16, 3, 32, 32, generator=g)


@pytest.mark.parametrize("arch", ["rn50", "vitb16"])
def test_initial_context_gives_open_clip_encode_text(arch, classnames, request):
    clip = request.getfixturevalue(arch)
    prompt = build_prompt_text(clip, classnames, ctx_init="a photo of a")
    ours = prompt.class_features(clip.model, prompt.init_ctx.unsqueeze(0))[0]
    with torch.no_grad():
        ref = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in classnames])), dim=-1)
    assert prompt.n_ctx == 4
    assert (ours - ref).abs().max() < 1e-5


def test_context_cut_is_exact(vitb16, classnames):
    full = build_prompt_text(vitb16, classnames, cut=False)
    cut = build_prompt_text(vitb16, classnames, cut=True)
    assert full.length == 77 and cut.length == int(cut.eot.max()) + 1 < 20
    ctx = cut.init_ctx.unsqueeze(0) + 0.05 * torch.randn(2, *cut.init_ctx.shape, generator=torch.Generator().manual_seed(3))
    a = full.class_features(vitb16.model, ctx)
    b = cut.class_features(vitb16.model, ctx)
    assert (a - b).abs().max() < 1e-5


def test_random_context_init_follows_n_ctx_and_std(rn50, classnames):
    prompt = build_prompt_text(rn50, classnames, ctx_init=None, n_ctx=16, generator=torch.Generator().manual_seed(0))
    assert prompt.init_ctx.shape == (16, rn50.model.token_embedding.weight.shape[1])
    assert abs(float(prompt.init_ctx.std()) - 0.02) < 0.002
    assert prompt.prompt_prefix == " ".join(["X"] * 16)


def test_engine_agrees_with_the_faithful_reference(tiny, classnames, views):
    method = tpt.TPT(steps=2, selection_p=0.3)
    out, _ = tpt.Engine(tiny, method, classnames, batch_size=3).run_views(views)
    ref = tpt.ReferenceTPT(tiny, classnames, steps=2, selection_p=0.3)
    for b in range(views.shape[0]):
        r = ref.predict(views[b])
        assert out.kept[b].tolist() == r["kept"]
        assert float(out.loss[b]) == pytest.approx(r["loss"], abs=1e-5)
        assert (out.logits[b] - r["logits"]).abs().max() < 1e-4
        assert int(out.logits[b].argmax()) == int(r["logits"].argmax())


def test_tuning_moves_the_prediction(tiny, classnames, views):
    out, _ = tpt.Engine(tiny, tpt.TPT(lr=5e-2), classnames).run_views(views[:1])
    assert (out.logits - out.logits_before).abs().max() > 1e-3
    zs, _ = tpt.Engine(tiny, tpt.ZeroShot(), classnames).run_views(views[:1])
    assert (zs.logits_before - out.logits_before).abs().max() < 1e-4


def test_a_batch_gives_each_sample_its_result_alone(tiny, classnames, views):
    method = tpt.TPT(steps=1)
    batch, _ = tpt.Engine(tiny, method, classnames, batch_size=3).run_views(views)
    for b in range(3):
        alone = tpt.predict(tiny, method, classnames, views[b])
        assert (alone.logits - batch.logits[b]).abs().max() < 1e-5
        assert alone.kept == batch.kept[b].tolist()


def test_second_sample_after_a_first_equals_the_second_alone(tiny, classnames, views):
    ref = tpt.ReferenceTPT(tiny, classnames, steps=3, lr=5e-2)
    ref.predict(views[0])
    after = ref.predict(views[1])
    fresh = tpt.ReferenceTPT(tiny, classnames, steps=3, lr=5e-2).predict(views[1])
    assert torch.equal(after["logits"], fresh["logits"])
    method = tpt.TPT(steps=3, lr=5e-2)
    tpt.predict(tiny, method, classnames, views[0])
    assert (tpt.predict(tiny, method, classnames, views[1]).logits - fresh["logits"]).abs().max() < 1e-4


def test_class_chunks_give_the_same_gradient(tiny, classnames, views):
    method = tpt.TPT(steps=2, lr=2e-2)
    whole, _ = tpt.Engine(tiny, method, classnames).run_views(views)
    chunked, _ = tpt.Engine(tiny, method, classnames, class_chunk=3).run_views(views)
    assert (whole.logits - chunked.logits).abs().max() < 1e-4
    assert torch.allclose(whole.loss, chunked.loss, atol=1e-6)


def test_one_adamw_over_a_batched_context_is_separate_adamw_runs():
    torch.manual_seed(0)
    init = torch.randn(4, 3, 8)
    grads = [torch.randn(4, 3, 8) for _ in range(3)]
    batched = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([batched], lr=5e-3)
    for g in grads:
        batched.grad = g.clone()
        opt.step()
    for b in range(4):
        single = init[b].clone().requires_grad_(True)
        opt1 = torch.optim.AdamW([single], lr=5e-3)
        for g in grads:
            single.grad = g[b].clone()
            opt1.step()
        assert torch.allclose(single, batched[b], atol=1e-7, rtol=0)


def test_nonfinite_sample_under_autocast_is_redone_in_fp32_and_marked(classnames, views, monkeypatch, tiny):
    clip = tpt.Clip(**{**tiny.__dict__, "precision": "bf16"})
    method = tpt.TPT()
    real_run = tpt.TPT.run

    def run(self, clip_, prepared, feats, class_chunk=None, loss_scale=None):
        out = real_run(self, clip_, prepared, feats, class_chunk, loss_scale)
        if torch.is_autocast_enabled("cpu"):        # pretend sample 1 overflowed in low precision
            out.nonfinite[1] = True
            out.logits[1] = float("nan")
        return out

    monkeypatch.setattr(tpt.TPT, "run", run)
    results = tpt.Engine(clip, method, classnames, batch_size=3).run_batch(views)
    assert [r["fp32_retry"] for r in results] == [False, True, False]
    assert all(torch.isfinite(r["logits"]).all() for r in results)
    fp32 = tpt.Engine(tiny, method, classnames).run_batch(views[1:2])[0]
    assert (results[1]["logits"] - fp32["logits"]).abs().max() < 1e-4


def test_out_of_memory_halves_the_class_chunk_and_logs(tiny, classnames, views, monkeypatch, caplog):
    method = tpt.TPT()
    expected, _ = tpt.Engine(tiny, method, classnames).run_views(views[:2])
    real_run = tpt.TPT.run

    def run(self, clip_, prepared, feats, class_chunk=None, loss_scale=None):
        if class_chunk is None or class_chunk > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, clip_, prepared, feats, class_chunk, loss_scale)

    monkeypatch.setattr(tpt.TPT, "run", run)
    engine = tpt.Engine(tiny, method, classnames)
    with caplog.at_level(logging.WARNING, logger="tptlib.engine"):
        out, _ = engine.run_views(views[:2])
    assert engine.class_chunk == 1 and len(engine.backoffs) == 2
    assert "class_chunk=7" in caplog.text
    assert (out.logits - expected.logits).abs().max() < 1e-4


def test_coop_checkpoint_initialises_and_resets_the_context(tiny, classnames, views, tmp_path):
    width = tiny.model.token_embedding.weight.shape[1]
    ctx = torch.randn(4, width, generator=torch.Generator().manual_seed(5)) * 0.02
    path = tmp_path / "coop.pth"
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(1)}, "epoch": 50}, path)
    method = tpt.make_method("tpt-coop", coop_ckpt=str(path), steps=0)
    out, _ = tpt.Engine(tiny, method, classnames).run_views(views[:1])
    prompt = build_prompt_text(tiny, classnames)
    feats = prompt.class_features(tiny.model, ctx.unsqueeze(0))[0]
    img = tiny.encode_views(views[0, :1])
    assert (out.logits[0] - tiny.logit_scale * img[0] @ feats.T).abs().max() < 1e-4
    assert method.name == "tpt+coop"


def test_cocoop_meta_network_shifts_the_context_per_sample(tiny, classnames, views, tmp_path):
    width = tiny.model.token_embedding.weight.shape[1]
    dim = tiny.embed_dim
    g = torch.Generator().manual_seed(1)
    state = {"prompt_learner.ctx": torch.randn(4, width, generator=g) * 0.02,
             "prompt_learner.meta_net.linear1.weight": torch.randn(dim // 16, dim, generator=g) * 0.1,
             "prompt_learner.meta_net.linear1.bias": torch.zeros(dim // 16),
             "prompt_learner.meta_net.linear2.weight": torch.randn(width, dim // 16, generator=g) * 0.1,
             "prompt_learner.meta_net.linear2.bias": torch.zeros(width)}
    path = tmp_path / "cocoop.pth"
    torch.save({"state_dict": state}, path)
    method = tpt.make_method("tpt-cocoop", cocoop_ckpt=str(path))
    out, _ = tpt.Engine(tiny, method, classnames).run_views(views[:2])
    ctx = method.initial_ctx(method.prepare(tiny, classnames), tiny.encode_views(views[:2]))
    assert not torch.allclose(ctx[0], ctx[1])
    assert torch.isfinite(out.loss).all()


def test_bad_method_parameters_are_refused():
    with pytest.raises(ValueError, match="selection_p"):
        tpt.TPT(selection_p=0)
    with pytest.raises(ValueError, match="lr"):
        tpt.TPT(lr=-1)
    with pytest.raises(ValueError, match="unknown method"):
        tpt.make_method("tpt-plus-plus")
    with pytest.raises(ValueError, match="coop_ckpt"):
        tpt.make_method("tpt-coop")


def test_each_registry_name_builds_the_method_of_that_name():
    from tptlib.methods.registry import METHODS
    for name, info in METHODS.items():
        kwargs = {info.requires: "ckpt.pth"} if info.requires else {}
        assert tpt.make_method(info.command_name, **kwargs).name == name
        assert tpt.make_method(name, **kwargs).name == name
