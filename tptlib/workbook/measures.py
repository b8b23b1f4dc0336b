"""What the notebooks measure about TPT's step, computed once here and read by 03 and 05.

- `step_effect`: per sample, view 0's top-1 margin against the step's change of it, the part of
  the step's change of view 0's logits that is not common to all classes, and whether the step
  moved view 0 towards the class of the kept views' average ("toward kept").
- `gain_table`: per shifted set, what the views offer (the kept views' average over view 0) and
  how much of it ZERO and TPT take, and TPT's share of ZERO's gain; `published_shares` gives the
  same share from CLIP ViT-B/16's published numbers (the shipped resource files).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def step_effect(records: pd.DataFrame, view_logits, selection_p: float = 0.1) -> pd.DataFrame:
    """One row per sample of a TPT run: what its step did to view 0's logits.

    `records`: the run's records (scored rows, in sample order); `view_logits` [N, V, C]: the
    zero-shot logits of the same samples' views (`Book.view_logits`), from which the kept views and
    their average's class are taken, as TPT took them. The measurements are those of `tpt diagnose`
    (`tptlib.analysis.first_step`), read from the stored logits before and after the step. Columns:
    `margin` (view 0's top-1 minus top-2 logit before the step), `margin_change` (the change of that
    same difference, after minus before; a prediction flips when it is below -margin), `span` (the
    largest minus the smallest class-centred change of view 0's logits: the most the step changed
    any two classes' difference; the part common to all classes cannot re-rank), `share` (the
    class-centred part's L2 share of the whole change), `reach` (span / margin), `kept_class`,
    `kept_differs` (the kept views' class is not view 0's), `toward_kept` (where it differs: the step
    raised the kept class relative to view 0's top class, else NaN) and `flipped`.
    """
    import torch

    from ..analysis.first_step import class_specific_change, toward
    from ..objectives import select_confident
    lb = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float64) for v in records["logits_before"]]))
    la = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float64) for v in records["logits"]]))
    logits = torch.as_tensor(view_logits, dtype=torch.float32)
    if logits.shape[0] != len(lb) or logits.shape[-1] != lb.shape[1]:
        raise ValueError(f"view_logits {tuple(logits.shape)} do not match the {len(lb)} records over "
                         f"{lb.shape[1]} classes")
    kept = select_confident(logits, selection_p)                                          # [N, k]
    probs = logits.softmax(-1)
    k_cls = torch.gather(probs, 1, kept.unsqueeze(-1).expand(-1, -1, probs.shape[-1])).mean(1).argmax(-1)
    top2 = lb.topk(2, dim=-1).indices                                                     # view 0's top two
    change = (la.gather(1, top2[:, :1]) - la.gather(1, top2[:, 1:])
              - (lb.gather(1, top2[:, :1]) - lb.gather(1, top2[:, 1:])))[:, 0]
    cs = class_specific_change(lb, la)
    differs = k_cls != top2[:, 0]
    moved = toward(lb, la, k_cls).double()
    return pd.DataFrame({"idx": records["idx"].to_numpy(), "margin": cs["margin"].numpy(),
                         "margin_change": change.numpy(), "span": cs["span"].numpy(),
                         "share": cs["share"].nan_to_num(0.0).numpy(), "reach": cs["reach"].numpy(),
                         "kept_class": k_cls.numpy(), "kept_differs": differs.numpy(),
                         "toward_kept": torch.where(differs, moved, torch.nan).numpy(),
                         "flipped": (la.argmax(1) != top2[:, 0]).numpy()})


def step_summary(effects: dict) -> pd.DataFrame:
    """Per task (`{task: step_effect(...)}`): medians of the margin and of the step's class-specific
    change, how many samples the step could flip at all (|margin change| > margin) and did flip,
    and "toward kept" (percent of the samples whose kept class differs from view 0's)."""
    rows = []
    for task, e in effects.items():
        differ = e[e["kept_differs"]]
        rows.append({"task": task, "n": len(e), "median margin": e["margin"].median(),
                     "median |margin change|": e["margin_change"].abs().median(),
                     "median class-specific span": e["span"].median(),
                     "median class-specific share": e["share"].median(), "median reach": e["reach"].median(),
                     "step exceeds margin": int((-e["margin_change"] > e["margin"]).sum()),
                     "flipped": int(e["flipped"].sum()), "kept class differs": len(differ),
                     "toward kept (%)": 100 * differ["toward_kept"].mean() if len(differ) else np.nan})
    return pd.DataFrame(rows).set_index("task")


def gain_table(correct: dict, seed: int = 0) -> pd.DataFrame:
    """Per task, the gain over view 0 of the kept views' average, of ZERO and of TPT, and TPT's share.

    `correct`: `{task: {"view 0": bool[N], "kept views": bool[N], "ZERO": bool[N], "TPT": bool[N]}}`
    on the same samples. Each gain is in points with its exact-test verdict (`verdicts.paired`);
    `TPT / ZERO` is TPT's gain divided by ZERO's (NaN when ZERO gains nothing). A last row `pooled`
    pools the samples of every task.
    """
    from .verdicts import paired
    pooled = {k: np.concatenate([np.asarray(c[k], dtype=bool) for c in correct.values()])
              for k in ("view 0", "kept views", "ZERO", "TPT")} if correct else {}
    rows = []
    for task, c in [*correct.items(), *([("pooled", pooled)] if len(correct) > 1 else [])]:
        row = {"task": task, "n": len(c["view 0"]), "view 0 (%)": 100 * np.mean(c["view 0"])}
        for key in ("kept views", "ZERO", "TPT"):
            p = paired(c[key], c["view 0"], seed=seed)
            row[f"{key} gain"] = p["delta"]
            row[f"{key} verdict"] = f"{p['a_only']}/{p['b_only']}, p={p['p_value']:.2g}: {p['verdict']}"
        zero = row["ZERO gain"]
        row["TPT / ZERO"] = row["TPT gain"] / zero if zero > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


def published_shares(backbone: str = "ViT-B/16") -> pd.DataFrame:
    """CLIP's published gains over zero-shot of TPT and ZERO and TPT's share of ZERO's, per set.

    Zero-shot and TPT from `published_results.csv` (the TPT paper's Table 1), ZERO from
    `peers_vitb16.csv` (its authors' figure), both shipped in `tptlib/resources`.
    """
    from ..analysis import published_peers, published_results
    ours = published_results(backbone)
    peers = published_peers(backbone, metric="top1")
    rows = []
    for task in ("I", "A", "V", "R", "K"):
        def value(frame, method, column):
            hit = frame[(frame["method"] == method) & (frame["task"] == task)][column]
            return float(hit.iloc[0]) if len(hit) else np.nan
        zs, tpt = value(ours, "CLIP zero-shot", "top1"), value(ours, "TPT", "top1")
        zero = value(peers, "ZERO", "value")
        rows.append({"task": task, "zero-shot": zs, "TPT gain": tpt - zs, "ZERO gain": zero - zs,
                     "TPT / ZERO": (tpt - zs) / (zero - zs) if zero > zs else np.nan,
                     "source": f"{_source(ours, 'TPT', task)}; {_source(peers, 'ZERO', task)}"})
    return pd.DataFrame(rows).set_index("task")


def _source(frame, method: str, task: str) -> str:
    hit = frame[(frame["method"] == method) & (frame["task"] == task)]
    return f"{method}: {hit['source'].iloc[0]}" if len(hit) else f"{method}: not published"


def mean_over_tasks(results, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> dict:
    """Mean top-1 and mean ECE (15 bins, percent) over several runs (one per task) with percentile
    bootstrap intervals: each resample redraws every task's samples with replacement (tasks are
    independent samples) and averages the tasks' accuracies and ECEs. Confidence is the softmax of
    the stored logits, as in each run's summary."""
    from .. import metrics
    from ..runs import scored_rows
    rng = np.random.default_rng(seed)
    parts = []
    for result in results:
        rows = scored_rows(result.records)
        conf, _ = metrics.softmax_confidence(np.stack(rows["logits"].to_list()))
        parts.append((conf, rows["correct"].to_numpy(dtype=bool)))
    if not parts:
        raise ValueError("mean_over_tasks needs at least one run")

    def stat(pairs):
        return (100 * np.mean([c.mean() for _, c in pairs]),
                100 * np.mean([metrics.expected_calibration_error(p, c) for p, c in pairs]))

    top1, ece = stat(parts)
    boot = np.array([stat([(p[i], c[i]) for p, c in parts for i in [rng.integers(0, len(c), len(c))]])
                     for _ in range(n_boot)])
    q = [50 * (1 - level), 100 - 50 * (1 - level)]
    (t_lo, e_lo), (t_hi, e_hi) = np.percentile(boot, q[0], axis=0), np.percentile(boot, q[1], axis=0)
    return {"top1": top1, "top1_low": t_lo, "top1_high": t_hi, "ece": ece, "ece_low": e_lo, "ece_high": e_hi,
            "tasks": len(parts), "n": int(sum(len(c) for _, c in parts))}
