"""DPE: Dual Prototype Evolving -- textual and visual prototypes evolved over the test stream.

Zhang, Stepputtis, Sycara and Xie, "Dual Prototype Evolving for Test-Time Generalization of
Vision-Language Models", NeurIPS 2024, arXiv 2410.12790. Authors' code: github.com/zhangce01/DPE-CLIP
(`main_dpe.py`, `utils.py`, `configs/*.yaml`, `datasets/*.py`, `scripts/run_*_vit.sh`), compared at
commit fecae5a (MIT licence).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..objectives import entropy as _view_entropy
from ..objectives import marginal_entropy as _marginal_entropy
from .online import OnlineMethod, Step
from .params import param, unless_default
from .tda import TEMPLATES as TDA_TEMPLATES
from .tda import update_cache
from .text import check_template_set, ensemble_features
from .text import templates as template_set

#: positive cache (alpha, beta) of the authors' `configs/<dataset>.yaml`, by `tptlib.data` task name
POSITIVE = {"I": (6.0, 5.0), "A": (6.0, 5.0), "V": (3.0, 8.0), "R": (3.0, 8.0), "K": (7.0, 7.45),
            "Caltech101": (15.0, 5.0), "DTD": (6.0, 3.0), "eurosat": (3.0, 8.0), "Aircraft": (6.0, 2.0),
            "Food101": (3.0, 1.0), "Flower102": (2.5, 5.0), "Pets": (4.0, 7.0), "Cars": (3.0, 7.0),
            "SUN397": (6.0, 3.0), "UCF101": (9.0, 8.0)}
#: (learning rate of both residuals -- their `text` and `image` are equal in every config --, weight
#: of the alignment loss `align`), from the same configs
LEARNING = {"I": (6e-4, 0.5), "A": (3e-4, 2.5), "V": (5e-4, 0.5), "R": (6e-4, 0.0), "K": (6e-4, 0.2),
            "Caltech101": (6e-4, 0.2), "DTD": (6e-4, 0.2), "eurosat": (5e-5, 0.2), "Aircraft": (6e-4, 0.2),
            "Food101": (2e-4, 0.2), "Flower102": (1e-4, 0.2), "Pets": (5e-5, 0.2), "Cars": (1e-4, 1.5),
            "SUN397": (2e-4, 0.2), "UCF101": (4e-4, 0.2)}
#: the templates of the authors' `datasets/<dataset>.py`: TDA's, except their two on Stanford Cars
TEMPLATES = {**TDA_TEMPLATES, "Cars": "dpe-cars"}
#: sets the authors feed 64 views (`get_preprocess` on the ImageNet family); the others the plain image
MULTIVIEW = ("I", "A", "V", "R", "K")
#: the set whose prediction reads all views again (`dataset_name == 'A'`); the others view 0
FINAL_MULTIVIEW = ("A",)


@dataclass
class DPEState:
    """The evolving prototypes: the priority queue of each class -> [(feature [1, D], normalised
    entropy)], lowest entropy first (the visual prototype of a class is the mean of its entries); the
    textual prototypes `[C, D]` (a running average of adapted class features, not normalised); how
    many adapted ones the average holds."""

    cache: dict = field(default_factory=dict)
    text: torch.Tensor | None = None
    n_avg: int = 0


@dataclass
class Adapted:
    """One sample's prototypes after its optimisation step: normalised class features `[C, D]`,
    visual prototype keys `[K, D]` (normalised) and their one-hot classes `[K, C]`."""

    text: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def visual_prototypes(cache: dict, like: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The authors' `cache_key_value`: per cached class (ascending), the mean of its entries (summed
    entry / n in queue order), as keys `[K, D]`, one-hot values `[K, C]` and the class list."""
    keys, classes = [], []
    for c in sorted(cache):
        proto = torch.zeros_like(like)
        for item in cache[c]:
            proto += item[0] / len(cache[c])
        keys.append(proto)
        classes.append(c)
    values = F.one_hot(torch.tensor(classes, dtype=torch.int64), num_classes=n_classes).float().to(like.device)
    return torch.cat(keys, dim=0), values, classes


def info_nce(query: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other rows as negatives (info-nce-pytorch's `info_nce` without negative keys)."""
    logits = F.normalize(query, dim=-1) @ F.normalize(positive, dim=-1).T
    return F.cross_entropy(logits / temperature, torch.arange(len(query), device=query.device))


def _affinity_logits(feat, keys, values, alpha, beta):
    return alpha * ((-1) * (beta - beta * (feat @ keys.T))).exp() @ values


def _summary(kept: torch.Tensor, weights: torch.Tensor, scale: float):
    """The authors' `get_clip_logits` on the kept views `[k, D]`: feature `[1, D]` (their mean), logits
    `[1, C]` (the mean of theirs), entropy (marginal over k > 1 views) and pseudo-label."""
    logits = scale * kept @ weights.T
    if kept.shape[0] > 1:
        return kept.mean(0, keepdim=True), logits.mean(0, keepdim=True), _marginal_entropy(logits), \
            int(logits.mean(0).argmax())
    return kept, logits, _view_entropy(logits), int(logits[0].argmax())


def _key(method) -> str:
    """The dataset whose settings apply: the method's, or ImageNet's for one without a published counterpart."""
    return method.dataset if method.dataset in POSITIVE else "I"


def _confident(logits: torch.Tensor, p: float = 0.1) -> torch.Tensor:
    k = int(logits.shape[0] * p)
    if k < 1:
        raise ValueError(f"DPE keeps int({logits.shape[0]} x {p}) = 0 views; give it at least {math.ceil(1 / p)} views")
    return torch.argsort(_view_entropy(logits), descending=False)[:k]


@dataclass(frozen=True, kw_only=True)
class DPE(OnlineMethod):
    """DPE (Zhang et al., NeurIPS 2024): CLIP's logits plus a cache term whose keys are per-class
    *visual prototypes* (the mean of up to 3 low-entropy test features of the class), with *textual
    prototypes* that evolve over the stream; both are refined per sample by one step on residuals.

    Per sample, with the current textual prototypes T (normalised to W) and the current queues:
      1. Views: on the ImageNet family the 10% lowest-entropy of 64 views (their mean feature f, the
         mean of their logits, the marginal entropy H), elsewhere the image alone (view 0).
      2. f joins the queue of its pseudo-label (capacity 3; a full queue swaps its highest-entropy
         entry for f if f's entropy H / log2(C) is lower). Visual prototypes: per class, the mean of
         its queue, K.
      3. One AdamW step (lr, eps 1e-3, weight decay 0.1) on a textual residual r_t `[C, D]` and a
         visual residual r_v `[K, D]`, both from zero, minimising
             entropy(logits(f; W + r_t) + alpha exp(-beta (1 - f . (K + r_v))) onehot)
             + align * InfoNCE(K + r_v, (W + r_t)[cached classes], temperature 0.01)
         (each prototype set normalised after its residual is added).
      4. Prediction with the adapted prototypes, from view 0 (on ImageNet-A from the 10% most
         confident views again, as the authors' `dataset_name == 'A'` branch).
      5. If the prediction's entropy / log2(C) < 0.1, T becomes the running average of the adapted
         class features: T <- T n / (n + 1) + W' / (n + 1) with n counting such samples from 1.
    The visual residual is dropped after the sample (the authors rebuild it per sample); the
    queues and T are the state.

    dataset: the published dataset whose settings apply; None resolves it from the task (`for_task`;
        the micro sets shaped like a published set take its settings, the micro cross tasks
        ImageNet's: 64 views, prediction from view 0).
    alpha, beta, lr, align: None for the authors' per-dataset values (`POSITIVE`, `LEARNING`: e.g.
        I 6/5, lr 6e-4, align 0.5; A 6/5, 3e-4, 2.5; R 3/8, 6e-4, 0).
    templates: None for the authors' per dataset (`TEMPLATES`: TDA's, and their two on Cars).
    cupl: optional path of a CuPL JSON file (class name -> GPT-3 descriptions) whose sentences join
        the templates, as in every run of the authors.

    State updates (`apply_update`) hold the kept view features, the logit scale and whether T evolved:
    a replay redoes the sample's step from them (the same computation on the same state, so the same
    prototypes) instead of storing T, which is C x D floats.

    Where this differs from the authors' code: (1) their class features always include the CuPL
    descriptions (`gpt3_prompts/`, not shipped here); without `cupl` the templates alone are used.
    (2) They multiply cosine similarities by a literal 100; here the model's exp(logit_scale). (3)
    Their ImageNet-family views are 63 AugMix views; here the task's views (TPT's crop and flip on
    the ImageNet family). (4) fp32 here, fp16 autocast there. (5) The kept views' logits are
    recomputed from their features (equal to selecting rows of all views' logits up to rounding).
    (6) The stream order is the run's seeded permutation, not their DataLoader's shuffle; class
    names are the task's.
    """

    name = "dpe"
    paper = "DPE: Zhang et al., NeurIPS 2024, arXiv 2410.12790"

    dataset: str | None = param(None, "the published dataset whose settings apply (none: the task's)", kind="str",
                                optional=True)
    alpha: float | None = param(None, "cache weight; none: the authors' for the dataset", kind="float",
                                per_dataset=lambda m: POSITIVE[_key(m)][0])
    beta: float | None = param(None, "cache sharpness; none: the authors' for the dataset", kind="float",
                               per_dataset=lambda m: POSITIVE[_key(m)][1])
    lr: float | None = param(None, "AdamW learning rate of both residuals; none: the authors' for the dataset",
                             kind="float", low=0.0, low_open=True, per_dataset=lambda m: LEARNING[_key(m)][0])
    align: float | None = param(None, "weight of the prototype alignment loss; none: the authors' for the dataset",
                                kind="float", low=0.0, per_dataset=lambda m: LEARNING[_key(m)][1])
    templates: str | None = param(None, "template set; none: the authors' for the dataset", kind="str",
                                  choices=check_template_set, per_dataset=lambda m: TEMPLATES[_key(m)])
    cupl: str | None = param(None, "CuPL JSON file of class descriptions added to the templates (recorded when "
                             "given)", kind="path", optional=True, absolute=True, record=unless_default("cupl"))
    capacity: int = param(3, "queue entries per class (its visual prototype's samples)", kind="int", low=1)
    evolve_below: float = param(0.1, "normalised entropy below which the textual prototypes evolve", kind="float",
                                low=0.0)
    selection_p: float = param(0.1, "fraction of the views averaged on the ImageNet family", kind="float", low=0.0,
                               low_open=True, high=1.0)

    @property
    def multiview(self) -> bool:
        """The sample is its views (the authors' ImageNet family), not the image alone."""
        return _key(self) in MULTIVIEW

    @property
    def final_multiview(self) -> bool:
        """The prediction reads all views again (the authors' ImageNet-A)."""
        return _key(self) in FINAL_MULTIVIEW

    def views_used(self, n_views: int) -> int:
        return n_views if self.multiview else 1

    def _prepare(self, clip, classnames):
        if self.cupl:
            from .dmn import DMN
            return DMN(templates=self.templates, cupl=self.cupl).prepare(clip, classnames).text
        return ensemble_features(clip, classnames, template_set(self.templates))         # [C, D]

    def init_state(self, prepared) -> DPEState:
        return DPEState(text=prepared.clone())

    def adapt(self, scale: float, state: DPEState, kept: torch.Tensor) -> Adapted:
        """Steps 2-3 for the kept view features `[k, D]`: the queue update, then one step on the residuals."""
        n_classes = state.text.shape[0]
        with torch.enable_grad():
            base = state.text.detach()
            r_text = torch.zeros_like(base, requires_grad=True)
            weights = F.normalize(base + r_text, dim=1)
            feat, logits, entropy, pred = _summary(kept, weights, scale)
            update_cache(state.cache, pred, (feat.detach(), float(entropy.detach() / math.log2(n_classes))), self.capacity)
            keys, values, classes = visual_prototypes(state.cache, feat.detach(), n_classes)
            r_image = torch.zeros_like(keys, requires_grad=True)
            new_keys = F.normalize(keys + r_image, dim=1)
            final = logits + _affinity_logits(feat.detach(), new_keys, values, self.alpha, self.beta)
            loss = _marginal_entropy(final) + self.align * info_nce(new_keys, weights[classes], 0.01)
            optimizer = torch.optim.AdamW([
                {"params": [r_text], "lr": self.lr, "eps": 1e-3, "weight_decay": 1e-1},
                {"params": [r_image], "lr": self.lr, "eps": 1e-3, "weight_decay": 1e-1}])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return Adapted(text=F.normalize(base + r_text, dim=1), keys=F.normalize(keys + r_image, dim=1),
                           values=values)

    def evolve(self, state: DPEState, adapted: Adapted) -> None:
        """Step 5: the textual prototypes take the adapted class features into their running average."""
        state.n_avg += 1
        state.text = state.text * (state.n_avg / (state.n_avg + 1)) + adapted.text * (1 / (state.n_avg + 1))

    def apply_update(self, prepared, state: DPEState, update: dict) -> None:
        adapted = self.adapt(float(update["scale"]), state, update["kept"].to(state.text.device))
        if bool(update["evolve"]):
            self.evolve(state, adapted)

    def step(self, clip, prepared, state: DPEState, feats: torch.Tensor) -> Step:
        scale = clip.logit_scale
        if self.multiview and feats.shape[0] > 1:
            kept = _confident(scale * feats @ F.normalize(state.text, dim=1).T, self.selection_p)
        else:
            kept = torch.zeros(1, dtype=torch.long, device=feats.device)
        adapted = self.adapt(scale, state, feats[kept])
        with torch.no_grad():
            final_feats = feats if self.final_multiview and feats.shape[0] > 1 else feats[:1]
            logits = scale * final_feats @ adapted.text.T
            if final_feats.shape[0] > 1:
                chosen = _confident(logits, self.selection_p)
                feat, clip_logits = final_feats[chosen].mean(0, keepdim=True), logits[chosen].mean(0, keepdim=True)
            else:
                feat, clip_logits = final_feats, logits
            final = clip_logits + _affinity_logits(feat, adapted.keys, adapted.values, self.alpha, self.beta)
            evolve = float(_marginal_entropy(final) / math.log2(state.text.shape[0])) < self.evolve_below
        if evolve:
            self.evolve(state, adapted)
        update = {"kept": feats[kept].clone(), "evolve": torch.tensor(evolve), "scale": torch.tensor(scale, dtype=torch.float64)}
        return Step(logits=final[0], logits_before=scale * feats[0] @ prepared.T, kept=kept.cpu(), update=update)
