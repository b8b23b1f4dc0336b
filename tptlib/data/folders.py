"""Image-folder datasets: one sub-folder per class, validated against the expected class set.

`read_imagefolder` is the generic reader behind ImageNet, -A, -R, -V2 and -Sketch (and the micro
sets rendered as folders). It reads a folder the way torchvision's `ImageFolder` does (the
authors' loader: same image extensions, classes visited in sorted folder-name order, files sorted,
sub-folders walked), but it refuses a folder whose class sub-folders are not exactly the expected
ones, because a data root one level too high or too low otherwise yields a task whose labels mean
nothing (about 0.5% accuracy on ImageNet-A, with no error).

The walk is finite and honest: hidden folders and files (`.ipynb_checkpoints`, `.git`, `._x.jpg`)
are skipped, a linked folder is read once however many links lead to it (a link loop ends there),
a folder reached from two classes (a class folder linked to the dataset folder or into another
class) is refused, and a folder that cannot be read is reported as such, never taken as empty.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from .base import DatasetLayoutError

#: File extensions that count as images (torchvision's `ImageFolder` list; compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)

_SHOW = 5           # how many names an error message shows before "..."
_SCAN_LIMIT = 100   # a folder with more sub-folders than this is not searched for a suggestion


def is_image_file(name: str) -> bool:
    """True when `name` ends with one of `IMAGE_EXTENSIONS` (any case: `.JPEG` counts)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_dirs(folder: Path) -> set[str]:
    """Names of the visible sub-folders of `folder` (hidden ones such as `.ipynb_checkpoints` are
    ignored); empty when `folder` is not a directory or cannot be read (`read_imagefolder` says which)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if not e.name.startswith(".") and _is_dir(e)}
    except OSError:
        return set()


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()           # follows links, as os.walk(followlinks=True) does
    except OSError:
        return False


def _image_files(top: Path, owner: str, owners: dict, conflicts: list, unreadable: list) -> list[str]:
    """The image files under `top` in `ImageFolder` order (folders by path, files sorted within each),
    hidden entries skipped. `owners` maps each folder already read, by (device, inode), to the class
    that read it (None: the dataset folder): a folder read before for the same class is skipped (a
    link loop), one read for another class is added to `conflicts`; folders that cannot be read go
    to `unreadable`."""
    listed: list[tuple[str, list[str]]] = []
    stack = [str(top)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            unreadable.append(f"{folder} ({exc.strerror or type(exc).__name__})")
            continue
        key = (st.st_dev, st.st_ino)
        if key in owners:
            if owners[key] != owner:
                was = "the dataset folder itself" if owners[key] is None else f"read for class {owners[key]!r}"
                conflicts.append(f"{folder}, read for class {owner!r}, is {was}")
            continue
        owners[key] = owner
        visible = [e for e in entries if not e.name.startswith(".")]
        stack.extend(os.path.join(folder, e.name) for e in visible if _is_dir(e))
        listed.append((folder, sorted(e.name for e in visible if not _is_dir(e) and is_image_file(e.name))))
    return [os.path.join(folder, name) for folder, names in sorted(listed) for name in names]


def preview(names: Iterable[str], n: int = _SHOW) -> str:
    """`names` as a short list for an error message: `['a', 'b', ...]`."""
    names = list(names)
    shown = ", ".join(repr(x) for x in names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}]"


def read_imagefolder(root: str | os.PathLike, folder_names: Sequence[str], task_name: str,
                     labels_from: Callable[[str], int] | None = None, *,
                     hint: str = "") -> list[tuple[str, int]]:
    """Read the `(path, label)` samples of a folder that holds one sub-folder per class.

    Args:
        root: the folder whose sub-folders are the classes (no searching happens here).
        folder_names: the expected class folder names, in label order.
        task_name: used in error messages ("ImageNet-A at /x: ...").
        labels_from: maps a folder name to its label (e.g. `int` for ImageNet-V2's folders `0`..`999`);
            by default a folder's label is its position in `folder_names`.
        hint: how the folders are named, for error messages (e.g. "named by WordNet id").

    Returns:
        Samples in `ImageFolder` order: class folders in sorted name order (as strings, so
        `'0', '1', '10', '100', ...`), files within a folder sorted, sub-folders walked; only files
        with an image extension (`IMAGE_EXTENSIONS`) count. Class folders may be empty.

    Raises:
        DatasetLayoutError: `root` is not a readable folder; its visible sub-folders are not exactly
            `folder_names` (the message lists expected and found, missing and extra folders, and
            suggests a nearby folder that does match); a folder in it cannot be read; a folder is
            reached from two classes (through a link); or no class folder holds an image.
    """
    root = Path(root).expanduser()
    if len(set(folder_names)) != len(folder_names):
        raise ValueError(f"{task_name}: folder_names contains duplicates")
    if not root.is_dir():
        raise DatasetLayoutError(f"{task_name}: {root} is not an existing folder "
                                 f"(expected it to hold {_describe(folder_names, hint)}).")
    try:
        os.scandir(root).close()
    except OSError as exc:
        raise DatasetLayoutError(f"{task_name}: cannot read the folder {root} "
                                 f"({exc.strerror or type(exc).__name__}).") from None
    found = class_dirs(root)
    if found != set(folder_names):
        raise DatasetLayoutError(folder_mismatch_message(root, folder_names, found, task_name, hint))

    label_of = labels_from or {name: i for i, name in enumerate(folder_names)}.__getitem__
    root_stat = os.stat(root)
    owners: dict = {(root_stat.st_dev, root_stat.st_ino): None}
    conflicts: list[str] = []
    unreadable: list[str] = []
    samples: list[tuple[str, int]] = []
    for name in sorted(folder_names):
        label = label_of(name)
        samples.extend((path, label) for path in _image_files(root / name, name, owners, conflicts, unreadable))
    if unreadable:
        raise DatasetLayoutError(f"{task_name} at {root}: cannot read {len(unreadable)} folder"
                                 f"{'s' if len(unreadable) > 1 else ''}: {preview(unreadable)}. Their images "
                                 "would be missing from the task; fix the permissions and load it again.")
    if conflicts:
        raise DatasetLayoutError(f"{task_name} at {root}: a folder is reached from two places through a link, "
                                 f"so its images would be counted twice or under the wrong class: "
                                 f"{preview(conflicts)}. Replace the link by the folder it should be.")
    if not samples:
        raise DatasetLayoutError(
            f"{task_name} at {root}: found all {len(folder_names)} class folders but no image files in "
            f"them (image extensions: {' '.join(IMAGE_EXTENSIONS)}).")
    return samples


def folder_mismatch_message(root: Path, folder_names: Sequence[str], found: set[str],
                            task_name: str, hint: str = "") -> str:
    """The message for a folder whose class sub-folders differ from `folder_names`."""
    expected = set(folder_names)
    msg = f"{task_name} at {root}: expected {_describe(folder_names, hint)}; "
    if found & expected:
        missing = [n for n in folder_names if n not in found]
        extra = sorted(found - expected)
        parts = []
        if missing:
            parts.append(f"{len(missing)} of them are missing: {preview(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected folder{'s' if len(extra) > 1 else ''}: {preview(extra)}")
        msg += "; ".join(parts) + "."
        if extra and not missing:
            msg += " Move the unexpected folders out of the dataset folder."
        return msg
    entries = sorted(os.listdir(root))
    msg += f"found {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {preview(entries)}."
    if not found and any(is_image_file(e) for e in entries):
        msg += " The images sit directly in this folder; they must be in one sub-folder per class."
    matches = find_matching_dirs(root, expected)
    if matches:
        msg += " Did you mean " + " or ".join(f"root={str(m)!r}" for m in matches) + "?"
    return msg


def find_matching_dirs(start: Path, expected: set[str], limit: int = 3) -> list[Path]:
    """Folders near `start` (its parent, children and grandchildren) whose class sub-folders are
    exactly `expected`: the likely intended root when `start` is one or two levels off."""
    children = sorted(start / c for c in class_dirs(start))
    candidates = [start.parent, *children]
    if len(children) <= _SCAN_LIMIT:
        for child in children:
            grandchildren = class_dirs(child)
            if len(grandchildren) <= _SCAN_LIMIT:
                candidates.extend(sorted(child / g for g in grandchildren))
    return [c for c in candidates if c != start and class_dirs(c) == expected][:limit]


def _describe(folder_names: Sequence[str], hint: str) -> str:
    examples = ", ".join(sorted(folder_names)[:2])
    return f"{len(folder_names)} class folders{' ' + hint if hint else ''} (e.g. {examples}, ...)"
