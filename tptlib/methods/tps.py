"""TPS: Test-time Prototype Shifting -- a per-class shift of the class features, learned on the views.

Sui, Wang and Yeung-Levy, "Just Shift It: Test-Time Prototype Shifting for Zero-Shot Generalization
with Vision-Language Models", WACV 2025, arXiv 2403.12952. Authors' code: github.com/elaine-sui/TPS
(`shift_classification.py`, `model/learnable_shift.py`, `model/shifter.py`, `run_utils.py`, `args.py`,
`utils/save_class_embeds.py`, `utils/save_concepts.py`, `scripts/shift/*.sh`), compared at commit
556db0f (MIT licence).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..objectives import marginal_entropy, select_confident
from ..prompts import format_classname
from ..textmemo import remembered
from .base import Method
from .output import MethodOutput
from .params import param, unless_default
from .text import check_template_set
from .text import templates as template_set


@dataclass
class TPSText:
    """What `TPS.prepare` returns: the class prototypes `[C, D]` as the authors cache them (means of
    normalised text features, not normalised again), and the same normalised, the unshifted classifier."""

    prototypes: torch.Tensor
    normalised: torch.Tensor


def descriptor_sentence(descriptor: str) -> str:
    """The authors' `make_descriptor_sentence` (from classify_by_description): 'which is/has ...'."""
    if descriptor.startswith("a") or descriptor.startswith("an"):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


@torch.no_grad()
def mean_text_feature(clip, texts: list[str], chunk: int = 256) -> torch.Tensor:
    """The mean of the L2-normalised text features of `texts` `[D]` (not normalised again)."""
    feats = torch.cat([clip.model.encode_text(clip.tokenizer(texts[i:i + chunk]).to(clip.device)).float()
                       for i in range(0, len(texts), chunk)])
    return F.normalize(feats, dim=-1).mean(dim=0)


def shifted_logits(base: torch.Tensor, shift: torch.Tensor, feats: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits `[B, V, C]` of view features `[B, V, D]` against normalise(base + shift), base `[C, D]`
    normalised, shift `[B, C, D]` (one per sample)."""
    return scale * torch.einsum("bvd,bcd->bvc", feats, F.normalize(base.unsqueeze(0) + shift, dim=-1))


@dataclass(frozen=True, kw_only=True)
class TPS(Method):
    """TPS (Sui et al., WACV 2025), per-class shift (`--text_shift --do_shift --per_label`): the class
    prototypes stay fixed; per sample a shift vector per class, from zero, is tuned so that the
    marginal entropy of the confident views is low, then view 0 is predicted against the shifted
    prototypes, and the shift is reset.

    Per sample: prototypes P (normalised); logits of the 64 views against normalise(P + s); keep the
    int(0.1 x 64) = 6 lowest-entropy views (selected again at each step from the current logits);
    `steps` AdamW steps (lr 5e-3, weight decay 0.01, AdamW's other defaults) on s minimising their
    marginal entropy; prediction exp(logit_scale) x_0 . normalise(P + s). B samples run together,
    one shift each: AdamW is elementwise and each loss depends on its own shift only.

    templates: the prototype of a class is the mean of its normalised text features over this set
        (default "openai80": the 80 CLIP templates of their `imagenet_prompts_clean.py`, their
        `--with_templates`). The authors' headline runs (README, `scripts/shift/
        shift_text_per_class_mean_init_template_and_gpt4_micro.sh`) average that with the mean of
        GPT-4 descriptor sentences; `descriptors` takes such a JSON file (class name -> descriptors,
        e.g. their `gpt4_descriptors/*.json`, not shipped here), giving (P_templates + P_desc) / 2.
    lr, steps, selection_p, weight_decay: the authors' 5e-3 (their README's example and `args.py`
        default), 1 (`--tta_steps 1`), 0.1 and AdamW's 0.01.

    Where this differs from the authors' code: (1) without `descriptors` the prototypes are the
    templates' alone (their `shift_text_per_class_mean_init_template.sh`). (2) Their step runs under
    fp16 autocast with a GradScaler (initial scale 1000), whose scaling and unscaling of the gradient
    is exact in mathematics; fp32 here on a CPU (the engine's autocast on CUDA). (3) Their views
    (`AugMixAugmenter`, AugMix on the cross-datasets) are TPT's, the task's views here. (4) They
    encode view 0 a second time for the prediction; its feature is reused here. (5) Class names are
    the task's, not their class lists.
    """

    name = "tps"
    tunes = True
    paper = "TPS: Sui et al., WACV 2025, arXiv 2403.12952"

    lr: float = param(5e-3, "AdamW learning rate of the shifts", kind="float", low=0.0, low_open=True, high=1e37)
    steps: int = param(1, "tuning steps per sample", kind="int", low=0, high=1000)
    selection_p: float = param(0.1, "fraction of views kept by confidence selection (0.1: 6 of 64)", kind="float",
                               low=0.0, low_open=True, high=1.0)
    weight_decay: float = param(0.01, "AdamW weight decay", kind="float", low=0.0, high=1.0)
    templates: str = param("openai80", "template set whose mean is a class's prototype", kind="str",
                           choices=check_template_set)
    descriptors: str | None = param(None, "JSON file of class descriptors averaged with the templates (recorded when "
                                    "given)", kind="path", optional=True, absolute=True,
                                    record=unless_default("descriptors"))

    def _prepare(self, clip, classnames):
        template_list = template_set(self.templates)
        protos = remembered(clip, ("tps prototypes", tuple(template_list)), classnames, lambda: torch.stack(
            [mean_text_feature(clip, [t.format(format_classname(c)) for t in template_list]) for c in classnames]))
        if self.descriptors:
            table = json.loads(Path(self.descriptors).read_text())
            missing = [c for c in classnames if format_classname(c) not in table and c not in table]
            if missing:
                raise ValueError(f"{self.descriptors} has no descriptors for {len(missing)} classes, e.g. {missing[:3]}")
            desc = torch.stack([mean_text_feature(clip, [f"{format_classname(c)}, {descriptor_sentence(d)}"
                                                         for d in table.get(format_classname(c), table.get(c))])
                                for c in classnames])
            protos = (desc + protos) / 2
        return TPSText(prototypes=protos, normalised=F.normalize(protos, dim=-1))

    def run(self, clip, prepared: TPSText, view_feats, class_chunk=None, loss_scale=None):
        feats = view_feats.float()
        B, scale, base = feats.shape[0], clip.logit_scale, prepared.normalised
        shift = torch.zeros(B, *base.shape, device=feats.device, requires_grad=True)
        with torch.no_grad():
            view_logits = scale * feats @ base.T                                        # [B, V, C]
        optimizer = torch.optim.AdamW([shift], lr=self.lr, weight_decay=self.weight_decay)
        first_loss, nonfinite = torch.full((B,), math.nan), torch.zeros(B, dtype=torch.bool)
        kept = select_confident(view_logits, self.selection_p)
        for step in range(self.steps):
            with torch.enable_grad():
                logits = shifted_logits(base, shift, feats, scale)
                kept = select_confident(logits.detach(), self.selection_p)                # [B, k]
                loss = marginal_entropy(torch.gather(logits, 1, kept.unsqueeze(-1).expand(-1, -1, logits.shape[-1])))
                (loss.sum() * (loss_scale or 1.0)).backward()
            if loss_scale:
                shift.grad.div_(loss_scale)
            if step == 0:
                first_loss = loss.detach().float().cpu()
            bad = ~torch.isfinite(shift.grad).flatten(1).all(dim=1) | ~torch.isfinite(loss.detach())
            if bad.any():
                nonfinite |= bad.cpu()
                shift.grad[bad] = 0.0
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        with torch.no_grad():
            logits = shifted_logits(base, shift.detach(), feats[:, :1], scale)[:, 0]
        return MethodOutput(logits=logits.float(), logits_before=view_logits[:, 0].float(), loss=first_loss,
                            kept=kept.cpu(), view_logits_before=view_logits.float(), nonfinite=nonfinite,
                            extra={"shift_norm": shift.detach().norm(dim=(1, 2)).cpu()})
