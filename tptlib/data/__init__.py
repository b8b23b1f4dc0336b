"""Test sets as `Task`s: TPT's ImageNet family, the CoOp-split cross-datasets, FGVC-Aircraft, and
the micro profile's sets (`micro:<set>`).

    task = load_task("A", root="~/data")     # ImageNet-A under ~/data/imagenet-a (or root= that folder)
    print(check_task("A", root="~/data"))    # counts per class, missing and unreadable files
    list_tasks()                             # names, class counts, default folder names

Loaders refuse a folder that does not match the task (`DatasetLayoutError`, saying what was
expected and what was found); `read_imagefolder` and `read_split_json` are the generic readers
they are built from, for other sets laid out the same way. Names under a registered prefix
(`registry.register_prefix`; the micro profile registers `micro:`) go to their own loader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .base import CorruptImageError, DatasetLayoutError, MissingImageError, Task
    from .catalog import TaskInfo, list_tasks, load_task, task_names
    from .check import check_task
    from .folders import IMAGE_EXTENSIONS, read_imagefolder
    from .registry import register_prefix
    from .splits import read_aircraft, read_split_json

# public name -> module that defines it (imported on first use: the readers need torchvision)
_EXPORTS = {
    "Task": "base", "DatasetLayoutError": "base", "CorruptImageError": "base", "MissingImageError": "base",
    "load_task": "catalog", "list_tasks": "catalog", "task_names": "catalog", "TaskInfo": "catalog",
    "check_task": "check", "read_imagefolder": "folders", "IMAGE_EXTENSIONS": "folders",
    "read_split_json": "splits", "read_aircraft": "splits", "register_prefix": "registry",
}
__all__ = ["Task", "DatasetLayoutError", "CorruptImageError", "MissingImageError", "load_task", "list_tasks",
           "task_names", "TaskInfo", "check_task", "read_imagefolder", "IMAGE_EXTENSIONS", "read_split_json",
           "read_aircraft", "register_prefix"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
