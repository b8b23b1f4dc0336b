"""A run's summary from its records, and a run read back from its folder without a model.

    load_run("runs/micro-A-tpt")     # RunResult: out, params, records (DataFrame), summary
    summarize(records)               # counts and accuracies of any subset of records
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics
from .folder import check_out_path, folder_digests, read_run_json
from .params import n_expected
from .store import read_batches, read_rows


@dataclass
class RunResult:
    """A run: its folder, parameters (run.json), per-sample records and summary."""

    out: Path
    params: dict
    records: pd.DataFrame
    summary: dict
    batches: pd.DataFrame | None = None     # one row per engine batch: time and peak memory (`rows.BATCH_DOCS`)

    def logits(self, before: bool = False) -> np.ndarray:
        """Stored logits as an array [n, C] aligned with `records` (NaN rows for error rows)."""
        column = self.records["logits_before" if before else "logits"]
        n_classes = self.params["task"]["n_classes"]
        out = np.full((len(column), n_classes), np.nan, dtype=np.float32)
        for row, value in enumerate(column):
            if value is not None:
                out[row] = value
        return out

    def __repr__(self) -> str:
        s = self.summary
        return (f"RunResult({str(self.out)!r}: {s['method']} on {s['task']}, {s['n']}/{s['n_expected']} samples, "
                f"top1 {s['top1']:.2f}%, {s['n_errors']} errors)")


def scored_rows(records: pd.DataFrame) -> pd.DataFrame:
    """The rows with a result: error rows (unreadable or missing images, non-finite results) left out."""
    return records[records["error"].isna()]


def summarize(records: pd.DataFrame, n_expected: int | None = None) -> dict:
    """Counts and accuracies from records (all rows, or any subset such as one class).

    Accuracies and ECE are in percent and computed over the `n_scored` rows without an error;
    error rows only count in `n_errors`. `top1_ci` is the 95% Wilson interval of top1.
    `ece`/`ece_before`: 15-bin expected calibration error of the softmax of the stored logits (the
    method's prediction / view 0 before adaptation); `ece20`/`ece20_before`: the same with 20 bins,
    as C-TPT and TTA-VLM report it. `reliability`: the 15 bins of the reliability diagram after
    adaptation (`metrics.reliability_table`: lower, upper, count, confidence, accuracy; empty bins
    have count 0 and null means). `seconds_per_sample`: mean engine seconds per sample (image tower
    and method).
    """
    scored = scored_rows(records)
    n, n_scored = len(records), len(scored)
    summary = {"n_expected": n_expected if n_expected is not None else n, "n": n,
               "complete": n_expected is None or n == n_expected,
               "n_errors": n - n_scored, "n_scored": n_scored}

    def pct(column: str) -> float:
        return 100 * float(scored[column].astype(float).mean()) if n_scored else float("nan")

    summary.update(top1=pct("correct"), top5=pct("correct5"),
                   top1_before=pct("correct_before"), top5_before=pct("correct5_before"))
    summary["delta_top1"] = summary["top1"] - summary["top1_before"]
    if n_scored:
        ci = metrics.accuracy_ci(scored["correct"].to_numpy(dtype=bool))
        summary["top1_ci"] = [100 * ci.low, 100 * ci.high]
        for suffix, column, correct in (("", "logits", "correct"), ("_before", "logits_before", "correct_before")):
            conf, _ = metrics.softmax_confidence(np.stack(scored[column].to_list()))
            hits = scored[correct].to_numpy(dtype=bool)
            summary[f"ece{suffix}"] = 100 * metrics.expected_calibration_error(conf, hits)
            summary[f"ece20{suffix}"] = 100 * metrics.expected_calibration_error(conf, hits, n_bins=20)
            if not suffix:
                table = metrics.reliability_table(conf, hits)
                summary["reliability"] = [{k: (None if isinstance(v, float) and np.isnan(v) else v)
                                           for k, v in row.items()}
                                          for row in table[["lower", "upper", "count", "confidence", "accuracy"]]
                                          .astype(object).to_dict("records")]
    else:
        summary.update(top1_ci=[float("nan")] * 2, ece=float("nan"), ece_before=float("nan"), ece20=float("nan"),
                       ece20_before=float("nan"), reliability=[])
    losses = scored["loss"].dropna()
    summary["mean_loss"] = float(losses.mean()) if len(losses) else None
    summary["kept_correct"] = 100 * float(scored["kept_correct"].mean()) if scored["kept_correct"].notna().any() else None
    summary["n_fp32_retries"] = int(scored["fp32_retry"].sum()) if n_scored else 0
    summary["seconds_per_sample"] = float(scored["seconds"].mean()) if n_scored else float("nan")
    summary["note"] = (f"accuracies and ECE in percent over the {n_scored} samples without errors; "
                       f"{n - n_scored} error rows (unreadable or missing images, non-finite results) are excluded")
    return summary


def cost_summary(batches: pd.DataFrame | None) -> dict:
    """Time and memory from a run's `batches` rows: `image_seconds_per_sample` and
    `method_seconds_per_sample` (their sum is the engine time per sample); `image_peak_mib` and
    `method_peak_mib`, the largest peak of a batch's image tower and of its method (MiB above the
    level before them; on a CPU the process's sampled resident memory, so only a rough guide),
    `peak_mem_mib` the larger of the two; `cached_features`, the share of samples whose features
    came from the feature cache (their tower time and peak are those measured when they were
    computed, scaled to the views read). None where no batch was recorded."""
    if batches is None or batches.empty or not batches["n"].sum():
        return {"image_seconds_per_sample": None, "method_seconds_per_sample": None, "image_peak_mib": None,
                "method_peak_mib": None, "peak_mem_mib": None, "cached_features": None}
    n = float(batches["n"].sum())
    image_peak = float(batches["image_peak_bytes"].fillna(0).max()) / 2 ** 20
    method_peak = float(batches["method_peak_bytes"].fillna(0).max()) / 2 ** 20
    return {"image_seconds_per_sample": float(batches["image_seconds"].sum()) / n,
            "method_seconds_per_sample": float(batches["method_seconds"].sum()) / n,
            "image_peak_mib": image_peak, "method_peak_mib": method_peak, "peak_mem_mib": max(image_peak, method_peak),
            "cached_features": float((batches["cached_features"].fillna(0).astype(float) * batches["n"]).sum()) / n}


def _summary(params: dict, records: pd.DataFrame, batches: pd.DataFrame | None = None) -> dict:
    head = {"task": params["task"]["name"], "method": params["method"]["name"],
            "model": params["model"]["name"], "pretrained": params["model"].get("pretrained")}
    if isinstance(params.get("stream"), dict):
        head["stream_seed"] = params["stream"].get("seed")
    return {**head, **summarize(records, n_expected(params)), **cost_summary(batches)}


def load_run(out) -> RunResult:
    """Read a finished or partial run (all ranks' rows) without a model, changing nothing.

    Raises `RunError` for a folder that is not a run folder, whose run.json cannot be read, or
    whose records were not written under its run.json (see `tptlib.runs.folder`)."""
    out = check_out_path(out)
    params = read_run_json(out)["params"]
    digests = folder_digests(params)
    records = read_rows(out, digests)
    batches = read_batches(out, digests)
    return RunResult(out=out, params=params, records=records, summary=_summary(params, records, batches),
                     batches=batches)
