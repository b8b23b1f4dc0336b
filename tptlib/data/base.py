"""The `Task` every loader returns, and the errors a loader raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class DatasetLayoutError(ValueError):
    """A data root whose layout does not match the task (says what was expected and found)."""


class CorruptImageError(OSError):
    """An image file that exists but cannot be decoded."""


class MissingImageError(FileNotFoundError):
    """An image file listed by the task's split but absent on disk."""


@dataclass
class Task:
    """A labelled test set: class names (index = label) and `(path, label)` samples."""

    name: str
    classnames: list[str]
    samples: list[tuple[str, int]]
    root: Path
    augmix: bool = False          # TPT's AugMix views (cross-datasets) or plain crop+flip (ImageNet family)
    min_crop_scale: float = 0.08  # RandomResizedCrop's lower scale bound for the augmented views
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def load_image(self, i: int) -> Image.Image:
        path = Path(self.samples[i][0])
        if not path.is_file():
            raise MissingImageError(f"{self.name}: sample {i} lists {path}, which does not exist")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{self.name}: sample {i}: cannot decode {path}: {exc}") from exc

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, {len(self.classnames)} classes, {len(self.samples)} samples, "
                f"root={str(self.root)!r}, augmix={self.augmix})")
