"""argparse value types shared by the `tpt` command and the benchmark's: each refuses, at parsing,
a value that no run could use (a NaN, an infinity, a negative count, an empty name)."""
from __future__ import annotations

import argparse

from .checks import integer, number


def _refusing(check, text: str, parse):
    value = parse(text)              # a ValueError here is argparse's "invalid <type> value: 'x'"
    try:
        return check(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (`type=` of an argparse option)."""
    return _refusing(lambda v: integer("value", v, low=1), text, int)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _refusing(lambda v: integer("value", v), text, int)


def finite_float(text: str) -> float:
    """A finite number: `nan`, `inf` and `-inf` are refused."""
    return _refusing(lambda v: number("value", v), text, float)


def folder_name(text: str) -> str:
    """A non-empty path (an empty --out would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder; got an empty string")
    return text
