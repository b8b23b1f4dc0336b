"""argparse value types shared by the `tpt` command and the benchmark's."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (`type=` of an argparse option)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value
