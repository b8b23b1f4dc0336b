"""The quantities TPT optimises and selects by: entropy, confidence selection, marginal entropy."""
from __future__ import annotations

import math

import torch

from .checks import number


def entropy(logits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dim: `[..., C] -> [...]`, computed in
    `dtype` (a run's records take it in float64)."""
    logp = logits.to(dtype).log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def check_selection_p(selection_p: float) -> float:
    """Refuse a selection ratio that is not a finite number in (0, 1]; returns it as a float."""
    return number("selection_p", selection_p, low=0.0, low_open=True, high=1.0)


def n_selected(n_views: int, selection_p: float) -> int:
    """How many views confidence selection keeps: int(n_views * p), as the authors' code (6 of 64 at 0.1)."""
    check_selection_p(selection_p)
    k = int(n_views * selection_p)
    if k < 1:
        raise ValueError(f"selection_p={selection_p} keeps no view out of {n_views}; use a larger ratio or more views")
    return k


def select_confident(view_logits: torch.Tensor, selection_p: float) -> torch.Tensor:
    """Indices of the int(V * p) lowest-entropy views: `[..., V, C] -> [..., k]` (ascending entropy)."""
    k = n_selected(view_logits.shape[-2], selection_p)
    ent = entropy(view_logits)                                             # [..., V]
    return torch.argsort(ent, dim=-1, descending=False)[..., :k]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the softmaxes over views: `[..., K, C] -> [...]`.

    p_bar = mean_k softmax(logits_k), computed stably as logsumexp_k(log_softmax) - log K;
    loss = -sum_c p_bar_c log p_bar_c. This is NOT the entropy of the mean log-probabilities.
    """
    logp = logits.float().log_softmax(dim=-1)                              # [..., K, C]
    log_pbar = torch.logsumexp(logp, dim=-2) - math.log(logits.shape[-2])  # [..., C]
    log_pbar = torch.clamp(log_pbar, min=torch.finfo(log_pbar.dtype).min)
    return -(log_pbar * log_pbar.exp()).sum(dim=-1)
