"""MTA: MeanShift for Test-time Augmentation -- the mode of the view embeddings, training-free.

Zanella and Ben Ayed, "On the Test-Time Zero-Shot Generalization of Vision-Language Models: Do We
Really Need Prompt Learning?", CVPR 2024, arXiv 2405.02266. Authors' code:
github.com/MaxZanella/MTA (`mta.py`, `main.py`), compared at commit cafafdf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method
from .output import MethodOutput
from .params import param
from .text import prompt_features

#: the authors' defaults (`main.py`: --lambda_y 0.2, --lambda_q 4; `solve_mta`: 5 iterations, 30% neighbours)
LAMBDA_Y, LAMBDA_Q, MAX_ITER, BANDWIDTH_NEIGHBOURS = 0.2, 4.0, 5, 0.3


@dataclass(frozen=True, kw_only=True)
class MTA(Method):
    """MTA (Zanella and Ben Ayed, CVPR 2024): a weighted MeanShift over the embeddings of the views,
    each weighted by an inlierness score, started from view 0; the prediction is the mode against the
    class features. No prompt, no gradient.

    With view features x_i (i = 1..N, N = 64), a Gaussian kernel of bandwidth h (squared: half the
    mean squared distance to the int(0.3 (N - 1)) nearest other views, per view) and the affinity
    A = softmax(logits) softmax(logits)^T of the views' zero-shot predictions, it alternates 5 times

        y   <- softmax( (K(m, x_i) + lambda_q sum_j A_ij y_j) / lambda_y )       (up to 5 times)
        m   <- sum_i y_i K(m, x_i) x_i / sum_i y_i K(m, x_i), then L2-normalised  (up to 5 times)

    each inner loop stopping early when its variable moves by less than 1e-6; y starts uniform, m at
    view 0. Logits are exp(logit_scale) m . class features, with the prompt "a photo of a {class}.".

    lambda_y, lambda_q: the authors' 0.2 and 4 (the same for every dataset).

    Where this differs from the authors' code: their views for MTA are random crops without AugMix
    on every dataset (`augmix=len(set_id) > 1 and args.tpt`); here MTA reads the task's views, as
    every method does (AugMix on the cross-datasets). Their features are computed under fp16
    autocast; here they are fp32.
    """

    name = "mta"
    paper = "MTA: Zanella and Ben Ayed, CVPR 2024, arXiv 2405.02266"

    lambda_y: float = param(LAMBDA_Y, "temperature of the inlierness scores", kind="float", low=0.0, low_open=True)
    lambda_q: float = param(LAMBDA_Q, "weight of the views' affinity in the inlierness scores", kind="float")

    def _prepare(self, clip, classnames):
        return prompt_features(clip, classnames)                                   # [C, D]

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        scale = clip.model.logit_scale.detach().float().exp()
        B = view_feats.shape[0]
        feats = view_feats.float()
        view_logits = feats @ prepared.T * scale                                    # [B, V, C]
        modes = torch.stack([mta_mode(feats[b], view_logits[b], self.lambda_y, self.lambda_q) for b in range(B)])
        logits = modes @ prepared.T * scale
        return MethodOutput(logits=logits, logits_before=view_logits[:, 0], loss=torch.full((B,), math.nan),
                            kept=torch.empty(B, 0, dtype=torch.long), view_logits_before=view_logits,
                            nonfinite=torch.zeros(B, dtype=torch.bool))


def _kernel(mode: torch.Tensor, bandwidth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    dist = torch.norm(feats - mode, dim=-1, p=2)
    return torch.exp(-dist ** 2 / (2 * bandwidth ** 2))


def mta_mode(feats: torch.Tensor, logits: torch.Tensor, lambda_y: float = LAMBDA_Y, lambda_q: float = LAMBDA_Q,
             max_iter: int = MAX_ITER, threshold: float = 1e-6) -> torch.Tensor:
    """The MTA mode `[D]` of one sample's view features `[N, D]` (view 0 first) with their logits `[N, C]`."""
    n = feats.shape[0]
    dist = torch.cdist(feats, feats)
    k = int(BANDWIDTH_NEIGHBOURS * (n - 1))
    nearest = torch.sort(dist, dim=1).values[:, 1:k + 1] ** 2                    # the view itself excluded
    bandwidth = torch.sqrt(0.5 * nearest.mean(dim=1))                            # [N]
    probs = logits.softmax(1)
    affinity = probs @ probs.t()                                                 # [N, N]
    y = torch.ones(n, device=feats.device) / n
    mode = feats[0]
    for _ in range(max_iter):
        density = _kernel(mode, bandwidth, feats)
        for _ in range(max_iter):
            previous = y
            y = F.softmax(1 / lambda_y * (density + lambda_q * torch.sum(affinity * y.unsqueeze(0), dim=1)), dim=-1)
            if torch.norm(previous - y) < threshold:
                break
        for _ in range(max_iter):
            previous = mode
            weights = _kernel(mode, bandwidth, feats) * y
            mode = torch.sum(weights.unsqueeze(1) * feats, dim=0) / torch.sum(weights)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(previous - mode) < threshold:
                break
    return mode
