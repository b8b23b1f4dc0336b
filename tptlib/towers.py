"""The exact fast paths of both towers of an open_clip CLIP, and the pieces they share.

- `encode_images` (defined in `tptlib.image_tower`, the model layer, which `Clip.encode_views`
  calls): the image tower of a ViT that pools its class token, with attention through
  `scaled_dot_product_attention` and a last block that computes only the class token's output, or a
  ModifiedResNet with its 2x2 average pools computed as strided sums (to the bit).
- `PrefixEncoder`: the text tower for learnable-context prompts, with the shared [SOS]+context
  prefix computed once per sample (a key/value cache) and the classes in length buckets.

Both are exact in mathematics and checked against open_clip's own forward by the tests. Both
run open_clip's residual attention blocks themselves, so they share one check of which blocks
they can mirror (`block_supported`), one block input projection (`in_projection`), one rest of
the block after attention (`block_residual`) and one text projection (`project_text`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .image_tower import (block_residual, block_supported, encode_images, in_projection, resnet_supported,  # noqa: F401
                          vit_supported)

__all__ = ["PrefixEncoder", "block_residual", "block_supported", "encode_images", "in_projection", "plan_buckets",
           "prefix_path_unsupported", "project_text", "resnet_supported", "vit_supported"]


def project_text(model, x: torch.Tensor) -> torch.Tensor:
    """The text tower's final projection of pooled states `[..., W] -> [..., D]` (a matrix or a Linear)."""
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


# --- the text tower: shared prefix computed once, classes in length buckets -----------------------


def prefix_path_unsupported(model) -> str | None:
    """Why `PrefixEncoder` cannot mirror this model's text tower (None when it can)."""
    tr = getattr(model, "transformer", None)
    if tr is None or not hasattr(tr, "resblocks"):
        return "no open_clip text transformer"
    if getattr(model, "attn_mask", None) is None:
        return "text attention is not causal"
    if getattr(tr, "grad_checkpointing", False):
        return "gradient checkpointing is on"
    if getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        return f"text pooling {model.text_pool_type!r}"
    for blk in tr.resblocks:
        if not block_supported(blk):
            return f"unsupported block {type(blk).__name__}"
    return None


def plan_buckets(lengths: list[int], overhead: float) -> list[list[int]]:
    """Group class indices by token length into buckets, each padded to its longest member.

    Minimises sum(bucket size x bucket length) + overhead x number of buckets (overhead: the fixed
    cost of one more bucket, in tokens) over partitions of the classes sorted by length. Any
    partition gives the same features (causal attention: padding after a class's end-of-text token
    cannot reach it); only the cost differs.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    distinct = sorted(set(lengths))
    count = [sum(1 for x in lengths if x == u) for u in distinct]
    m = len(distinct)
    best = [0.0] + [float("inf")] * m                # best[j]: cost of the first j distinct lengths
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        n = 0
        for i in range(j, 0, -1):                     # last bucket holds distinct lengths i-1 .. j-1
            n += count[i - 1]
            cost = best[i - 1] + n * distinct[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds, j = [], m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    buckets, pos = [], 0
    for lo, hi in reversed(bounds):
        n = sum(count[lo:hi])
        buckets.append(order[pos:pos + n])
        pos += n
    return buckets


@dataclass
class _Bucket:
    index: torch.Tensor       # [G] class indices (into the slice's classes) in this bucket
    tokens: torch.Tensor      # [G, S, W] class-specific token embeddings + positional embeddings
    last: torch.Tensor        # [G] position of each class's end-of-text token within the bucket
    mask: torch.Tensor        # [S, P+S] bool, True where attention is allowed (prefix + causal)
    last_mask: torch.Tensor   # [G, 1, 1, P+S] bool, the end-of-text row of `mask` for each class
    qkv0: dict = field(default_factory=dict)   # autocast dtype -> [G, S, 3W] layer-0 ln_1 + in-projection


class PrefixEncoder:
    """Exact fast text tower for learnable-context prompts, with the contract of `PromptText.encode`.

    Every class prompt starts with the same P = 1 + n_ctx positions ([SOS] ctx_1..ctx_n) and the text
    transformer is causal, so the hidden states of those positions, at every layer, depend on the
    context only: they are computed once per sample (`[B, P, W]`) and every class position attends
    to their keys/values (a prefix key/value cache), instead of once per class. The class-specific
    positions run in buckets of similar length, each cut after its longest end-of-text token, so
    padding is (nearly) never computed; in the last layer only the end-of-text rows (the pooled
    ones) get a query, an MLP and `ln_final`. Layer 0's projections of class tokens do not depend
    on the context and are computed once per task. All of this is exact in mathematics; in floating
    point it differs from the plain path by rounding only (the tests bound it).

    `prompt`: the task's `tptlib.prompts.PromptText` (its cut token layout and initial context).
    `bucket_overhead`: the cost of one more bucket in token units (default 256 on the CPU, 1024 on
    CUDA: each bucket adds a dozen kernels per layer, which costs more than a little padding); it
    changes speed, never results.
    """

    def __init__(self, model, prompt, bucket_overhead: float | None = None):
        reason = prefix_path_unsupported(model)
        if reason:
            raise ValueError(f"PrefixEncoder cannot run this text tower: {reason}")
        self.model, self.prompt = model, prompt
        self.P = 1 + prompt.n_ctx
        self.sos = prompt.prefix[:1]                                           # [1, 1, W]
        if not torch.equal(prompt.prefix, self.sos.expand_as(prompt.prefix)):
            raise ValueError("class prompts do not share their start token")
        self.lengths = (prompt.eot + 1 - self.P).tolist()                      # class-specific tokens
        if min(self.lengths) < 1:
            raise ValueError("a class prompt has no token after the context")
        device = prompt.prefix.device
        self.bucket_overhead = (bucket_overhead if bucket_overhead is not None
                                else (1024.0 if device.type == "cuda" else 256.0))
        self._plans: dict[tuple[int, int], list[_Bucket]] = {}

    @classmethod
    def maybe(cls, model, prompt, **kw) -> "PrefixEncoder | None":
        """A `PrefixEncoder` when the model's text tower is one it mirrors, else None."""
        if prefix_path_unsupported(model) is not None or prompt.prefix.shape[1] != 1:
            return None                                  # another tower, or prompts without a start token
        return cls(model, prompt, **kw)

    @property
    def n_classes(self) -> int:
        return len(self.lengths)

    def _plan(self, start: int, stop: int) -> list[_Bucket]:
        key = (start, stop)
        if key in self._plans:
            return self._plans[key]
        model, P = self.model, self.P
        cast = model.transformer.get_cast_dtype()
        pos = model.positional_embedding
        plan = []
        for members in plan_buckets(self.lengths[start:stop], self.bucket_overhead):
            idx = torch.tensor(members, dtype=torch.long, device=pos.device)
            lens = torch.tensor([self.lengths[start + i] for i in members], device=pos.device)
            S = int(lens.max())
            tokens = self.prompt.suffix[start + idx, :S].to(cast) + pos[P:P + S].to(cast)     # [G, S, W]
            i = torch.arange(S, device=pos.device)[:, None]
            j = torch.arange(P + S, device=pos.device)[None, :]
            mask = j <= P + i                                                   # [S, P+S]
            last = lens - 1
            last_mask = mask[last][:, None, None, :]                            # [G, 1, 1, P+S]
            plan.append(_Bucket(idx, tokens, last, mask, last_mask))
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def prefix_states(self, ctx: torch.Tensor) -> list:
        """Run the shared prefix through the tower: per layer `(k, v)` `[B, H, P, d]`."""
        model, P = self.model, self.P
        cast = model.transformer.get_cast_dtype()
        B = ctx.shape[0]
        x = torch.cat([self.sos.expand(B, -1, -1).to(cast), ctx.to(cast)], dim=1) \
            + model.positional_embedding[:P].to(cast)                           # [B, P, W]
        blocks = model.transformer.resblocks
        kv = []
        for n, blk in enumerate(blocks):
            H = blk.attn.num_heads
            q, k, v = in_projection(blk, x).unflatten(-1, (3, H, -1)).permute(2, 0, 3, 1, 4)   # each [B, H, P, d]
            kv.append((k, v))
            if n == len(blocks) - 1:
                break                                                          # the last layer's prefix output feeds nothing
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # [B, H, P, d]
            x = block_residual(blk, x, a.transpose(1, 2).flatten(2))
        return kv

    def _layer0_qkv(self, bucket: _Bucket) -> torch.Tensor:
        """Layer 0's in-projection of the class tokens: the same for every context, so computed once
        (per autocast dtype, under the caller's autocast, as the plain path computes it)."""
        device = bucket.tokens.device.type
        key = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if key not in bucket.qkv0:
            blk = self.model.transformer.resblocks[0]
            with torch.no_grad():
                bucket.qkv0[key] = in_projection(blk, bucket.tokens)
        return bucket.qkv0[key]

    def _bucket_forward(self, bucket: _Bucket, kv: list) -> torch.Tensor:
        """Pooled (end-of-text, after ln_final) states `[B, G, W]` of one bucket's classes."""
        model = self.model
        blocks = model.transformer.resblocks
        B = kv[0][0].shape[0]
        G, S, W = bucket.tokens.shape
        x = bucket.tokens                                                       # [G, S, W]; [B, G, S, W] after layer 0
        for n, blk in enumerate(blocks):
            H = blk.attn.num_heads
            last_layer = n == len(blocks) - 1
            qkv = self._layer0_qkv(bucket) if n == 0 else in_projection(blk, x)
            qkv = qkv.unflatten(-1, (3, H, -1))                                 # [(B,) G, S, 3, H, d]
            if n == 0:
                qkv = qkv.unsqueeze(0).expand(B, -1, -1, -1, -1, -1)
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)                             # each [B, G, H, S, d]
            kp, vp = kv[n]                                                      # [B, H, P, d]
            kp = kp.unsqueeze(1).expand(-1, G, -1, -1, -1)
            vp = vp.unsqueeze(1).expand(-1, G, -1, -1, -1)
            k = torch.cat([kp, k], dim=3).flatten(0, 1)                         # [B*G, H, P+S, d]
            v = torch.cat([vp, v], dim=3).flatten(0, 1)
            if last_layer:                                                      # only the end-of-text rows are pooled
                rows = bucket.last.view(1, G, 1, 1, 1).expand(B, G, H, 1, q.shape[-1])
                q = torch.gather(q, 3, rows).flatten(0, 1)                      # [B*G, H, 1, d]
                mask = bucket.last_mask.unsqueeze(0).expand(B, -1, -1, -1, -1).flatten(0, 1)
                xs = x if n > 0 else x.unsqueeze(0).expand(B, -1, -1, -1)
                x = torch.gather(xs, 2, bucket.last.view(1, G, 1, 1).expand(B, G, 1, W))   # [B, G, 1, W]
            else:
                q, mask = q.flatten(0, 1), bucket.mask
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)          # [B*G, H, S|1, d]
            a = a.unflatten(0, (B, G)).transpose(2, 3).flatten(3)               # [B, G, S|1, W]
            x = block_residual(blk, x, a)
        return model.ln_final(x[:, :, 0])                                       # [B, G, W]

    def encode(self, model, ctx: torch.Tensor, classes: slice = slice(None)) -> torch.Tensor:
        """L2-normalised features of a slice of classes for contexts `[B, n_ctx, W]` -> `[B, c, D]`."""
        start, stop, _ = classes.indices(self.n_classes)
        kv = self.prefix_states(ctx)
        parts, order = [], []
        for bucket in self._plan(start, stop):
            parts.append(self._bucket_forward(bucket, kv))
            order.append(bucket.index)
        x = torch.cat(parts, dim=1)                                             # [B, c, W] bucket order
        inverse = torch.empty_like(torch.cat(order))
        inverse[torch.cat(order)] = torch.arange(inverse.numel(), device=inverse.device)
        x = x[:, inverse]
        return F.normalize(project_text(model, x).float(), dim=-1)

    def class_features(self, model, ctx: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """L2-normalised class features for contexts `[B, n_ctx, W]` -> `[B, C, D]`, `chunk` classes at a time."""
        C = self.n_classes
        chunk = chunk or C
        return torch.cat([self.encode(model, ctx, slice(s, min(s + chunk, C))) for s in range(0, C, chunk)], dim=1)

