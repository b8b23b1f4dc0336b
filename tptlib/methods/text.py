"""The text side the peers of TPT share: prompt template sets, the class features of a template
ensemble.

    feats = ensemble_features(clip, classnames, TEMPLATES["tip7"])     # [C, D], L2-normalised

The template lists are the ones the authors' code uses, in their order (the average of normalised
features is order-independent in mathematics but not in floating point).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prompts import format_classname
from ..textmemo import remembered

#: the tip-adapter seven, in the order of ZERO's and DMN's `tip_imagenet_templates`
TIP7 = ["a bad photo of the {}.", "a {} in a video game.", "a origami {}.", "a photo of the small {}.",
        "art of the {}.", "a photo of the large {}.", "itap of a {}."]
#: the same seven in the order of TDA's dataset files (`imagenet_templates`, `imagenet_a.template`, ...)
TIP7_TDA = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
            "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


#: DPE's Stanford Cars templates (DPE-CLIP `datasets/stanford_cars.py`), in their order
DPE_CARS = ["a photo of a {}.", "A {} featuring a wide range of color options for easy selection."]


def _openai80() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


#: the CoOp single templates of the fine-grained sets (TDA's dataset files, DMN's `ID_to_prompts`)
COOP_TEMPLATES = {
    "Flower102": ["a photo of a {}, a type of flower."], "DTD": ["{} texture."],
    "Pets": ["a photo of a {}, a type of pet."], "Cars": ["a photo of a {}, a type of car."],
    "UCF101": ["a photo of a person doing {}."], "Food101": ["a photo of {}, a type of food."],
    "Aircraft": ["a photo of a {}, a type of aircraft."], "eurosat": ["a centered satellite photo of {}."],
}


def templates(name: str) -> list[str]:
    """A named template set: "tpt" (the one prompt "a photo of a {}."), "tip7", "tip7-tda", "openai80"
    (CLIP's 80 ImageNet templates), "dpe-cars" (DPE's two Stanford Cars templates), or "coop:<dataset>"
    (that fine-grained set's CoOp template)."""
    if name == "tpt":
        return ["a photo of a {}."]
    if name == "tip7":
        return list(TIP7)
    if name == "tip7-tda":
        return list(TIP7_TDA)
    if name == "openai80":
        return _openai80()
    if name == "dpe-cars":
        return list(DPE_CARS)
    if name.startswith("coop:") and name[5:] in COOP_TEMPLATES:
        return list(COOP_TEMPLATES[name[5:]])
    known = ["tpt", "tip7", "tip7-tda", "openai80", "dpe-cars", *(f"coop:{k}" for k in COOP_TEMPLATES)]
    raise ValueError(f"unknown template set {name!r}; known: {', '.join(known)}")


def check_template_set(name) -> None:
    """Refuse (ValueError "must be ...; got ...") a name that is not a template set of `templates`."""
    try:
        templates(name)
    except ValueError:
        known = ["tpt", "tip7", "tip7-tda", "openai80", "dpe-cars", *(f"coop:{k}" for k in COOP_TEMPLATES)]
        raise ValueError(f"must be a template set ({', '.join(known)}); got {name!r}") from None


@torch.no_grad()
def ensemble_features(clip, classnames: list[str], template_list: list[str]) -> torch.Tensor:
    """Class features of a template ensemble, as the authors compute them: per class, encode every
    template, L2-normalise each, average, L2-normalise the average. `[C, D]` fp32. This is open_clip's
    `build_zero_shot_classifier` one class per batch (equal to the bit to the per-class loop the
    authors write: `tests/test_peers.py`)."""
    return zero_shot_classifier(clip, classnames, template_list, per_batch=1)


@torch.no_grad()
def zero_shot_classifier(clip, classnames: list[str], template_list: list[str], per_batch: int) -> torch.Tensor:
    """open_clip's `build_zero_shot_classifier` with `per_batch` classes per batch, `[C, D]` fp32
    row-major, computed once per model, class list, templates and batching in a process (`textmemo`)."""
    from open_clip import build_zero_shot_classifier

    def compute():
        weights = build_zero_shot_classifier(clip.model, clip.tokenizer, [format_classname(c) for c in classnames],
                                             template_list, num_classes_per_batch=per_batch, device=clip.device,
                                             use_tqdm=False)                              # [D, C]
        return weights.T.float().contiguous()     # row-major, as the per-class loop stacks them
    named = tuple(t("{}") if callable(t) else t for t in template_list)      # open_clip's are functions
    return remembered(clip, ("zero-shot classifier", named, per_batch), classnames, compute)


@torch.no_grad()
def prompt_features(clip, classnames: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """Class features of one template (CLIP zero-shot, as `ZeroShot`): `[C, D]` fp32, L2-normalised."""
    def compute():
        tokens = clip.tokenizer([template.format(format_classname(c)) for c in classnames]).to(clip.device)
        return F.normalize(clip.model.encode_text(tokens).float(), dim=-1)
    return remembered(clip, ("prompt", template), classnames, compute)


#: the ImageNet family's task names (their authors' settings often differ from the fine-grained sets')
IMAGENET_FAMILY = ("I", "A", "V", "R", "K")
