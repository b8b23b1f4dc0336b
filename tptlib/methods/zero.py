"""ZERO: test-time adaptation with zero temperature -- a vote over the confident views, no step.

Farina et al., "Frustratingly Easy Test-Time Adaptation of Vision-Language Models", NeurIPS 2024,
arXiv 2405.18330. Authors' code: github.com/FarinaMatteo/zero (`ttas/zero.py`, `ttas/base.py`,
`utils/tools.py`), compared at commit c609f7c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Method
from .output import MethodOutput
from .params import param, unless_default
from .text import check_template_set, ensemble_features, templates

#: the authors' `Zero.set_hyperparams`: 64 views, keep the 30% most confident
GAMMA = 0.3


@dataclass(frozen=True, kw_only=True)
class ZERO(Method):
    """ZERO (Farina et al., NeurIPS 2024): keep the int(V * gamma) lowest-entropy views (19 of 64),
    set the softmax temperature to zero (each kept view votes for its argmax) and predict the most
    voted class. No gradient, no text-side work per sample.

    The authors' rule, step by step, on unscaled logits l = view feature . class feature:
    entropies of softmax(l / T) with T = 1 / exp(logit_scale); keep the lowest int(V * gamma);
    p_bar = sum over kept views of softmax(l / eps), eps = float32's machine epsilon (one-hot
    unless two classes are within ~1e-5 in cosine); the prediction is argmax p_bar. A tie between
    classes is broken greedily: walking down the views that were *not* kept, from the most
    confident, the first whose argmax is one of the tied classes wins; the winner gets +1 in p_bar.

    gamma: the retained fraction (the authors' 0.3).
    templates: "tpt" (default: "a photo of a {class}.", the authors' ZERO) or a template set of
        `tptlib.methods.text.templates`: "tip7" is the authors' ZERO+Ensemble (their
        `tip_imagenet_templates`, 7 templates), "openai80" CLIP's 80 templates.

    The stored logits are log(p_bar / sum p_bar), so that softmax gives the vote shares: the
    confidence that calibration (ECE) is computed from is the share of the votes (the +1 of a
    tie-break included) that went to the predicted class.

    Where this differs from the authors' code: (1) their fallback when no remaining view votes for a
    tied class (`break_sample_tie`) indexes the logits with `~ties`, a bitwise NOT of the class
    indices, which selects the classes counted from the end instead of masking the non-tied ones;
    this port reproduces it (`faithful_fallback=True`, default) so that predictions match theirs,
    and with `faithful_fallback=False` takes the tied class with the highest logit in the most
    confident non-kept view instead. (2) Their features come from the fp16 model under autocast
    on a GPU, where l / eps with fp16's epsilon is not one-hot (two classes within ~0.005 in cosine
    share a view's vote); here features and logits are fp32 as in the rest of the engine, so each
    view's vote is whole. (3) Their views are random crops and flips on every dataset
    (`data/augs.py`, `MultiViewCropAndFlip`); here ZERO reads the task's views, as every method does
    (AugMix on the cross-datasets, as TPT). (4) Classes of the task's list, as for every method.
    """

    paper = "ZERO: Farina et al., NeurIPS 2024, arXiv 2405.18330"

    gamma: float = param(GAMMA, "the retained fraction of the views", kind="float", low=0.0, low_open=True, high=1.0)
    templates: str = param("tpt", "template set: 'tpt' (one prompt), 'tip7' (ZERO+Ensemble), 'openai80', ...",
                           kind="str", choices=check_template_set)
    faithful_fallback: bool = param(True, "the authors' tie-break fallback as written (recorded when false)",
                                    kind="bool", record=unless_default("faithful_fallback"))

    @property
    def name(self) -> str:
        return "zero" if self.templates == "tpt" else "zero+ensemble"

    def _prepare(self, clip, classnames):
        return ensemble_features(clip, classnames, templates(self.templates))       # [C, D]

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        temp = 1 / clip.model.logit_scale.detach().float().exp()                  # the authors' `model.temp`
        B, V, _ = view_feats.shape
        l_all = view_feats.float() @ prepared.T                                     # [B, V, C] unscaled
        logits, kept = [], []
        for b in range(B):
            p_bar, keep = zero_vote(l_all[b], temp, self.gamma, self.faithful_fallback)
            logits.append(torch.log((p_bar / p_bar.sum()).clamp_min(torch.finfo(torch.float32).tiny)))
            kept.append(keep)
        view_logits = l_all / temp
        return MethodOutput(logits=torch.stack(logits), logits_before=view_logits[:, 0],
                            loss=torch.full((B,), math.nan), kept=torch.stack(kept).cpu(),
                            view_logits_before=view_logits, nonfinite=torch.zeros(B, dtype=torch.bool))


def zero_vote(l: torch.Tensor, temp: torch.Tensor, gamma: float,
              faithful_fallback: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """ZERO on one sample's unscaled view logits `l` `[V, C]`: the vote counts `p_bar` `[C]` (with the
    tie-break's +1) and the kept view indices `[k]`, most confident first."""
    p = (l / temp).softmax(1)
    entropy = -(p * p.log()).sum(1)
    order = torch.argsort(entropy, descending=False)
    k = int(entropy.shape[0] * gamma)
    keep = order[:k]
    zero_temp = torch.finfo(l.dtype).eps
    p_bar = (l[keep] / zero_temp).softmax(1).sum(0)
    top, pred = torch.max(p_bar, dim=-1)
    ties = [int(pred)] + [c for c in range(p_bar.shape[0]) if c != int(pred) and p_bar[c] == top]
    if len(ties) > 1:
        rest = l[order][k:]                                    # the views not kept, most confident first
        winner = None
        for view_pred in rest.argmax(dim=1).tolist():
            if view_pred in ties:
                winner = view_pred
                break
        if winner is None:
            winner = _fallback(ties, rest[0].clone(), faithful_fallback)
        p_bar[winner] += 1
    return p_bar, keep


def _fallback(ties: list[int], logit: torch.Tensor, faithful: bool) -> int:
    """No remaining view votes for a tied class: the authors' `break_sample_tie` (as written, with
    its `~ties`), or the tied class with the highest logit in the most confident non-kept view."""
    tied = torch.tensor(ties, dtype=torch.int)
    if faithful:
        logit[~tied] = -torch.inf
        return int(torch.argmax(logit, dim=-1))
    masked = torch.full_like(logit, -torch.inf)
    masked[tied.long()] = logit[tied.long()]
    return int(torch.argmax(masked))
