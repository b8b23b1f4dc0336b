"""TPT's first step, taken apart: three properties of a model that decide whether it helps.

TPT's step helps a sample when the kept views are better than view 0 and the step moves view 0
towards the kept views' class, far enough to flip it. Three properties of the model decide that,
each measured here per sample (and summarised per task by ``summarize_first_step``):

1. **Class-specific response** (``class_specific_change``): the part of the step's change of
   view 0's logits that is not common to all classes. A text tower whose class features are
   additive in the context (``t_c(ctx) = g(ctx) + h(c)``) shifts every class alike and cannot
   re-rank; the part that re-ranks is compared with view 0's top-1 margin ("reach").
2. **Sign efficiency** (``sign_efficiency``): Adam's first step is ``lr * sign(g)``; cos(sign(g), g)
   says how much of it goes along the gradient. The same first step is also taken along the plain
   gradient at the sign step's length (``first_step``), to see whether gradient descent points
   towards the kept views where the sign step does not.
3. **View agreement** (``view_agreement``, ``transfer``): the cosine of the kept views' features
   with view 0's, and how the step's change of the kept views' (mean) logits carries over to view
   0's logits: the cosine of the two class-centred changes and the regression coefficient of view
   0's change on the kept views'.

Where the kept views' class ``k`` differs from view 0's top class ``j``, the one gap that decides
the sample is ``z_j - z_k`` and three more numbers (``pair_gradients``) take it apart: the *pair
reach* (the largest first-order change of view 0's gap a context step of the sign step's length can
make, along that gap's own gradient, against the gap: below 1 no direction can flip the sample in
one step); the *pair transfer* (the cosine of the gap's context gradient on the kept views and on
view 0: whether pulling the kept views towards ``k`` pulls view 0 too); and the *pair alignment*
(the cosine of TPT's gradient with the kept views' gap gradient: whether the entropy step is that
pull, rather than a sharpening of other classes).

``first_step`` runs the step exactly as ``TPT.run`` does (its views, its selection, its AdamW first
step) and returns the per-sample tensors the functions above read; ``summarize_first_step`` turns
them into the numbers ``tpt diagnose`` prints. Stable API (the workbook uses it):
``first_step(clip, method, prepared, view_feats)``, ``step_response(model, text, ctx0, delta,
view_feats, scale)``, ``summarize_first_step(fs, labels)``, ``class_specific_change(before,
after)``, ``sign_efficiency(grad)``, ``view_agreement(view_feats, kept)``, ``transfer(kept_delta,
view0_delta)``, ``toward(before, after, target)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: the per-task numbers of ``summarize_first_step``, with what each is (medians over samples)
SUMMARY = {
    "specific_share": "share of the sign step's change of view 0's logits not common to all classes",
    "specific_span": "largest minus smallest class-centred change of view 0's logits (logits)",
    "margin": "view 0's top-1 margin (logits)",
    "reach": "specific_span / margin (1: the step can just flip the median sample)",
    "sign_cos": "cos(sign(g), g) of the first step's gradient g w.r.t. the context",
    "sign_toward": "% of samples whose kept class differs from view 0's where the sign step moves view 0 towards it",
    "grad_toward": "the same for the step along g at the sign step's length",
    "sign_fixed": "wrong -> right after the sign step (TPT's first step)",
    "sign_broken": "right -> wrong after the sign step",
    "grad_fixed": "wrong -> right after the gradient step",
    "grad_broken": "right -> wrong after the gradient step",
    "grad_specific_share": "specific_share of the gradient step",
    "view_cos": "mean cosine of the kept views' image features with view 0's",
    "transfer_cos": "cosine of the class-centred changes of the kept views' mean logits and view 0's logits",
    "transfer_gain": "regression coefficient of view 0's class-centred change on the kept views'",
    "pair_reach": "where the kept class differs from view 0's: how much of view 0's gap to it the best first-order "
                  "step of the sign step's length closes (1: just enough)",
    "pair_flip": "% of those samples where that best step could close the gap at all (pair_reach > 1)",
    "pair_transfer": "cos of the context gradients of that gap on the kept views (mean logits) and on view 0",
    "pair_align": "cos of TPT's gradient and the kept views' gradient of that gap (1: the entropy step is that pull)",
}


def _centred(delta: torch.Tensor) -> torch.Tensor:
    return delta - delta.mean(-1, keepdim=True)


def class_specific_change(before: torch.Tensor, after: torch.Tensor) -> dict[str, torch.Tensor]:
    """How much of a change of logits ``[N, C]`` re-ranks classes, per sample ``[N]``.

    share: |d - mean_c d| / |d| (0: every class moved alike; NaN where nothing moved);
    span: max_c - min_c of the class-centred change d - mean_c d (logits), the most any two classes'
    difference changed; margin: top-1 minus top-2 of ``before``; reach: span / margin.
    """
    d = (after - before).float()
    spec = _centred(d)
    norm = d.norm(dim=-1)
    share = torch.where(norm > 0, spec.norm(dim=-1) / norm.clamp(min=1e-30), torch.full_like(norm, float("nan")))
    span = spec.amax(-1) - spec.amin(-1)
    top2 = before.float().topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    return {"share": share, "span": span, "margin": margin, "reach": span / margin.clamp(min=1e-12)}


def sign_efficiency(grad: torch.Tensor) -> torch.Tensor:
    """cos(sign(g), g) per sample ``[N]`` of gradients ``[N, ...]``: 1 when every coordinate has the
    same size, 1/sqrt(n) when one coordinate holds all of it (NaN for a zero gradient)."""
    g = grad.flatten(1).float()
    return (g.abs().sum(1) / (g.shape[1] ** 0.5 * g.norm(dim=1))).where(g.norm(dim=1) > 0,
                                                                          torch.tensor(float("nan")))


def view_agreement(view_feats: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean cosine ``[N]`` of the kept views' features with view 0's (``view_feats [N, V, D]``,
    ``kept [N, k]`` view indices)."""
    f = torch.nn.functional.normalize(view_feats.float(), dim=-1)
    kf = torch.gather(f, 1, kept.unsqueeze(-1).expand(-1, -1, f.shape[-1]))
    return torch.einsum("nkd,nd->nk", kf, f[:, 0]).mean(1)


def transfer(kept_delta: torch.Tensor, view0_delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """How a change of the kept views' mean logits ``[N, C]`` carries over to view 0's ``[N, C]``.

    cos: cosine of the two class-centred changes (1: view 0 moves as the kept views do);
    gain: <d0, dk> / |dk|^2 of the class-centred changes (1: by as much; 0: not at all).
    """
    dk, d0 = _centred(kept_delta.float()), _centred(view0_delta.float())
    dot = (dk * d0).sum(-1)
    cos = dot / (dk.norm(dim=-1) * d0.norm(dim=-1)).clamp(min=1e-30)
    return {"cos": cos, "gain": dot / (dk.norm(dim=-1) ** 2).clamp(min=1e-30)}


def toward(before: torch.Tensor, after: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """bool ``[N]``: the gap of class ``target`` over the top-1 class of ``before`` grew."""
    top = before.argmax(-1, keepdim=True)
    t = target.view(-1, 1)
    gap0 = before.gather(1, t) - before.gather(1, top)
    gap1 = after.gather(1, t) - after.gather(1, top)
    return (gap1 > gap0)[:, 0]


def step_response(model, text, ctx0: torch.Tensor, delta: torch.Tensor, view_feats: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Logits ``[B, V, C]`` of views ``[B, V, D]`` against the class features at ``ctx0 + delta``
    (``text``: what encodes the classes for a batch of contexts, as in ``tptlib.methods.tpt_step``)."""
    with torch.no_grad():
        feats = text.class_features(model, (ctx0 + delta).detach())
        return scale * torch.einsum("bvd,bcd->bvc", view_feats.float(), feats.float())


@dataclass
class FirstStep:
    """Per-sample tensors of ``first_step`` (B samples, k kept views, C classes)."""

    logits: torch.Tensor          # [B, C] view 0 before the step
    sign: torch.Tensor            # [B, C] view 0 after TPT's first (AdamW, sign) step
    grad: torch.Tensor            # [B, C] view 0 after the step along g at the sign step's length
    kept_logits: torch.Tensor     # [B, C] the kept views' mean logits before
    kept_sign: torch.Tensor       # [B, C] the kept views' mean logits after the sign step
    kept_class: torch.Tensor      # [B] argmax of the kept views' average probabilities
    sign_cos: torch.Tensor        # [B] cos(sign(g), g)
    view_cos: torch.Tensor        # [B] mean cosine of the kept views' features with view 0's
    d_sign: torch.Tensor          # [B, n_ctx, W] the sign step's change of the context
    d_grad: torch.Tensor          # [B, n_ctx, W] the gradient step's (-g / |g| * |d_sign|)
    pair_reach: torch.Tensor      # [B] see ``pair_gradients`` (NaN where the kept class is view 0's)
    pair_transfer: torch.Tensor   # [B]
    pair_align: torch.Tensor      # [B]


def pair_gradients(model, text, ctx0: torch.Tensor, view0: torch.Tensor, kept_feats: torch.Tensor, scale: float,
                   top: torch.Tensor, kept_class: torch.Tensor, g: torch.Tensor, length: torch.Tensor) -> dict:
    """The gap ``z_top - z_kept_class`` of view 0 (``view0 [B, D]``) and of the kept views' mean logits
    (``kept_feats [B, k, D]``), differentiated w.r.t. the context: ``reach`` (``length`` times the
    norm of view 0's gap gradient, over the gap), ``transfer`` (cos of the two gradients) and
    ``align`` (cos of TPT's gradient ``g`` with the kept views'); NaN where ``top == kept_class``."""
    def gap_grad(feats):
        ctx = ctx0.clone().requires_grad_(True)
        z = scale * torch.einsum("b...d,bcd->b...c", feats, text.class_features(model, ctx).float())
        z = z if z.dim() == 2 else z.mean(1)
        gap = z.gather(1, top[:, None])[:, 0] - z.gather(1, kept_class[:, None])[:, 0]
        gap.sum().backward()
        return gap.detach(), ctx.grad.detach().flatten(1)

    gap0, g0 = gap_grad(view0)
    _, gk = gap_grad(kept_feats)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)  # noqa: E731
    differ = top != kept_class
    nan = torch.full_like(gap0, float("nan"))
    return {"reach": torch.where(differ, length * g0.norm(dim=1) / gap0.clamp(min=1e-12), nan),
            "transfer": torch.where(differ, cos(gk, g0), nan),
            "align": torch.where(differ, cos(g.flatten(1).float(), gk), nan)}


def first_step(clip, method, prepared, view_feats: torch.Tensor) -> FirstStep:
    """TPT's first step on a batch of view features ``[B, V, D]`` (``method``: a ``TPT``, ``prepared``:
    its ``prepare(clip, classnames)``), and the same step along the plain gradient.

    The sign step is ``tune`` with one step, exactly what ``TPT.run`` takes; the gradient step moves
    each sample's context by -g/|g| times the length of its sign step.
    """
    from ..methods.tpt_step import backward, tune
    from ..objectives import select_confident

    model, text, scale = clip.model, prepared.text, clip.logit_scale
    view_feats = view_feats.float()
    ctx0 = method.initial_ctx(prepared, view_feats)
    with torch.no_grad():
        feats0 = (prepared.init_feats.unsqueeze(0).expand(len(ctx0), -1, -1) if prepared.init_feats is not None
                  else text.class_features(model, ctx0))
        view_logits = scale * torch.einsum("bvd,bcd->bvc", view_feats, feats0.float())
        kept = select_confident(view_logits, method.selection_p)
    kept_feats = torch.gather(view_feats, 1, kept.unsqueeze(-1).expand(-1, -1, view_feats.shape[-1]))
    ctx = ctx0.clone().requires_grad_(True)
    backward(model, text, ctx, kept_feats, feats0, scale, objective=method.objective)
    g = ctx.grad.detach().clone()
    ctx_sign = ctx0.clone()
    tune(model, text, ctx_sign, kept_feats, scale, steps=1, lr=method.lr, weight_decay=method.weight_decay,
         feats0=feats0, objective=method.objective)
    d_sign = ctx_sign.detach() - ctx0
    length = d_sign.flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1).clamp(min=1e-30)
    d_grad = -g * length.view(-1, *[1] * (g.dim() - 1))
    both = torch.cat([view_feats[:, :1], kept_feats], 1)
    after_sign = step_response(model, text, ctx0, d_sign, both, scale)
    after_grad = step_response(model, text, ctx0, d_grad, view_feats[:, :1], scale)
    kept_view_logits = torch.gather(view_logits, 1, kept.unsqueeze(-1).expand(-1, -1, view_logits.shape[-1]))
    kept_class = kept_view_logits.softmax(-1).mean(1).argmax(-1)
    pair = pair_gradients(model, text, ctx0, view_feats[:, 0], kept_feats, scale, view_logits[:, 0].argmax(-1),
                          kept_class, g, d_sign.flatten(1).norm(dim=1))
    return FirstStep(logits=view_logits[:, 0], sign=after_sign[:, 0], grad=after_grad[:, 0],
                     kept_logits=kept_view_logits.mean(1), kept_sign=after_sign[:, 1:].mean(1),
                     kept_class=kept_class, sign_cos=sign_efficiency(g), view_cos=view_agreement(view_feats, kept),
                     d_sign=d_sign, d_grad=d_grad, pair_reach=pair["reach"], pair_transfer=pair["transfer"],
                     pair_align=pair["align"])


def concat(steps: list[FirstStep]) -> FirstStep:
    """One ``FirstStep`` of several batches."""
    return FirstStep(**{k: torch.cat([getattr(s, k).detach().cpu() for s in steps])
                        for k in FirstStep.__dataclass_fields__})


def summarize_first_step(fs: FirstStep, labels: torch.Tensor) -> dict:
    """The per-task numbers of ``SUMMARY`` (medians over samples; counts; percentages)."""
    def med(t):
        t = t[torch.isfinite(t)]
        return t.median().item() if t.numel() else float("nan")

    sign, grad = class_specific_change(fs.logits, fs.sign), class_specific_change(fs.logits, fs.grad)
    flow = transfer(fs.kept_sign - fs.kept_logits, fs.sign - fs.logits)
    r = {"specific_share": med(sign["share"]), "specific_span": med(sign["span"]), "margin": med(sign["margin"]),
         "reach": med(sign["reach"]), "grad_specific_share": med(grad["share"]), "sign_cos": med(fs.sign_cos),
         "view_cos": med(fs.view_cos), "transfer_cos": med(flow["cos"]), "transfer_gain": med(flow["gain"]),
         "pair_reach": med(fs.pair_reach), "pair_transfer": med(fs.pair_transfer), "pair_align": med(fs.pair_align)}
    known = torch.isfinite(fs.pair_reach)
    r["pair_flip"] = 100 * (fs.pair_reach[known] > 1).float().mean().item() if known.any() else float("nan")
    right0 = fs.logits.argmax(1) == labels
    differ = fs.kept_class != fs.logits.argmax(1)
    for name, after in (("sign", fs.sign), ("grad", fs.grad)):
        right1 = after.argmax(1) == labels
        r[f"{name}_fixed"] = int((right1 & ~right0).sum())
        r[f"{name}_broken"] = int((right0 & ~right1).sum())
        moved = toward(fs.logits, after, fs.kept_class)[differ]
        r[f"{name}_toward"] = 100 * moved.float().mean().item() if moved.numel() else float("nan")
    return r
