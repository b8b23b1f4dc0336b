"""TPT's optimisation step, written once: the engine (`TPT.run`), the notebooks' step-by-step trace
(`tptlib.analysis.tpt_trace`) and the benchmark's FLOP count all go through these functions.

Shapes: B samples, k kept views, C classes, D feature width, context `ctx [B, n_ctx, W]` (one per
sample). `text` encodes the classes for a batch of contexts: a `tptlib.prompts.PromptText` (plain
path) or a `tptlib.towers.PrefixEncoder` (exact fast path), both with `encode(model, ctx, classes)`
and `class_features(model, ctx, chunk)`. The loss is an `objective(kept_feats, class_feats, scale)
-> [B]` of the kept views and the class features: TPT's is the marginal entropy of the kept views
(`entropy_objective`); C-TPT adds a term of the class features alone (`tptlib.methods.ctpt`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..objectives import marginal_entropy


def entropy_objective(kept_feats: torch.Tensor, class_feats: torch.Tensor, scale: float) -> torch.Tensor:
    """TPT's loss per sample `[B]`: the marginal entropy of the kept views `[B, k, D]` against the
    class features `[B, C, D]`."""
    return marginal_entropy(scale * torch.einsum("bkd,bcd->bkc", kept_feats, class_feats))


def feature_grad(kept_feats: torch.Tensor, feats: torch.Tensor, scale: float,
                 objective: Callable = entropy_objective) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss per sample `[B]` of the kept views `[B, k, D]` against class features `feats`
    `[B, C, D]` (taken as given, no graph to the context), and d(sum loss)/d(feats) `[B, C, D]`."""
    with torch.enable_grad():
        leaf = feats.detach().float().requires_grad_(True)
        loss = objective(kept_feats, leaf, scale)
        loss.sum().backward()
    return loss, leaf.grad


def jacobian_grad(jacobian: torch.Tensor, ctx: torch.Tensor, kept_feats: torch.Tensor, feats0: torch.Tensor,
                  scale: float, objective: Callable = entropy_objective) -> torch.Tensor:
    """The first step's loss per sample `[B]`, its gradient w.r.t. the context in `ctx.grad`:
    d(loss)/d(features at the initial context) `[B, C, D]`, times the Jacobian of the features
    `[n_ctx*W, C*D]` (`tptlib.prompts.context_jacobian`)."""
    loss, grad = feature_grad(kept_feats, feats0, scale, objective)
    ctx.grad = (grad.flatten(1) @ jacobian.T).view_as(ctx).to(ctx.dtype)     # [B, n_ctx, W]
    return loss


def backward(model, text, ctx: torch.Tensor, kept_feats: torch.Tensor, feats: torch.Tensor | None, scale: float,
             chunk: int | None = None, loss_scale: float | None = None,
             objective: Callable = entropy_objective) -> torch.Tensor:
    """The loss per sample `[B]` (`objective`); leaves d(sum loss)/d ctx in `ctx.grad`.

    Without a class chunk this is one forward and backward through the text tower. With one,
    the loss gradient w.r.t. the class features is taken first (from `feats`, the current
    features `[B, C, D]`, computed without graph), then each class chunk is re-encoded with a graph
    and back-propagated with its slice of that gradient: the same gradient, with memory bounded
    by the chunk. `loss_scale` (fp16 autocast) scales the backward and is divided out again.
    """
    factor = loss_scale or 1.0
    if chunk is None:
        class_feats = text.class_features(model, ctx)                          # [B, C, D]
        loss = objective(kept_feats, class_feats, scale)
        (loss.sum() * factor).backward()
    else:
        loss, grad = feature_grad(kept_feats, feats, scale, objective)
        grad = grad * factor
        C = grad.shape[1]
        for start in range(0, C, chunk):
            sl = slice(start, min(start + chunk, C))
            text.encode(model, ctx, sl).backward(grad[:, sl])
    if loss_scale:
        ctx.grad.div_(loss_scale)
    return loss


def tune(model, text, ctx: torch.Tensor, kept_feats: torch.Tensor, scale: float, *, steps: int, lr: float,
         weight_decay: float, feats0: torch.Tensor | None = None, chunk: int | None = None,
         loss_scale: float | None = None, jacobian: torch.Tensor | None = None,
         on_step: Callable | None = None, objective: Callable = entropy_objective,
         adam_state: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` AdamW steps on the contexts `ctx` `[B, n_ctx, W]` (updated in place) minimising
    `objective` (default: the marginal entropy) of the kept views `[B, k, D]`, the same views at
    every step.

    feats0: class features at the starting contexts `[B, C, D]`, needed with a class `chunk` (the
    first step's gradient w.r.t. the features) and with `jacobian` (the first step's gradient from
    the context Jacobian, no pass through the text tower). One AdamW over the batched context is B
    independent AdamW runs (AdamW is elementwise and each loss depends on its own context only). A
    sample whose loss or gradient is not finite gets a zero gradient for that step and is marked.
    on_step: called after each step as `on_step(step, ctx, loss)`, loss `[B]` before the step.
    adam_state: AdamW's state to continue from instead of a fresh one (online TPT): `step` (a scalar
    tensor, the steps taken so far), `exp_avg` and `exp_avg_sq` (shaped like `ctx`); replaced in
    place by the state after these steps.

    Returns the first step's loss `[B]` (nan without steps) and the non-finite mask `[B]` (CPU).
    """
    B = ctx.shape[0]
    ctx.requires_grad_(True)
    optimizer = torch.optim.AdamW([ctx], lr=lr, weight_decay=weight_decay)
    if adam_state is not None and float(adam_state["step"]) > 0:
        optimizer.state[ctx] = {"step": adam_state["step"].detach().float().cpu().clone(),
                                "exp_avg": adam_state["exp_avg"].detach().to(ctx).clone(),
                                "exp_avg_sq": adam_state["exp_avg_sq"].detach().to(ctx).clone()}
    first_loss = torch.full((B,), math.nan)
    nonfinite = torch.zeros(B, dtype=torch.bool)
    feats = feats0
    for step in range(steps):
        if step == 0 and jacobian is not None:
            loss = jacobian_grad(jacobian, ctx, kept_feats, feats0, scale, objective)
        else:
            loss = backward(model, text, ctx, kept_feats, feats, scale, chunk, loss_scale, objective)
        if step == 0:
            first_loss = loss.detach().float().cpu()
        bad = ~torch.isfinite(ctx.grad).flatten(1).all(dim=1) | ~torch.isfinite(loss.detach())
        if bad.any():
            nonfinite |= bad.cpu()
            ctx.grad[bad] = 0.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if on_step is not None:
            on_step(step, ctx, loss)
        if chunk is not None and step + 1 < steps:
            with torch.no_grad():
                feats = text.class_features(model, ctx.detach(), chunk)
    if adam_state is not None and steps:
        adam_state.update({k: v.detach().clone() for k, v in optimizer.state[ctx].items()})
    return first_loss, nonfinite
