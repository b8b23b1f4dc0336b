"""TDA: a training-free dynamic adapter -- positive and negative caches of past test features.

Karmanov et al., "Efficient Test-Time Adaptation of Vision-Language Models", CVPR 2024,
arXiv 2403.18293. Authors' code: github.com/kdiAAA/TDA (`tda_runner.py`, `utils.py`,
`configs/*.yaml`, `datasets/*.py`), compared at commit e697fb0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..objectives import entropy, marginal_entropy, n_selected
from .online import OnlineMethod, Step
from .params import param
from .text import check_template_set, ensemble_features
from .text import templates as template_set

#: positive-cache (alpha, beta) of the authors' `configs/<dataset>.yaml`, by `tptlib.data` task name
POSITIVE = {"I": (2.0, 5.0), "A": (2.0, 5.0), "V": (1.0, 8.0), "R": (1.0, 8.0), "K": (2.363, 7.45),
            "Caltech101": (5.0, 5.0), "DTD": (2.0, 3.0), "eurosat": (4.0, 8.0), "Aircraft": (2.0, 2.0),
            "Food101": (1.0, 1.0), "Flower102": (1.0, 5.0), "Pets": (2.0, 7.0), "Cars": (1.0, 7.0),
            "SUN397": (2.0, 3.0), "UCF101": (3.0, 8.0)}
#: the templates of the authors' dataset files (`datasets/<dataset>.py`, `template`)
TEMPLATES = {"I": "tip7-tda", "A": "tip7-tda", "V": "tip7-tda", "R": "openai80", "K": "openai80",
             "Caltech101": "tip7-tda", "Cars": "tip7-tda", "SUN397": "tip7-tda", "DTD": "coop:DTD",
             "eurosat": "coop:eurosat", "Aircraft": "coop:Aircraft", "Food101": "coop:Food101",
             "Flower102": "coop:Flower102", "Pets": "coop:Pets", "UCF101": "coop:UCF101"}
#: sets the authors feed 64 AugMix views (`get_ood_preprocess`); the others get the plain image
MULTIVIEW = ("A", "V", "R", "K")


@dataclass
class TDAState:
    """The caches: class -> entries sorted by entropy (lowest first). Positive entries are
    (feature [1, D], entropy); negative ones (feature, entropy, probabilities [1, C])."""

    positive: dict = field(default_factory=dict)
    negative: dict = field(default_factory=dict)


def update_cache(cache: dict, pred: int, item: tuple, capacity: int) -> None:
    """The authors' `update_cache`: append while the class has room; at capacity, the new entry
    replaces the last (highest-entropy) one if its entropy is lower; keep the class sorted by entropy."""
    if pred in cache:
        if len(cache[pred]) < capacity:
            cache[pred].append(item)
        elif item[1] < cache[pred][-1][1]:
            cache[pred][-1] = item
        cache[pred] = sorted(cache[pred], key=lambda entry: entry[1])
    else:
        cache[pred] = [item]


def cache_logits(feat: torch.Tensor, cache: dict, alpha: float, beta: float, n_classes: int,
                 mask: tuple[float, float] | None = None) -> torch.Tensor:
    """alpha * exp(-beta (1 - feat . keys)) @ values over the cache (classes in ascending order):
    values are one-hot pseudo-labels, or with `mask` the entries' probabilities thresholded to 0/1."""
    keys, values = [], []
    for c in sorted(cache):
        for item in cache[c]:
            keys.append(item[0])
            values.append(item[2] if mask else c)
    keys = torch.cat(keys, dim=0).permute(1, 0)
    if mask:
        probs = torch.cat(values, dim=0)
        values = ((probs > mask[0]) & (probs < mask[1])).to(torch.int8).float()
    else:
        values = F.one_hot(torch.tensor(values, dtype=torch.int64), num_classes=n_classes).float().to(feat.device)
    affinity = feat @ keys
    return alpha * (((-1) * (beta - beta * affinity)).exp() @ values)


def _key(method) -> str:
    """The dataset whose settings apply: the method's, or ImageNet's for one without a published counterpart."""
    return method.dataset if method.dataset in POSITIVE else "I"


@dataclass(frozen=True, kw_only=True)
class TDA(OnlineMethod):
    """TDA (Karmanov et al., CVPR 2024): CLIP's logits plus a positive-cache term minus a
    negative-cache term, the caches filled with earlier test samples of the stream.

    Per sample: zero-shot logits with the dataset's templates; on ImageNet-A/-V2/-R/-Sketch the
    authors average the 10% lowest-entropy of 64 views (features, logits, probabilities; the
    "feature" is the mean of those view features), elsewhere they use the image alone (view 0).
    The pseudo-label is the argmax, the entropy H that of the averaged prediction. The sample joins
    the positive cache of its pseudo-label (3 entries per class; when full, it replaces the
    highest-entropy entry if its own entropy is lower), and, if 0.2 < H / log2(C) < 0.5, the
    negative cache (2 per class, with its probabilities). Then

        logits = zero-shot + a+ exp(-b+ (1 - f . K+)) L+  -  a- exp(-b- (1 - f . K-)) M-

    with K the cached features, L+ one-hot pseudo-labels and M- the cached probabilities thresholded
    to 1 in (0.03, 1). The sample itself is in the caches when it is predicted (the authors update
    first).

    dataset: the published dataset whose settings apply; None resolves it from the task (`for_task`;
        the micro sets shaped like ImageNet's shifts take theirs, the micro cross tasks ImageNet's).
    pos_alpha, pos_beta: None for the authors' per-dataset values (`POSITIVE`, from their
        configs: e.g. A 2.0/5.0, R 1.0/8.0, K 2.363/7.45). The negative cache (alpha 0.117, beta 1,
        capacity 2, entropy window (0.2, 0.5), mask (0.03, 1)) is the same for every dataset.
    templates: None for the authors' per dataset (`TEMPLATES`): the seven tip-adapter templates on
        I, A, V, Caltech101, Cars, SUN397; CLIP's 80 on R and K; the CoOp template elsewhere.
    multiview: None for the authors' choice (64 views on A, V, R, K; view 0 alone elsewhere).

    Where this differs from the authors' code: (1) they multiply cosine similarities by a literal
    100 (exp(logit_scale) of OpenAI's CLIP); here the model's own exp(logit_scale) is used, which
    is the same for OpenAI CLIP and 22.7 for the micro-CLIP. (2) Their multi-view sets get AugMix
    views; here the task's views (TPT's: crop and flip on the ImageNet family). (3) Their features
    and cache arithmetic are fp16; here fp32. (4) Class names are the task's (as for every method),
    not TDA's own ImageNet list. (5) Their stream order is their DataLoader's shuffle; here the
    run's seeded permutation (`tpt.evaluate`, recorded in run.json).
    """

    name = "tda"
    paper = "TDA: Karmanov et al., CVPR 2024, arXiv 2403.18293"

    dataset: str | None = param(None, "the published dataset whose settings apply (none: the task's)", kind="str",
                                optional=True)
    pos_alpha: float | None = param(None, "positive cache weight; none: the authors' for the dataset", kind="float",
                                    per_dataset=lambda m: POSITIVE[_key(m)][0])
    pos_beta: float | None = param(None, "positive cache sharpness; none: the authors' for the dataset",
                                   kind="float", per_dataset=lambda m: POSITIVE[_key(m)][1])
    templates: str | None = param(None, "template set; none: the authors' for the dataset", kind="str",
                                  choices=check_template_set, per_dataset=lambda m: TEMPLATES[_key(m)])
    multiview: bool | None = param(None, "average the confident views (true) or read view 0 alone; none: the "
                                   "authors' choice for the dataset", kind="bool",
                                   per_dataset=lambda m: _key(m) in MULTIVIEW)
    pos_capacity: int = param(3, "positive cache entries per class", kind="int", low=1)
    neg_capacity: int = param(2, "negative cache entries per class", kind="int", low=1)
    neg_alpha: float = param(0.117, "negative cache weight", kind="float")
    neg_beta: float = param(1.0, "negative cache sharpness", kind="float")
    entropy_window: tuple[float, float] = param((0.2, 0.5), "normalised entropies that enter the negative cache",
                                                kind="pair")
    mask_window: tuple[float, float] = param((0.03, 1.0), "probabilities the negative cache counts", kind="pair")
    selection_p: float = param(0.1, "fraction of the views averaged with multiview", kind="float", low=0.0,
                               low_open=True, high=1.0)

    def views_used(self, n_views: int) -> int:
        return n_views if self.multiview else 1

    def _prepare(self, clip, classnames):
        return ensemble_features(clip, classnames, template_set(self.templates))      # [C, D]

    def init_state(self, prepared) -> TDAState:
        return TDAState()

    def apply_update(self, prepared, state: TDAState, update: dict) -> None:
        pred, loss = int(update["pred"]), float(update["loss"])
        update_cache(state.positive, pred, (update["feat"], loss), self.pos_capacity)
        if "probs" in update:
            update_cache(state.negative, pred, (update["feat"], loss, update["probs"]), self.neg_capacity)

    def step(self, clip, prepared, state: TDAState, feats: torch.Tensor) -> Step:
        weights = prepared                                                          # [C, D]
        n_classes = weights.shape[0]
        logits = clip.logit_scale * feats @ weights.T                               # [V, C]
        kept = torch.empty(0, dtype=torch.long)
        if feats.shape[0] > 1:
            k = n_selected(feats.shape[0], self.selection_p)
            order = torch.argsort(entropy(logits), descending=False)
            kept = order[:k]
            output = logits[kept]
            feat = feats[kept].mean(0).unsqueeze(0)
            clip_logits = output.mean(0).unsqueeze(0)
            loss = marginal_entropy(output)
            probs = output.softmax(1).mean(0).unsqueeze(0)
            pred = int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
        else:
            feat, clip_logits = feats, logits
            loss = entropy(logits)
            probs = logits.softmax(1)
            pred = int(logits.topk(1, 1, True, True)[1].t()[0])
        update = {"feat": feat, "loss": loss.reshape(()).float(), "pred": torch.tensor(pred)}
        low, high = self.entropy_window
        if low < float(loss / math.log2(n_classes)) < high:
            update["probs"] = probs
        self.apply_update(prepared, state, update)

        final = clip_logits.clone()
        if state.positive:
            final += cache_logits(feat, state.positive, self.pos_alpha, self.pos_beta, n_classes)
        if state.negative:
            final -= cache_logits(feat, state.negative, self.neg_alpha, self.neg_beta, n_classes, self.mask_window)
        return Step(logits=final[0], logits_before=logits[0], kept=kept, update=update)
