"""The engine's exact speed-ups against the plain paths they replace: the prefix-cached, length-
bucketed text tower (`PrefixEncoder`) and the class-token-only last ViT block (`encode_images`)."""
import pytest
import torch

import tptlib as tpt
from tptlib.prompts import build_prompt_text, context_jacobian
from tptlib.towers import PrefixEncoder, encode_images, plan_buckets

# names of different token lengths, so that the class positions fall into several buckets
LONG_NAMES = ["goldfish", "great white shark", "red-breasted merganser", "toy poodle", "cab",
              "Granny Smith apple", "American black bear", "hen-of-the-woods mushroom", "yellow lady's slipper"]


def _contexts(prompt, n=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return prompt.init_ctx.unsqueeze(0) + 0.05 * torch.randn(n, *prompt.init_ctx.shape, generator=g)


@pytest.mark.parametrize("arch", ["tiny", "rn50", "vitb16"])
def test_prefix_encoder_gives_the_plain_features_and_gradient(arch, request):
    clip = request.getfixturevalue(arch)
    cut = build_prompt_text(clip, LONG_NAMES)
    full = build_prompt_text(clip, LONG_NAMES, cut=False)
    enc = PrefixEncoder(clip.model, cut, bucket_overhead=0.0)
    assert len(enc._plan(0, len(LONG_NAMES))) > 1                      # several buckets are exercised
    ctx = _contexts(cut)
    plain = full.class_features(clip.model, ctx)
    assert (enc.class_features(clip.model, ctx) - plain).abs().max() < 1e-5

    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for text in (full, enc):
        c = ctx.clone().requires_grad_(True)
        (text.class_features(clip.model, c) * weights).sum().backward()
        grads.append(c.grad)
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()


def test_any_bucket_plan_and_class_slice_gives_the_same_features(tiny):
    prompt = build_prompt_text(tiny, LONG_NAMES)
    ctx = _contexts(prompt, n=3)
    plain = prompt.class_features(tiny.model, ctx)
    for overhead in (0.0, 5.0, 1e9):
        enc = PrefixEncoder(tiny.model, prompt, bucket_overhead=overhead)
        for chunk in (None, 1, 4):
            assert (enc.class_features(tiny.model, ctx, chunk) - plain).abs().max() < 1e-5
    assert len(PrefixEncoder(tiny.model, prompt, bucket_overhead=1e9)._plan(0, len(LONG_NAMES))) == 1


def test_bucket_plan_is_a_partition_by_length():
    lengths = [3, 4, 3, 9, 5, 4, 4, 3, 12]
    for overhead in (0.0, 2.0, 10.0, 1e9):
        buckets = plan_buckets(lengths, overhead)
        assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
        spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in buckets]
        assert all(hi < lo for (_, hi), (lo, _) in zip(spans, spans[1:]))      # contiguous in length
    assert len(plan_buckets(lengths, 0.0)) == len(set(lengths))
    assert len(plan_buckets(lengths, 1e9)) == 1


def test_prefix_encoder_under_autocast_follows_the_plain_path(tiny):
    prompt = build_prompt_text(tiny, LONG_NAMES)
    enc = PrefixEncoder(tiny.model, prompt, bucket_overhead=0.0)
    ctx = _contexts(prompt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = prompt.class_features(tiny.model, ctx)
        b = enc.class_features(tiny.model, ctx)
    assert (a - b).abs().max() < 3e-2                                   # bf16 rounding, nothing more
    assert (enc.class_features(tiny.model, ctx) - prompt.class_features(tiny.model, ctx)).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["tiny_vit", "vitb16"])
def test_class_token_only_last_block_gives_encode_image(arch, request):
    clip = request.getfixturevalue(arch)
    images = torch.randn(3, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = clip.model.encode_image(images)
        ours = encode_images(clip.model, images)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_resnet_image_tower_fast_path_is_encode_image_to_the_bit(rn50):
    from tptlib.image_tower import resnet_supported
    images = torch.randn(2, 3, rn50.image_size, rn50.image_size, generator=torch.Generator().manual_seed(0))
    assert resnet_supported(rn50.model.visual)
    with torch.no_grad():
        assert torch.equal(encode_images(rn50.model, images), rn50.model.encode_image(images))


@pytest.mark.parametrize("size", [48, 40, 33])       # odd maps on the way down (the last pool drops a row)
def test_micro_sized_resnet_fast_path_is_encode_image_to_the_bit(size):
    from open_clip.modified_resnet import ModifiedResNet
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=size, width=16).eval()
    for m in visual.modules():                         # running statistics away from 0 / 1, as a trained tower has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model = type("Model", (), {"visual": visual, "encode_image": lambda self, x: visual(x)})()
    images = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        assert torch.equal(encode_images(model, images), visual(images))
        assert not torch.equal(encode_images(model, images[:1] + 1e-3), visual(images[:1]))


@pytest.mark.parametrize("shape", [(3, 8, 24, 24), (2, 5, 7, 9), (1, 4, 3, 3), (4, 2, 2, 6)])
def test_pool2_is_avg_pool2d_to_the_bit(shape):
    from tptlib.image_tower import pool2
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e-30, 1e30):
        x = torch.randn(*shape, generator=g) * scale
        x[..., 0, 0] = 1.0 + 2 ** -23                  # values whose sum rounds, in the kernel's order
        assert torch.equal(pool2(x), torch.nn.functional.avg_pool2d(x, 2))
        strided = x.transpose(-1, -2)
        assert torch.equal(pool2(strided), torch.nn.functional.avg_pool2d(strided, 2))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):            # half precisions: the kernel itself
        x = torch.randn(*shape, generator=g).to(dtype)
        assert torch.equal(pool2(x), torch.nn.functional.avg_pool2d(x, 2))


def test_a_resnet_with_another_pool_runs_as_open_clip_builds_it():
    from open_clip.modified_resnet import ModifiedResNet
    from tptlib.image_tower import resnet_supported
    visual = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=32, width=16).eval()
    assert resnet_supported(visual)
    visual.avgpool = torch.nn.AvgPool2d(2, ceil_mode=True)
    assert not resnet_supported(visual)


def test_engine_with_both_speed_ups_equals_plain_engine_and_reference(tiny_vit, classnames):
    views = torch.randn(3, 16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fast, _ = tpt.Engine(tiny_vit, tpt.TPT(steps=2, selection_p=0.3), classnames, batch_size=3).run_views(views)
    plain, _ = tpt.Engine(tiny_vit, tpt.TPT(steps=2, selection_p=0.3, fast_text=False), classnames,
                          batch_size=3, fast_image=False).run_views(views)
    assert torch.equal(fast.kept, plain.kept)
    assert (fast.logits - plain.logits).abs().max() < 1e-4
    ref = tpt.ReferenceTPT(tiny_vit, classnames, steps=2, selection_p=0.3)
    for b in range(3):
        r = ref.predict(views[b])
        assert fast.kept[b].tolist() == r["kept"]
        assert (fast.logits[b] - r["logits"]).abs().max() < 1e-4
        assert int(fast.logits[b].argmax()) == int(r["logits"].argmax())


def test_fast_text_is_a_speed_setting_not_a_result_parameter():
    assert tpt.TPT(fast_text=False).config() == tpt.TPT().config()


# --- the first step's gradient from the context Jacobian ------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_context_jacobian_gives_the_reverse_mode_gradient(tiny, fast):
    prompt = build_prompt_text(tiny, LONG_NAMES)
    text = PrefixEncoder(tiny.model, prompt, bucket_overhead=0.0) if fast else prompt
    with torch.no_grad():
        jac = context_jacobian(tiny.model, text, prompt.init_ctx, class_chunk=4, directions=50)
    n_ctx, width = prompt.init_ctx.shape
    assert jac.shape == (n_ctx * width, len(LONG_NAMES) * tiny.embed_dim)
    upstream = torch.randn(3, len(LONG_NAMES), tiny.embed_dim, generator=torch.Generator().manual_seed(2))
    ctx = prompt.init_ctx.expand(3, -1, -1).clone().requires_grad_(True)
    (prompt.class_features(tiny.model, ctx) * upstream).sum().backward()
    linear = (upstream.flatten(1) @ jac.T).view_as(ctx)
    assert (linear - ctx.grad).abs().max() <= 1e-5 * ctx.grad.abs().max()
    other = torch.randn_like(upstream)                 # a different upstream gives a different gradient
    assert (((other.flatten(1) @ jac.T).view_as(ctx)) - ctx.grad).abs().max() > 1e-2 * ctx.grad.abs().max()


@pytest.mark.parametrize("class_chunk", [None, 3])
def test_engine_with_the_jacobian_first_step_equals_the_reference(tiny_vit, classnames, class_chunk):
    views = torch.randn(3, 16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    method = tpt.TPT(steps=2, selection_p=0.3, lr=2e-2, jacobian=True)
    out, _ = tpt.Engine(tiny_vit, method, classnames, batch_size=3, class_chunk=class_chunk).run_views(views)
    ref = tpt.ReferenceTPT(tiny_vit, classnames, steps=2, selection_p=0.3, lr=2e-2)
    for b in range(3):
        r = ref.predict(views[b])
        assert out.kept[b].tolist() == r["kept"]
        assert float(out.loss[b]) == pytest.approx(r["loss"], abs=1e-5)
        assert (out.logits[b] - r["logits"]).abs().max() < 1e-4
        assert int(out.logits[b].argmax()) == int(r["logits"].argmax())
    assert (out.logits - out.logits_before).abs().max() > 1e-3          # the steps did move the logits


def test_jacobian_is_a_speed_setting_and_refused_where_contexts_start_apart():
    assert tpt.TPT(jacobian=True).config() == tpt.TPT().config()
    with pytest.raises(ValueError, match="CoCoOp"):
        tpt.TPT(jacobian=True, cocoop_ckpt="x.pth")
