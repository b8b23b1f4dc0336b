"""The methods by name: what `make_method`, `tpt eval --method` and listings know.

Each method is one entry here and one module of `tptlib.methods`; adding a method touches those
two. A name is the one a run stores (`method.name`, "tpt+coop"); on the command line "+" is
written "-" ("tpt-coop"), and `make_method` takes either. The table names each method's class by
module, so that listing the methods (and building the command line) imports no model code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    name: str                    # as runs store it and tables show it: method.name
    summary: str                 # one line for listings and --help
    cls: str                     # "module:Class" in tptlib.methods
    requires: str | None = None  # the keyword argument the method cannot do without (a checkpoint)

    @property
    def command_name(self) -> str:
        return command_name(self.name)

    def load(self) -> type:
        """The method's class (its module imported now)."""
        module, cls = self.cls.split(":")
        return getattr(importlib.import_module(f".{module}", __package__), cls)


METHODS: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("zeroshot", "CLIP zero-shot with one prompt, 'a photo of a {class}.'", "fixed:ZeroShot"),
    MethodInfo("ensemble", "CLIP zero-shot with the 80-template prompt ensemble", "fixed:Ensemble"),
    MethodInfo("tpt", "test-time prompt tuning (Shu et al., 2022)", "tpt:TPT"),
    MethodInfo("tpt+coop", "TPT from a CoOp checkpoint's context", "tpt:TPT", requires="coop_ckpt"),
    MethodInfo("tpt+cocoop", "TPT from a CoCoOp checkpoint's context and meta-network", "tpt:TPT",
               requires="cocoop_ckpt"),
)}


def command_name(name: str) -> str:
    """A method name as the command line writes it: lower case, "+" and "_" written "-"."""
    return name.lower().replace("_", "-").replace("+", "-")


def method_info(name: str) -> MethodInfo:
    """The entry of a method name in either spelling ("tpt+coop", "tpt-coop")."""
    by_command = {info.command_name: info for info in METHODS.values()}
    if command_name(name) not in by_command:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(by_command)}")
    return by_command[command_name(name)]


def make_method(name: str, **kwargs):
    """A method by name: zeroshot, ensemble, tpt, tpt-coop (coop_ckpt=...), tpt-cocoop (cocoop_ckpt=...)."""
    info = method_info(name)
    if info.requires and not kwargs.get(info.requires):
        raise ValueError(f"method {name!r} needs {info.requires}=<checkpoint path>")
    return info.load()(**kwargs)
