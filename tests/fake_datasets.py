"""Fake data roots for the paper profile: the 15 datasets of TPT's two tables in their real layouts
(every class folder and split entry the loaders expect), with a few small images each; the tiny
random-weight open_clip architecture to run them with is `_helpers.write_tiny_clip`.

    root = build_paper_root(tmp_path / "data")                 # all 15
    root = build_paper_root(tmp_path / "data", ["R", "DTD"])   # a root missing the others
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from tptlib.data.catalog import _timm_info
from tptlib.workbook import PAPER_CROSS, PAPER_ID, PAPER_OOD

ALL_TASKS = [PAPER_ID, *PAPER_OOD, *PAPER_CROSS]

#: ImageNet family: folder under the root (the authors' names; Sketch as its public archive unpacks)
#: and the class folder names.
IMAGE_FOLDERS = {
    "I": ("ImageNet/val", "imagenet_synsets.txt"),
    "A": ("imagenet-a", "imagenet_a_synsets.txt"),
    "V": ("imagenetv2-matched-frequency-format-val", None),     # folders 0..999
    "R": ("imagenet-r", "imagenet_r_synsets.txt"),
    "K": ("ImageNet-Sketch/sketch", "imagenet_synsets.txt"),
}
#: CoOp-split sets in CoOp's layout: dataset folder, image folder inside it, split file.
SPLIT_SETS = {
    "Flower102": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "DTD": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "Pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "Cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "Food101": ("food-101", "images", "split_zhou_Food101.json"),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
}
#: FGVC-Aircraft: the `data` folder of the official archive.
AIRCRAFT_DIR = "fgvc-aircraft-2013b/data"

def _tpt_names() -> dict:
    return json.loads(resources.files("tptlib").joinpath("resources/tpt_classnames.json").read_text())


def _image(path: Path, rng: np.random.Generator) -> None:
    """A small JPEG of coloured noise, not square (view 0 resizes and centre-crops it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(path, "JPEG")


def build_paper_root(root: Path, tasks=None, per_task: int = 3, seed: int = 0) -> Path:
    """A data root holding `tasks` (default: all 15) in their real layouts, `per_task` images each.

    Images go to the first `per_task` classes (one each), so every task has images of several
    classes; the other class folders exist and are empty, or appear only in the split files.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = _tpt_names()
    for task in tasks or ALL_TASKS:
        if task in IMAGE_FOLDERS:
            folder, synsets = IMAGE_FOLDERS[task]
            classes = _timm_info(synsets) if synsets else [str(i) for i in range(1000)]
            for k, cls in enumerate(classes):
                (root / folder / cls).mkdir(parents=True, exist_ok=True)
                if k < per_task:
                    _image(root / folder / cls / f"{task}_{k}.JPEG", rng)
        elif task in SPLIT_SETS:
            folder, images, split = SPLIT_SETS[task]
            classes = names[task]
            entry = lambda y: [f"class_{y:03d}/img_{y}.jpg", y, classes[y].replace(" ", "_")]   # noqa: E731
            test = [entry(y) for y in range(per_task)]
            train = [entry(y) for y in range(len(classes))]          # names every class, as the real files do
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / split).write_text(json.dumps({"train": train, "val": [], "test": test}))
            for rel, _, _ in test:
                _image(root / folder / images / rel, rng)
        elif task == "Aircraft":
            data = root / AIRCRAFT_DIR
            variants = names["Aircraft"]
            data.mkdir(parents=True, exist_ok=True)
            (data / "variants.txt").write_text("\n".join(variants) + "\n")
            ids = [f"{1000000 + k}" for k in range(per_task)]
            (data / "images_variant_test.txt").write_text("".join(f"{i} {variants[k]}\n" for k, i in enumerate(ids)))
            for i in ids:
                _image(data / "images" / f"{i}.jpg", rng)
        else:
            raise ValueError(f"no fake layout for task {task!r}")
    return root
