"""Fixed classifiers: CLIP zero-shot with one prompt, and the prompt ensemble. They do not adapt, so
the engine gives them view 0 only when it runs a task."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..clip import Clip
from .base import Method
from .output import MethodOutput
from .params import param
from .text import prompt_features, zero_shot_classifier

DEFAULT_TEMPLATE = "a photo of a {}."


def fixed_output(clip: Clip, class_feats: torch.Tensor, view_feats: torch.Tensor) -> MethodOutput:
    """Output of a fixed classifier `class_feats [C, D]` on views `[B, V, D]`."""
    view_logits = clip.logit_scale * view_feats @ class_feats.T                 # [B, V, C]
    B = view_feats.shape[0]
    return MethodOutput(logits=view_logits[:, 0], logits_before=view_logits[:, 0],
                        loss=torch.full((B,), math.nan), kept=torch.empty(B, 0, dtype=torch.long),
                        view_logits_before=view_logits, nonfinite=torch.zeros(B, dtype=torch.bool))


def _has_slot(template: str) -> None:
    if "{}" not in template:
        raise ValueError(f"must contain '{{}}' where the class name goes; got {template!r}")


@dataclass(frozen=True, kw_only=True)
class ZeroShot(Method):
    """CLIP zero-shot with one hand-written prompt, "a photo of a {class}." by default."""

    name = "zeroshot"
    adapts = False
    paper = "CLIP: Radford et al., ICML 2021, arXiv 2103.00020"

    template: str = param(DEFAULT_TEMPLATE, "the prompt, '{}' where the class name goes", kind="str",
                          choices=_has_slot)

    def _prepare(self, clip, classnames):
        return prompt_features(clip, classnames, self.template)                   # [C, D]

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        return fixed_output(clip, prepared, view_feats)


@dataclass(frozen=True, kw_only=True)
class Ensemble(Method):
    """CLIP's prompt ensemble: class features averaged over the 80 ImageNet templates (open_clip's)."""

    name = "ensemble"
    adapts = False
    paper = "CLIP: Radford et al., ICML 2021, arXiv 2103.00020 (prompt ensembling)"

    templates: str = param("openai", "open_clip's template list: 'openai' (CLIP's 80) or 'simple' (its short list)",
                           kind="str", choices=("openai", "simple"))

    @torch.no_grad()
    def _prepare(self, clip, classnames):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
        templates = OPENAI_IMAGENET_TEMPLATES if self.templates == "openai" else SIMPLE_IMAGENET_TEMPLATES
        return zero_shot_classifier(clip, classnames, list(templates), per_batch=10)   # open_clip's default batching

    @torch.no_grad()
    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        return fixed_output(clip, prepared, view_feats)
