"""The micro profile's task names: registers `micro:<set>` with `tptlib.data`, so that
`load_task("micro:A")` reaches `tptlib.micro.sets.micro_task` without the data layer importing the
profile. Imported by `import tptlib`; the sets (numpy, torch, the renderer) load on first use.
"""
from __future__ import annotations

from ..data.registry import register_prefix


def load_micro_task(name: str, root=None, **options):
    """The `Task` of micro set `name` (`tptlib.micro.sets.micro_task`)."""
    from .sets import micro_task
    try:
        return micro_task(name, root=root, **options)
    except KeyError as exc:           # an unknown set: a bad name, refused like any other task name
        if "unknown micro set" not in str(exc):
            raise
        raise ValueError(exc.args[0]) from None


register_prefix("micro:", load_micro_task, "'micro:<set>' for the embedded micro profile")
