"""R-TPT: TPT with a pointwise-entropy loss and a reliability-weighted ensemble of the views.

Sheng et al., "R-TPT: Improving Adversarial Robustness of Vision-Language Models through Test-Time
Prompt Tuning", CVPR 2025, arXiv 2504.11195. Authors' code: github.com/TomSheng21/R-TPT (`rtpt.py`:
`test_time_tuning`, `entropy_avg`, `get_top_sim` and the loop of `test_time_adapt_eval`;
`clip/custom_clip.py`), compared at commit e085f13.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..objectives import entropy
from .params import param
from .tpt import TPT

#: the authors' reliability settings (`get_top_sim`: k = 20 neighbours; `softmax(score / 0.01)`)
NEIGHBOURS, TEMPERATURE = 20, 0.01


def mean_entropy_objective(kept_feats: torch.Tensor, class_feats: torch.Tensor, scale: float) -> torch.Tensor:
    """R-TPT's loss per sample `[B]`: the mean over the kept views `[B, k, D]` of each view's own
    entropy against the class features `[B, C, D]` (the authors' `entropy_avg`), not the entropy
    of their mean prediction (TPT's marginal entropy)."""
    return entropy(scale * torch.einsum("bkd,bcd->bkc", kept_feats, class_feats)).mean(dim=-1)


def reliability_weights(view_feats: torch.Tensor, neighbours: int = NEIGHBOURS,
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """The weight of each view `[B, V]` from the L2-normalised view features `[B, V, D]`: the mean
    cosine similarity of the view to its `neighbours` most similar other views, softmaxed over the
    views at `temperature`.

    As the authors' `get_top_sim`, a similarity of 1.0 or more is left out of the neighbours (a
    view identical to this one up to rounding); the view's similarity to itself is always left out
    (theirs is left out only when rounding brings it to 1.0 or more)."""
    feats = view_feats.float()
    sim = feats @ feats.transpose(-1, -2)                                   # [B, V, V]
    sim.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    sim = sim.masked_fill(sim >= 1.0, float("-inf"))
    score = sim.topk(neighbours, dim=-1).values.mean(dim=-1)              # [B, V]
    return torch.softmax(score / temperature, dim=-1)


@dataclass(frozen=True, kw_only=True)
class RTPT(TPT):
    """R-TPT (Sheng et al., CVPR 2025) on clean images: TPT's selection and step with another loss,
    and the prediction an ensemble of all views weighted by how typical each view is among them.

    Per sample: logits of all V = 64 views with the initial context "a photo of a"; keep the
    int(V * 0.1) = 6 lowest-entropy views; one AdamW step (lr 5e-3, weight decay 0.01) on the
    context minimising the mean of the kept views' own entropies (`mean_entropy_objective`; the
    paper's reformulation of TPT's marginal entropy without its KL term); then, with the tuned
    context, the logits of every view, averaged with the weights

        w = softmax( score / 0.01 ),  score_v = mean of the 20 largest cos(x_v, x_u), u != v

    of the views' image features (`reliability_weights`); reset. These are the authors' defaults
    (`rtpt.py`: --selection_p 0.1, --lr 5e-3, --tta_steps 1, their README's --ctx_init a_photo_of_a,
    batch 64; `get_top_sim`'s k = 20 and the temperature 0.01).

    neighbours: the most similar other views each view's score averages (needs at least that many
        other views: `check_views`).
    temperature: of the softmax over the views' scores (smaller: the weight goes to the most typical views).

    Where this differs from the authors' code: the adversarial attack (their `--eps` > 0: PGD on
    the image before its views are made) is left out, since tptlib evaluates clean images; their
    clean setting is `--eps 0.0`. Their `get_top_sim` drops similarities >= 1.0 to leave out each
    view's similarity to itself, which in float arithmetic is 1.0 give or take a rounding; here it
    is always left out. The views are the task's (TPT's crop and flip on the ImageNet family, AugMix
    on the other sets, as in their `AugMixAugmenter`); they run fp32, here the engine's precision
    applies (fp16 autocast on CUDA by default). CoOp/CoCoOp starts are not offered.
    """

    name = "rtpt"
    paper = "R-TPT: Sheng et al., CVPR 2025, arXiv 2504.11195"

    neighbours: int = param(NEIGHBOURS, "other views whose similarity each view's reliability averages", kind="int",
                            low=1)
    temperature: float = param(TEMPERATURE, "temperature of the softmax over the views' reliabilities",
                               kind="float", low=0.0, low_open=True)
    # TPT's checkpoint starts are not offered: no parameters here
    coop_ckpt: None = field(default=None, init=False, repr=False)
    cocoop_ckpt: None = field(default=None, init=False, repr=False)

    def check_views(self, n_views: int) -> None:
        super().check_views(n_views)
        if n_views - 1 < self.neighbours:
            raise ValueError(f"rtpt: each view's reliability averages its {self.neighbours} most similar other "
                             f"views; {n_views} views per sample have {n_views - 1}; use more views or a smaller "
                             f"neighbours")

    def objective(self, kept_feats, class_feats, scale):
        return mean_entropy_objective(kept_feats, class_feats, scale)

    def predict_logits(self, view_feats, class_feats, scale):
        weights = reliability_weights(view_feats, self.neighbours, self.temperature)          # [B, V]
        view_logits = scale * torch.einsum("bvd,bcd->bvc", view_feats, class_feats)           # [B, V, C]
        return torch.einsum("bv,bvc->bc", weights.to(view_logits.dtype), view_logits)
