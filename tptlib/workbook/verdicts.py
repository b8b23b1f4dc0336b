"""The workbook's one rule for "is A more accurate than B on these samples?".

Two methods scored on the same samples differ only on the discordant ones: `a_only` samples only A
got right, `b_only` only B. The verdict is the exact McNemar test's: A is **better** (or **worse**)
when the two-sided exact test on the discordant samples gives p < `ALPHA`, and otherwise the
difference is **not established**. The paired bootstrap interval is reported beside it for the
size of the difference; with few discordant samples it can exclude 0 while the exact test does
not reject (5 fixed / 0 broken: p = 0.0625), and then the exact test decides. Every notebook calls
these functions, so every notebook's verdict is the same for the same counts.
"""
from __future__ import annotations

#: significance level of every verdict in the workbook (two-sided)
ALPHA = 0.05

#: the rule as the notebooks state it (Markdown)
RULE = (f"**The workbook's rule for paired comparisons.** A and B are scored on the same samples, so only the "
        f"samples where exactly one of them is right tell them apart. A difference is called *established* when "
        f"the two-sided exact McNemar test on those discordant samples gives p < {ALPHA:g}; otherwise it is "
        f"*not established* at this sample size. The 95% paired bootstrap interval is shown for the size of the "
        f"difference; when it excludes 0 but the exact test does not reject (this happens with a handful of "
        f"discordant samples), the exact test decides.")

VERDICTS = ("better", "worse", "not established")


def verdict(a_only: int, b_only: int, p_value: float, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (A against B) when the exact test rejects at `alpha`, else 'not established'."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0; got a_only={a_only}, b_only={b_only}")
    if p_value < alpha and a_only != b_only:
        return "better" if a_only > b_only else "worse"
    return "not established"


def paired(correct_a, correct_b, seed: int = 0) -> dict:
    """A against B on the same samples (boolean vectors, element i = sample i).

    Returns n, delta, low, high (percentage points, 95% paired bootstrap), a_only, b_only, p_value
    (exact McNemar) and verdict (`verdict`)."""
    from .. import metrics
    diff = metrics.paired_bootstrap(correct_a, correct_b, seed=seed)
    test = metrics.mcnemar_exact(correct_a, correct_b)
    return {"n": diff.n, "delta": 100 * diff.difference, "low": 100 * diff.low, "high": 100 * diff.high,
            "a_only": test.a_only, "b_only": test.b_only, "p_value": test.p_value,
            "verdict": verdict(test.a_only, test.b_only, test.p_value)}


def paired_runs(a, b, seed: int = 0) -> dict:
    """Run `a` against run `b` on the samples both scored: `tpt.analysis.compare_runs` and the verdict."""
    from ..analysis import compare_runs
    row = compare_runs(a, b, seed=seed)
    row["verdict"] = verdict(row["a_only"], row["b_only"], row["p_value"])
    return row


def with_verdicts(frame):
    """A copy of a table with `a_only`, `b_only` and `p_value` columns, with its `verdict` column added."""
    out = frame.copy()
    out["verdict"] = [verdict(int(a), int(b), float(p)) for a, b, p in
                      zip(out["a_only"], out["b_only"], out["p_value"])]
    return out


def describe(row, fixed: str = "fixed", broken: str = "broken") -> str:
    """One comparison in words: '+1.7 points [+0.3, +3.3], 5 fixed / 0 broken, exact p = 0.062: not established'."""
    return (f"{row['delta']:+.1f} points [{row['low']:+.1f}, {row['high']:+.1f}], {int(row['a_only'])} {fixed} / "
            f"{int(row['b_only'])} {broken}, exact p = {row['p_value']:.2g}: {row['verdict']}")


def listed(frame, which: str, key: str = "task") -> str:
    """The `key`s of the rows whose verdict is `which`, each with its delta ('R (+1.7)'), or 'none'."""
    rows = frame[frame["verdict"] == which]
    return ", ".join(f"{k} ({d:+.1f})" for k, d in zip(rows[key], rows["delta"])) or "none"


#: the columns `which_method` reads, one row per method
CHOICE_COLUMNS = ("method", "kind", "top1", "low", "high")


def which_method(table, cost: str = "seconds") -> dict:
    """Which method to take, from one table of methods on the same samples (one row per method: its
    `method`, `kind` -- fixed, episodic or online --, `top1` with its 95% interval `low`..`high`, and a
    `cost` column, e.g. seconds per image).

    Returns best (the highest top-1; the cheaper of a tie), best_<kind> for each kind present (the
    highest top-1 of that kind), cheapest (the cheapest method whose top-1 lies inside the best's
    interval: at or above `low`), and the rows they came from, keyed by method (`rows`)."""
    missing = [c for c in (*CHOICE_COLUMNS, cost) if c not in table.columns]
    if missing:
        raise ValueError(f"which_method needs the columns {', '.join((*CHOICE_COLUMNS, cost))}; "
                         f"missing: {', '.join(missing)}")
    if len(table) == 0:
        raise ValueError("which_method needs at least one method; got an empty table")
    if table["method"].duplicated().any():
        raise ValueError(f"which_method needs one row per method; repeated: "
                         f"{', '.join(sorted(set(table.loc[table['method'].duplicated(), 'method'])))}")
    ranked = table.sort_values(["top1", cost], ascending=[False, True], kind="stable")
    best = ranked.iloc[0]
    picks = {"best": best["method"]}
    for kind in ranked["kind"].drop_duplicates():
        picks[f"best_{kind}"] = ranked[ranked["kind"] == kind].iloc[0]["method"]
    inside = table[table["top1"] >= best["low"]].sort_values([cost, "top1"], ascending=[True, False], kind="stable")
    picks["cheapest"] = inside.iloc[0]["method"]
    picks["rows"] = table.set_index("method").to_dict("index")
    return picks


def which_method_sentence(picks: dict, where: str, cost: str = "seconds", unit: str = "s per image") -> str:
    """`which_method`'s picks in one sentence, every number read from its rows."""
    rows = picks["rows"]

    def named(method):
        r = rows[method]
        return f"{method} ({r['top1']:.1f}% [{r['low']:.1f}, {r['high']:.1f}], {r[cost]:.3g} {unit})"

    kinds = [k.removeprefix("best_") for k in picks if k.startswith("best_")]
    by_kind = "; ".join(f"the best {k} one is {named(picks[f'best_{k}'])}" for k in kinds)
    best, cheap = picks["best"], picks["cheapest"]
    cheapest = ("no cheaper method reaches the best's interval" if cheap == best else
                f"the cheapest method whose top-1 lies inside the best's interval is {named(cheap)}, "
                f"{rows[cheap][cost] / rows[best][cost]:.2g}x the best's cost")
    return f"{where}: the best top-1 is {named(best)}; {by_kind}; {cheapest}."
