"""Validation of the values a result depends on, one function per kind: numbers, tensors, files.

    number("lr", lr, low=0, low_open=True)   # a finite real in (0, inf): refuses nan, inf, "1e-3", True
    integer("steps", steps, high=MAX_STEPS)   # an int in 0..MAX_STEPS: refuses 1.5, -1, True
    nonfinite_tensors(model.state_dict())     # names of the floating tensors holding a NaN or an inf
    file_sha256(path)                         # the digest that pins an input file

Each raises `ValueError` (or returns what is wrong) with the name of the value and what it got, so
that a bad parameter is refused before any work, with a message that says which one.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping
from pathlib import Path


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float, refused unless it is a finite real number within the bounds given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        bounds = [f"{'>' if low_open else '>='} {low:g}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {high:g}"] if high is not None else []
        raise ValueError(f"{name} must be {' and '.join(bounds)}; got {value:g}")
    return value


def integer(name: str, value, *, low: int = 0, high: int | None = None) -> int:
    """`value` as an int, refused unless it is an integer (not a bool or a float) in `low..high`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {span}; got {value}")
    return value


def nonfinite_numbers(values: Mapping) -> list[str]:
    """Keys of `values` (a flat mapping, such as a flattened method config) whose value is a
    non-finite float."""
    return [key for key, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isfinite(float(v))]


def nonfinite_tensors(tensors: Mapping) -> list[str]:
    """Names of the floating-point tensors in `tensors` that hold a NaN or an infinity.

    A NaN or an infinity makes a tensor's sum non-finite, so a finite sum clears the tensor at the
    cost of one reduction; a tensor whose sum is not finite (finite values can also overflow it) is
    checked element by element."""
    import torch

    return [name for name, t in tensors.items()
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
            and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all())]


def describe_names(names: list[str], n: int = 5) -> str:
    """`names` for a message: the first `n`, and how many more."""
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex): what pins an input file in a run's parameters."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
