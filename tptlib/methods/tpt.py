"""TPT: test-time prompt tuning of CLIP's text context, one sample (one context) at a time, batched.

The step (loss, gradients, AdamW loop) is `tptlib.methods.tpt_step`; where the context starts
(a phrase, random vectors, a CoOp or CoCoOp checkpoint) is `TPT._prepare` with
`tptlib.methods.tpt_init`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..objectives import check_selection_p, select_confident
from ..prompts import PromptText, build_prompt_text, context_jacobian
from ..towers import PrefixEncoder
from .base import Method
from .output import MethodOutput
from .tpt_init import checkpoint_start
from .tpt_step import entropy_objective, tune

#: classes per forward-mode pass when computing the context Jacobian (`TPT(jacobian=True)`)
JACOBIAN_CLASS_CHUNK = 256


@dataclass
class TPTText:
    """The text side of one task for TPT (what `TPT.prepare` returns)."""

    prompt: PromptText
    init_feats: torch.Tensor | None     # [C, D] class features of the initial context (None: per-sample init)
    meta_net: torch.nn.Module | None    # CoCoOp's meta-network, or None
    encoder: PrefixEncoder | None = None   # the exact fast text path (None: `prompt`'s plain path)
    jacobian: torch.Tensor | None = None   # [n_ctx*W, C*D] d(class features)/d(context) at the initial context

    @property
    def text(self):
        """What encodes the classes for a batch of contexts: the fast path when there is one."""
        return self.encoder if self.encoder is not None else self.prompt


class TPT(Method):
    """Test-time prompt tuning (Shu et al., 2022), exactly as the authors' code runs it by default.

    Per sample: logits of all views with the initial context; keep the int(V * selection_p)
    lowest-entropy views; `steps` AdamW steps on the context minimising the marginal entropy of the
    kept views (the same views at every step); predict view 0 with the tuned context; reset.

    ctx_init: init phrase ("a photo of a") or None for N(0, 0.02^2) vectors (n_ctx of them).
    coop_ckpt: a CoOp checkpoint whose `ctx` initialises (and resets) the context (TPT + CoOp).
    cocoop_ckpt: a CoCoOp checkpoint; its meta-network, fed view 0's image feature, produces the
        context that is then tuned (TPT + CoCoOp); the meta-network itself is not updated.
    fast_text: encode classes with `tptlib.towers.PrefixEncoder` (the shared [SOS]+context prefix
        computed once per sample, classes in length buckets; exact in mathematics). Speed only, so
        not part of `config()`; False runs open_clip's text transformer on the cut sequence.
    jacobian: take the first step's gradient from the Jacobian of the class features w.r.t. the
        context at the initial context, computed once per task (`context_jacobian`): every sample
        starts from that context, so its gradient is that Jacobian applied to d(loss)/d(features),
        and the first step needs no pass through the text tower. Exact in mathematics; costs about
        n_ctx * W one-context text forwards per task and saves about two batched ones per sample,
        so it pays off after roughly n_ctx * W / 2 samples (1024 for ViT-B-16) and holds
        n_ctx * W * C * D floats (4.2 GB at 1000 classes). Speed only, not part of `config()`.
        Not for TPT + CoCoOp, whose starting context differs per sample.
    """

    name = "tpt"
    tunes = True
    paper = "TPT: Shu et al., NeurIPS 2022, arXiv 2209.07511"
    #: the name of TPT started from a prompt-learner checkpoint, by the argument that gives it
    CHECKPOINT_NAMES = {"coop_ckpt": "tpt+coop", "cocoop_ckpt": "tpt+cocoop"}

    def __init__(self, steps: int = 1, lr: float = 5e-3, selection_p: float = 0.1,
                 ctx_init: str | None = "a photo of a", n_ctx: int = 4, coop_ckpt: str | None = None,
                 cocoop_ckpt: str | None = None, weight_decay: float = 0.01, seed: int = 0,
                 fast_text: bool = True, jacobian: bool = False):
        super().__init__()
        self.fast_text, self.jacobian = fast_text, jacobian
        if jacobian and cocoop_ckpt:
            raise ValueError("jacobian=True needs one starting context for all samples; TPT + CoCoOp "
                             "starts each sample from its own (the meta-network's output)")
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        check_selection_p(selection_p)
        if coop_ckpt and cocoop_ckpt:
            raise ValueError("give coop_ckpt or cocoop_ckpt, not both")
        self.steps, self.lr, self.selection_p = steps, lr, selection_p
        self.ctx_init, self.n_ctx, self.weight_decay, self.seed = ctx_init, n_ctx, weight_decay, seed
        self.coop_ckpt, self.cocoop_ckpt = coop_ckpt, cocoop_ckpt
        started_from = "coop_ckpt" if coop_ckpt else "cocoop_ckpt" if cocoop_ckpt else None
        if started_from:
            self.name = self.CHECKPOINT_NAMES[started_from]

    def config(self) -> dict:
        cfg = {"name": self.name, "steps": self.steps, "lr": self.lr, "selection_p": self.selection_p,
               "ctx_init": self.ctx_init, "n_ctx": self.n_ctx, "weight_decay": self.weight_decay}
        if self.ctx_init is None:
            cfg["seed"] = self.seed
        if self.coop_ckpt:
            cfg["coop_ckpt"] = str(self.coop_ckpt)
        if self.cocoop_ckpt:
            cfg["cocoop_ckpt"] = str(self.cocoop_ckpt)
        return cfg

    @torch.no_grad()
    def _prepare(self, clip, classnames):
        ckpt = self.coop_ckpt or self.cocoop_ckpt
        ctx_init = self.ctx_init
        if ckpt and not ctx_init:
            ctx_init = None
        prompt = build_prompt_text(clip, classnames, n_ctx=self.n_ctx, ctx_init=ctx_init,
                                   generator=torch.Generator().manual_seed(self.seed))
        meta_net = None
        if ckpt:
            prompt.init_ctx, meta_net = checkpoint_start(clip, ckpt, prompt.init_ctx.shape, bool(self.cocoop_ckpt))
        init_feats = None
        if meta_net is None:
            init_feats = prompt.class_features(clip.model, prompt.init_ctx.unsqueeze(0))[0]   # [C, D]
        encoder = PrefixEncoder.maybe(clip.model, prompt) if self.fast_text else None
        prepared = TPTText(prompt=prompt, init_feats=init_feats, meta_net=meta_net, encoder=encoder)
        if self.jacobian and self.steps:
            with clip.autocast():
                prepared.jacobian = context_jacobian(clip.model, prepared.text, prompt.init_ctx,
                                                     class_chunk=JACOBIAN_CLASS_CHUNK)
        return prepared

    def objective(self, kept_feats: torch.Tensor, class_feats: torch.Tensor, scale: float) -> torch.Tensor:
        """The loss each step minimises, per sample `[B]`: the marginal entropy of the kept views."""
        return entropy_objective(kept_feats, class_feats, scale)

    def initial_ctx(self, prepared: TPTText, view_feats: torch.Tensor) -> torch.Tensor:
        """The context each sample starts from: `[B, n_ctx, W]`."""
        B = view_feats.shape[0]
        ctx = prepared.prompt.init_ctx.unsqueeze(0).expand(B, -1, -1)
        if prepared.meta_net is not None:
            with torch.no_grad():
                ctx = ctx + prepared.meta_net(view_feats[:, 0].float()).unsqueeze(1)   # CoCoOp: ctx + pi(x)
        return ctx.clone()

    def run(self, clip, prepared: TPTText, view_feats, class_chunk=None, loss_scale=None):
        model, text, scale = clip.model, prepared.text, clip.logit_scale
        B = view_feats.shape[0]
        C = prepared.prompt.n_classes
        chunk = class_chunk if class_chunk and class_chunk < C else None
        start_ctx = self.initial_ctx(prepared, view_feats)                        # [B, n_ctx, W]
        ctx = start_ctx.clone()

        with torch.no_grad():
            feats0 = (prepared.init_feats.unsqueeze(0).expand(B, -1, -1) if prepared.init_feats is not None
                      else text.class_features(model, ctx, chunk))                # [B, C, D]
            view_logits = scale * torch.einsum("bvd,bcd->bvc", view_feats, feats0)   # [B, V, C]
            kept = select_confident(view_logits, self.selection_p)                # [B, k]
        kept_feats = torch.gather(view_feats, 1, kept.unsqueeze(-1).expand(-1, -1, view_feats.shape[-1]))

        first_loss, nonfinite = tune(model, text, ctx, kept_feats, scale, steps=self.steps, lr=self.lr,
                                     weight_decay=self.weight_decay, feats0=feats0, chunk=chunk,
                                     loss_scale=loss_scale, jacobian=prepared.jacobian, objective=self.objective)

        with torch.no_grad():
            final = text.class_features(model, ctx.detach(), chunk) if self.steps else feats0
            logits = scale * torch.einsum("bd,bcd->bc", view_feats[:, 0], final)
        return MethodOutput(logits=logits.float(), logits_before=view_logits[:, 0].float(), loss=first_loss,
                            kept=kept.cpu(), view_logits_before=view_logits.float(), nonfinite=nonfinite,
                            extra={"ctx_shift": (ctx.detach() - start_ctx).norm(dim=(1, 2)).cpu()})
