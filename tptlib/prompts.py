"""Learnable prompt context inside open_clip's own text encoder.

Each class prompt is laid out as the authors' CoOp/TPT prompt learner lays it out:

    [SOS] ctx_1 .. ctx_n  <classname tokens> . [EOS] <padding>

The context vectors replace the token embeddings of the init phrase ("a photo of a"), so with the
initial context the class features equal `model.encode_text("a photo of a {c}.")`.

Speed without changing a result: CLIP's text transformer is causal and pools at the end-of-text
token, so nothing after the longest end-of-text position can reach any class feature. The token
sequence is cut there (`cut=True`, the default); `cut=False` keeps the full context length.
Contexts are batched: `ctx [B, n_ctx, W]` gives class features `[B, C, D]`, one prompt per sample.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .clip import Clip


def format_classname(name: str) -> str:
    return name.replace("_", " ")


def encode_token_embeddings(model, embeds: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower from token embeddings: `[N, L, W]`, end-of-text positions `[N]` -> `[N, D]`.

    Mirrors `open_clip.CLIP.encode_text` after its `token_embedding` lookup, for any L up to the
    model's context length (the causal mask is cut to L).
    """
    L = embeds.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeds.to(cast_dtype) + model.positional_embedding[:L].to(cast_dtype)
    mask = model.attn_mask[:L, :L] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]                     # [N, W]
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@dataclass
class PromptText:
    """The text side of one task for a learnable-context prompt.

    Attributes: `prefix [C, 1, W]` (SOS embedding), `suffix [C, L-1-n_ctx, W]` (class tokens, '.',
    EOS, padding up to the cut), `eot [C]`, `init_ctx [n_ctx, W]`, `tokens [C, L]`.
    """

    classnames: list[str]
    tokens: torch.Tensor
    eot: torch.Tensor
    prefix: torch.Tensor
    suffix: torch.Tensor
    init_ctx: torch.Tensor
    n_ctx: int
    prompt_prefix: str

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def embeddings(self, ctx: torch.Tensor, classes: slice = slice(None)) -> torch.Tensor:
        """Prompt embeddings for contexts `[B, n_ctx, W]` -> `[B, C', L, W]` over `classes`."""
        prefix, suffix = self.prefix[classes], self.suffix[classes]
        B, C = ctx.shape[0], prefix.shape[0]
        return torch.cat([
            prefix.unsqueeze(0).expand(B, -1, -1, -1),                   # [B, C, 1, W]
            ctx.unsqueeze(1).expand(-1, C, -1, -1).to(prefix.dtype),      # [B, C, n_ctx, W]
            suffix.unsqueeze(0).expand(B, -1, -1, -1),                   # [B, C, *, W]
        ], dim=2)

    def encode(self, model, ctx: torch.Tensor, classes: slice = slice(None)) -> torch.Tensor:
        """L2-normalised features of a slice of classes for contexts `[B, n_ctx, W]` -> `[B, c, D]`."""
        emb = self.embeddings(ctx, classes)                                    # [B, c, L, W]
        B, c, L, W = emb.shape
        feats = encode_token_embeddings(model, emb.reshape(B * c, L, W), self.eot[classes].repeat(B))
        return F.normalize(feats.reshape(B, c, -1).float(), dim=-1)

    def class_features(self, model, ctx: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """L2-normalised class features for contexts `[B, n_ctx, W]` -> `[B, C, D]`.

        `chunk` bounds how many classes go through the text tower at once (a forward-only bound;
        `TPT` bounds its backward the same way).
        """
        C = self.prefix.shape[0]
        chunk = chunk or C
        return torch.cat([self.encode(model, ctx, slice(s, min(s + chunk, C))) for s in range(0, C, chunk)], dim=1)

def build_prompt_text(clip: Clip, classnames: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                      cut: bool = True, generator: torch.Generator | None = None) -> PromptText:
    """Tokenise the class prompts and take the frozen embeddings around the learnable context.

    With `ctx_init` the context starts as that phrase's token embeddings and n_ctx is the phrase's
    token count; without it, n_ctx vectors ~ N(0, 0.02^2) and the placeholder text is "X X X X".
    """
    model = clip.model
    if ctx_init:
        prompt_prefix = ctx_init.replace("_", " ")
        init_tokens = clip.tokenizer([prompt_prefix])
        n_ctx = int(init_tokens.argmax(dim=-1)[0]) - 1
        with torch.no_grad():
            init_ctx = model.token_embedding(init_tokens.to(clip.device))[0, 1:1 + n_ctx].float()
    else:
        prompt_prefix = " ".join(["X"] * n_ctx)
        width = model.token_embedding.weight.shape[1]
        init_ctx = torch.empty(n_ctx, width).normal_(0, 0.02, generator=generator).to(clip.device)
    prompts = [f"{prompt_prefix} {format_classname(c)}." for c in classnames]
    tokens = clip.tokenizer(prompts).to(clip.device)                      # [C, context_length]
    eot = tokens.argmax(dim=-1)
    if hasattr(clip.tokenizer, "encode"):
        too_long = [p for p in prompts if len(clip.tokenizer.encode(p)) + 2 > tokens.shape[1]]
        if too_long:
            raise ValueError(f"{len(too_long)} prompts do not fit the text context length {tokens.shape[1]}, "
                             f"e.g. {too_long[0]!r}")
    if cut:
        tokens = tokens[:, : int(eot.max()) + 1]
    with torch.no_grad():
        embeds = model.token_embedding(tokens)                            # [C, L, W]
    return PromptText(classnames=list(classnames), tokens=tokens, eot=eot, prefix=embeds[:, :1],
                      suffix=embeds[:, 1 + n_ctx:], init_ctx=init_ctx, n_ctx=n_ctx, prompt_prefix=prompt_prefix)


# --- the exact fast text path: shared prefix computed once, classes in length buckets ----------

def _supports_prefix_path(model) -> str | None:
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
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn.batch_first \
                or not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn \
                or hasattr(blk, "ln_1_kv") or not hasattr(blk, "mlp"):
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

    `bucket_overhead`: the cost of one more bucket in token units (default 256 on the CPU, 1024 on
    CUDA: each bucket adds a dozen kernels per layer, which costs more than a little padding); it
    changes speed, never results.
    """

    def __init__(self, model, prompt: PromptText, bucket_overhead: float | None = None):
        reason = _supports_prefix_path(model)
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
    def maybe(cls, model, prompt: PromptText, **kw) -> "PrefixEncoder | None":
        """A `PrefixEncoder` when the model's text tower is one it mirrors, else None."""
        if _supports_prefix_path(model) is not None:
            return None
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

    def prefix_states(self, ctx: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Run the shared prefix through the tower: per layer `(k, v)` `[B, H, P, d]`."""
        model, P = self.model, self.P
        cast = model.transformer.get_cast_dtype()
        B = ctx.shape[0]
        x = torch.cat([self.sos.expand(B, -1, -1).to(cast), ctx.to(cast)], dim=1) \
            + model.positional_embedding[:P].to(cast)                           # [B, P, W]
        blocks = model.transformer.resblocks
        kv = []
        for n, blk in enumerate(blocks):
            attn = blk.attn
            H = attn.num_heads
            qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.unflatten(-1, (3, H, -1)).permute(2, 0, 3, 1, 4)       # each [B, H, P, d]
            kv.append((k, v))
            if n == len(blocks) - 1:
                break                                                          # the last layer's prefix output feeds nothing
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # [B, H, P, d]
            x = x + blk.ls_1(attn.out_proj(a.transpose(1, 2).flatten(2)))
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return kv

    def _layer0_qkv(self, bucket: _Bucket) -> torch.Tensor:
        """Layer 0's in-projection of the class tokens: the same for every context, so computed once
        (per autocast dtype, under the caller's autocast, as the plain path computes it)."""
        device = bucket.tokens.device.type
        key = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if key not in bucket.qkv0:
            blk = self.model.transformer.resblocks[0]
            with torch.no_grad():
                bucket.qkv0[key] = F.linear(blk.ln_1(bucket.tokens), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        return bucket.qkv0[key]

    def _bucket_forward(self, bucket: _Bucket, kv: list) -> torch.Tensor:
        """Pooled (end-of-text, after ln_final) states `[B, G, W]` of one bucket's classes."""
        model = self.model
        blocks = model.transformer.resblocks
        B = kv[0][0].shape[0]
        G, S, W = bucket.tokens.shape
        x = bucket.tokens                                                       # [G, S, W]; [B, G, S, W] after layer 0
        for n, blk in enumerate(blocks):
            attn = blk.attn
            H = attn.num_heads
            last_layer = n == len(blocks) - 1
            qkv = self._layer0_qkv(bucket) if n == 0 else F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
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
            x = x + blk.ls_1(attn.out_proj(a))
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
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
        proj = model.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    def class_features(self, model, ctx: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """L2-normalised class features for contexts `[B, n_ctx, W]` -> `[B, C, D]`, `chunk` classes at a time."""
        C = self.n_classes
        chunk = chunk or C
        return torch.cat([self.encode(model, ctx, slice(s, min(s + chunk, C))) for s in range(0, C, chunk)], dim=1)


def context_jacobian(model, text, ctx0: torch.Tensor, class_chunk: int | None = None,
                     directions: int = 32) -> torch.Tensor:
    """Jacobian of the L2-normalised class features w.r.t. the context at `ctx0` `[n_ctx, W]`.

    Returns `[n_ctx * W, C * D]` (fp32): row p is d(features)/d(ctx.flatten()[p]). `text` is a
    `PromptText` or a `PrefixEncoder`. Computed by forward-mode AD (`torch.func.jvp`, vmapped over
    `directions` basis vectors at a time, classes `class_chunk` at a time), under the caller's
    autocast, with attention on PyTorch's math kernel (the fused kernels have no forward-mode
    derivative). Costs about n_ctx * W text-tower forwards of one context.
    """
    from torch.func import jvp, vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n_ctx, W = ctx0.shape
    P = n_ctx * W
    C = text.n_classes if isinstance(text, PrefixEncoder) else len(text.classnames)
    chunk = class_chunk or C
    c0 = ctx0.detach().float().unsqueeze(0)                                    # [1, n_ctx, W]
    basis = torch.eye(P, device=c0.device).view(P, 1, n_ctx, W)
    parts = []
    with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        # torch's forward-AD decompositions load through torch.jit.script, which warns of its deprecation
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        for start in range(0, C, chunk):
            classes = slice(start, min(start + chunk, C))
            with torch.no_grad():
                text.encode(model, c0, classes)     # builds the encoder's per-slice caches outside the transforms

            def tangent(v, classes=classes):
                return jvp(lambda c: text.encode(model, c, classes), (c0,), (v,))[1][0]   # [c, D]

            rows = [vmap(tangent)(basis[d:d + directions]).flatten(1).float()             # [d, c*D]
                    for d in range(0, P, directions)]
            parts.append(torch.cat(rows))                                                   # [P, c*D]
    return torch.cat(parts, dim=1)                                                          # [P, C*D]
