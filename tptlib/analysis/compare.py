"""Two runs of one task, sample by sample: paired accuracy difference (bootstrap, McNemar) and how
far their predictions agree (what `tpt compare` prints)."""
from __future__ import annotations

import numpy as np

from .. import metrics
from ..nested import differences
from ..runs import scored_rows
from .labels import task_label


def compare_runs(a, b, seed: int = 0) -> dict:
    """Accuracy of run `a` minus run `b` on the samples both scored: paired bootstrap and McNemar.

    Returns task, n, delta, low, high (percentage points, 95% paired bootstrap), a_only and b_only
    (samples only `a` / only `b` got right) and p_value (exact McNemar).
    """
    ra = scored_rows(a.records).set_index("idx")["correct"]
    rb = scored_rows(b.records).set_index("idx")["correct"]
    common = ra.index.intersection(rb.index)
    if common.empty:
        raise ValueError(f"{a.out} and {b.out} share no scored sample")
    ca, cb = ra.loc[common].to_numpy(dtype=bool), rb.loc[common].to_numpy(dtype=bool)
    diff = metrics.paired_bootstrap(ca, cb, seed=seed)
    test = metrics.mcnemar_exact(ca, cb)
    return {"task": task_label(a.summary["task"]), "n": len(common), "delta": 100 * diff.difference,
            "low": 100 * diff.low, "high": 100 * diff.high, "a_only": test.a_only, "b_only": test.b_only,
            "p_value": test.p_value}


def prediction_agreement(a, b) -> dict:
    """How far two runs of the same task agree, sample by sample (same `idx` = same image and views).

    For checking that a change of speed or precision (batch size, `--precision bf16`, another
    device, the engine against the reference) leaves predictions alone: the share of samples with
    the same top-1 class, the largest and the mean |logit difference|, the accuracy of each run and
    the paired accuracy difference (`compare_runs`); and the top-1 agreement and largest logit
    difference of view 0 before adaptation (`*_before`), which tell a change in the encoders from
    one in the tuning step. Refuses runs of different tasks or sample listings. `differences`
    lists the parameters in which the two runs differ.
    """
    ta, tb = a.params["task"], b.params["task"]
    for key in ("name", "samples"):
        if key in ta and key in tb and ta[key] != tb[key]:
            what = "tasks" if key == "name" else "sample listings (same task name, other images or order)"
            raise ValueError(f"{a.out} and {b.out} are runs of different {what}: "
                             f"task.{key} {ta[key]!r} against {tb[key]!r}")
    ra, rb = scored_rows(a.records).set_index("idx"), scored_rows(b.records).set_index("idx")
    common = ra.index.intersection(rb.index).sort_values()
    if common.empty:
        raise ValueError(f"{a.out} and {b.out} share no scored sample")
    la = np.stack(ra.loc[common, "logits"].to_list()).astype(np.float64)
    lb = np.stack(rb.loc[common, "logits"].to_list()).astype(np.float64)
    if la.shape != lb.shape:
        raise ValueError(f"{a.out} and {b.out} have logits over {la.shape[1]} and {lb.shape[1]} classes")
    diff = np.abs(la - lb)
    same = la.argmax(1) == lb.argmax(1)
    worst = int(np.argmax(diff.max(1)))
    # the same for view 0 before adaptation: separates a change in the encoders from one in the step
    ba = np.stack(ra.loc[common, "logits_before"].to_list()).astype(np.float64)
    bb = np.stack(rb.loc[common, "logits_before"].to_list()).astype(np.float64)
    same_before = ba.argmax(1) == bb.argmax(1)
    paired = compare_runs(a, b)
    return {"task": task_label(ta["name"]), "n": len(common), "same_top1": int(same.sum()),
            "same_top1_pct": 100 * float(same.mean()), "changed_idx": [int(i) for i in common[~same]],
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "worst_idx": int(common[worst]),
            "same_top1_before": int(same_before.sum()), "max_abs_logit_diff_before": float(np.abs(ba - bb).max()),
            "top1_a": 100 * float(ra.loc[common, "correct"].astype(bool).mean()),
            "top1_b": 100 * float(rb.loc[common, "correct"].astype(bool).mean()),
            "delta": paired["delta"], "low": paired["low"], "high": paired["high"],
            "a_only": paired["a_only"], "b_only": paired["b_only"], "p_value": paired["p_value"],
            "differences": [list(d) for d in differences(a.params, b.params)]}
