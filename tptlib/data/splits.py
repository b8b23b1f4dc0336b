"""Datasets described by a list of files: CoOp's `split_zhou_*.json` and FGVC-Aircraft's text files.

A file that the list names but that is absent on disk is not a layout error: the task keeps it,
`Task.load_image` raises `MissingImageError` for it and a run records an error row. A list none of
whose files exist is a layout error (the image folder is wrong), and so is a missing list.

A list is checked, not trusted: every path must be relative and stay inside the image folder (no
absolute path, no `..`), every label an integer >= 0, every class name a string, and no image may
be listed twice. Whether the label-to-name mapping is the task's is for the caller to check
(`tptlib.data.catalog` compares it with TPT's class list).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .base import DatasetLayoutError
from .folders import preview

SplitEntry = tuple[str, int, str]   # (path relative to the image folder, label, class name)


def read_split_json(dataset_dir: str | os.PathLike, split_file: str | os.PathLike,
                    image_dir: str | Sequence[str], task_name: str, *,
                    split: str = "test") -> tuple[list[tuple[str, int]], list[str]]:
    """Read one split of a CoOp-style split file: `{"train": [...], "val": [...], "test": [...]}`
    whose entries are `[relative image path, label, class name]`.

    Args:
        dataset_dir: the dataset folder.
        split_file: the split file, relative to `dataset_dir` (or absolute).
        image_dir: the folder the entries' paths are relative to, relative to `dataset_dir` (or
            absolute; `""` is `dataset_dir` itself). A list of such folders is tried in order and
            the first that holds any listed file is used.
        task_name: used in error messages.
        split: which list to read.

    Returns:
        `(samples, classnames)`: samples `(path, label)` in the file's order; class names taken
        from the file (every split in it), index = label, underscores kept.

    Raises:
        DatasetLayoutError: the split file is missing or malformed, its labels are not 0..n-1 with
            one name each, or none of the listed images exists under any `image_dir`.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    split_path = dataset_dir / split_file
    if not split_path.is_file():
        raise DatasetLayoutError(f"{task_name}: expected the split file {Path(split_file).name} at "
                                 f"{split_path}, which does not exist.")
    form = f'{{"{split}": [[relative_path, label, classname], ...], ...}}'
    try:
        with open(split_path, encoding="utf-8") as fh:
            splits = json.load(fh)
        lists = {name: lst for name, lst in splits.items() if isinstance(lst, list)}
        if split not in lists:
            raise KeyError(f"no {split!r} list")
    except (OSError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        raise DatasetLayoutError(f"{task_name}: {split_path} is not a split file of the expected form {form} "
                                 f"({type(exc).__name__}: {exc}).") from exc
    where = f"{task_name}: {split_path}"
    entries = checked_entries(lists[split], f"{where} ({split!r} list)", form)
    all_entries = []                        # class names come from every list of the file
    for name, lst in lists.items():
        listed = entries if name == split else checked_entries(lst, f"{where} ({name!r} list)", form, paths=False)
        all_entries += [(y, c) for _, y, c in listed]
    classnames = _classnames_from_labels(all_entries, where)
    candidates = [image_dir] if isinstance(image_dir, str) else list(image_dir)
    image_root = first_folder_holding(dataset_dir, candidates, [p for p, _, _ in entries], task_name)
    return [(str(image_root / p), y) for p, y, _ in entries], classnames


def checked_entries(raw: list, where: str, form: str, paths: bool = True) -> list[SplitEntry]:
    """The entries of one list of a split file, refused (`DatasetLayoutError`, naming the first
    problems) unless each is `[path, label, name]` with a label that is an integer >= 0 and a
    name that is a string; with `paths`, also unless every path is relative, stays inside the
    image folder and appears once."""
    entries, problems, first_seen = [], [], {}
    for k, entry in enumerate(raw):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            problems.append(f"entry {k} is {entry!r}, not [path, label, name]")
            continue
        path, label, name = entry
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            problems.append(f"entry {k} has the label {label!r}, not an integer >= 0")
        if not isinstance(name, str):
            problems.append(f"entry {k} has the class name {name!r}, not a string")
        if paths:
            if (why := unsafe_relative_path(path)) is not None:
                problems.append(f"entry {k} has the path {path!r}, which {why}")
            elif path in first_seen:
                problems.append(f"entry {k} lists {path!r} again (first at entry {first_seen[path]})")
            else:
                first_seen[path] = k
        entries.append((path, label, name))
    if problems:
        raise DatasetLayoutError(f"{where}: {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} in a "
                                 f"split file of the form {form}: {'; '.join(problems[:5])}"
                                 f"{'; ...' if len(problems) > 5 else ''}.")
    return entries


def unsafe_relative_path(path) -> str | None:
    """Why `path` cannot name a file inside a dataset's image folder (None when it can): it must be a
    non-empty relative path without `..` (a split file's paths are relative to the image folder)."""
    if not isinstance(path, str) or not path.strip():
        return "is not a non-empty string"
    if "\0" in path:
        return "holds a NUL character"
    if PurePosixPath(path).is_absolute() or (len(path) > 1 and path[1] == ":"):
        return "is absolute (paths in a split file are relative to the image folder)"
    if ".." in PurePosixPath(path).parts:
        return "leaves the image folder through '..'"
    if PurePosixPath(path).name in ("", "."):
        return "names a folder, not a file"
    return None


def read_aircraft(dataset_dir: str | os.PathLike, task_name: str = "Aircraft",
                  split: str = "test") -> tuple[list[tuple[str, int]], list[str]]:
    """Read FGVC-Aircraft's official split from its `data` folder (the one that holds
    `variants.txt`, `images_variant_<split>.txt` and `images/`), as the authors' loader does.

    Labels are line numbers in `variants.txt` (100 variants); each line of
    `images_variant_test.txt` is `<image id> <variant name>`, the image `images/<image id>.jpg`.

    Returns:
        `(samples, variant names)`.

    Raises:
        DatasetLayoutError: either text file is missing, a listed variant is not in
            `variants.txt`, or none of the listed images exists.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    list_file = f"images_variant_{split}.txt"
    for name in ("variants.txt", list_file):
        if not (dataset_dir / name).is_file():
            raise DatasetLayoutError(
                f"{task_name}: expected {name} in {dataset_dir} (FGVC-Aircraft's 'data' folder, "
                f"fgvc-aircraft-2013b/data in the official archive), but it does not exist.")
    variants = [v.strip() for v in _lines(dataset_dir / "variants.txt", task_name) if v.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    if len(label_of) != len(variants):
        twice = sorted({v for v in variants if variants.count(v) > 1})
        raise DatasetLayoutError(f"{task_name}: {dataset_dir / 'variants.txt'} names {preview(twice)} more than once.")
    entries, problems, first_seen = [], [], {}
    lines = _lines(dataset_dir / list_file, task_name)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        rel = f"{image_id}.jpg"
        if variant not in label_of:
            problems.append(f"line {lineno} names the variant {variant!r}, which is not in variants.txt")
        elif (why := unsafe_relative_path(rel)) is not None or "/" in image_id:
            problems.append(f"line {lineno} names the image {image_id!r}, which {why or 'is not a plain image id'}")
        elif rel in first_seen:
            problems.append(f"line {lineno} lists {image_id!r} again (first on line {first_seen[rel]})")
        else:
            first_seen[rel] = lineno
            entries.append((rel, label_of[variant]))
    if problems:
        raise DatasetLayoutError(f"{task_name}: {dataset_dir / list_file}: {'; '.join(problems[:5])}"
                                 f"{'; ...' if len(problems) > 5 else ''}.")
    image_root = first_folder_holding(dataset_dir, ["images"], [p for p, _ in entries], task_name)
    return [(str(image_root / p), y) for p, y in entries], variants


def _lines(path: Path, task_name: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{task_name}: cannot read {path} as text ({type(exc).__name__}: {exc}).") from None


def first_folder_holding(base: Path, candidates: Sequence[str], rel_paths: Sequence[str],
                         task_name: str) -> Path:
    """The first folder `base / c` (over `candidates`) in which any of `rel_paths` exists.

    Raises DatasetLayoutError naming the folders searched and an example path when none holds any.
    """
    for c in candidates:
        folder = base / c
        if folder.is_dir() and any(os.path.isfile(folder / p) for p in rel_paths):
            return folder
    searched = " or ".join(str(base / c) for c in candidates)
    example = rel_paths[0] if rel_paths else "?"
    raise DatasetLayoutError(
        f"{task_name}: none of the {len(rel_paths)} images listed for the split exists under {searched} "
        f"(e.g. expected {base / candidates[0] / example}). Is the image folder in the right place?")


def _classnames_from_labels(pairs: Sequence[tuple[int, str]], where: str) -> list[str]:
    """Class names indexed by label, from `(label, name)` pairs; refuses gaps and conflicts."""
    names: dict[int, str] = {}
    for label, name in pairs:
        if names.setdefault(label, name) != name:
            raise DatasetLayoutError(f"{where}: label {label} is named both {names[label]!r} and {name!r}.")
    gaps = [y for y in range(len(names)) if y not in names]
    if gaps or (names and min(names) < 0):
        raise DatasetLayoutError(f"{where}: labels must be 0..n-1; found {len(names)} distinct labels "
                                 f"{preview(sorted(names))} (missing {preview(gaps)}).")
    return [names[y] for y in range(len(names))]
