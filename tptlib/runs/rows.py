"""The rows of a run's records store: the columns of its `records` and `batches` tables (with what each
means, and the layout version), an engine result encoded as a `records` row, and the rows read back
decoded. No file is touched here: `tptlib.runs.store` opens, creates, writes and merges the stores.

Stored logits are float32 (little-endian raw bytes, `numpy.frombuffer(blob, "<f4")`); nothing in a
run folder is pickled.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import torch

from ..objectives import entropy

#: Version of the store's layout (SQLite `user_version`); bump on any column change. Version 1 had
#: no `run` table (no parameter digest); it is still read.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
LOGITS_DTYPE = "<f4"
#: how an error row for a sample with a non-finite logit, loss or input starts
NONFINITE = "NonFiniteResult"

COLUMNS = [
    # name, SQL type, meaning
    ("idx", "INTEGER PRIMARY KEY", "sample index in the task"),
    ("path", "TEXT NOT NULL", "image file"),
    ("label", "INTEGER NOT NULL", "true class"),
    ("pred", "INTEGER", "argmax of view 0's logits after adaptation"),
    ("top5", "TEXT", "JSON list: the 5 highest classes after adaptation, best first"),
    ("correct", "INTEGER", "pred == label (0/1)"),
    ("correct5", "INTEGER", "label in top5 (0/1)"),
    ("pred_before", "INTEGER", "argmax of view 0's logits with the initial prompt"),
    ("top5_before", "TEXT", "JSON list: top 5 with the initial prompt"),
    ("correct_before", "INTEGER", "pred_before == label (0/1)"),
    ("correct5_before", "INTEGER", "label in top5_before (0/1)"),
    ("entropy_before", "REAL", "entropy (nats) of softmax(logits_before), view 0"),
    ("entropy_after", "REAL", "entropy (nats) of softmax(logits), view 0"),
    ("loss", "REAL", "adaptation loss at the first step; NULL when the method does not tune"),
    ("kept", "TEXT", "JSON list: view indices kept by confidence selection ([] if none)"),
    ("kept_correct", "REAL", "fraction of kept views whose argmax == label; NULL if none kept"),
    ("view_preds", "TEXT", "JSON list: argmax of every view before tuning ([] if not computed)"),
    ("seconds", "REAL", "this sample's share of its batch's engine time"),
    ("fp32_retry", "INTEGER", "1 if the sample was redone in fp32 after a non-finite fp16 loss"),
    ("error", "TEXT", "why the sample could not be evaluated; NULL when it was"),
    ("logits", "BLOB", "view 0's logits after adaptation, float32 little-endian bytes"),
    ("logits_before", "BLOB", "view 0's logits with the initial prompt, float32 bytes"),
]
COLUMN_DOCS = {name: doc for name, _, doc in COLUMNS}
NAMES = [name for name, _, _ in COLUMNS]
_JSON_COLUMNS = ("top5", "top5_before", "kept", "view_preds")
_BOOL_COLUMNS = ("correct", "correct5", "correct_before", "correct5_before", "fp32_retry")
_INT_COLUMNS = ("pred", "pred_before")


#: one row per engine batch: what its image tower and method cost (`Engine.last_batch`)
BATCH_COLUMNS = [
    ("first_idx", "INTEGER", "sample index of the batch's first sample"),
    ("n", "INTEGER", "samples the engine ran (error rows and empty slots not counted)"),
    ("image_seconds", "REAL", "image tower: wall seconds (with a feature cache: measured when the features were computed)"),
    ("method_seconds", "REAL", "the method (tuning, caches, prediction): wall seconds"),
    ("image_peak_bytes", "INTEGER", "image tower: peak memory above the level before it (CUDA allocator, or peak RSS on a CPU)"),
    ("method_peak_bytes", "INTEGER", "the method: peak memory above the level before it"),
    ("cached_features", "REAL", "share of the batch's samples whose view features came from the feature cache"),
    ("device", "TEXT", "where the batch ran"),
]
BATCH_DOCS = {name: doc for name, _, doc in BATCH_COLUMNS}
BATCH_NAMES = [name for name, _, _ in BATCH_COLUMNS]


def _top5(logits: torch.Tensor) -> list[int]:
    # stable sort: ties rank the lower class first, as argmax does
    return torch.sort(logits, descending=True, stable=True).indices[:5].tolist()


def result_row(i: int, path: str, label: int, res: dict) -> dict:
    """One `records` row from an engine result dict (see `Engine.run_batch`)."""
    logits, before = res["logits"].float().cpu(), res["logits_before"].float().cpu()
    top5, top5_before = _top5(logits), _top5(before)
    kept, view_preds = list(res["kept"]), list(res["view_preds"])
    kept_correct = (sum(view_preds[k] == label for k in kept) / len(kept)) if kept and view_preds else None
    loss = float(res["loss"])
    return {
        "idx": i, "path": path, "label": label,
        "pred": top5[0], "top5": json.dumps(top5), "correct": int(top5[0] == label),
        "correct5": int(label in top5),
        "pred_before": top5_before[0], "top5_before": json.dumps(top5_before),
        "correct_before": int(top5_before[0] == label), "correct5_before": int(label in top5_before),
        "entropy_before": float(entropy(before, torch.float64)),
        "entropy_after": float(entropy(logits, torch.float64)),
        "loss": None if math.isnan(loss) else loss,
        "kept": json.dumps(kept), "kept_correct": kept_correct, "view_preds": json.dumps(view_preds),
        "seconds": float(res["seconds"]), "fp32_retry": int(bool(res["fp32_retry"])), "error": None,
        "logits": logits.numpy().astype(LOGITS_DTYPE).tobytes(),
        "logits_before": before.numpy().astype(LOGITS_DTYPE).tobytes(),
    }


def error_row(i: int, path: str, label: int, error: str) -> dict:
    row = dict.fromkeys(NAMES)
    row.update(idx=i, path=str(path), label=int(label), error=error)
    return row


def decode_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """SQLite values -> Python: JSON lists, float32 arrays, nullable booleans and integers."""
    def present(value) -> bool:          # NULL arrives as None, or as NaN in a column pandas made float
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    rows = rows.copy()
    for name in _JSON_COLUMNS:
        rows[name] = [json.loads(v) if present(v) else None for v in rows[name]]
    for name in ("logits", "logits_before"):
        rows[name] = [np.frombuffer(v, dtype=LOGITS_DTYPE) if present(v) else None for v in rows[name]]
    for name in _BOOL_COLUMNS:
        rows[name] = rows[name].astype("Int64").astype("boolean")
    for name in (*_INT_COLUMNS, "idx", "label"):
        rows[name] = rows[name].astype("Int64")
    for name in ("entropy_before", "entropy_after", "loss", "kept_correct", "seconds"):
        rows[name] = rows[name].astype("float64")
    rows["error"] = rows["error"].astype(object).where(rows["error"].notna(), None)
    # a row scored with non-finite logits (possible in stores of a tptlib that did not check them)
    # is an error row: no accuracy or calibration is computed from it
    for k, (error, logits, before) in enumerate(zip(rows["error"], rows["logits"], rows["logits_before"])):
        if error is None and not (_finite(logits) and _finite(before)):
            rows.at[k, "error"] = f"{NONFINITE}: the stored logits are not finite"
    return rows


def _finite(values) -> bool:
    return values is not None and bool(np.isfinite(values).all())

