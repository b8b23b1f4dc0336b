"""Loading CLIP models through open_clip: named weights, local checkpoints, random weights, micro-CLIP.

`load_clip` returns a `Clip`: the frozen open_clip model, its tokenizer, the view-0 preprocessing,
and the precision policy (autocast) that every method runs under.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .checks import describe_names, file_sha256, nonfinite_tensors
from .image_tower import encode_images
from .textmemo import MemoTokenizer

#: precision policies. "amp" is the authors' setting: fp32 weights, forward under fp16 autocast,
#: loss scaling for the backward. "auto" means "amp" on CUDA and "fp32" elsewhere.
PRECISIONS = ("auto", "fp32", "amp", "bf16")



class _QuietRandomInit(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" notice: here random weights are asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _create_model(name: str, pretrained: str | None = None, **kwargs) -> torch.nn.Module:
    quiet = _QuietRandomInit()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=pretrained, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Random weights drawn from torch's generator seeded by `seed` (restored afterwards), so that every
    process that asks for the same shape with random weights gets the same model; None: no seeding."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested architecture."""


@dataclass
class Clip:
    """A frozen CLIP model with everything a method needs around it."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    name: str
    pretrained: str | None
    device: torch.device
    precision: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: the weights file the model was loaded from (None: an open_clip tag or random weights) and the
    #: SHA-256 of its bytes when it was loaded; a run pins it (`tptlib.runs`)
    weights_file: str | None = None
    weights_sha256: str | None = None

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale), the temperature CLIP multiplies cosine similarities by."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def embed_dim(self) -> int:
        """The width of the joint embedding (the text projection's output; a CustomTextCLIP's is `model.text`'s)."""
        proj = getattr(self.model, "text_projection", None)
        if proj is None and hasattr(self.model, "text"):
            proj = self.model.text.text_projection
        return int(proj.shape[-1]) if isinstance(proj, torch.Tensor) else int(proj.out_features)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"amp": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def autocast(self, enabled: bool = True):
        """The autocast context for this model's precision (a no-op for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None or not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def image_chunk(self) -> int:
        """Views per pass through the image tower by default: 128 on a CPU, where a smaller pass keeps
        the tower's activations in cache, else 256. The features do not depend on it."""
        return 128 if self.device.type == "cpu" else 256

    @torch.no_grad()
    def encode_views(self, views: torch.Tensor, chunk: int | None = None, autocast: bool = True, fast: bool = False,
                     encoder: Callable | None = None) -> torch.Tensor:
        """L2-normalised image features of views `[..., 3, H, W]` -> `[..., D]` (fp32, no grad).

        `chunk` views (default `image_chunk`) go through the image tower at a time, under this model's
        autocast unless `autocast=False`. fast: the exact fast path of a ViT's image tower
        (`tptlib.image_tower.encode_images`, what the engine runs); else `model.encode_image`.
        encoder: `images [N, 3, H, W] -> [N, D]`, another image path (overrides `fast`).
        """
        encoder = encoder or (lambda images: encode_images(self.model, images, fast))
        chunk = chunk or self.image_chunk
        lead = views.shape[:-3]
        flat = views.reshape(-1, *views.shape[-3:])
        feats = []
        for start in range(0, flat.shape[0], chunk):
            batch = flat[start:start + chunk].to(self.device, non_blocking=True)
            with self.autocast(enabled=autocast):
                feats.append(encoder(batch).float())
        return F.normalize(torch.cat(feats), dim=-1).reshape(*lead, -1)

    def __repr__(self) -> str:
        return (f"Clip({self.name!r}, pretrained={self.pretrained!r}, device={self.device}, "
                f"precision={self.precision!r}, image_size={self.image_size})")


#: device types a model can run on (torch also names "meta", which holds no values, and others)
_COMPUTE_DEVICES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """The device `device` names, refused (`ValueError`) unless this machine has it and torch can use it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"unknown device {device!r} ({exc}); use cpu, cuda or cuda:N") from None
    if resolved.type not in _COMPUTE_DEVICES:
        raise ValueError(f"device {resolved} cannot run a model here; use one of {', '.join(_COMPUTE_DEVICES)}")
    if resolved.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {resolved} is not available: torch sees no CUDA device on this machine; "
                             "use cpu")
        if resolved.index is not None and resolved.index >= n:
            raise ValueError(f"device {resolved} is not available: this machine has {n} CUDA device"
                             f"{'s' if n > 1 else ''} (cuda:0{f'..cuda:{n - 1}' if n > 1 else ''})")
    try:
        torch.empty(1, device=resolved)
    except Exception as exc:  # noqa: BLE001 - whatever torch says, the device cannot be used
        raise ValueError(f"device {resolved} is not usable here ({type(exc).__name__}: {exc})") from None
    return resolved


def check_weights(model: torch.nn.Module, source: str) -> None:
    """Refuse (`CheckpointError`) weights that hold a NaN or an inf, or whose temperature
    exp(logit_scale) is not a finite positive number: nothing computed from them means anything."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {describe_names(bad)}; "
                              "results computed from these weights would be meaningless")
    if hasattr(model, "logit_scale"):
        raw = float(model.logit_scale.detach().float())
        scale = math.exp(raw) if raw < 710 else math.inf
        if not (math.isfinite(scale) and scale > 0):
            raise CheckpointError(f"{source}: logit_scale {raw:g} makes the temperature exp(logit_scale) = "
                                  f"{scale:g}, not a finite positive number")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    if precision == "amp" and device.type != "cuda":
        raise ValueError("precision='amp' (fp16 autocast with loss scaling) needs a CUDA device; "
                         f"got device={device}. Use 'fp32' or 'bf16' on the CPU.")
    return precision


def view0_transform(image_size: int, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> Callable:
    """View 0 as the authors build it: Resize (bicubic) + CenterCrop + ToTensor + Normalize, which is
    open_clip's evaluation transform (equal to the bit on RGB images: `tests/test_augment.py`)."""
    return open_clip.image_transform(image_size, is_train=False, mean=tuple(mean), std=tuple(std))


def _load_state_dict_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, whatever the reader says
            raise CheckpointError(f"cannot read {path} as a safetensors file ({type(exc).__name__}: {exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(
            f"cannot read {path} as a weights-only checkpoint ({type(exc).__name__}: {exc}). If it is the "
            "OpenAI TorchScript archive, pass jit_archive=True (CLI: --jit-archive) to load it as such."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a mapping with values that are not tensors"
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors); found {found}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _fit_state_dict(model: torch.nn.Module, state: dict, source: str, arch: str) -> None:
    """Load `state` into `model`, refusing a checkpoint made for another architecture."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_mismatch = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                      if k in state and (tuple(state[k].shape) != tuple(own[k].shape)
                                         or state[k].is_floating_point() != own[k].is_floating_point())]
    if missing or unexpected or shape_mismatch:
        lines = [f"checkpoint {source} does not fit the {arch} architecture:"]
        if shape_mismatch:
            lines.append("  shape mismatches (name: checkpoint vs model): " + "; ".join(
                f"{k}: {a} vs {b}" for k, a, b in shape_mismatch[:5]) + (" ..." if len(shape_mismatch) > 5 else ""))
        if missing:
            lines.append(f"  {len(missing)} weights missing from the checkpoint, e.g. {missing[:4]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected weights in the checkpoint, e.g. {unexpected[:4]}")
        lines.append("  Check --model (e.g. RN50 vs ViT-B-16, -quickgelu variants for OpenAI weights).")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state)


def _load_micro(pretrained: str | None) -> tuple[torch.nn.Module, str, str]:
    """The micro-CLIP with the shipped weights (None) or those of a file; and the weights file and its SHA-256."""
    from . import micro
    open_clip.add_model_config(micro.config_path())
    model = _create_model(micro.MODEL_NAME, pretrained=None)
    if pretrained is not None and not Path(pretrained).expanduser().is_file():
        raise CheckpointError(f"micro-CLIP weights: expected None (the shipped weights) or a file; "
                              f"got {pretrained!r}, which does not exist")
    source = Path(pretrained).expanduser().resolve() if pretrained is not None else micro.weights_path()
    try:
        state = micro.load_state_dict(source)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, whatever the reader says
        raise CheckpointError(f"cannot read {source} as micro-CLIP weights, a safetensors file "
                              f"({type(exc).__name__}: {exc})") from exc
    _fit_state_dict(model, state, str(source), "micro-CLIP")
    return model, str(source), file_sha256(source)


def load_clip(name: str = "micro", pretrained: str | None = None, device: str | torch.device = "cpu",
              precision: str = "auto", force_quick_gelu: bool | None = None, jit_archive: bool = False,
              cache_dir: str | None = None) -> Clip:
    """Load a CLIP model, frozen, in eval mode.

    name: an open_clip model name (`RN50`, `ViT-B-16`, `ViT-B-16-quickgelu`, ... see `tpt models`),
        `"micro"` for the embedded micro-CLIP, or the path of an open_clip model config (`.json`,
        the format of open_clip's `model_configs/`), registered under its file name without `.json`.
    pretrained: an open_clip tag (`"openai"`, `"laion2b_s34b_b88k"`, ...), a local checkpoint file
        (.safetensors / .pt / .pth / .bin, read with `weights_only=True`), or None / "none" for
        random weights of the real shape, drawn from a generator seeded by 0 so that every process
        gets the same ones (runs shared between notebooks or resumed later stay consistent). The
        OpenAI TorchScript archive loads only with `jit_archive=True`.
    precision: "auto" (amp on CUDA, fp32 elsewhere), "fp32", "amp" (fp16 autocast), "bf16".
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    weights_file = weights_sha256 = None
    if isinstance(pretrained, str) and pretrained.lower() in ("", "none", "random"):
        pretrained = None

    if name == "micro":
        model, weights_file, weights_sha256 = _load_micro(pretrained)
        from .micro import MODEL_NAME as arch
        tokenizer = open_clip.get_tokenizer(arch)
    else:
        if str(name).endswith(".json"):
            config = Path(name).expanduser()
            if not config.is_file():
                raise ValueError(f"model config file not found: {config}")
            open_clip.add_model_config(config)
            name = config.stem
        if name not in open_clip.list_models():
            raise ValueError(f"unknown model {name!r}; open_clip knows {len(open_clip.list_models())} models, "
                             f"e.g. RN50, RN50-quickgelu, ViT-B-16, ViT-B-16-quickgelu (see `tpt models`)")
        tokenizer = load_tokenizer(name)              # before the model: a tokenizer that cannot load fails fast
        kwargs = {}
        if force_quick_gelu is not None:
            kwargs["force_quick_gelu"] = force_quick_gelu
        local = pretrained is not None and (os.path.sep in str(pretrained) or Path(str(pretrained)).suffix
                                            in (".pt", ".pth", ".bin", ".safetensors"))
        if local:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise CheckpointError(f"checkpoint file not found: {path}")
            weights_file, weights_sha256 = str(path.resolve()), file_sha256(path)
            if jit_archive:
                model = _load_jit_archive(path, name, kwargs)
            else:
                model = _create_model(name, pretrained=None, **kwargs)
                _fit_state_dict(model, _load_state_dict_file(path), str(path), name)
        else:
            if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise ValueError(f"{name} has no pretrained tag {pretrained!r}; known tags: {tags or 'none'}"
                                 " (or give a local checkpoint file)")
            if pretrained is not None and force_quick_gelu is None and \
                    open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False):
                # OpenAI's weights were trained with QuickGELU; open_clip only warns when the config
                # lacks it (ViT-B-16 + openai), and the wrong activation silently costs accuracy.
                kwargs["force_quick_gelu"] = True
            with _seeded(None if pretrained else 0):
                model = _create_model(name, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
        arch = name

    check_weights(model, f"the weights of {arch} ({weights_file or pretrained or 'random'})")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD)
    return Clip(model=model, tokenizer=MemoTokenizer(tokenizer), preprocess=view0_transform(image_size, mean, std), name=arch,
                pretrained=None if pretrained is None else str(pretrained), device=device, precision=precision,
                image_size=image_size, mean=mean, std=std, weights_file=weights_file, weights_sha256=weights_sha256)


def load_tokenizer(name: str) -> Callable:
    """open_clip's tokenizer for model `name`, refusing clearly (ValueError) one that cannot be built here:
    SigLIP's is a Hugging Face tokenizer (`hf_tokenizer_name` in its config), which needs the
    `transformers` package and its files in the Hugging Face cache (downloaded once, online)."""
    try:
        return open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - import errors, missing files, no network: the same refusal
        hf_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
        what = f"the Hugging Face tokenizer {hf_name!r}" if hf_name else "its tokenizer"
        raise ValueError(f"{name}: {what} cannot be loaded here ({type(exc).__name__}: {exc}). A Hugging Face "
                         "tokenizer needs the `transformers` package and the tokenizer's files in the Hugging Face "
                         "cache (fetched once with network access); or give a model config (.json) whose text_cfg "
                         "names no hf_tokenizer_name and whose file name does not contain 'siglip' (open_clip then "
                         "uses its CLIP tokenizer)") from None


def _load_jit_archive(path: Path, name: str, kwargs: dict) -> torch.nn.Module:
    """The OpenAI TorchScript archive, loaded only on explicit request (it is code, not just weights)."""
    archive = torch.jit.load(str(path), map_location="cpu")
    state = {k: v for k, v in archive.state_dict().items()
             if k not in ("input_resolution", "context_length", "vocab_size")}
    model = _create_model(name, pretrained=None, **kwargs)
    _fit_state_dict(model, state, str(path), name)
    return model
