"""Task names that another package answers: a prefix ("micro:") and the loader of the names under it.

    register_prefix("micro:", load, "'micro:<set>' for the embedded micro profile")
    register_paper_datasets("micro:", {"Sketch": "K", ...})   # the sets shaped like a published one
    load_task("micro:A")          # -> load("A", root=None), its `paper_dataset` "A"

The data layer knows no profile: a profile registers its prefix (the micro package does, and
`import tptlib` imports it), so that `load_task` can hand such names on without importing it.
"""
from __future__ import annotations

from typing import Callable

# prefix (lower case) -> (loader(name, root=None, **options) -> Task, hint for error messages)
_PREFIXES: dict[str, tuple[Callable, str]] = {}
# prefix (lower case) -> {name under the prefix: the published dataset the task stands for}
_PAPER_DATASETS: dict[str, dict[str, str]] = {}


def register_prefix(prefix: str, loader: Callable, hint: str) -> None:
    """Hand task names that start with `prefix` (any case) to `loader(rest_of_name, root=..., **options)`.

    hint: how the names are written and what they are, for the message that lists the known tasks.
    """
    _PREFIXES[prefix.lower()] = (loader, hint)


def prefix_loader(name: str) -> tuple[Callable, str] | None:
    """`(loader, rest of the name)` when a registered prefix starts `name`, else None."""
    for prefix, (loader, _) in _PREFIXES.items():
        if name.lower().startswith(prefix):
            return loader, name[len(prefix):]
    return None


def prefix_hints() -> list[str]:
    """The hints of the registered prefixes, in registration order."""
    return [hint for _, hint in _PREFIXES.values()]


def register_paper_datasets(prefix: str, datasets: dict[str, str]) -> None:
    """Name the published dataset that tasks under `prefix` stand for (`Task.paper_dataset`, whose
    authors' settings a method takes): `{name under the prefix: dataset}`; others stand for none."""
    _PAPER_DATASETS.setdefault(prefix.lower(), {}).update(datasets)


def with_paper_dataset(task, name: str):
    """`task`, loaded for the prefixed `name`, with its `paper_dataset` set from the registration
    when its loader left it unset."""
    if task.paper_dataset is None:
        for prefix, datasets in _PAPER_DATASETS.items():
            if name.lower().startswith(prefix):
                task.paper_dataset = datasets.get(task.name[len(prefix):], datasets.get(name[len(prefix):]))
    return task
