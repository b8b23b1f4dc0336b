"""The benchmark tasks of TPT: names, default folders, class lists, and `load_task`.

Folder names under a data root are those of the authors' `ID_to_DIRNAME` (TPT's
`data/datautils.py`); CoOp's names (`oxford_pets`, `food-101`, ...) are accepted too, and so is a
root that points at the dataset folder itself. Class lists are never retyped here: ImageNet's
names come from `open_clip.zero_shot_metadata`, its WordNet ids and the -A/-R subsets from timm's
`data/_info/` files, the cross-dataset names from TPT's lists in `tptlib/resources`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import ClassVar

from .base import DatasetLayoutError, Task
from .folders import class_dirs, read_imagefolder
from .registry import prefix_hints, prefix_loader, with_paper_dataset
from .splits import read_aircraft, read_split_json


@dataclass(frozen=True)
class TaskInfo:
    """One known task, as `list_tasks()` reports it."""

    name: str                  # canonical id used by runs and published results: "A", "Flower102", ...
    title: str                 # human name: "ImageNet-A"
    n_classes: int
    default_dir: str           # folder under a data root, as in the authors' code ("ImageNet/val", "imagenet-a")
    augmix: bool               # TPT's AugMix views (cross-datasets) or crop+flip only (ImageNet family)
    aliases: tuple[str, ...]   # other accepted names (matched ignoring case, '-', '_' and spaces)


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    dirs: tuple[str, ...]      # folders under a data root to try, the authors' name first; the root itself is tried last
    aliases: tuple[str, ...]
    augmix: ClassVar[bool] = True   # cross-datasets get TPT's AugMix views


@dataclass(frozen=True)
class _ImageNetSpec(_Spec):
    augmix: ClassVar[bool] = False  # the ImageNet family gets crop+flip views only
    subset: str | None = None  # timm's "<subset>_synsets.txt" / "<subset>_indices.txt" (ImageNet-A/-R)
    numbered: bool = False     # class folders named 0..999 (ImageNet-V2) instead of WordNet ids


@dataclass(frozen=True)
class _SplitSpec(_Spec):
    split_file: str = ""
    image_dirs: tuple[str, ...] = ("",)   # where the split's paths start, inside the dataset folder (CoOp's, then TPT's)


_SPECS: tuple[_Spec, ...] = (
    _ImageNetSpec("I", "ImageNet", ("ImageNet/val", "val"), ("imagenet", "imagenet-val", "imagenet-1k", "in1k")),
    _ImageNetSpec("A", "ImageNet-A", ("imagenet-a",), ("imagenet-a", "in-a"), subset="imagenet_a"),
    _ImageNetSpec("V", "ImageNet-V2", ("imagenetv2-matched-frequency-format-val",),
                  ("imagenet-v2", "in-v2", "v2"), numbered=True),
    _ImageNetSpec("R", "ImageNet-R", ("imagenet-r",), ("imagenet-r", "in-r"), subset="imagenet_r"),
    # The authors read ImageNet-Sketch's class folders directly in 'ImageNet-Sketch' (no 'images' level);
    # the public archives unpack to 'sketch/' or 'images/', which are accepted as well.
    _ImageNetSpec("K", "ImageNet-Sketch", ("ImageNet-Sketch", "ImageNet-Sketch/images", "ImageNet-Sketch/sketch",
                                           "sketch", "images"), ("imagenet-sketch", "sketch", "in-sketch")),
    _SplitSpec("Flower102", "Flowers102", ("Flower102", "oxford_flowers"),
               ("flowers", "flowers102", "oxford-flowers"),
               "split_zhou_OxfordFlowers.json", ("jpg",)),
    _SplitSpec("DTD", "DTD", ("DTD", "dtd"), ("textures", "describable-textures"),
               "split_zhou_DescribableTextures.json", ("images",)),
    _SplitSpec("Pets", "Oxford Pets", ("OxfordPets", "oxford_pets"), ("oxford-pets",),
               "split_zhou_OxfordPets.json", ("images", "")),
    _SplitSpec("Cars", "Stanford Cars", ("StanfordCars", "stanford_cars"), ("stanford-cars",),
               "split_zhou_StanfordCars.json", ("",)),
    _SplitSpec("UCF101", "UCF101", ("UCF101", "ucf101"), ("ucf",),
               "split_zhou_UCF101.json", ("UCF-101-midframes", "")),
    _SplitSpec("Caltech101", "Caltech101", ("Caltech101", "caltech-101"), ("caltech",),
               "split_zhou_Caltech101.json", ("101_ObjectCategories", "")),
    _SplitSpec("Food101", "Food101", ("Food101", "food-101"), ("food",),
               "split_zhou_Food101.json", ("images",)),
    _SplitSpec("SUN397", "SUN397", ("SUN397", "sun397"), ("sun",),
               "split_zhou_SUN397.json", ("SUN397", "")),
    _SplitSpec("eurosat", "EuroSAT", ("eurosat",), (), "split_zhou_EuroSAT.json", ("2750", "")),
    # TPT's 'fgvc_aircraft' is the 'data' folder of the official archive fgvc-aircraft-2013b.tar.gz.
    _Spec("Aircraft", "FGVC-Aircraft", ("fgvc_aircraft", "fgvc-aircraft-2013b/data", "data"),
          ("fgvc-aircraft",)),
)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


_BY_ALIAS: dict[str, _Spec] = {_norm(a): s for s in _SPECS for a in (s.name, s.title, s.dirs[0], *s.aliases)}


def task_names() -> list[str]:
    """The canonical names `load_task` accepts (besides aliases and `micro:<set>`)."""
    return [s.name for s in _SPECS]


def list_tasks() -> list[TaskInfo]:
    """Every known task with its class count, default folder under a data root and aliases."""
    return [TaskInfo(s.name, s.title, _n_classes(s), s.dirs[0], s.augmix, s.aliases) for s in _SPECS]


def _n_classes(spec: _Spec) -> int:
    return len(_imagenet_folders(spec)[0]) if isinstance(spec, _ImageNetSpec) else len(_tpt_classnames()[spec.name])


def load_task(name: str, root: str | os.PathLike | None = None, **kw) -> Task:
    """Load a test set as a `Task`.

    Args:
        name: a task name, case-insensitive, with aliases: `I`, `A`, `V`, `R`, `K` (or `imagenet-a`,
            `sketch`, ...), `Flower102` (`flowers`), `DTD`, `Pets`, `Cars`, `UCF101`, `Caltech101`,
            `Food101`, `SUN397`, `eurosat`, `Aircraft`; or a name under a registered prefix
            (`tptlib.data.registry`), such as `micro:<set>` for the embedded micro profile.
        root: the data root that holds the dataset folders under their default names (see
            `list_tasks()`), or the dataset folder itself. Required except for `micro:` tasks.
        **kw: options of the loader. CoOp-split sets accept `split_dir`, a folder holding the
            `split_zhou_*.json` files (like TPT's `data/data_splits/`); by default the split file
            is looked for in the dataset folder, as CoOp lays it out. `micro:` tasks take theirs.

    Raises:
        ValueError: unknown name (the message lists the known ones) or no root.
        DatasetLayoutError: the folder does not match the task (says what was expected and found).
    """
    return interleave_classes(_load_task(name, root, **kw))


def interleave_classes(task: Task) -> Task:
    """Order the samples round-robin over the classes (each class's own order kept).

    Folder layouts list images class by class, so the first N samples of a folder would cover only
    a few classes. In this order the first N cover the classes as evenly as the data allows, so a
    run with `limit=N` is a balanced subset, and a longer run's first N samples are that subset.
    """
    by_class: dict[int, list] = {}
    for sample in task.samples:
        by_class.setdefault(int(sample[1]), []).append(sample)
    queues = [by_class[label] for label in sorted(by_class)]
    task.samples = [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]
    task.meta["order"] = "round-robin over classes"
    return task


def _load_task(name: str, root, **kw) -> Task:
    registered = prefix_loader(name)
    if registered is not None:
        loader, rest = registered
        return with_paper_dataset(loader(rest, root=root, **kw), name)
    spec = _BY_ALIAS.get(_norm(name))
    if spec is None:
        known = ", ".join(task_names())
        others = "".join(f", or {hint}" for hint in prefix_hints())
        raise ValueError(f"unknown task {name!r}; known tasks: {known} (aliases such as 'imagenet-a' "
                         f"or 'flowers' work too){others}.")
    if root is None:
        raise ValueError(f"load_task({name!r}) needs root=, the folder that holds {spec.dirs[0]!r} "
                         f"(or that folder itself).")
    options = {"split_dir"} if isinstance(spec, _SplitSpec) else set()
    if unknown := set(kw) - options:
        raise TypeError(f"load_task({name!r}) got unexpected options {sorted(unknown)}; "
                        f"it accepts {sorted(options) or 'none'}.")
    root = Path(root).expanduser().absolute()   # samples keep absolute paths: a later chdir cannot break them
    if isinstance(spec, _ImageNetSpec):
        task = _load_imagenet(spec, root)
    elif isinstance(spec, _SplitSpec):
        task = _load_split_set(spec, root, kw.get("split_dir"))
    else:
        task = _load_aircraft(spec, root)
    task.paper_dataset = spec.name
    return task


# --- ImageNet family -------------------------------------------------------------------------

def _timm_info(filename: str) -> list[str]:
    """Lines of a file in timm's `data/_info/` (located without importing timm, which is slow)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tptlib needs timm installed for the ImageNet WordNet ids (pip install timm)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "_info" / filename
    return path.read_text(encoding="utf-8").split()


@cache
def _imagenet_folders(spec: _ImageNetSpec) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """`(wnids, indices)`: the task's WordNet ids in label order and their indices among the 1000."""
    all_wnids = tuple(_timm_info("imagenet_synsets.txt"))
    if spec.subset is None:
        return all_wnids, tuple(range(len(all_wnids)))
    wnids = tuple(_timm_info(f"{spec.subset}_synsets.txt"))
    indices = tuple(int(i) for i in _timm_info(f"{spec.subset}_indices.txt"))
    if tuple(all_wnids[i] for i in indices) != wnids:
        raise RuntimeError(f"timm's {spec.subset} synsets and indices disagree; is the timm install broken?")
    return wnids, indices


def _imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES   # slow import: only when needed
    return list(IMAGENET_CLASSNAMES)


def imagenet_classnames(name: str = "I") -> list[str]:
    """The class names of an ImageNet-family task ("I", "A", "V", "R", "K" or an alias) in label
    order, without its data: ImageNet's 1000, or the subset of ImageNet-A / -R."""
    spec = _BY_ALIAS.get(_norm(name))
    if not isinstance(spec, _ImageNetSpec):
        raise ValueError(f"{name!r} is not a task of the ImageNet family (I, A, V, R, K)")
    names = _imagenet_classnames()
    return [names[i] for i in _imagenet_folders(spec)[1]]


def _load_imagenet(spec: _ImageNetSpec, root: Path) -> Task:
    wnids, _ = _imagenet_folders(spec)
    folders = [str(i) for i in range(len(wnids))] if spec.numbered else wnids
    hint = "named 0..999 (the ImageNet label)" if spec.numbered else "named by WordNet id"
    candidates = _candidates(spec, root)
    expected, found = set(folders), {c: class_dirs(c) for c in candidates}
    # the first exact match; else the folder closest to it, so the error lists missing/extra folders there
    best = max(candidates, key=lambda c: (found[c] == expected, len(found[c] & expected)))
    with _searched_in(candidates, spec):
        samples = read_imagefolder(best, folders, spec.title, int if spec.numbered else None, hint=hint)
    return Task(spec.name, imagenet_classnames(spec.name), samples, root=best, augmix=spec.augmix,
                meta={"title": spec.title, "wnids": list(wnids),
                      "source": f"{len(folders)} class folders {hint}: all present, none extra"})


# --- CoOp-split sets and FGVC-Aircraft -------------------------------------------------------

@cache
def _tpt_classnames() -> dict[str, list[str]]:
    text = resources.files("tptlib").joinpath("resources/tpt_classnames.json").read_text(encoding="utf-8")
    return json.loads(text)


def _classnames(spec: _Spec, found: list[str], source) -> list[str]:
    """TPT's class names for `spec` after checking that the dataset files (`source`, which name
    `found`, index = label) name the same classes under the same labels; `found` itself when TPT
    has no list for the task. Names are compared ignoring case, spaces and punctuation
    ("airplane_cabin" is "airplane cabin"), so a permuted or foreign split is refused, showing the
    first disagreements."""
    names = _tpt_classnames().get(spec.name)
    if names is None:
        return found
    if len(found) != len(names):
        raise DatasetLayoutError(f"{spec.title}: the dataset files name {len(found)} classes but TPT's class list "
                                 f"has {len(names)}; is {source} the right file for {spec.title}?")
    differ = [y for y, (a, b) in enumerate(zip(found, names)) if _same_name(a) != _same_name(b)]
    if differ:
        shown = "; ".join(f"label {y}: {found[y]!r} in the file, {names[y]!r} in TPT's list" for y in differ[:3])
        raise DatasetLayoutError(
            f"{spec.title}: {source} maps labels to other classes than TPT's class list for {spec.title} at "
            f"{len(differ)} of {len(names)} labels ({shown}{'; ...' if len(differ) > 3 else ''}). A permuted or "
            f"foreign split would score every prediction against the wrong class; use {spec.title}'s own file.")
    return list(names)


def _same_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _load_split_set(spec: _SplitSpec, root: Path, split_dir: str | os.PathLike | None) -> Task:
    candidates = _candidates(spec, root)
    if split_dir is None:
        holding = [c for c in candidates if (c / spec.split_file).is_file()]
        if not holding:
            raise DatasetLayoutError(
                f"{spec.title}: expected the CoOp split file {spec.split_file} in the dataset folder; looked in "
                f"{', '.join(map(str, candidates))}. Download it via CoOp's DATASETS.md (TPT keeps copies in its "
                f"data/data_splits/), put it in the dataset folder, or pass split_dir= the folder holding it.")
        dataset_dir, split_path = holding[0], holding[0] / spec.split_file
    else:
        dataset_dir = candidates[0]
        split_path = Path(split_dir).expanduser().absolute() / spec.split_file
    samples, found = read_split_json(dataset_dir, split_path, spec.image_dirs, spec.title)
    return Task(spec.name, _classnames(spec, found, split_path), samples, root=dataset_dir, augmix=spec.augmix,
                meta={"title": spec.title, "split_file": str(split_path),
                      "source": f"CoOp split file {split_path} ('test' list)",
                      "input_files": {"split_file": str(split_path)}})


def _load_aircraft(spec: _Spec, root: Path) -> Task:
    candidates = _candidates(spec, root)
    dataset_dir = next((c for c in candidates if (c / "variants.txt").is_file()), candidates[0])
    with _searched_in(candidates, spec):
        samples, variants = read_aircraft(dataset_dir, spec.title)
    return Task(spec.name, _classnames(spec, variants, dataset_dir / "variants.txt"), samples, root=dataset_dir,
                augmix=spec.augmix,
                meta={"title": spec.title, "source": "FGVC-Aircraft variants.txt and images_variant_test.txt",
                      "input_files": {"variants": str(dataset_dir / "variants.txt"),
                                      "split_file": str(dataset_dir / "images_variant_test.txt")}})


# --- shared ----------------------------------------------------------------------------------

def _candidates(spec: _Spec, root: Path) -> list[Path]:
    """Existing folders that may be the dataset folder: the default names under `root`, then `root`."""
    return [c for c in (*(root / d for d in spec.dirs), root) if c.is_dir()] or [root]


@contextmanager
def _searched_in(candidates: list[Path], spec: _Spec):
    """Add where the loader looked to a `DatasetLayoutError` raised inside the block."""
    try:
        yield
    except DatasetLayoutError as exc:
        raise DatasetLayoutError(
            f"{exc} (Looked in {', '.join(map(str, candidates))}; root= should be the folder that holds "
            f"{spec.dirs[0]!r}, or the dataset folder itself.)") from None
