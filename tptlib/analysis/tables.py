"""Tables from run results: one row per run in the papers' layout, the published numbers, what TPT
changed per sample and per class, calibration bins, the views confidence selection kept.

Every function reads run results (`tpt.evaluate` / `tpt.load_run`) or their `records` and returns
a pandas DataFrame. Accuracies are in percent, as in the papers; error rows (unreadable images)
are left out everywhere, as in `summary`.
"""
from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np
import pandas as pd

from .. import metrics
from ..runs import RunResult, scored_rows, summarize
from .labels import method_label, order_methods, paper_backbone, task_label

#: The flip kinds of `flip_kind`, in display order.
FLIP_KINDS = ["wrong→right", "right→wrong", "stayed right", "stayed wrong"]


def published_results(backbone: str | None = None) -> pd.DataFrame:
    """The published top-1 table shipped with the library (`tptlib/resources/published_results.csv`).

    Columns: backbone, method, task, top1 (percent), source, status ("verified" or "restated").
    backbone: keep one backbone; open_clip names are accepted ("ViT-B-16" -> "ViT-B/16").
    """
    text = resources.files("tptlib").joinpath("resources/published_results.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(rows)), dtype={"top1": float}, quoting=csv.QUOTE_MINIMAL)
    frame = frame.rename(columns={"dataset": "task"})
    if backbone is None:
        return frame
    name = paper_backbone(backbone) or backbone
    kept = frame[frame["backbone"] == name].reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"no published numbers for backbone {backbone!r}; "
                         f"the table holds {sorted(frame['backbone'].unique())}")
    return kept


def published_peers(backbone: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The published numbers of TPT's peers shipped with the library (`tptlib/resources/peers_vitb16.csv`).

    Columns: backbone, method, mode (episodic / online / none), task, metric (top1 or ece), value
    (percent), source, status ("verified": the method's own README or figure; "restated": as
    tabulated by another paper). Tasks are I, A, V, R, K, CD10 (mean of the 10 cross-datasets),
    OOD4 (mean of A, V, R, K) and FG11 (11 fine-grained sets). These are not this run's numbers:
    keep them in their own table.
    """
    text = resources.files("tptlib").joinpath("resources/peers_vitb16.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(rows)), dtype={"value": float}).rename(columns={"dataset": "task"})
    if backbone is not None:
        frame = frame[frame["backbone"] == (paper_backbone(backbone) or backbone)]
    if metric is not None:
        frame = frame[frame["metric"] == metric]
    return frame.reset_index(drop=True)


def method_table() -> pd.DataFrame:
    """The library's methods as `tpt methods` lists them: row label, command-line name, kind (fixed,
    episodic, online), paper, defaults (None: the authors' value for the task's dataset)."""
    from ..methods.registry import listing
    from .labels import METHOD_LABELS
    return pd.DataFrame([{"method": METHOD_LABELS.get(r["stored_as"], r["stored_as"]), "name": r["name"],
                          "kind": r["kind"], "paper": r["paper"],
                          "defaults": ", ".join(f"{k}={v}" for k, v in r["defaults"].items() if k != "dataset")}
                         for r in listing()])


def run_frame(results, labels=None) -> pd.DataFrame:
    """One row per run: task, method, kind, n, top1 with its 95% Wilson interval, ECE (15 and 20
    bins), engine seconds per sample (and its image-tower and method parts), peak memory (MiB).

    labels: row labels for the runs (default: `method_label`). Columns `top1_before`/`ece_before`
    are view 0 with the initial prompt (equal to top1/ece for methods that do not tune).
    `classes_seen` of `n_classes`: how many classes the scored samples cover (a `limit` that cuts a
    class-sorted task covers only its first classes).
    """
    results = list(results)
    labels = list(labels) if labels is not None else [method_label(r) for r in results]
    rows = []
    for result, label in zip(results, labels, strict=True):
        s = result.summary
        low, high = s["top1_ci"]
        rows.append({"task": task_label(s["task"]), "method": label, "kind": _kind(result), "n": s["n_scored"],
                     "top1": s["top1"], "low": low, "high": high, "ece": s["ece"], "ece20": s.get("ece20"),
                     "top1_before": s["top1_before"], "ece_before": s["ece_before"],
                     "seconds_per_sample": s["seconds_per_sample"],
                     "image_seconds": s.get("image_seconds_per_sample"),
                     "method_seconds": s.get("method_seconds_per_sample"),
                     "peak_mem_mib": s.get("peak_mem_mib"), "method_peak_mib": s.get("method_peak_mib"),
                     "n_errors": s["n_errors"],
                     "classes_seen": int(scored_rows(result.records)["label"].nunique()),
                     "n_classes": result.params["task"]["n_classes"]})
    return pd.DataFrame(rows)


def _kind(result) -> str:
    """"fixed", "episodic" or "online", from the run's parameters."""
    if "stream" in result.params:
        return "online"
    return "fixed" if result.params["method"]["name"] in ("zeroshot", "ensemble") else "episodic"


def frontier(frame: pd.DataFrame, cost: str = "seconds_per_sample", value: str = "top1") -> pd.DataFrame:
    """The rows no other row beats on both axes: no row is at least as cheap (`cost`) and at least as
    good (`value`) with one of the two strictly. Sorted by cost; the accuracy-cost frontier."""
    rows = frame.sort_values([cost, value], ascending=[True, False])
    keep, best = [], -np.inf
    for index, row in rows.iterrows():
        if row[value] > best:
            keep.append(index)
            best = row[value]
    return rows.loc[keep]


def paired_against(runs: dict, baseline: str, seed: int = 0) -> pd.DataFrame:
    """Each method's runs against `baseline`'s on the same task and samples: one row per (task,
    method) with `compare.compare_runs`' delta (points), 95% paired bootstrap interval, a_only /
    b_only and exact McNemar p-value. `runs` maps (task, method label) -> run."""
    from .compare import compare_runs
    rows = []
    for (task, method), result in runs.items():
        if method == baseline or (task, baseline) not in runs:
            continue
        rows.append({"method": method, "against": baseline, **compare_runs(result, runs[(task, baseline)], seed=seed)})
    return pd.DataFrame(rows)


def paper_table(frame: pd.DataFrame, tasks, ood_tasks=None, value: str = "top1") -> pd.DataFrame:
    """The papers' layout: one row per method, one column per task, then Average (and OOD Average).

    frame: long rows with columns method, task and `value` (`run_frame`, `published_results`).
    tasks: the columns before the OOD ones (Table 1: the in-distribution task; Table 2: all).
    ood_tasks: Table 1's shifted tasks; adds "OOD Average" over them. "Average" is over every
    column. A method missing a task gets NaN there and in the averages that need it; a method
    with none of the tasks is left out.
    """
    ood = list(ood_tasks or [])
    columns = [*tasks, *ood]
    wide = frame.pivot_table(index="method", columns="task", values=value, aggfunc="first")
    wide = wide.reindex(index=order_methods(frame["method"]), columns=columns).dropna(how="all")
    wide["Average"] = wide[columns].mean(axis=1, skipna=False)
    if ood:
        wide["OOD Average"] = wide[ood].mean(axis=1, skipna=False)
    wide.columns.name, wide.index.name = None, None
    return wide


def interval_table(frame: pd.DataFrame, tasks, digits: int = 1) -> pd.DataFrame:
    """Method x task cells "top1 [low, high]" (text) from `run_frame` rows, for quoting."""
    cells = frame.assign(cell=[f"{t:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                               for t, lo, hi in zip(frame["top1"], frame["low"], frame["high"])])
    wide = cells.pivot_table(index="method", columns="task", values="cell", aggfunc="first")
    wide = wide.reindex(index=order_methods(frame["method"]), columns=list(tasks))
    wide.columns.name, wide.index.name = None, None
    return wide


def head(result, n: int):
    """The run restricted to its first `n` samples (idx < n), with the summary recomputed.

    A run with limit=n holds exactly these samples (views are seeded per sample), so a short run
    of one method can be compared with the head of a longer run of another on the same images.
    Not for an online run: its records depend on the samples seen before them in its stream, which
    a run with limit=n would see in another order.
    """
    if "stream" in result.params:
        raise ValueError(f"{result.out} is an online run ({result.params['method']['name']}): its first {n} "
                         f"samples were predicted with state from others; run it with limit={n} instead")
    records = result.records[result.records["idx"] < n].reset_index(drop=True)
    head = {k: result.summary[k] for k in ("task", "method", "model", "pretrained") if k in result.summary}
    return RunResult(out=result.out, params=result.params, records=records,
                     summary={**head, **summarize(records, min(n, result.summary.get("n_expected", n)))})


def flip_kind(records: pd.DataFrame) -> pd.Series:
    """Per scored row: "wrong→right", "right→wrong", "stayed right" or "stayed wrong".

    Before = view 0 with the initial prompt (`correct_before`), after = after adaptation (`correct`).
    """
    rows = scored_rows(records)
    before, after = rows["correct_before"].to_numpy(dtype=bool), rows["correct"].to_numpy(dtype=bool)
    kind = np.select([~before & after, before & ~after, before & after],
                     FLIP_KINDS[:3], default=FLIP_KINDS[3])
    return pd.Series(pd.Categorical(kind, categories=FLIP_KINDS), index=rows.index, name="flip")


def flip_counts(results) -> pd.DataFrame:
    """Per run (task): how many samples each flip kind holds, the net gain and its percent.

    `changed` counts the samples whose predicted class changed (`pred != pred_before`); it includes
    the flips and the samples that went from one wrong class to another (`wrong→other wrong`), so
    `changed >= wrong→right + right→wrong`.
    """
    rows = []
    for result in results:
        scored = scored_rows(result.records)
        counts = flip_kind(result.records).value_counts().reindex(FLIP_KINDS, fill_value=0)
        n = int(counts.sum())
        net = int(counts["wrong→right"] - counts["right→wrong"])
        changed = int((scored["pred"].to_numpy() != scored["pred_before"].to_numpy()).sum())
        rows.append({"task": task_label(result.summary["task"]), "n": n, "changed": changed, **counts.to_dict(),
                     "wrong→other wrong": changed - int(counts["wrong→right"] + counts["right→wrong"]),
                     "net": net, "net_points": 100 * net / n if n else float("nan")})
    return pd.DataFrame(rows)


def per_class_deltas(records: pd.DataFrame, classnames) -> pd.DataFrame:
    """Per true class: n, accuracy before/after (percent), delta (points), samples gained and lost.

    Sorted by delta, biggest loss first.
    """
    rows = scored_rows(records).assign(flip=flip_kind(records))
    rows = rows.assign(before=rows["correct_before"].astype(float), after=rows["correct"].astype(float),
                       gained=rows["flip"] == "wrong→right", lost=rows["flip"] == "right→wrong")
    out = rows.groupby("label").agg(n=("idx", "size"), top1_before=("before", "mean"), top1=("after", "mean"),
                                    gained=("gained", "sum"), lost=("lost", "sum"))
    out[["top1_before", "top1"]] *= 100
    out["delta"] = out["top1"] - out["top1_before"]
    out.insert(0, "class", [classnames[int(i)] for i in out.index])
    return out.reset_index(drop=True).sort_values(["delta", "class"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# calibration, confidence selection


def reliability(result, n_bins: int = 15) -> pd.DataFrame:
    """Reliability-diagram bins of view 0 before and after adaptation, from the stored logits.

    Long rows: stage ("before" / "after"), then `metrics.reliability_table`'s columns, plus the
    stage's ECE (percent) on every row.
    """
    rows = scored_rows(result.records)
    parts = []
    for stage, column, correct in (("before", "logits_before", "correct_before"), ("after", "logits", "correct")):
        conf, _ = metrics.softmax_confidence(np.stack(rows[column].to_list()))
        hits = rows[correct].to_numpy(dtype=bool)
        table = metrics.reliability_table(conf, hits, n_bins)
        ece = 100 * metrics.expected_calibration_error(conf, hits, n_bins)
        parts.append(table.assign(stage=stage, ece=ece))
    return pd.concat(parts, ignore_index=True)[["stage", "lower", "upper", "count", "confidence",
                                                  "accuracy", "gap", "ece"]]


def kept_views(results) -> pd.DataFrame:
    """Per run (task): were the views confidence selection kept right more often than views at large?

    Columns (percent over scored samples): `view0` (view 0, initial prompt), `all_views` (every view's
    argmax, initial prompt), `kept_views` (the kept views, `kept_correct`), `tpt` (after adaptation),
    and `kept_all_wrong` (samples none of whose kept views was right).
    """
    out = []
    for result in results:
        rows = scored_rows(result.records)
        labels = rows["label"].to_numpy()
        view_acc = [np.mean(np.asarray(v) == y) if len(v) else np.nan for v, y in zip(rows["view_preds"], labels)]
        kept = rows["kept_correct"]
        out.append({"task": task_label(result.summary["task"]), "n": len(rows),
                    "view0": 100 * rows["correct_before"].astype(float).mean(),
                    "all_views": 100 * float(np.nanmean(view_acc)) if len(rows) else float("nan"),
                    "kept_views": 100 * kept.mean(), "tpt": 100 * rows["correct"].astype(float).mean(),
                    "kept_all_wrong": 100 * float((kept == 0).mean())})
    return pd.DataFrame(out)
