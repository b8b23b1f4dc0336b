"""Methods: one class each. Given the model, a task's class names and the view features of a batch
of samples, a method returns view 0's logits (after any test-time adaptation) and diagnostics.

Every method works on a batch: `run(clip, prepared, view_feats [B, V, D])`. The one-sample call
`method.predict(clip, classnames, views)` goes through the same `Engine` with a batch of one, so
there is a single implementation of each method. To add a method, subclass `Method` here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .clip import Clip
from .objectives import entropy, marginal_entropy, select_confident
from .prompts import PromptText, build_prompt_text, context_jacobian, format_classname
from .towers import PrefixEncoder

DEFAULT_TEMPLATE = "a photo of a {}."
#: classes per forward-mode pass when computing the context Jacobian (`TPT(jacobian=True)`)
JACOBIAN_CLASS_CHUNK = 256


@dataclass
class MethodOutput:
    """What a method returns for a batch of B samples with V views and C classes."""

    logits: torch.Tensor                       # [B, C] view 0 after adaptation
    logits_before: torch.Tensor                # [B, C] view 0 with the initial prompt
    loss: torch.Tensor                         # [B] adaptation loss at the first step (nan: no tuning)
    kept: torch.Tensor                         # [B, k] long, views kept by confidence selection (k=0: none)
    view_logits_before: torch.Tensor | None = None   # [B, V, C] all views, initial prompt
    nonfinite: torch.Tensor | None = None      # [B] bool: non-finite loss/gradient under fp16 autocast
    extra: dict = field(default_factory=dict)  # per-sample tensors [B, ...]

    def select(self, idx: torch.Tensor) -> "MethodOutput":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return MethodOutput(self.logits[idx], self.logits_before[idx], self.loss[idx], self.kept[idx],
                            pick(self.view_logits_before), pick(self.nonfinite),
                            {k: v[idx] for k, v in self.extra.items()})

    @staticmethod
    def cat(parts: list["MethodOutput"], order: torch.Tensor | None = None) -> "MethodOutput":
        """Concatenate batch parts; `order[i]` = position in the concatenation of output sample i."""
        def join(ts):
            if any(t is None for t in ts):
                return None
            out = torch.cat(ts)
            return out if order is None else out[order]
        return MethodOutput(join([p.logits for p in parts]), join([p.logits_before for p in parts]),
                            join([p.loss for p in parts]), join([p.kept for p in parts]),
                            join([p.view_logits_before for p in parts]), join([p.nonfinite for p in parts]),
                            {k: join([p.extra[k] for p in parts]) for k in parts[0].extra})


@dataclass
class Prediction:
    """One sample's result from `Method.predict`."""

    logits: torch.Tensor                # [C]
    logits_before: torch.Tensor         # [C]
    loss: float
    kept: list[int]
    view_logits_before: torch.Tensor | None
    fp32_retry: bool = False

    @property
    def pred(self) -> int:
        return int(self.logits.argmax())

    @property
    def pred_before(self) -> int:
        return int(self.logits_before.argmax())

    def topk(self, k: int = 5) -> list[int]:
        return self.logits.topk(min(k, self.logits.numel())).indices.tolist()


class Method:
    """Base class. Subclasses set `name` and implement `_prepare` and `run`."""

    name = "method"
    tunes = False

    def __init__(self):
        self._cache: dict = {}

    def config(self) -> dict:
        """JSON-able parameters that define the method's results (stored with every run)."""
        return {"name": self.name}

    def prepare(self, clip: Clip, classnames: list[str]):
        """The task's text side for this method (computed once per model and class list)."""
        key = (id(clip.model), tuple(classnames))
        if key not in self._cache:
            self._cache = {key: self._prepare(clip, list(classnames))}
        return self._cache[key]

    def _prepare(self, clip: Clip, classnames: list[str]):
        raise NotImplementedError

    def run(self, clip: Clip, prepared, view_feats: torch.Tensor, class_chunk: int | None = None,
            loss_scale: float | None = None) -> MethodOutput:
        raise NotImplementedError

    def predict(self, clip: Clip, classnames: list[str], views: torch.Tensor) -> Prediction:
        """Adapt to one sample and predict it: views `[V, 3, H, W]`, view 0 the original."""
        from .engine import Engine
        out, retried = Engine(clip, self, classnames, batch_size=1).run_views(views.unsqueeze(0))
        return Prediction(out.logits[0], out.logits_before[0], float(out.loss[0]), out.kept[0].tolist(),
                          None if out.view_logits_before is None else out.view_logits_before[0],
                          bool(retried[0]))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _no_tuning_output(clip: Clip, class_feats: torch.Tensor, view_feats: torch.Tensor) -> MethodOutput:
    """Output of a fixed classifier `class_feats [C, D]` on views `[B, V, D]`."""
    view_logits = clip.logit_scale * view_feats @ class_feats.T                 # [B, V, C]
    B = view_feats.shape[0]
    return MethodOutput(logits=view_logits[:, 0], logits_before=view_logits[:, 0],
                        loss=torch.full((B,), math.nan), kept=torch.empty(B, 0, dtype=torch.long),
                        view_logits_before=view_logits, nonfinite=torch.zeros(B, dtype=torch.bool))


class ZeroShot(Method):
    """CLIP zero-shot with one hand-written prompt, "a photo of a {class}." by default."""

    name = "zeroshot"

    def __init__(self, template: str = DEFAULT_TEMPLATE):
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the class name goes; got {template!r}")
        self.template = template

    def config(self) -> dict:
        return {"name": self.name, "template": self.template}

    @torch.no_grad()
    def _prepare(self, clip, classnames):
        tokens = clip.tokenizer([self.template.format(format_classname(c)) for c in classnames]).to(clip.device)
        return F.normalize(clip.model.encode_text(tokens).float(), dim=-1)          # [C, D]

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        return _no_tuning_output(clip, prepared, view_feats)


class Ensemble(Method):
    """CLIP's prompt ensemble: class features averaged over the 80 ImageNet templates (open_clip's)."""

    name = "ensemble"

    def __init__(self, templates: str = "openai"):
        super().__init__()
        if templates not in ("openai", "simple"):
            raise ValueError(f"templates must be 'openai' (80) or 'simple' (open_clip's short list); got {templates!r}")
        self.templates = templates

    def config(self) -> dict:
        return {"name": self.name, "templates": self.templates}

    @torch.no_grad()
    def _prepare(self, clip, classnames):
        from open_clip import build_zero_shot_classifier
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
        templates = OPENAI_IMAGENET_TEMPLATES if self.templates == "openai" else SIMPLE_IMAGENET_TEMPLATES
        weights = build_zero_shot_classifier(clip.model, clip.tokenizer, [format_classname(c) for c in classnames],
                                             templates, num_classes_per_batch=10, device=clip.device,
                                             use_tqdm=False)                        # [D, C]
        return weights.T.float().contiguous()

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        return _no_tuning_output(clip, prepared, view_feats)


@dataclass
class _TPTText:
    prompt: PromptText
    init_feats: torch.Tensor | None     # [C, D] class features of the initial context (None: per-sample init)
    meta_net: torch.nn.Module | None    # CoCoOp's meta-network, or None
    encoder: PrefixEncoder | None = None   # the exact fast text path (None: `prompt`'s plain path)
    jacobian: torch.Tensor | None = None   # [n_ctx*W, C*D] d(class features)/d(context) at the initial context

    @property
    def text(self):
        """What encodes the classes for a batch of contexts: the fast path when there is one."""
        return self.encoder if self.encoder is not None else self.prompt


def load_coop_ctx(path: str | Path) -> torch.Tensor:
    """The learned context `[n_ctx, W]` of a CoOp checkpoint (`state_dict['ctx']`), read weights-only."""
    state = _load_prompt_checkpoint(path)
    if "ctx" not in state:
        raise ValueError(f"{path}: a CoOp checkpoint has state_dict['ctx']; found keys {sorted(state)[:8]}")
    ctx = state["ctx"].float()
    if ctx.dim() != 2:
        raise ValueError(f"{path}: expected a generic context [n_ctx, width]; found shape {tuple(ctx.shape)} "
                         "(class-specific contexts are not part of TPT)")
    return ctx


def _load_prompt_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'state_dict'; found {type(obj).__name__}")
    return {k.removeprefix("prompt_learner."): v for k, v in state.items()}


class CoCoOpMetaNet(torch.nn.Module):
    """CoCoOp's meta-network: image feature -> a shift added to every context vector."""

    def __init__(self, vis_dim: int, ctx_dim: int):
        super().__init__()
        self.linear1 = torch.nn.Linear(vis_dim, vis_dim // 16)
        self.relu = torch.nn.ReLU(inplace=True)
        self.linear2 = torch.nn.Linear(vis_dim // 16, ctx_dim)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))


class TPT(Method):
    """Test-time prompt tuning (Shu et al., 2022), exactly as the authors' code runs it by default.

    Per sample: logits of all views with the initial context; keep the int(V * selection_p)
    lowest-entropy views; `steps` AdamW steps on the context minimising the marginal entropy of the
    kept views (the same views at every step); predict view 0 with the tuned context; reset.

    ctx_init: init phrase ("a photo of a") or None for N(0, 0.02^2) vectors (n_ctx of them).
    coop_ckpt: a CoOp checkpoint whose `ctx` initialises (and resets) the context (TPT + CoOp).
    cocoop_ckpt: a CoCoOp checkpoint; its meta-network, fed view 0's image feature, produces the
        context that is then tuned (TPT + CoCoOp); the meta-network itself is not updated.
    fast_text: encode classes with `PrefixEncoder` (the shared [SOS]+context prefix computed once per
        sample, classes in length buckets; exact in mathematics). Speed only, so not part of
        `config()`; False runs open_clip's text transformer on the cut sequence.
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
        if not 0.0 < selection_p <= 1.0:
            raise ValueError(f"selection_p must be in (0, 1]; got {selection_p}")
        if coop_ckpt and cocoop_ckpt:
            raise ValueError("give coop_ckpt or cocoop_ckpt, not both")
        self.steps, self.lr, self.selection_p = steps, lr, selection_p
        self.ctx_init, self.n_ctx, self.weight_decay, self.seed = ctx_init, n_ctx, weight_decay, seed
        self.coop_ckpt, self.cocoop_ckpt = coop_ckpt, cocoop_ckpt
        if coop_ckpt:
            self.name = "tpt+coop"
        elif cocoop_ckpt:
            self.name = "tpt+cocoop"

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
            state = _load_prompt_checkpoint(ckpt)
            ctx = state.get("ctx")
            if ctx is None or tuple(ctx.shape) != tuple(prompt.init_ctx.shape):
                raise ValueError(f"{ckpt}: expected ctx of shape {tuple(prompt.init_ctx.shape)} (n_ctx x text width); "
                                 f"found {None if ctx is None else tuple(ctx.shape)}")
            prompt.init_ctx = ctx.float().to(clip.device)
            if self.cocoop_ckpt:
                meta = {k.removeprefix("meta_net."): v for k, v in state.items() if k.startswith("meta_net.")}
                vis_dim = clip.embed_dim
                meta_net = CoCoOpMetaNet(vis_dim, prompt.init_ctx.shape[1])
                try:
                    meta_net.load_state_dict(meta)
                except RuntimeError as exc:
                    raise ValueError(f"{ckpt}: the meta-network does not fit image features of width {vis_dim}: {exc}") from exc
                meta_net = meta_net.to(clip.device).eval().requires_grad_(False)
        init_feats = None
        if meta_net is None:
            init_feats = prompt.class_features(clip.model, prompt.init_ctx.unsqueeze(0))[0]   # [C, D]
        encoder = PrefixEncoder.maybe(clip.model, prompt) if self.fast_text else None
        prepared = _TPTText(prompt=prompt, init_feats=init_feats, meta_net=meta_net, encoder=encoder)
        if self.jacobian and self.steps:
            with clip.autocast():
                prepared.jacobian = context_jacobian(clip.model, prepared.text, prompt.init_ctx,
                                                     class_chunk=JACOBIAN_CLASS_CHUNK)
        return prepared

    def initial_ctx(self, prepared: _TPTText, view_feats: torch.Tensor) -> torch.Tensor:
        """The context each sample starts from: `[B, n_ctx, W]`."""
        B = view_feats.shape[0]
        ctx = prepared.prompt.init_ctx.unsqueeze(0).expand(B, -1, -1)
        if prepared.meta_net is not None:
            with torch.no_grad():
                ctx = ctx + prepared.meta_net(view_feats[:, 0].float()).unsqueeze(1)   # CoCoOp: ctx + pi(x)
        return ctx.clone()

    def run(self, clip, prepared: _TPTText, view_feats, class_chunk=None, loss_scale=None):
        model, prompt, scale = clip.model, prepared.text, clip.logit_scale
        B, V, _ = view_feats.shape
        C = len(prepared.prompt.classnames)
        chunk = class_chunk if class_chunk and class_chunk < C else None
        start_ctx = self.initial_ctx(prepared, view_feats)                        # [B, n_ctx, W]
        ctx = start_ctx.clone()

        with torch.no_grad():
            feats0 = (prepared.init_feats.unsqueeze(0).expand(B, -1, -1) if prepared.init_feats is not None
                      else prompt.class_features(model, ctx, chunk))              # [B, C, D]
            view_logits = scale * torch.einsum("bvd,bcd->bvc", view_feats, feats0)   # [B, V, C]
            kept = select_confident(view_logits, self.selection_p)                # [B, k]
        kept_feats = torch.gather(view_feats, 1, kept.unsqueeze(-1).expand(-1, -1, view_feats.shape[-1]))

        ctx.requires_grad_(True)
        optimizer = torch.optim.AdamW([ctx], lr=self.lr, weight_decay=self.weight_decay)
        first_loss = torch.full((B,), math.nan)
        nonfinite = torch.zeros(B, dtype=torch.bool)
        feats = feats0
        for step in range(self.steps):
            if step == 0 and prepared.jacobian is not None:
                loss = self._jacobian_grad(prepared.jacobian, ctx, kept_feats, feats0, scale)
            else:
                loss = self._backward(model, prompt, ctx, kept_feats, feats, scale, chunk, loss_scale)
            if step == 0:
                first_loss = loss.detach().float().cpu()
            bad = ~torch.isfinite(ctx.grad).flatten(1).all(dim=1) | ~torch.isfinite(loss.detach())
            if bad.any():
                nonfinite |= bad.cpu()
                ctx.grad[bad] = 0.0
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            if chunk is not None and step + 1 < self.steps:
                with torch.no_grad():
                    feats = prompt.class_features(model, ctx.detach(), chunk)

        with torch.no_grad():
            final = prompt.class_features(model, ctx.detach(), chunk) if self.steps else feats0
            logits = scale * torch.einsum("bd,bcd->bc", view_feats[:, 0], final)
        return MethodOutput(logits=logits.float(), logits_before=view_logits[:, 0].float(), loss=first_loss,
                            kept=kept.cpu(), view_logits_before=view_logits.float(), nonfinite=nonfinite,
                            extra={"ctx_shift": (ctx.detach() - start_ctx).norm(dim=(1, 2)).cpu()})

    @staticmethod
    def _feature_grad(kept_feats, feats, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginal-entropy loss per sample `[B]` of the kept views against class features `feats`
        `[B, C, D]` (taken as given, no graph to the context), and d(sum loss)/d(feats) `[B, C, D]`."""
        with torch.enable_grad():
            leaf = feats.detach().float().requires_grad_(True)
            loss = marginal_entropy(scale * torch.einsum("bkd,bcd->bkc", kept_feats, leaf))
            loss.sum().backward()
        return loss, leaf.grad

    @staticmethod
    def _jacobian_grad(jacobian, ctx, kept_feats, feats0, scale) -> torch.Tensor:
        """The first step's loss per sample `[B]`, its gradient w.r.t. the context in `ctx.grad`:
        d(loss)/d(features at the initial context), times the Jacobian of the features."""
        loss, grad = TPT._feature_grad(kept_feats, feats0, scale)
        ctx.grad = (grad.flatten(1) @ jacobian.T).view_as(ctx).to(ctx.dtype)     # [B, n_ctx, W]
        return loss

    @staticmethod
    def _backward(model, prompt, ctx, kept_feats, feats, scale, chunk, loss_scale) -> torch.Tensor:
        """Marginal-entropy loss per sample `[B]`; leaves d(sum loss)/d ctx in `ctx.grad`.

        Without a class chunk this is one forward and backward through the text tower. With one,
        the loss gradient w.r.t. the class features is taken first (from `feats`, the current
        features, computed without graph), then each class chunk is re-encoded with a graph and
        back-propagated with its slice of that gradient: the same gradient, with memory bounded
        by the chunk.
        """
        factor = loss_scale or 1.0
        if chunk is None:
            text = prompt.class_features(model, ctx)                               # [B, C, D]
            loss = marginal_entropy(scale * torch.einsum("bkd,bcd->bkc", kept_feats, text))
            (loss.sum() * factor).backward()
        else:
            loss, grad = TPT._feature_grad(kept_feats, feats, scale)
            grad = grad * factor
            C = grad.shape[1]
            for start in range(0, C, chunk):
                sl = slice(start, min(start + chunk, C))
                prompt.encode(model, ctx, sl).backward(grad[:, sl])
        if loss_scale:
            ctx.grad.div_(loss_scale)
        return loss


METHODS = {"zeroshot": ZeroShot, "ensemble": Ensemble, "tpt": TPT}


def make_method(name: str, **kwargs) -> Method:
    """A method by name: zeroshot, ensemble, tpt, tpt-coop (coop_ckpt=...), tpt-cocoop (cocoop_ckpt=...)."""
    key = name.lower().replace("_", "-").replace("+", "-")
    if key in ("tpt-coop", "tpt-cocoop"):
        need = "coop_ckpt" if key == "tpt-coop" else "cocoop_ckpt"
        if not kwargs.get(need):
            raise ValueError(f"method {name!r} needs {need}=<checkpoint path>")
        key = "tpt"
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: zeroshot, ensemble, tpt, tpt-coop, tpt-cocoop")
    return METHODS[key](**kwargs)
