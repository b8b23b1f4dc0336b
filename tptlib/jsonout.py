"""Strict JSON for machine-readable output: what `--json` prints and what files written as JSON hold.

    print(dumps(summary, indent=2))

Python's `json.dumps` writes a NaN or an infinity as `NaN` / `Infinity`, which is not JSON (RFC 8259):
strict parsers (jq, JavaScript's JSON.parse, Go, Rust) refuse the whole document. Here every
non-finite number becomes `null` (a value that was not measured or is undefined, such as the accuracy
of a run with no scored sample), numpy and torch scalars and arrays become numbers and lists, tuples
lists, and anything else that JSON cannot hold its `str`. The output always parses as strict JSON.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping


def strict(value):
    """`value` with every non-finite float replaced by None, mappings with string keys, sequences and
    array-likes (numpy, torch: anything with `tolist`) as lists, other unknown objects as `str`."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [strict(v) for v in value]
    if hasattr(value, "tolist"):                 # numpy / torch scalars and arrays
        return strict(value.tolist())
    try:
        as_float = float(value)                  # other real numbers (Decimal, Fraction)
    except (TypeError, ValueError):
        return str(value)
    return as_float if math.isfinite(as_float) else None


def dumps(value, **kwargs) -> str:
    """`json.dumps` of `strict(value)`, refusing (`ValueError`) anything non-finite left over."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)
