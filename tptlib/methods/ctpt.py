"""C-TPT: TPT whose loss also rewards spreading the class text features apart, for calibration.

Yoon et al., "C-TPT: Calibrated Test-Time Prompt Tuning for Vision-Language Models via Text Feature
Dispersion", ICLR 2024, arXiv 2403.14119. Authors' code: github.com/hee-suk-yoon/C-TPT
(`tpt_classification.py`, `clip/custom_clip.py`), compared at commit 085e6c2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .params import param
from .tpt import TPT
from .tpt_step import entropy_objective

#: the authors' lambda: `scripts/test_tpt_ctpt_ds.sh` (the natural shifts, with `--I_augmix`) and
#: `scripts/test_tpt_ctpt_fg.sh` (ImageNet itself and the ten cross-datasets, without it); their README
#: lists ImageNet ('I') among the fine-grained sets run by the second script
LAMBDA_SHIFTS, LAMBDA_FINE_GRAINED = 20.0, 50.0
#: the datasets of the authors' natural-shift script (ImageNet-A, -V2, -R, -Sketch)
SHIFTS = ("A", "V", "R", "K")


def text_feature_dispersion(class_feats: torch.Tensor) -> torch.Tensor:
    """Average Text Feature Dispersion per sample `[B]` of class features `[B, C, D]`: the mean L2
    distance of each class feature to the mean class feature (the authors' `l2_norm_mean`)."""
    centre = class_feats.mean(dim=-2, keepdim=True)                      # [B, 1, D]
    return torch.linalg.norm(class_feats - centre, dim=-1).mean(dim=-1)


def _authors_lambda(method) -> float:
    return LAMBDA_SHIFTS if method.dataset is None or method.dataset in SHIFTS else LAMBDA_FINE_GRAINED


@dataclass(frozen=True, kw_only=True)
class CTPT(TPT):
    """C-TPT (Yoon et al., ICLR 2024): TPT's step on the loss

        marginal entropy of the kept views  -  lambda * ATFD(class features),

    where ATFD, the Average Text Feature Dispersion, is the mean distance of the L2-normalised class
    features to their centroid, computed from the same class features as the entropy at each step.
    Everything else is TPT's (`TPT`): 64 views, 10% kept, one AdamW step of lr 5e-3 on the 4 context
    vectors initialised from "a photo of a", prediction of view 0, reset.

    lambda_: the dispersion weight. None (default): the authors' per-dataset value, resolved by
        `for_task` -- 20 for ImageNet's natural shifts (A, V, R, K and the micro sets shaped like
        them), 50 for ImageNet itself (I, micro:I), the fine-grained sets and the micro cross tasks.
        Their README groups ImageNet with the fine-grained sets and runs it with the fine-grained
        script (`scripts/test_tpt_ctpt_fg.sh`: lambda 50, no `--I_augmix`). Before `for_task`
        resolves a dataset, the value is 20.

    Where this differs from the authors' code: their runs on the natural shifts (A, V, R, K) use
    AugMix views (`--I_augmix`, which gives AugMix to every one-letter set), which TPT does not; here
    every method sees the task's views (TPT's crop and flip on the ImageNet family), so that the
    comparison is on the same views. On ImageNet itself (run without `--I_augmix`) and on the
    cross-datasets (AugMix in both) their views are of the same kind as here. Calibration in their
    paper is ECE with 20 bins, which every run summary here also reports (`ece20`). CoOp/CoCoOp
    starts are not offered.
    """

    name = "ctpt"
    paper = "C-TPT: Yoon et al., ICLR 2024, arXiv 2403.14119"

    lambda_: float | None = param(None, "the dispersion weight; none: the authors' for the task's dataset",
                                  kind="float", low=0.0, key="lambda", per_dataset=_authors_lambda)
    dataset: str | None = param(None, "the published dataset whose settings apply (none: the task's)",
                                kind="str", optional=True)
    # TPT's checkpoint starts are not offered: no parameters here
    coop_ckpt: None = field(default=None, init=False, repr=False)
    cocoop_ckpt: None = field(default=None, init=False, repr=False)

    def objective(self, kept_feats, class_feats, scale):
        return entropy_objective(kept_feats, class_feats, scale) - self.lambda_ * text_feature_dispersion(class_feats)
