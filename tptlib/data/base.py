"""The `Task` every loader returns, and the errors a loader raises."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class DatasetLayoutError(ValueError):
    """A data root whose layout does not match the task (says what was expected and found)."""


class CorruptImageError(OSError):
    """An image file that exists but cannot be read, decoded or converted to RGB (whatever the
    reason: a truncated or foreign file, a decompression bomb, a pixel format with no RGB meaning)."""


class MissingImageError(FileNotFoundError):
    """An image file listed by the task's split but absent on disk."""


#: 16-bit greyscale modes, scaled to 8 bits (PIL's own conversion clips them at 255: a white image)
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: 32-bit modes whose values have no fixed range (integers or floats): refused, not guessed at
_MODES_32BIT = ("I", "F")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file decoded in full and converted to RGB as torchvision's loader does
    (`convert("RGB")`), except where that conversion is wrong: 16-bit greyscale is scaled to 8 bits
    (65535 -> 255) instead of clipped, and 32-bit integer or float pixels raise `ValueError`."""
    with Image.open(path) as img:
        img.load()
        if img.mode in _MODES_16BIT:
            grey = (np.asarray(img).astype(np.uint32) * 255 + 32767) // 65535
            return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
        if img.mode in _MODES_32BIT:
            raise ValueError(f"{'float' if img.mode == 'F' else 'integer'} pixels of 32 bits (PIL mode "
                             f"{img.mode!r}) have no standard range to map to RGB; convert the file to 8 or 16 bits")
        return img.convert("RGB")


@dataclass
class Task:
    """A labelled test set: class names (index = label) and `(path, label)` samples."""

    name: str
    classnames: list[str]
    samples: list[tuple[str, int]]
    root: Path
    augmix: bool = False          # TPT's AugMix views (cross-datasets) or plain crop+flip (ImageNet family)
    min_crop_scale: float = 0.08  # RandomResizedCrop's lower scale bound for the augmented views
    #: notes of the loader; `meta["input_files"]` (role -> path) names the files other than the images
    #: that define the task (split files), which a run pins by content digest
    meta: dict = field(default_factory=dict)
    #: the published dataset the task is or stands for ("A", "Flower102"; "K" for the micro set shaped
    #: like ImageNet-Sketch), whose authors' settings a method takes; None for a task with none
    paper_dataset: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def load_image(self, i: int) -> Image.Image:
        """Sample `i`'s image in RGB; `MissingImageError` when its file is absent, `CorruptImageError`
        for any failure to read or decode it, so that one bad file costs one sample."""
        path = Path(self.samples[i][0])
        if not path.is_file():
            what = "which does not exist" if not os.path.lexists(path) else "which is not a regular file"
            raise MissingImageError(f"{self.name}: sample {i} lists {path}, {what}")
        try:
            return read_rgb(path)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's error
            raise CorruptImageError(f"{self.name}: sample {i}: cannot read {path}: "
                                    f"{type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, {len(self.classnames)} classes, {len(self.samples)} samples, "
                f"root={str(self.root)!r}, augmix={self.augmix})")
