"""The micro profile: a procedural image world and a micro-CLIP trained on it.

The micro-CLIP is an ordinary open_clip model described by ``micro-clip.json`` (a ModifiedResNet
image tower at 48 px and a small text transformer with context length 20); its weights ship in
``weights/micro_clip.safetensors`` with ``weights/manifest.json``. Its world and its design are
explained, with the research log that decided them, in ``docs/micro.md``. Loading it::

    import open_clip
    from tptlib import micro
    open_clip.add_model_config(micro.config_path())
    model, _, preprocess = open_clip.create_model_and_transforms(micro.MODEL_NAME, pretrained=None)
    model.load_state_dict(micro.load_state_dict())
    tokenizer = open_clip.get_tokenizer(micro.MODEL_NAME)

The weights file stores only the token-embedding rows the micro world's captions and class
names can produce (``token_embedding.rows`` + ``token_embedding.weight_rows``);
``load_state_dict`` restores the full ``[49408, 128]`` table with the other rows zero, which is
exactly the table the model was trained with (those rows are zero from initialisation on and
never receive a gradient).
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_NAME = "micro-clip"
_HERE = Path(__file__).resolve().parent


def config_path() -> Path:
    """The open_clip model config (``add_model_config`` registers it as ``MODEL_NAME``)."""
    return _HERE / "micro-clip.json"


def weights_dir() -> Path:
    return _HERE / "weights"


def weights_path() -> Path:
    """The shipped weights (safetensors)."""
    return weights_dir() / "micro_clip.safetensors"


def manifest(path=None) -> dict:
    """The shipped manifest: config, seed, steps, data version, sha256, accuracies, A filter."""
    p = Path(path) if path is not None else weights_dir() / "manifest.json"
    return json.loads(p.read_text())


def load_state_dict(path=None) -> dict:
    """The full open_clip state_dict of the micro-CLIP (fp32), from ``path`` or the shipped file."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(path if path is not None else weights_path()))
    rows = sd.pop("token_embedding.rows", None)
    part = sd.pop("token_embedding.weight_rows", None)
    if rows is not None:
        cfg = json.loads(config_path().read_text())["text_cfg"]
        full = torch.zeros(cfg["vocab_size"], cfg["width"], dtype=part.dtype)
        full[rows.long()] = part
        sd["token_embedding.weight"] = full
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


__all__ = ["MODEL_NAME", "config_path", "weights_dir", "weights_path", "manifest", "load_state_dict"]
