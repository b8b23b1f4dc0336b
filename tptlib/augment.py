"""The views of one test image, as TPT makes them, with per-sample seeding.

View 0 is the original: Resize (bicubic) + CenterCrop + ToTensor + Normalize. Views 1.. start
from RandomResizedCrop (torchvision's defaults: scale 0.08-1, ratio 3/4-4/3, bilinear) on the raw
image and a horizontal flip. For the ImageNet family that is all; for the cross-datasets TPT adds
its AugMix (3 chains of 1-3 ops from autocontrast, equalize, posterize, rotate, solarize, shear and
translate at severity 1; Dirichlet chain weights; Beta mixing with the crop; mixing on normalised
tensors).

All randomness of sample i comes from generators seeded by (seed, i), never from global state,
so a sample's views do not depend on batch size, order, sharding or resuming.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from . import augment_ops as ops
from .clip import view0_transform
from .data.base import CorruptImageError

#: TPT's AugMix op set (colour, contrast, brightness and sharpness are deliberately absent).
AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize",
              "shear_x", "shear_y", "translate_x", "translate_y")


def sample_generators(seed: int, index: int) -> tuple[torch.Generator, np.random.Generator]:
    """Independent torch and numpy generators for sample `index` under run seed `seed`."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    torch_seed, np_seed = ss.generate_state(2, dtype=np.uint64)
    g = torch.Generator().manual_seed(int(torch_seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return g, np.random.default_rng(int(np_seed))


def random_resized_crop_params(width: int, height: int, g: torch.Generator,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `g` instead of the global RNG."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip(image: Image.Image, size: int, g: torch.Generator, min_scale: float = 0.08) -> Image.Image:
    """RandomResizedCrop(size, scale=(min_scale, 1)) + RandomHorizontalFlip, seeded by `g`."""
    i, j, h, w = random_resized_crop_params(image.width, image.height, g, scale=(min_scale, 1.0))
    out = ops.resized_crop(image, i, j, h, w, size)
    if torch.rand(1, generator=g).item() < 0.5:
        out = ops.hflip(out)
    return out


def _level(rng: np.random.Generator, severity: float, maxval: float) -> float:
    # The authors' sample_level / float_parameter: uniform(0.1, severity) * maxval / 10.
    return rng.uniform(0.1, severity) * maxval / 10


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


def apply_op(image: Image.Image, op: str, rng: np.random.Generator, severity: float = 1.0) -> Image.Image:
    """One AugMix op at TPT's severity on an RGB image: torchvision's functional op, computed by
    `tptlib.augment_ops` (the same pixels, to the bit)."""
    size = image.width
    if op == "autocontrast":
        return ops.autocontrast(image)
    if op == "equalize":
        return ops.equalize(image)
    if op == "posterize":
        return ops.posterize(image, 4 - int(_level(rng, severity, 4)))
    if op == "solarize":
        return ops.solarize(image, 256 - int(_level(rng, severity, 256)))
    if op == "rotate":
        return ops.rotate(image, _signed(rng, int(_level(rng, severity, 30))))
    if op in ("shear_x", "shear_y"):
        shear = math.degrees(math.atan(_signed(rng, _level(rng, severity, 0.3))))
        return ops.affine(image, translate=[0, 0], shear=[shear, 0.0] if op == "shear_x" else [0.0, shear],
                          center=[0, 0])
    if op in ("translate_x", "translate_y"):
        shift = _signed(rng, int(_level(rng, severity, size / 3)))
        return ops.affine(image, translate=[shift, 0] if op == "translate_x" else [0, shift], shear=[0.0, 0.0])
    raise ValueError(f"unknown AugMix op {op!r}; known: {AUGMIX_OPS}")


def augmix_view(crop: Image.Image, to_tensor: Callable, rng: np.random.Generator, severity: float = 1.0,
                ops: Sequence[str] = AUGMIX_OPS) -> torch.Tensor:
    """TPT's AugMix on one cropped+flipped image, mixing on normalised tensors (the definition;
    `make_views` computes it for all views of an image at once)."""
    m, w, chains = augmix_chains(crop, rng, severity, ops)
    x = to_tensor(crop)
    mix = torch.zeros_like(x)
    for i, aug in enumerate(chains):
        mix += float(w[i]) * to_tensor(aug)
    return float(m) * x + (1 - float(m)) * mix


def to_tensors(images: Sequence[Image.Image], mean, std) -> torch.Tensor:
    """`TF.normalize(TF.to_tensor(im), mean, std)` of same-size RGB images, stacked `[N, 3, H, W]`:
    the same values to the bit, converted in one pass instead of one image at a time."""
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))       # [N, H, W, 3]
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def augmix_chains(crop: Image.Image, rng: np.random.Generator, severity: float = 1.0,
                  ops: Sequence[str] = AUGMIX_OPS) -> tuple[np.float32, np.ndarray, list[Image.Image]]:
    """AugMix's draws for one cropped view: the mixing weight m, the 3 chain weights w and the 3
    augmented images (what `augmix_view` mixes), drawing from `rng` in `augmix_view`'s order."""
    w = rng.dirichlet([1.0, 1.0, 1.0]).astype(np.float32)
    m = np.float32(rng.beta(1.0, 1.0))
    chains = []
    for _ in range(3):
        aug = crop
        for _ in range(int(rng.integers(1, 4))):
            aug = apply_op(aug, ops[int(rng.integers(len(ops)))], rng, severity)
        chains.append(aug)
    return m, w, chains


def make_views(image: Image.Image, index: int, seed: int = 0, n_views: int = 64, image_size: int = 224,
               augmix: bool = False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, min_scale: float = 0.08,
               severity: float = 1.0) -> torch.Tensor:
    """The `n_views` views of one image: `[n_views, 3, S, S]`, view 0 the preprocessed original.

    View v (1..) is `to_tensor(crop_v)`, or `augmix_view(crop_v, ...)` with AugMix: the crops draw
    from the sample's torch generator and AugMix from its numpy one, so all crops are cut first, the
    images are converted in one pass and the views mixed together, with `augmix_view`'s arithmetic
    (equal to the bit: tests/test_augment.py).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1; got {n_views}")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1]; got {min_scale}")
    image = image.convert("RGB")
    g, rng = sample_generators(seed, index)
    view0 = view0_transform(image_size, mean, std)(image).unsqueeze(0)
    crops = [crop_flip(image, image_size, g, min_scale) for _ in range(n_views - 1)]
    if not crops:
        return view0
    if not augmix:
        return torch.cat([view0, to_tensors(crops, mean, std)])
    ms, ws, chains = zip(*(augmix_chains(crop, rng, severity) for crop in crops))
    x = to_tensors([im for crop, augs in zip(crops, chains) for im in (crop, *augs)], mean, std)
    x = x.unflatten(0, (len(crops), 4))                                               # [V-1, 4, 3, S, S]
    w = torch.from_numpy(np.stack(ws)).view(len(crops), 3, 1, 1, 1)                  # float32, as float(w[i])
    m = torch.tensor([float(v) for v in ms], dtype=x.dtype).view(-1, 1, 1, 1)
    rest = torch.tensor([1 - float(v) for v in ms], dtype=x.dtype).view(-1, 1, 1, 1)  # 1 - m in double, as there
    mix = torch.zeros_like(x[:, 0])
    for i in range(3):
        mix += w[:, i] * x[:, i + 1]
    return torch.cat([view0, m * x[:, 0] + rest * mix])


def task_views(clip, task, i: int, seed: int = 0, n_views: int = 64) -> torch.Tensor:
    """The views of sample `i` of `task` for `clip`'s input size and normalisation.

    Raises `CorruptImageError` (like `task.load_image`) for an image so elongated that view 0,
    resized to `image_size` on its short side, would exceed PIL's decompression-bomb limit.
    """
    image = task.load_image(i)
    w, h = image.size
    if image_size_after_resize(w, h, clip.image_size) > (Image.MAX_IMAGE_PIXELS or math.inf):
        raise CorruptImageError(f"{task.name}: sample {i}: {task.samples[i][0]} is {w}x{h} pixels; resized to "
                                f"{clip.image_size} on its short side it would exceed PIL's limit of "
                                f"{Image.MAX_IMAGE_PIXELS} pixels")
    return make_views(image, index=i, seed=seed, n_views=n_views, image_size=clip.image_size,
                      augmix=task.augmix, mean=clip.mean, std=clip.std, min_scale=task.min_crop_scale)


def image_size_after_resize(width: int, height: int, image_size: int) -> float:
    """Pixels of a `width` x `height` image resized to `image_size` on its short side (view 0's Resize)."""
    short, long = sorted((max(width, 1), max(height, 1)))
    return image_size * image_size * long / short
