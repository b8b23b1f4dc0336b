"""A method's parameters as data: each is a dataclass field whose metadata says its type, its valid
range and how a run records it, so that validation, `config()`, the command line's `--set` and
`tpt methods` all read the same description.

    @dataclass(frozen=True, kw_only=True)
    class MyMethod(Method):
        gamma: float = param(0.3, "the retained fraction", kind="float", low=0.0, low_open=True, high=1.0)

    MyMethod(gamma=2.0)        # ValueError: mymethod: gamma must be a number > 0 and <= 1; got 2.0
    parse_text(spec_of(MyMethod, "gamma"), "0.5")    # 0.5, as `--set gamma=0.5` gives it

Kinds: "int", "float", "bool", "str", "pair" (two numbers, low <= high), "path" (a file name).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

KINDS = ("int", "float", "bool", "str", "pair", "path")


@dataclass(frozen=True)
class Spec:
    """What a parameter accepts and how a run records it (the metadata of a method's field)."""

    kind: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: allowed values (a tuple), or a function that raises ValueError("must be ...; got ...") on a
    #: value it refuses
    choices: tuple | Callable[[Any], Any] | None = None
    #: None is accepted (it means what `help` says: a per-dataset value, a random start, ...)
    optional: bool = False
    #: changes speed only, never a result: not recorded in `config()`, hidden from listings
    speed_only: bool = False
    #: recorded only when `record(method)` is true (e.g. a seed that only a random start reads)
    record: Callable[[Any], bool] | None = None
    #: the key `config()` records it under (default: the field's name)
    key: str | None = None
    #: the authors' value for the method's dataset, `per_dataset(method)`, taken when None is given
    per_dataset: Callable[[Any], Any] | None = None
    #: a path recorded as an absolute path
    absolute: bool = False

    def accepted(self) -> str:
        """What the parameter accepts, in words."""
        if self.kind == "int":
            text = "an integer " + (f">= {self.low:g}" if self.high is None else f"in {self.low:g}..{self.high:g}")
        elif self.kind in ("float", "pair"):
            bounds = [f"{'>' if self.low_open else '>='} {self.low:g}"] if self.low is not None else []
            bounds += [f"{'<' if self.high_open else '<='} {self.high:g}"] if self.high is not None else []
            text = "a finite number" if self.kind == "float" else "a pair of finite numbers [low, high], low <= high,"
            text += (" " + " and ".join(bounds)) if bounds else ""
        elif self.kind == "bool":
            text = "true or false"
        elif isinstance(self.choices, tuple):
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = "a file path" if self.kind == "path" else "a string"
        return text + (" or none" if self.optional else "")


def param(default: Any = dataclasses.MISSING, help: str = "", **spec) -> Any:
    """A method parameter: a dataclass field with its `Spec` (no default: the parameter is required)."""
    if spec.get("kind") not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {spec.get('kind')!r}")
    return dataclasses.field(default=default, metadata={"param": Spec(help=help, **spec)})


def specs(method_or_cls) -> dict[str, Spec]:
    """name -> Spec of every parameter of a method (class or instance), in field order."""
    return {f.name: f.metadata["param"] for f in dataclasses.fields(method_or_cls) if "param" in f.metadata}


def required(cls) -> list[str]:
    """The parameters a method class cannot do without (no default)."""
    return [f.name for f in dataclasses.fields(cls) if "param" in f.metadata
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def defaults(cls) -> dict:
    """name -> default of every parameter with one."""
    return {f.name: f.default for f in dataclasses.fields(cls) if "param" in f.metadata
            and f.default is not dataclasses.MISSING}


def check_value(owner: str, name: str, spec: Spec, value):
    """`value` checked against `spec` and put in its stored form; ValueError naming the parameter,
    what was given and what is accepted."""
    def refuse():
        return ValueError(f"{owner}: {name} must be {spec.accepted()}; got {value!r}")

    if value is None:
        if spec.optional or spec.per_dataset is not None:
            return None
        raise refuse()
    if spec.kind in ("int", "float"):
        integral = isinstance(value, numbers.Integral)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (spec.kind == "int" and not integral):
            raise refuse()
        value = int(value) if spec.kind == "int" else float(value)
        if not _within(spec, value):
            raise refuse()
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise refuse()
        return value
    if spec.kind == "pair":
        if not isinstance(value, (tuple, list)) or len(value) != 2 or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value):
            raise refuse()
        value = (float(value[0]), float(value[1]))
        if value[0] > value[1] or not all(_within(spec, v) for v in value):
            raise refuse()
        return value
    if spec.kind == "path" and isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise refuse()
    if isinstance(spec.choices, tuple) and value not in spec.choices:
        raise refuse()
    if callable(spec.choices):
        try:
            spec.choices(value)
        except ValueError as exc:
            raise ValueError(f"{owner}: {name} {exc}") from None
    if spec.kind == "path" and spec.absolute:
        value = str(Path(value).expanduser().resolve())
    return value


def _within(spec: Spec, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        return False
    return not (spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high))


def parse_text(spec: Spec, text: str):
    """A value as the command line gives it (`--set NAME=TEXT`), in the parameter's type: "none"
    for None where accepted, "true"/"false" for a flag, "a,b" or "[a, b]" for a pair. Not checked
    against the range (the method does that); ValueError when the text is not of the type."""
    stripped = text.strip()
    if (spec.optional or spec.per_dataset is not None) and stripped.lower() in ("none", "null"):
        return None
    if spec.kind == "int":
        return int(stripped)
    if spec.kind == "float":
        return float(stripped)
    if spec.kind == "bool":
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if stripped.lower() not in words:
            raise ValueError(f"not true or false: {text!r}")
        return words[stripped.lower()]
    if spec.kind == "pair":
        parts = json.loads(stripped) if stripped.startswith("[") else stripped.split(",")
        if not isinstance(parts, list) or len(parts) != 2:
            raise ValueError(f"not a pair: {text!r}")
        return (float(parts[0]), float(parts[1]))
    return text


def validate(method) -> None:
    """Check every parameter of `method` (a dataclass instance) in place: stored forms set, the
    authors' per-dataset values taken for None, ValueError for a value out of range."""
    unresolved = []
    # the name messages give: the class's (a name that depends on the parameters is not known yet)
    owner = method.name if not isinstance(getattr(type(method), "name", None), property) else type(method).__name__.lower()
    for name, spec in specs(method).items():
        value = check_value(owner, name, spec, getattr(method, name))
        if value is None and spec.per_dataset is not None:
            unresolved.append(name)
            continue
        object.__setattr__(method, name, value)
    for name in unresolved:              # after the others: a per-dataset value may read them
        object.__setattr__(method, name, specs(method)[name].per_dataset(method))
    object.__setattr__(method, "_per_dataset", frozenset(unresolved))


def config(method) -> dict:
    """The JSON-able parameters that define a method's results, from its fields: every parameter
    but the speed-only ones and those whose `record` says they play no part."""
    out = {"name": method.name}
    for name, spec in specs(method).items():
        if spec.speed_only or (spec.record is not None and not spec.record(method)):
            continue
        value = getattr(method, name)
        out[spec.key or name] = list(value) if isinstance(value, tuple) else value
    return out


def unless_default(name: str) -> Callable[[Any], bool]:
    """A `record` rule: the parameter is recorded only when it is not its default."""
    def record(method) -> bool:
        return getattr(method, name) != defaults(type(method))[name]
    return record
