"""TPT: test-time prompt tuning of CLIP's text context, one sample (one context) at a time, batched.

The step (loss, gradients, AdamW loop) is `tptlib.methods.tpt_step`; where the context starts
(a phrase, random vectors, a CoOp or CoCoOp checkpoint) is `TPT._prepare` with
`tptlib.methods.tpt_init`. `TPT(reset=False)` is online TPT: the context and AdamW's state are
carried from one sample to the next over the test stream (`tptlib.methods.online`'s contract:
`init_state`, `apply_update`, `run_online`), so a stored run resumes exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..objectives import select_confident
from ..prompts import PromptText, build_prompt_text, context_jacobian, phrase_length
from ..towers import PrefixEncoder
from .base import Method
from .output import MethodOutput
from .params import param, unless_default
from .tpt_init import checkpoint_start
from .tpt_step import entropy_objective, tune

#: the most tuning steps per sample a TPT accepts (the paper takes 1; each costs a text-tower pass)
MAX_STEPS = 1000
#: the largest learning rate: AdamW's first step is lr / (1 - 0.9), which must stay a float32
MAX_LR = 1e37
#: context vectors of a random start when n_ctx is not given (the authors' default)
DEFAULT_N_CTX = 4
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
    def class_encoder(self):
        """What encodes the classes for a batch of contexts: the fast path when there is one."""
        return self.encoder if self.encoder is not None else self.prompt

    @property
    def text(self):
        """The former name of `class_encoder`, which `tptlib.analysis.diagnose` still reads."""
        return self.class_encoder


def _phrase(text: str) -> None:
    if text and not text.strip():
        raise ValueError(f"must be a phrase of at least one word, or '' / none for random N(0, 0.02^2) "
                         f"vectors; got {text!r}")


def _random_start(method) -> bool:
    return not method.ctx_init


@dataclass(frozen=True, kw_only=True)
class TPT(Method):
    """Test-time prompt tuning (Shu et al., 2022), exactly as the authors' code runs it by default.

    Per sample: logits of all views with the initial context; keep the int(V * selection_p)
    lowest-entropy views; `steps` AdamW steps on the context minimising the marginal entropy of the
    kept views (the same views at every step); predict view 0 with the tuned context; reset.

    ctx_init: init phrase ("a photo of a"), or None / "" for N(0, 0.02^2) vectors (n_ctx of them,
        drawn from `seed`, which is then recorded).
    n_ctx: context vectors of a random start (default 4). With a phrase the context is the phrase's
        tokens: n_ctx is then what the phrase resolves to with the model's tokenizer (`bind` records
        it), and a different n_ctx is refused, since it would be ignored.
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

    tunes = True
    paper = "TPT: Shu et al., NeurIPS 2022, arXiv 2209.07511"
    #: the name of TPT started from a prompt-learner checkpoint, by the argument that gives it
    CHECKPOINT_NAMES = {"coop_ckpt": "tpt+coop", "cocoop_ckpt": "tpt+cocoop"}

    steps: int = param(1, "tuning steps per sample", kind="int", low=0, high=MAX_STEPS)
    lr: float = param(5e-3, "AdamW learning rate", kind="float", low=0.0, low_open=True, high=MAX_LR)
    selection_p: float = param(0.1, "fraction of views kept by confidence selection (0.1: 6 of 64)", kind="float",
                               low=0.0, low_open=True, high=1.0)
    ctx_init: str | None = param("a photo of a", "phrase the context starts from; none or '' for random vectors",
                                 kind="str", optional=True, choices=_phrase)
    n_ctx: int | None = param(None, "context vectors of a random start (default 4); with a phrase, its token "
                              "count", kind="int", low=1, optional=True)
    weight_decay: float = param(0.01, "AdamW weight decay", kind="float", low=0.0, high=1.0)
    seed: int = param(0, "seed of a random start's vectors (recorded when the start is random)", kind="int", low=0,
                      record=_random_start)
    coop_ckpt: str | None = param(None, "CoOp checkpoint whose ctx initialises the context (tpt-coop)", kind="path",
                                  optional=True, record=unless_default("coop_ckpt"))
    cocoop_ckpt: str | None = param(None, "CoCoOp checkpoint: its context and meta-network (tpt-cocoop)",
                                    kind="path", optional=True, record=unless_default("cocoop_ckpt"))
    fast_text: bool = param(True, "the exact fast text path (speed only)", kind="bool", speed_only=True)
    jacobian: bool = param(False, "the first step's gradient from the context Jacobian, once per task (speed "
                           "only; for long runs on a GPU)", kind="bool", speed_only=True)
    reset: bool = param(True, "start every sample from the initial context (the paper); false: carry the context "
                        "and AdamW's state over the stream (online TPT)", kind="bool", record=unless_default("reset"))

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "online", not self.reset)   # no reset: a state over the stream (`kind` "online")

    @property
    def name(self) -> str:
        started_from = "coop_ckpt" if self.coop_ckpt else "cocoop_ckpt" if self.cocoop_ckpt else None
        return self.CHECKPOINT_NAMES[started_from] if started_from else "tpt"

    def check(self) -> None:
        if self.jacobian and self.cocoop_ckpt:
            raise ValueError("jacobian=True needs one starting context for all samples; TPT + CoCoOp "
                             "starts each sample from its own (the meta-network's output)")
        if self.coop_ckpt and self.cocoop_ckpt:
            raise ValueError("give coop_ckpt or cocoop_ckpt, not both")
        if not self.reset and (self.jacobian or self.cocoop_ckpt):
            raise ValueError(f"reset=False carries one context over the stream; it cannot run with "
                             f"{'jacobian=True (taken at the initial context)' if self.jacobian else 'cocoop_ckpt (a context per sample)'}")

    def context_length(self, clip) -> int:
        """How many context vectors the context has with `clip`: the phrase's token count, or n_ctx
        (default 4) for a random start. Refuses an n_ctx that the phrase would override."""
        if not self.ctx_init:
            return DEFAULT_N_CTX if self.n_ctx is None else self.n_ctx
        length = phrase_length(clip, self.ctx_init)
        if self.n_ctx is not None and self.n_ctx != length:
            raise ValueError(f"{self.name}: n_ctx={self.n_ctx} would be ignored: the context starts as ctx_init "
                             f"{self.ctx_init!r}, {length} tokens with this model's tokenizer; drop n_ctx, or give "
                             f"ctx_init none for {self.n_ctx} random vectors")
        return length

    def bind(self, clip, task) -> "TPT":
        method = super().bind(clip, task)
        return dataclasses.replace(method, n_ctx=method.context_length(clip))

    @torch.no_grad()
    def _prepare(self, clip, classnames):
        ckpt = self.coop_ckpt or self.cocoop_ckpt
        prompt = build_prompt_text(clip, classnames, n_ctx=self.context_length(clip), ctx_init=self.ctx_init or None,
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
                prepared.jacobian = context_jacobian(clip.model, prepared.class_encoder, prompt.init_ctx,
                                                     class_chunk=JACOBIAN_CLASS_CHUNK)
        return prepared

    def objective(self, kept_feats: torch.Tensor, class_feats: torch.Tensor, scale: float) -> torch.Tensor:
        """The loss each step minimises, per sample `[B]`: the marginal entropy of the kept views."""
        return entropy_objective(kept_feats, class_feats, scale)

    def predict_logits(self, view_feats: torch.Tensor, class_feats: torch.Tensor, scale: float) -> torch.Tensor:
        """The prediction `[B, C]` from the views `[B, V, D]` and the tuned class features `[B, C, D]`:
        view 0's logits."""
        return scale * torch.einsum("bd,bcd->bc", view_feats[:, 0], class_feats)

    def initial_ctx(self, prepared: TPTText, view_feats: torch.Tensor) -> torch.Tensor:
        """The context each sample starts from: `[B, n_ctx, W]`."""
        B = view_feats.shape[0]
        ctx = prepared.prompt.init_ctx.unsqueeze(0).expand(B, -1, -1)
        if prepared.meta_net is not None:
            with torch.no_grad():
                ctx = ctx + prepared.meta_net(view_feats[:, 0].float()).unsqueeze(1)   # CoCoOp: ctx + pi(x)
        return ctx.clone()

    def run(self, clip, prepared: TPTText, view_feats, class_chunk=None, loss_scale=None):
        if self.online:            # a batch on a fresh state: the first samples of a stream
            return self.run_online(clip, prepared, self.init_state(prepared), view_feats, class_chunk, loss_scale)
        return self._tune(clip, prepared, view_feats, self.initial_ctx(prepared, view_feats), class_chunk, loss_scale)

    def _tune(self, clip, prepared: TPTText, view_feats, start_ctx, class_chunk=None, loss_scale=None,
              adam_state: dict | None = None) -> MethodOutput:
        """Select, tune and predict a batch `[B, V, D]` from the contexts `start_ctx` `[B, n_ctx, W]`
        (AdamW continuing from `adam_state`, updated in place, when given)."""
        model, text, scale = clip.model, prepared.class_encoder, clip.logit_scale
        B = view_feats.shape[0]
        C = prepared.prompt.n_classes
        chunk = class_chunk if class_chunk and class_chunk < C else None
        ctx = start_ctx.clone()
        carried = adam_state is not None

        with torch.no_grad():
            initial = (prepared.init_feats.unsqueeze(0).expand(B, -1, -1) if prepared.init_feats is not None
                       else None)                                                 # [B, C, D] at the initial context
            feats0 = initial if initial is not None and not carried else text.class_features(model, ctx, chunk)
            view_logits = scale * torch.einsum("bvd,bcd->bvc", view_feats, feats0)   # [B, V, C]
            kept = select_confident(view_logits, self.selection_p)                # [B, k]
            before = scale * torch.einsum("bd,bcd->bc", view_feats[:, 0], initial) if carried else view_logits[:, 0]
        kept_feats = torch.gather(view_feats, 1, kept.unsqueeze(-1).expand(-1, -1, view_feats.shape[-1]))

        first_loss, nonfinite = tune(model, text, ctx, kept_feats, scale, steps=self.steps, lr=self.lr,
                                     weight_decay=self.weight_decay, feats0=feats0, chunk=chunk,
                                     loss_scale=loss_scale, jacobian=prepared.jacobian, objective=self.objective,
                                     adam_state=adam_state)

        with torch.no_grad():
            final = text.class_features(model, ctx.detach(), chunk) if self.steps else feats0
            logits = self.predict_logits(view_feats, final, scale)
        extra = {"ctx_shift": (ctx.detach() - start_ctx).norm(dim=(1, 2)).cpu()}
        if carried:
            extra["ctx"] = ctx.detach()          # the context the next sample of the stream starts from
        return MethodOutput(logits=logits.float(), logits_before=before.float(), loss=first_loss,
                            kept=kept.cpu(), view_logits_before=view_logits.float(), nonfinite=nonfinite, extra=extra)

    # online TPT (reset=False): the state is the context and AdamW's state, as `tptlib.methods.online` has it

    def init_state(self, prepared: TPTText) -> dict:
        """The state at the start of a stream: the initial context, AdamW's moments at 0, no step taken."""
        ctx = prepared.prompt.init_ctx.detach().float().clone()
        return {"ctx": ctx, "exp_avg": torch.zeros_like(ctx), "exp_avg_sq": torch.zeros_like(ctx), "step": 0.0}

    def apply_update(self, prepared: TPTText, state: dict, update: dict) -> None:
        """A sample's update is the state it left: the tuned context and AdamW's state after its steps."""
        device = state["ctx"].device
        for key in ("ctx", "exp_avg", "exp_avg_sq"):
            state[key] = update[key].to(device=device, dtype=torch.float32).clone()
        state["step"] = float(update["step"])

    def run_online(self, clip, prepared: TPTText, state: dict, view_feats, class_chunk=None, loss_scale=None):
        """The samples of a batch `[B, V, D]` in order, each tuned from the context (and AdamW state)
        the previous one left; `state` ends as the last one left it."""
        parts = []
        for b in range(view_feats.shape[0]):
            adam = {"step": torch.tensor(state["step"]), "exp_avg": state["exp_avg"].unsqueeze(0),
                    "exp_avg_sq": state["exp_avg_sq"].unsqueeze(0)}
            out = self._tune(clip, prepared, view_feats[b:b + 1], state["ctx"].unsqueeze(0), class_chunk,
                             loss_scale, adam_state=adam)
            update = {"ctx": out.extra.pop("ctx")[0].float().cpu(), "exp_avg": adam["exp_avg"][0].float().cpu(),
                      "exp_avg_sq": adam["exp_avg_sq"][0].float().cpu(),
                      "step": torch.tensor(float(adam["step"]), dtype=torch.float64)}
            self.apply_update(prepared, state, update)
            out.updates = [update]
            parts.append(out)
        return MethodOutput.cat(parts)
