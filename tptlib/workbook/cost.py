"""What TPT costs per image, counted analytically: FLOPs of the towers, not seconds of a machine.

One TPT image costs the image tower on its views (64 forwards) and, per step, the text tower's
forward and backward over the prompts of all C classes, then one more text forward for the
prediction. Seconds depend on the machine and on what else runs on it; this count depends only
on the model's shapes, so it says how the split between image and text side moves with the number
of classes and the model (micro-CLIP at a few classes against ViT-B/16 at 1000).
"""
from __future__ import annotations

import pandas as pd

#: a backward pass costs about twice its forward (gradients w.r.t. activations and weights)
BACKWARD_FACTOR = 2.0


def tower_flops(model, image_size: int, context_length: int) -> tuple[float, float]:
    """FLOPs of one image through the image tower and of one prompt (full context) through the text tower,
    counted by torch's FLOP counter (matrix products; a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(model.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=dev)
    tokens = torch.zeros(1, context_length, dtype=torch.long, device=dev)
    counts = []
    with torch.no_grad():
        for fn in (lambda: model.encode_image(image), lambda: model.encode_text(tokens)):
            with FlopCounterMode(display=False) as counter:
                fn()
            counts.append(float(counter.get_total_flops()))
    return counts[0], counts[1]


def open_clip_tower_flops(name: str) -> tuple[float, float]:
    """`tower_flops` of an open_clip architecture (e.g. "ViT-B-16"), built without weights on the meta
    device: shapes only, no memory and no download."""
    import open_clip
    import torch
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"open_clip has no model config {name!r}; e.g. {open_clip.list_models()[:5]}")
    with torch.device("meta"):
        model = open_clip.model.CLIP(**cfg)
    return tower_flops(model, cfg["vision_cfg"]["image_size"], cfg["text_cfg"].get("context_length", 77))


def tpt_cost(image_flops: float, text_flops: float, classes: int, views: int = 64, steps: int = 1) -> dict:
    """FLOPs of one TPT image: the image tower on `views` views, per step a text forward and backward
    over `classes` prompts, one text forward for the prediction; and the text side's share."""
    if classes < 1 or views < 1 or steps < 0:
        raise ValueError(f"need classes >= 1, views >= 1, steps >= 0; got {classes}, {views}, {steps}")
    image = views * image_flops
    text = classes * text_flops * (steps * (1 + BACKWARD_FACTOR) + 1)
    return {"image GFLOPs": image / 1e9, "text GFLOPs": text / 1e9, "total GFLOPs": (image + text) / 1e9,
            "text share (%)": 100 * text / (image + text)}


def cost_table(rows) -> pd.DataFrame:
    """`tpt_cost` for each `(label, image_flops, text_flops, classes)`, one row each."""
    return pd.DataFrame([{"model, classes": label, "classes": c, **tpt_cost(i, t, c)} for label, i, t, c in rows]
                        ).set_index("model, classes")
