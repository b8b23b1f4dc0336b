"""Test sets as `Task`s: TPT's ImageNet family, the CoOp-split cross-datasets, FGVC-Aircraft, and
the micro profile's sets (`micro:<set>`).

    task = load_task("A", root="~/data")     # ImageNet-A under ~/data/imagenet-a (or root= that folder)
    print(check_task("A", root="~/data"))    # counts per class, missing and unreadable files
    list_tasks()                             # names, class counts, default folder names

Loaders refuse a folder that does not match the task (`DatasetLayoutError`, saying what was
expected and what was found); `read_imagefolder` and `read_split_json` are the generic readers
they are built from, for other sets laid out the same way.
"""
from .base import CorruptImageError, DatasetLayoutError, MissingImageError, Task
from .catalog import TaskInfo, list_tasks, load_task, task_names
from .check import check_task
from .folders import IMAGE_EXTENSIONS, read_imagefolder
from .splits import read_aircraft, read_split_json

__all__ = [
    "Task", "DatasetLayoutError", "CorruptImageError", "MissingImageError",
    "load_task", "check_task", "list_tasks", "task_names", "TaskInfo",
    "read_imagefolder", "read_split_json", "read_aircraft", "IMAGE_EXTENSIONS",
]
