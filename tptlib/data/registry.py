"""Task names that another package answers: a prefix ("micro:") and the loader of the names under it.

    register_prefix("micro:", load, "'micro:<set>' for the embedded micro profile")
    load_task("micro:A")          # -> load("A", root=None)

The data layer knows no profile: a profile registers its prefix (the micro package does, and
`import tptlib` imports it), so that `load_task` can hand such names on without importing it.
"""
from __future__ import annotations

from typing import Callable

# prefix (lower case) -> (loader(name, root=None, **options) -> Task, hint for error messages)
_PREFIXES: dict[str, tuple[Callable, str]] = {}


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
