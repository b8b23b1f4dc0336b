"""The store of a run's records: the `records` table (schema, one row per sample), the encoding of
an engine result as a row and back, and the merge of the rank stores of a multi-process run.

    records.sqlite              table `records`, one row per sample (primary key: the sample index);
                                table `batches`, one row per engine batch (time and peak memory of
                                the image tower and of the method); for an online method, table
                                `stream`, one row per sample in stream order with its state update
    records.rank<r>.sqlite      rows of rank r of a multi-process run, merged into records.sqlite

The `batches` and `stream` tables are added next to `records` when a batch is first written (a
store written before they existed has none, and reads as having none).

Stored logits are float32 (little-endian raw bytes, `numpy.frombuffer(blob, "<f4")`); nothing in a
run folder is pickled.
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import RunError

#: Version of the `records` table layout (SQLite `user_version`); bump on any column change.
SCHEMA_VERSION = 1
LOGITS_DTYPE = "<f4"

_COLUMNS = [
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
COLUMN_DOCS = {name: doc for name, _, doc in _COLUMNS}
_NAMES = [name for name, _, _ in _COLUMNS]
_JSON_COLUMNS = ("top5", "top5_before", "kept", "view_preds")
_BOOL_COLUMNS = ("correct", "correct5", "correct_before", "correct5_before", "fp32_retry")
_INT_COLUMNS = ("pred", "pred_before")


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        columns = ", ".join(f"{name} {sqltype}" for name, sqltype, _ in _COLUMNS)
        with conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        conn.close()
        raise RunError(f"{path} has record layout version {version}; this tptlib reads version "
                       f"{SCHEMA_VERSION}. Use the tptlib version that wrote it, or a new folder.")
    return conn


#: one row per engine batch: what its image tower and method cost (`Engine.last_batch`)
_BATCH_COLUMNS = [
    ("first_idx", "INTEGER", "sample index of the batch's first sample"),
    ("n", "INTEGER", "samples the engine ran (error rows not counted)"),
    ("image_seconds", "REAL", "image tower: wall seconds (with a feature cache: measured when the features were computed)"),
    ("method_seconds", "REAL", "the method (tuning, caches, prediction): wall seconds"),
    ("image_peak_bytes", "INTEGER", "image tower: peak memory above the level before it (CUDA allocator, or sampled RSS on a CPU)"),
    ("method_peak_bytes", "INTEGER", "the method: peak memory above the level before it"),
    ("cached_features", "REAL", "share of the batch's samples whose view features came from the feature cache"),
    ("device", "TEXT", "where the batch ran"),
]
BATCH_DOCS = {name: doc for name, _, doc in _BATCH_COLUMNS}
_BATCH_NAMES = [name for name, _, _ in _BATCH_COLUMNS]


def _ensure_side_tables(conn: sqlite3.Connection) -> None:
    columns = ", ".join(f"{name} {sqltype}" for name, sqltype, _ in _BATCH_COLUMNS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS batches ({columns})")
    conn.execute("CREATE TABLE IF NOT EXISTS stream (pos INTEGER PRIMARY KEY, idx INTEGER NOT NULL, "
                 "state_update BLOB)")


def _has_table(conn: sqlite3.Connection, name: str, schema: str = "main") -> bool:
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def main_store(out: Path) -> Path:
    return out / "records.sqlite"


def rank_store(out: Path, rank: int) -> Path:
    return out / f"records.rank{rank}.sqlite"


def rank_stores(out: Path) -> list[Path]:
    return sorted(out.glob("records.rank*.sqlite"))


def merge_rank_stores(out: Path) -> int:
    """Move the rows of every `records.rank<r>.sqlite` into records.sqlite; returns rows moved.

    Each store is copied in one transaction, then deleted. A row already present is kept (the
    same sample evaluated twice gives the same row), so a merge interrupted after its commit is
    simply finished by the next one.
    """
    moved = 0
    conn = connect(main_store(out))
    try:
        for shard in rank_stores(out):
            connect(shard).close()                   # checks its layout version (and rolls back a torn batch)
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            names = ", ".join(_NAMES)
            with conn:
                moved += conn.execute(f"INSERT OR IGNORE INTO records ({names}) "
                                      f"SELECT {names} FROM shard.records").rowcount
                if _has_table(conn, "batches", "shard"):
                    _ensure_side_tables(conn)
                    batch_names = ", ".join(_BATCH_NAMES)
                    conn.execute(f"INSERT INTO batches ({batch_names}) SELECT {batch_names} FROM shard.batches")
            conn.execute("DETACH DATABASE shard")
            shard.unlink()
    finally:
        conn.close()
    return moved


def done_indices(out: Path) -> set[int]:
    done: set[int] = set()
    for path in [main_store(out), *rank_stores(out)]:
        if path.exists():
            conn = connect(path)
            try:
                done.update(row[0] for row in conn.execute("SELECT idx FROM records"))
            finally:
                conn.close()
    return done


def _entropy(logits: torch.Tensor) -> float:
    logp = logits.double().log_softmax(-1)
    return float(-(logp.exp() * logp).sum())


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
        "entropy_before": _entropy(before), "entropy_after": _entropy(logits),
        "loss": None if math.isnan(loss) else loss,
        "kept": json.dumps(kept), "kept_correct": kept_correct, "view_preds": json.dumps(view_preds),
        "seconds": float(res["seconds"]), "fp32_retry": int(bool(res["fp32_retry"])), "error": None,
        "logits": logits.numpy().astype(LOGITS_DTYPE).tobytes(),
        "logits_before": before.numpy().astype(LOGITS_DTYPE).tobytes(),
    }


def error_row(i: int, path: str, label: int, error: str) -> dict:
    row = dict.fromkeys(_NAMES)
    row.update(idx=i, path=str(path), label=int(label), error=error)
    return row


def write_rows(conn: sqlite3.Connection, rows: list[dict], batch: dict | None = None,
               stream: list[tuple[int, int, bytes | None]] | None = None) -> None:
    """All rows of one batch in one transaction (a kill mid-write leaves none of them), with the
    batch's cost (`batch`: the `batches` columns) and, for an online method, its stream rows
    (`stream`: (position, sample index, encoded state update or None for an error row))."""
    names = ", ".join(_NAMES)
    marks = ", ".join("?" for _ in _NAMES)
    with conn:
        if batch is not None or stream:
            _ensure_side_tables(conn)
        conn.executemany(f"INSERT INTO records ({names}) VALUES ({marks})",
                         [tuple(row[name] for name in _NAMES) for row in rows])
        if batch is not None:
            conn.execute(f"INSERT INTO batches ({', '.join(_BATCH_NAMES)}) VALUES ({', '.join('?' for _ in _BATCH_NAMES)})",
                         tuple(batch.get(name) for name in _BATCH_NAMES))
        if stream:
            conn.executemany("INSERT INTO stream (pos, idx, state_update) VALUES (?, ?, ?)", stream)


def read_batches(out: Path) -> pd.DataFrame:
    """The `batches` rows of a run (all stores), in the order they were written."""
    frames = []
    for path in [main_store(out), *rank_stores(out)]:
        if path.exists():
            conn = connect(path)
            try:
                if _has_table(conn, "batches"):
                    frames.append(pd.read_sql_query(f"SELECT {', '.join(_BATCH_NAMES)} FROM batches ORDER BY rowid", conn))
            finally:
                conn.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({name: [] for name in _BATCH_NAMES})


def read_stream(out: Path) -> list[tuple[int, int, bytes | None]]:
    """The `stream` rows of an online run: (position, sample index, state update), by position."""
    path = main_store(out)
    if not path.exists():
        return []
    conn = connect(path)
    try:
        if not _has_table(conn, "stream"):
            return []
        return [(int(p), int(i), u) for p, i, u in conn.execute("SELECT pos, idx, state_update FROM stream ORDER BY pos")]
    finally:
        conn.close()


def read_rows(out: Path) -> pd.DataFrame:
    frames = []
    for path in [main_store(out), *rank_stores(out)]:
        if path.exists():
            conn = connect(path)
            try:
                frames.append(pd.read_sql_query(f"SELECT {', '.join(_NAMES)} FROM records", conn))
            finally:
                conn.close()
    if not frames:
        return _decode(pd.DataFrame({name: [] for name in _NAMES}))
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("idx", keep="first")
    return _decode(rows.sort_values("idx").reset_index(drop=True))


def _decode(rows: pd.DataFrame) -> pd.DataFrame:
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
    return rows

