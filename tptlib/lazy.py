"""Lazy public names for a package: each imported from its module on first use, so that importing
the package stays light (torch, open_clip and PIL load only when something needs them).

    __getattr__ = lazy_exports(__name__, {"load_task": "catalog", "catalog": None})
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str | None]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `exports[name]` names the submodule that defines `name`
    (None: `name` is the submodule itself). The value is cached in the package on first use."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{exports[name] or name}", package)
        value = module if exports[name] is None else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__
