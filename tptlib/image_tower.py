"""The exact fast path of the image tower, and the residual attention block as the fast paths of
both towers run it (the text tower's is `tptlib.towers.PrefixEncoder`).

- `encode_images`: the image tower of a ViT that pools its class token, with attention through
  `scaled_dot_product_attention` and a last block that computes only the class token's output; or a
  ModifiedResNet (the RN50 family, micro-CLIP) with its 2x2 average pools as four strided slices
  summed in the pool's order (the same bits, two to three times faster on a CPU); what
  `Clip.encode_views(..., fast=True)` runs, so the model layer reaches it without being handed it.
- one check of which blocks the fast paths can mirror (`block_supported`), one block input
  projection (`in_projection`) and one rest of the block after attention (`block_residual`).

Exact in mathematics and checked against open_clip's own forward by the tests (the ResNet path to
the bit).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# --- the residual attention block, as both fast paths run it --------------------------------------


def block_supported(blk) -> bool:
    """Whether the fast paths can run this residual attention block: an open_clip
    `ResidualAttentionBlock` with a batch-first `nn.MultiheadAttention` (one in-projection, no bias_k,
    no zero attention, no separate key/value norm) and its `ln_1`, `ln_2`, `mlp`, `ls_1`, `ls_2`."""
    attn = getattr(blk, "attn", None)
    return (isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
            and attn.bias_k is None and not attn.add_zero_attn and not hasattr(blk, "ln_1_kv")
            and all(hasattr(blk, name) for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def in_projection(blk, x: torch.Tensor) -> torch.Tensor:
    """The block's `ln_1` and attention in-projection: `[..., T, W] -> [..., T, 3W]` (queries, keys, values)."""
    return F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)


def block_residual(blk, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """The rest of the block after attention: `x + ls_1(out_proj(heads))`, then its MLP branch.

    x: the block's input rows `[..., t, W]` (those that got a query); heads: their attention output,
    heads merged, `[..., t, W]`.
    """
    x = x + blk.ls_1(blk.attn.out_proj(heads))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


# --- the image tower ------------------------------------------------------------------------------


def vit_supported(visual) -> bool:
    """Whether `encode_images` can mirror this image tower: an open_clip ViT pooling its class token."""
    from open_clip.transformer import VisionTransformer
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.output_tokens:
        return False
    if visual.pool_type != "tok" or not visual.transformer.batch_first or visual.transformer.grad_checkpointing:
        return False
    return all(block_supported(blk) for blk in visual.transformer.resblocks)


def _self_attention(blk, x: torch.Tensor, queries: slice = slice(None)) -> torch.Tensor:
    """The block's unmasked self-attention through `scaled_dot_product_attention`, for the query rows
    `queries`: `[N, T, W] -> [N, t, W]`, heads merged, before `out_proj`."""
    attn = blk.attn
    W, H = x.shape[-1], attn.num_heads
    if queries == slice(None):
        q, k, v = in_projection(blk, x).unflatten(-1, (3, H, -1)).permute(2, 0, 3, 1, 4)   # [N, H, T, d]
    else:
        h = blk.ln_1(x)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(h[:, queries], w[:W], None if b is None else b[:W]).unflatten(-1, (H, -1)).transpose(1, 2)
        k, v = F.linear(h, w[W:], None if b is None else b[W:]).unflatten(-1, (2, H, -1)).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v)                                           # [N, H, t, d]
    return a.transpose(1, 2).flatten(2)


def encode_images(model, images: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """`model.encode_image(images)` (unnormalised `[N, D]`), computing only what the pooled output needs.

    For an open_clip ViT that pools its class token: attention goes through
    `scaled_dot_product_attention` (PyTorch's fused kernels) instead of `nn.MultiheadAttention`'s
    inference path, and the last block computes the query, the attention output, the MLP and
    `ln_post` for the class token only (the pooled one; every token still gives its key and value).
    Exact in mathematics (rounding aside). Other image towers run as they are.
    """
    visual = model.visual
    if fast and resnet_supported(visual):
        return _encode_resnet(visual, images)
    if not fast or not vit_supported(visual):
        return model.encode_image(images)
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    for n, blk in enumerate(blocks):
        last = n == len(blocks) - 1
        heads = _self_attention(blk, x, slice(0, 1) if last else slice(None))
        x = block_residual(blk, x[:, :1] if last else x, heads)
    pooled = visual.ln_post(x[:, 0])
    return pooled @ visual.proj if visual.proj is not None else pooled


# --- the ModifiedResNet image tower ---------------------------------------------------------------


def _is_pool2(module) -> bool:
    """An `nn.AvgPool2d(2)` as open_clip builds it (2x2, stride 2, no padding, floor)."""
    return (isinstance(module, torch.nn.AvgPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0)) and not module.ceil_mode
            and module.divisor_override is None)


def pool2(x: torch.Tensor) -> torch.Tensor:
    """`F.avg_pool2d(x, 2)` of a contiguous float32 or float64 `[N, C, H, W]` tensor to the bit: the
    four corners of each window summed in the order the CPU kernel adds them (from 0: top-left,
    top-right, bottom-left, bottom-right), then divided by 4 (exact: a power of two). Half precisions
    (which the kernel sums in float32, as under bf16 autocast) go to `avg_pool2d` itself."""
    if x.dtype not in (torch.float32, torch.float64) or not x.is_contiguous():
        return F.avg_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 4


def _pooled(module, x: torch.Tensor) -> torch.Tensor:
    return pool2(x) if _is_pool2(module) else module(x)


def resnet_supported(visual) -> bool:
    """Whether `encode_images` can mirror this image tower: an open_clip ModifiedResNet on the CPU
    (on a GPU its pools are left to the device's kernel), built as open_clip builds it."""
    from open_clip.modified_resnet import Bottleneck, ModifiedResNet
    if not isinstance(visual, ModifiedResNet) or visual.conv1.weight.device.type != "cpu":
        return False
    blocks = [blk for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4) for blk in layer]
    return all(type(blk) is Bottleneck for blk in blocks) and _is_pool2(visual.avgpool)


def _bottleneck(blk, x: torch.Tensor) -> torch.Tensor:
    """open_clip's `Bottleneck.forward`, its average pools through `pool2`."""
    identity = x
    out = blk.act1(blk.bn1(blk.conv1(x)))
    out = blk.act2(blk.bn2(blk.conv2(out)))
    out = _pooled(blk.avgpool, out)
    out = blk.bn3(blk.conv3(out))
    if blk.downsample is not None:
        for module in blk.downsample:
            identity = _pooled(module, identity)
    out += identity
    return blk.act3(out)


def _encode_resnet(visual, images: torch.Tensor) -> torch.Tensor:
    """open_clip's `ModifiedResNet.forward`, its average pools through `pool2`."""
    x = visual.act1(visual.bn1(visual.conv1(images)))
    x = visual.act2(visual.bn2(visual.conv2(x)))
    x = visual.act3(visual.bn3(visual.conv3(x)))
    x = pool2(x)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        for blk in layer:
            x = _bottleneck(blk, x)
    return visual.attnpool(x)
