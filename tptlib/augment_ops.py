"""AugMix's ops and the crop of a view on RGB PIL images, equal to torchvision's to the bit, at a
fraction of the cost.

On the small images of the micro world, torchvision's functional ops spend most of their time
in Python: `ImageOps.autocontrast` and `equalize` build their 768-entry lookup tables one entry at
a time, `Image.point` rounds every entry again, and `TF.affine` / `TF.rotate` validate their
arguments and log their use on every call. Here the tables are computed with numpy (the same
integer and float64 arithmetic, so the same tables) or cached (posterize and solarize depend on
their level only), applied with one `Image.point` call, and the geometric ops call PIL with the
matrix and fill colour torchvision would pass; `resized_crop` and `hflip` are the PIL calls
torchvision's make. The pixels come from the same PIL calls, so the
images are equal to torchvision's: `tests/test_augment.py` checks every op on random, flat,
two-level and extreme images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from torchvision.transforms.functional import _get_inverse_affine_matrix

_RAMP = np.arange(256)
#: what torchvision's `_parse_fill(None, rgb_image)` gives PIL
_BLACK = {"fillcolor": (0, 0, 0)}


def _rgb(image: Image.Image) -> None:
    if image.mode != "RGB":
        raise ValueError(f"AugMix's ops here take RGB images; got mode {image.mode!r}")


def _point(image: Image.Image, table: list) -> Image.Image:
    """`image.point(table)` for a table of 768 ints (one 256-entry table per band): the call
    `Image.point` ends with, without rounding every entry of an integer table again."""
    image.load()
    return image._new(image.im.point(table, None))


def _histograms(image: Image.Image) -> np.ndarray:
    return np.asarray(image.histogram(), dtype=np.int64).reshape(3, 256)


def autocontrast(image: Image.Image) -> Image.Image:
    """`ImageOps.autocontrast(image)` (no cutoff, nothing ignored): each band stretched so that its
    darkest value becomes 0 and its lightest 255."""
    _rgb(image)
    present = _histograms(image) > 0
    lo = present.argmax(1)
    hi = 255 - present[:, ::-1].argmax(1)
    stretch = present.any(1) & (hi > lo)
    scale = 255.0 / np.where(stretch, hi - lo, 1)
    offset = -lo * scale
    # int(ix * scale + offset) clipped to 0..255: float64 products and sums, truncation toward 0
    table = np.clip(np.trunc(_RAMP * scale[:, None] + offset[:, None]), 0, 255).astype(np.int64)
    return _point(image, np.where(stretch[:, None], table, _RAMP).ravel().tolist())


def equalize(image: Image.Image) -> Image.Image:
    """`ImageOps.equalize(image)`: each band's cumulative histogram as its lookup table."""
    _rgb(image)
    hist = _histograms(image)
    present = hist > 0
    last = hist[np.arange(3), 255 - present[:, ::-1].argmax(1)]          # the count of the lightest value
    step = np.where(present.sum(1) > 1, (hist.sum(1) - last) // 255, 0)
    # lut[i] = n_i // step, n_0 = step // 2, n_{i+1} = n_i + h[i]
    n = (step // 2)[:, None] + np.concatenate([np.zeros((3, 1), np.int64), hist[:, :-1].cumsum(1)], axis=1)
    table = np.where(step[:, None] > 0, n // np.maximum(step, 1)[:, None], _RAMP)
    return _point(image, table.ravel().tolist())


@lru_cache(maxsize=None)
def _posterize_table(bits: int) -> list:
    mask = ~(2 ** (8 - bits) - 1)
    return [i & mask for i in range(256)] * 3


@lru_cache(maxsize=None)
def _solarize_table(threshold: int) -> list:
    return [i if i < threshold else 255 - i for i in range(256)] * 3


def posterize(image: Image.Image, bits: int) -> Image.Image:
    """`ImageOps.posterize(image, bits)`: keep the `bits` high bits of every value."""
    _rgb(image)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8; got {bits}")
    return _point(image, _posterize_table(int(bits)))


def solarize(image: Image.Image, threshold: int) -> Image.Image:
    """`ImageOps.solarize(image, threshold)`: values at or above `threshold` inverted."""
    _rgb(image)
    return _point(image, _solarize_table(int(threshold)))


def rotate(image: Image.Image, angle: float) -> Image.Image:
    """`TF.rotate(image, angle, interpolation=BILINEAR)`: about the centre, same size, black outside."""
    _rgb(image)
    return image.rotate(angle, Image.BILINEAR, False, None, **_BLACK)


def affine(image: Image.Image, translate: list, shear: list, center: list | None = None) -> Image.Image:
    """`TF.affine(image, angle=0, translate, scale=1, shear, interpolation=BILINEAR, center)`."""
    _rgb(image)
    if center is None:
        center = [image.width * 0.5, image.height * 0.5]
    matrix = _get_inverse_affine_matrix(center, 0.0, list(translate), 1.0, [float(s) for s in shear])
    return image.transform(image.size, Image.AFFINE, matrix, Image.BILINEAR, **_BLACK)


def resized_crop(image: Image.Image, top: int, left: int, height: int, width: int, size: int) -> Image.Image:
    """`TF.resized_crop(image, top, left, height, width, [size, size], BILINEAR, antialias=True)`:
    the crop, resized (PIL antialiases bilinear resizing) unless it already has that size."""
    crop = image.crop((left, top, left + width, top + height))
    return crop if crop.size == (size, size) else crop.resize((size, size), Image.BILINEAR)


def hflip(image: Image.Image) -> Image.Image:
    """`TF.hflip(image)`."""
    return image.transpose(Image.FLIP_LEFT_RIGHT)
