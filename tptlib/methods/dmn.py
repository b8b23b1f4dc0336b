"""DMN-ZS: the zero-shot, training-free Dual Memory Network -- a dynamic memory of past test features.

Zhang et al., "Dual Memory Networks: A Versatile Adaptation Approach for Vision-Language Models",
CVPR 2024, arXiv 2403.17589. Authors' code: github.com/YBZh/DMN (`dmn_main.py`, `clip/fix_clip.py`,
`scripts/run.sh`, the logs `camera_ready_dmn_tf_*.txt`), compared at commit c6c218c.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..prompts import format_classname
from .online import OnlineMethod, Step
from .params import param, unless_default
from .text import COOP_TEMPLATES, check_template_set, ensemble_features
from .text import templates as template_set

#: the weight of the dynamic memory's prediction in the authors' zero-shot results, per dataset: the
#: value their grid search (`direct_inference`, beta2 over 0.001..1000) chose on the test labels, as
#: printed in their camera-ready logs `camera_ready_dmn_tf_shift_0.txt` and `..._searched_vit_0.txt`
WEIGHTS = {"A": 3.0, "V": 1.0, "R": 0.3, "K": 1.0, "I": 1.0, "Flower102": 10.0, "DTD": 10.0, "Pets": 1.0,
           "Cars": 0.3, "UCF101": 0.3, "Caltech101": 0.3, "Food101": 0.3, "SUN397": 3.0, "Aircraft": 1.0,
           "eurosat": 0.3}
#: fine-grained sets on which the authors' `ID_to_prompts` uses the tip-adapter seven, not a CoOp template
_TIP7_SETS = ("Caltech101", "SUN397")


def dmn_templates(dataset: str | None) -> str:
    """The authors' templates (without CuPL): the tip-adapter seven on the ImageNet family, Caltech101 and
    SUN397, the CoOp template of the other fine-grained sets."""
    if dataset in COOP_TEMPLATES and dataset not in _TIP7_SETS:
        return f"coop:{dataset}"
    return "tip7"


@dataclass
class DMNState:
    """The dynamic memory: per class, `memory_size` slots of view-0 features `[C, M, D]`, their
    entropies `[C, M]` and how many are filled `[C]`."""

    features: torch.Tensor
    entropy: torch.Tensor
    count: torch.Tensor


@dataclass
class DMNText:
    """What `DMN.prepare` returns: the class features `[C, D]` (the static memory) and the same
    normalised again, as the authors' text classifier computes them."""

    text: torch.Tensor
    classifier: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class DMN(OnlineMethod):
    """DMN-ZS (Zhang et al., CVPR 2024), the zero-shot variant: no training, no labelled data; a dynamic
    memory of test features per pseudo-class and a static memory holding the class text feature.

    Per sample, with 32 views (view 0 and the first 31 augmented ones):
      1. p_v = softmax(exp(logit_scale) x_v . t) for every view v (t: the class features of the
         template ensemble); the mean of p over the int(32 * 0.1) = 3 lowest-entropy views is the
         pseudo-prediction, its argmax the pseudo-label y, its entropy H.
      2. Memory update: view 0's feature joins class y's slots (50 per class); when they are full it
         replaces the highest-entropy entry if H is lower than some entry's, and is dropped otherwise.
      3. Memory read-out: for each class c, the slots of c and its text feature (the static memory)
         are weighted by exp(-beta (1 - x_0 . m)) and summed into one adaptive class feature a_c
         (normalised); p_mem = softmax(exp(logit_scale) a . x_0).
      4. Prediction: p_0 + w * p_mem (p_0: view 0's zero-shot probabilities). Stored as the log of
         (p_0 + w p_mem) / (1 + w), a distribution, for calibration.
    The sample is in the memory when it is predicted (the authors update first).

    dataset: the published dataset whose settings apply; None resolves it from the task (`for_task`).
    weight: w, the weight of the memory's prediction. None for the authors' per dataset (`WEIGHTS`:
        A 3, V 1, R 0.3, K 1, I 1, ...); 1 for tasks without a published counterpart. The authors chose
        it per dataset by a grid search on the test labels (their `direct_inference` reports the best
        accuracy over 13 weights); the values here are those their logs print, fixed in advance.
    memory_size, beta, selection_p, n_views: the authors' 50, 5.5, 0.1 and 32 (`scripts/run.sh`).
    templates: None for the authors' (`dmn_templates`). cupl: optional path of a CuPL JSON file
        (class name -> GPT-3 descriptions) appended to the templates, as the authors' `tip_cupl`.

    Where this differs from the authors' code: (1) their text classifier adds the CuPL descriptions
    of each class (GPT-3 output, not shipped here); without `cupl` it uses the templates alone. (2)
    Their views on the cross-datasets are AugMix, on the ImageNet family crop and flip: the task's
    views here are the same kinds. (3) Class names are the task's. (4) Their stream order is their
    DataLoader's shuffle; here the run's seeded permutation. (5) Their learnable biases (`position
    'all'`, zero-initialised and never trained in the zero-shot variant) are left out: adding zero
    changes nothing, and the normalisations around them are kept.
    """

    name = "dmn"
    paper = "DMN: Zhang et al., CVPR 2024, arXiv 2403.17589 (zero-shot variant DMN-ZS)"

    dataset: str | None = param(None, "the published dataset whose settings apply (none: the task's)", kind="str",
                                optional=True)
    weight: float | None = param(None, "weight of the memory's prediction; none: the authors' for the dataset",
                                 kind="float", low=0.0, per_dataset=lambda m: WEIGHTS.get(m.dataset, 1.0))
    memory_size: int = param(50, "memory slots per class", kind="int", low=1)
    beta: float = param(5.5, "sharpness of the memory read-out", kind="float")
    selection_p: float = param(0.1, "fraction of the views whose mean gives the pseudo-label", kind="float", low=0.0,
                               low_open=True, high=1.0)
    n_views: int = param(32, "views read per sample", kind="int", low=1)
    templates: str | None = param(None, "template set; none: the authors' for the dataset", kind="str",
                                  choices=check_template_set, per_dataset=lambda m: dmn_templates(m.dataset))
    cupl: str | None = param(None, "CuPL JSON file of class descriptions added to the templates (recorded when "
                             "given)", kind="path", optional=True, absolute=True, record=unless_default("cupl"))

    def views_used(self, n_views: int) -> int:
        return min(self.n_views, n_views)

    def _prepare(self, clip, classnames):
        template_list = template_set(self.templates)
        if self.cupl:
            descriptions = json.loads(Path(self.cupl).read_text())
            missing = [c for c in classnames if format_classname(c) not in descriptions]
            if missing:
                raise ValueError(f"{self.cupl} has no descriptions for {len(missing)} classes, e.g. {missing[:3]}")
            feats = torch.cat([_with_descriptions(clip, c, template_list, descriptions[format_classname(c)])
                               for c in classnames])
        else:
            feats = ensemble_features(clip, classnames, template_list)
        return DMNText(text=feats, classifier=feats / feats.norm(dim=1, keepdim=True))

    def init_state(self, prepared: DMNText) -> DMNState:
        C, D = prepared.text.shape
        device = prepared.text.device
        return DMNState(features=torch.zeros(C, self.memory_size, D, device=device),
                        entropy=torch.zeros(C, self.memory_size, device=device),
                        count=torch.zeros(C, dtype=torch.long, device=device))

    def apply_update(self, prepared, state: DMNState, update: dict) -> None:
        label, entropy = int(update["label"]), update["entropy"].to(state.entropy.device)
        feat = update["feat"].to(state.features.device)
        n = int(state.count[label])
        if n == self.memory_size:
            if int((entropy < state.entropy[label]).sum()) == 0:
                return                                  # more uncertain than every entry: dropped
            worst = torch.sort(state.entropy[label]).indices[-1]
            state.features[label, worst] = feat
            state.entropy[label, worst] = entropy
        else:
            state.features[label, n] = feat
            state.entropy[label, n] = entropy
            state.count[label] += 1

    def memory_probs(self, scale, prepared: DMNText, state: DMNState, feat0: torch.Tensor) -> torch.Tensor:
        """The dynamic memory's prediction for view 0's feature `[1, D]`: probabilities `[1, C]`."""
        memory = torch.cat((state.features, prepared.text.unsqueeze(1)), dim=1)          # [C, M + 1, D]
        empty = memory.sum(-1) == 0
        keys = memory / memory.norm(dim=-1, keepdim=True)
        keys[empty] = 0
        query = feat0 / feat0.norm(dim=-1, keepdim=True)
        similarity = torch.exp(-self.beta * (-(query * keys).sum(-1) + 1))             # [C, M + 1]
        adaptive = (keys * similarity.unsqueeze(-1)).sum(1)                             # [C, D]
        adaptive = adaptive / adaptive.norm(dim=-1, keepdim=True)
        adaptive = adaptive / adaptive.norm(dim=-1, keepdim=True)                       # the authors normalise twice
        logits = (scale * adaptive) @ feat0[0]
        return logits.softmax(dim=0).unsqueeze(0)

    def step(self, clip, prepared: DMNText, state: DMNState, feats: torch.Tensor) -> Step:
        scale = clip.model.logit_scale.detach().float().exp()
        logits = scale * feats @ prepared.classifier.t()                                # [V, C]
        probs = logits.softmax(-1)
        entropy = -(probs * torch.log(probs + 1e-6)).sum(1)
        kept = torch.argsort(entropy, descending=False)[:int(feats.shape[0] * self.selection_p)]
        mean_prob = probs[kept].mean(0)
        label = int(mean_prob.max(0).indices)
        sample_entropy = -(mean_prob * torch.log(mean_prob + 1e-8)).sum()
        update = {"feat": feats[0].clone(), "label": torch.tensor(label), "entropy": sample_entropy}
        self.apply_update(prepared, state, update)
        mixed = probs[:1] + self.weight * self.memory_probs(scale, prepared, state, feats[:1])
        scores = torch.log((mixed[0] / (1 + self.weight)).clamp_min(torch.finfo(torch.float32).tiny))
        return Step(logits=scores, logits_before=logits[0], kept=kept, update=update)


def _with_descriptions(clip, classname: str, template_list: list[str], descriptions: list[str]) -> torch.Tensor:
    texts = [t.format(format_classname(classname)) for t in template_list] + list(descriptions)
    with torch.no_grad():
        feats = clip.model.encode_text(clip.tokenizer(texts).to(clip.device)).float()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    mean = feats.mean(dim=0)
    return (mean / mean.norm()).unsqueeze(0)
