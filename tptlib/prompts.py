"""Learnable prompt context inside open_clip's own text encoder.

Each class prompt is laid out as the authors' CoOp/TPT prompt learner lays it out:

    [SOS] ctx_1 .. ctx_n  <classname tokens> . [EOS] <padding>

The context vectors replace the token embeddings of the init phrase ("a photo of a"), so with the
initial context the class features equal `model.encode_text("a photo of a {c}.")`.

Speed without changing a result: CLIP's text transformer is causal and pools at the end-of-text
token, so nothing after the longest end-of-text position can reach any class feature. The token
sequence is cut there (`cut=True`, the default); `cut=False` keeps the full context length.
Contexts are batched: `ctx [B, n_ctx, W]` gives class features `[B, C, D]`, one prompt per sample.
`tptlib.towers.PrefixEncoder` is the exact fast path of the same text tower, with the same contract.

Other text towers (`text_tower`): open_clip's `CustomTextCLIP` keeps its text tower in `model.text`
(SigLIP). SigLIP's tokenizer puts no start token, so the context is the prompt's first n_ctx
positions ([SOS] is absent from the layout); its tower is not causal and pools the *last* position of
the full context length (a padding position), not an end-of-text token. There the context reaches
the pooled feature through attention (every position sees every other), the whole sequence runs (no
cut: a padding position is the pooled one, and every token changes it), and the features still
equal `model.encode_text("a photo of a {c}.")` with the initial context. A tower that pools its
first position causally (which no context can reach) or masks its padding (CoCa) is refused.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .clip import Clip
from .towers import project_text


def format_classname(name: str) -> str:
    return name.replace("_", " ")


@dataclass(frozen=True)
class TextTower:
    """Where a model's text tower lives and how it pools: `module` holds `token_embedding`,
    `positional_embedding`, `transformer`, `attn_mask`, `ln_final` and `text_projection` (the model
    itself for open_clip's CLIP, `model.text` for a CustomTextCLIP such as SigLIP); `pool` is
    "argmax" (CLIP's end-of-text token), "eos", "last" or "first"; `causal` whether it has a causal mask."""

    module: torch.nn.Module
    pool: str
    causal: bool

    @property
    def cuttable(self) -> bool:
        """Nothing after the pooled position reaches the feature: the sequence may be cut after it."""
        return self.causal and self.pool in ("argmax", "eos")


def text_tower(model) -> TextTower:
    """The text tower of an open_clip model, refusing (ValueError) one TPT's prompt learner cannot drive."""
    custom = hasattr(model, "text") and hasattr(model.text, "transformer")
    module = model.text if custom else model
    pool = getattr(module, "pool_type", None) if custom else getattr(model, "text_pool_type", "argmax")
    causal = getattr(module, "attn_mask", None) is not None
    if custom and (getattr(module, "cls_emb", None) is not None or getattr(module, "use_pad_mask", False)):
        raise ValueError("this text tower appends a class token or masks its padding (CoCa-like); TPT's prompt "
                         "learner supports open_clip's CLIP and SigLIP text towers")
    if pool not in ("argmax", "eos", "last", "first"):
        raise ValueError(f"text pooling {pool!r} is not supported by TPT's prompt learner "
                         "(argmax, eos, last or first)")
    if pool == "first" and causal:
        raise ValueError("this text tower pools its first position under a causal mask: no context after it "
                         "can change a class feature, so there is nothing for TPT to tune")
    return TextTower(module=module, pool=pool, causal=causal)


def encode_token_embeddings(model, embeds: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower from token embeddings: `[N, L, W]`, pooled positions `[N]` -> `[N, D]`.

    Mirrors `open_clip.CLIP.encode_text` (or a CustomTextCLIP's `TextTransformer.forward`) after its
    `token_embedding` lookup, for any L up to the model's context length (a causal mask is cut to L).
    `eot` holds the position each row pools (`PromptText.eot`: the end-of-text token, or the last
    position for a tower that pools there).
    """
    tower = text_tower(model).module
    L = embeds.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = embeds.to(cast_dtype) + tower.positional_embedding[:L].to(cast_dtype)
    mask = tower.attn_mask[:L, :L] if tower.attn_mask is not None else None
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]                     # [N, W]
    return project_text(tower, x)


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

    @property
    def n_classes(self) -> int:
        return self.prefix.shape[0]

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
        C = self.n_classes
        chunk = chunk or C
        return torch.cat([self.encode(model, ctx, slice(s, min(s + chunk, C))) for s in range(0, C, chunk)], dim=1)

def _content_length(clip: Clip, text: str) -> int:
    """Tokens of `text` that are not padding (padding: the last position of the empty text's tokens)."""
    tokens = clip.tokenizer([text, ""])
    return int((tokens[0] != tokens[1, -1]).sum())


def start_tokens(clip: Clip) -> int:
    """How many tokens the tokenizer puts before a text (CLIP's [SOS]: 1; SigLIP's: 0)."""
    tokens = clip.tokenizer(["a", "b"])
    return int(tokens[0, 0] == tokens[1, 0])


def phrase_length(clip: Clip, phrase: str) -> int:
    """How many context vectors a phrase starts the context as: its token count with `clip`'s
    tokenizer ("_" read as a space)."""
    return _content_length(clip, phrase.replace("_", " ")) - _content_length(clip, "")


def build_prompt_text(clip: Clip, classnames: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                      cut: bool = True, generator: torch.Generator | None = None) -> PromptText:
    """Tokenise the class prompts and take the frozen embeddings around the learnable context.

    With `ctx_init` the context starts as that phrase's token embeddings and n_ctx is the phrase's
    token count; without it, n_ctx vectors ~ N(0, 0.02^2) and the placeholder text is "X X X X".
    `cut` applies only to a causal tower that pools an end-of-text token (see the module docstring).
    """
    tower = text_tower(clip.model)
    embedding = tower.module.token_embedding
    start = start_tokens(clip)
    if ctx_init:
        prompt_prefix = ctx_init.replace("_", " ")
        init_tokens = clip.tokenizer([prompt_prefix])
        n_ctx = phrase_length(clip, ctx_init)
        with torch.no_grad():
            init_ctx = embedding(init_tokens.to(clip.device))[0, start:start + n_ctx].float()
    else:
        prompt_prefix = " ".join(["X"] * n_ctx)
        if phrase_length(clip, prompt_prefix) != n_ctx:
            raise ValueError(f"this model's tokenizer does not read {prompt_prefix!r} as {n_ctx} tokens; start the "
                             "context from a phrase (ctx_init) instead")
        width = embedding.weight.shape[1]
        init_ctx = torch.empty(n_ctx, width).normal_(0, 0.02, generator=generator).to(clip.device)
    prompts = [f"{prompt_prefix} {format_classname(c)}." for c in classnames]
    tokens = clip.tokenizer(prompts).to(clip.device)                      # [C, context_length]
    if hasattr(clip.tokenizer, "encode"):
        too_long = [p for p in prompts if len(clip.tokenizer.encode(p)) + 2 > tokens.shape[1]]
        if too_long:
            raise ValueError(f"{len(too_long)} prompts do not fit the text context length {tokens.shape[1]}, "
                             f"e.g. {too_long[0]!r}")
    eot = pooled_positions(clip, tower, tokens)
    if cut and tower.cuttable:
        tokens = tokens[:, : int(eot.max()) + 1]
    with torch.no_grad():
        embeds = embedding(tokens)                                        # [C, L, W]
    return PromptText(classnames=list(classnames), tokens=tokens, eot=eot, prefix=embeds[:, :start],
                      suffix=embeds[:, start + n_ctx:], init_ctx=init_ctx, n_ctx=n_ctx, prompt_prefix=prompt_prefix)


def pooled_positions(clip: Clip, tower: TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """The position each prompt's feature is pooled from `[C]`, as the tower's `text_global_pool` takes it."""
    C, L = tokens.shape
    if tower.pool == "argmax":
        return tokens.argmax(dim=-1)
    if tower.pool == "eos":
        return (tokens == getattr(tower.module, "eos_id", None)).int().argmax(dim=-1)
    return torch.full((C,), L - 1 if tower.pool == "last" else 0, dtype=torch.long, device=tokens.device)


def context_jacobian(model, text, ctx0: torch.Tensor, class_chunk: int | None = None,
                     directions: int = 32) -> torch.Tensor:
    """Jacobian of the L2-normalised class features w.r.t. the context at `ctx0` `[n_ctx, W]`.

    Returns `[n_ctx * W, C * D]` (fp32): row p is d(features)/d(ctx.flatten()[p]). `text` is a
    `PromptText` or a `tptlib.towers.PrefixEncoder`. Computed by forward-mode AD (`torch.func.jvp`, vmapped over
    `directions` basis vectors at a time, classes `class_chunk` at a time), under the caller's
    autocast, with attention on PyTorch's math kernel (the fused kernels have no forward-mode
    derivative). Costs about n_ctx * W text-tower forwards of one context.
    """
    from torch.func import jvp, vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n_ctx, W = ctx0.shape
    P = n_ctx * W
    C = text.n_classes
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

