"""`check_task`: a human report on a dataset on disk, behind `tpt data check`."""
from __future__ import annotations

import os
import statistics
from collections import Counter

from tqdm.auto import tqdm

from .base import CorruptImageError, MissingImageError, Task
from .catalog import load_task

_SHOW = 10   # how many example paths / classes a report section lists


def check_task(name: str, root: str | os.PathLike | None = None, *, max_images: int | None = None,
               per_class: bool | None = None, **kw) -> str:
    """Load a task and report on it: images per class, empty classes, listed files missing on
    disk, and files that fail to open (every image is decoded unless `max_images` is given).

    Args:
        name, root, **kw: as for `load_task`.
        max_images: open at most this many images, spread evenly over the task (all by default).
        per_class: list every class with its count; by default only when there are at most 200.

    Returns:
        A multi-line report. Its last line is `RESULT: OK` or `RESULT: PROBLEMS: ...`.

    Raises:
        DatasetLayoutError: the layout does not match the task; the message says what was expected
            and found (wrong root, missing or extra class folders, missing split file).
    """
    task = load_task(name, root, **kw)
    return _report(task, max_images, per_class)


def _report(task: Task, max_images: int | None, per_class: bool | None) -> str:
    title = task.meta.get("title", task.name)
    n_cls = len(task.classnames)
    lines = [f"{title} ({task.name}): {n_cls} classes, {len(task)} samples, in {task.root}"]
    if "source" in task.meta:
        lines.append(f"layout: {task.meta['source']}")

    counts = Counter(task.labels)
    per = [counts.get(y, 0) for y in range(n_cls)]
    low, high = min(range(n_cls), key=per.__getitem__), max(range(n_cls), key=per.__getitem__)
    lines.append(f"images per class: min {per[low]} ({_cls(task, low)}), median {statistics.median(per):g}, "
                 f"max {per[high]} ({_cls(task, high)})")
    empty = [y for y in range(n_cls) if per[y] == 0]
    if empty:
        lines.append(f"classes with no images: {len(empty)} of {n_cls}: "
                     + ", ".join(_cls(task, y) for y in empty[:_SHOW]) + (", ..." if len(empty) > _SHOW else ""))

    missing = [i for i, (path, _) in enumerate(task.samples) if not os.path.isfile(path)]
    if missing:
        lines.append(f"listed files missing on disk: {len(missing)} of {len(task)}, e.g.:")
        lines += [f"  {task.samples[i][0]}" for i in missing[:_SHOW]]

    missing_set = set(missing)
    present = [i for i in range(len(task)) if i not in missing_set]
    to_open = present if max_images is None or max_images >= len(present) else \
        [present[k * len(present) // max_images] for k in range(max_images)]
    failed = []
    for i in tqdm(to_open, desc=f"opening {title} images", leave=False, disable=None):
        try:
            task.load_image(i)
        except (CorruptImageError, MissingImageError) as exc:
            failed.append(str(exc))
    scope = "all" if len(to_open) == len(present) else "an even spread"
    lines.append(f"opened {len(to_open)} of {len(present)} images on disk ({scope}): "
                 f"{len(failed)} failed to open" + (":" if failed else ""))
    lines += [f"  {msg}" for msg in failed[:_SHOW]]

    if per_class if per_class is not None else n_cls <= 200:
        lines.append("per class (label, images, name):")
        lines += [f"  {y:5d} {per[y]:6d}  {name}" for y, name in enumerate(task.classnames)]
    else:
        fewest = sorted(range(n_cls), key=per.__getitem__)[:_SHOW]
        lines.append(f"fewest images ({n_cls} classes; per_class=True lists all): "
                     + ", ".join(f"{_cls(task, y)}: {per[y]}" for y in fewest))

    problems = [f"{n} {what}" for n, what in ((len(missing), "missing files"), (len(failed), "unreadable images"),
                                              (len(empty), "empty classes")) if n]
    lines.append("RESULT: " + ("PROBLEMS: " + ", ".join(problems) if problems else "OK"))
    return "\n".join(lines)


def _cls(task: Task, label: int) -> str:
    return f"{label} {task.classnames[label]!r}"
