"""Hostile inputs, 9: every `--json` is strict JSON.

A run whose every sample is an error row has no accuracy (NaN), a benchmark may time nothing: the
output must still parse with a strict parser (no `NaN`, `Infinity`), the undefined numbers as null,
as each --json option's help says. The runs use the micro-CLIP architecture with seeded random
weights on a fake EuroSAT (test_runs.py's helpers).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _helpers import make_eurosat
from tptlib import cli
from tptlib.jsonout import dumps, strict


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as RFC 8259 parsers do."""
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_everywhere_in_the_document():
    doc = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (np.float32("nan"), np.float64(2.0)),
           "d": {"e": np.array([1.0, np.nan]), "f": torch.tensor([np.inf, 3.0])}, 7: np.int64(4), "g": None,
           "h": True}
    text = dumps(doc)
    assert strict_loads(text) == {"a": None, "b": [None, None, 1.5], "c": [None, 2.0],
                                  "d": {"e": [1.0, None], "f": [None, 3.0]}, "7": 4, "g": None, "h": True}
    assert strict(math.nan) is None and strict(float("-inf")) is None and strict(0.25) == 0.25


@pytest.fixture(scope="module")
def broken_runs(weights, tmp_path_factory):
    """Two run folders of a task whose every image is unreadable: every row is an error row."""
    tmp = tmp_path_factory.mktemp("broken")
    root = make_eurosat(tmp / "data", n=3, corrupt=range(3))
    outs = []
    for name in ("a", "b"):
        out = tmp / name
        args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root), "--views", "4",
                "--method", "zeroshot", "--out", str(out), "--no-progress"]
        assert cli.main(args) == 0
        outs.append(out)
    return outs


def test_show_json_of_a_run_without_a_scored_sample_is_strict(broken_runs, capsys):
    capsys.readouterr()
    assert cli.main(["show", "--json", str(broken_runs[0])]) == 0
    summary = strict_loads(capsys.readouterr().out)
    assert summary["n_errors"] == summary["n"] == 3
    assert summary["top1"] is None and summary["ece"] is None


def test_compare_json_is_strict_or_refused_in_one_line(broken_runs, capsys):
    capsys.readouterr()
    try:
        code = cli.main(["compare", "--json", str(broken_runs[0]), str(broken_runs[1])])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    if code == 2:                                     # nothing to compare: a one-line refusal
        assert out == "" and err.startswith("tpt: error: ") and err.count("\n") == 1
    else:
        strict_loads(out)


def test_methods_json_is_strict(capsys):
    assert cli.main(["methods", "--json"]) == 0
    rows = strict_loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} >= {"tpt", "zeroshot"}


@pytest.mark.parametrize("command", [["show"], ["compare"], ["methods"]])
def test_the_help_says_what_json_prints_for_non_finite_numbers(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    assert "strict JSON" in capsys.readouterr().out
