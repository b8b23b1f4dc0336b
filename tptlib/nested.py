"""Nested dicts of parameters (run.json, method configs): flattened to dotted keys and compared.

    differences({"a": {"b": 1}}, {"a": {"b": 2}})   # [("a.b", 1, 2)]
"""
from __future__ import annotations


def flatten(d: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: every leaf under its dotted key."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value in `a`, value in `b`) for every leaf of two nested dicts that differs;
    "(absent)" where one side lacks the key."""
    fa, fb = flatten(a), flatten(b)
    return [(key, fa.get(key, "(absent)"), fb.get(key, "(absent)"))
            for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]
