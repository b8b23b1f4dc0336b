"""Resumable evaluation runs: one SQLite row per sample, the parameters pinned in `run.json`.

    result = evaluate(clip, task, method, out="runs/micro-A-tpt")
    result.summary          # n, n_errors, top1, top5, top1_before, ... (accuracies in percent)
    result.records          # pandas DataFrame, one row per sample
    load_run("runs/micro-A-tpt")   # the same, later, without a model

The run folder
--------------
    run.json                    what the rows depend on: model, task, method and its config, seed,
                                n_views, limit, tptlib version. A rerun with other values is refused.
    records.sqlite              table `records`, one row per sample (primary key: the sample index);
                                each batch of rows is written in one transaction.
    records.rank<r>.sqlite      rows of rank r of a multi-process (torchrun) run; rank 0 merges
                                them into records.sqlite at the end, and any run started later on
                                the folder merges what a killed job left. `load_run` reads all.
    run.log                     the run's log: start, resume point, error rows, the engine's
                                out-of-memory back-offs and fp32 retries, the final summary.
    lock                        the lock file (see Concurrency); it names the holding process.

Resume
------
A run that stops (killed, out of memory, Ctrl-C) leaves every finished batch in the store: an
interrupted batch's transaction is rolled back by SQLite, whole. Calling `evaluate` again with the
same parameters skips the samples that have a row and evaluates the rest. Because every sample's
views come from a generator seeded by (seed, sample index), the rows are the same whatever the
batch size, resume point or number of processes.

Bad samples
-----------
A sample whose image is unreadable (`CorruptImageError`) or absent (`MissingImageError`) gets an
error row (its `error` column holds the message) and the run goes on. Error rows are counted in
the summary (`n_errors`) and excluded from every accuracy, which is over `n_scored = n - n_errors`.
They are not retried on resume (fix the file, then start a fresh folder).

Concurrency
-----------
One job per run folder. The process that drives the run (rank 0 under torchrun) holds an
exclusive `fcntl.flock` on `out/lock` from start to end; a second `evaluate` on the same folder
refuses at once with `RunLockedError`, naming the holder's pid and host. The kernel drops the lock
when its holder dies, even by SIGKILL, so a killed run never blocks its resume. (flock needs a
local or lock-aware file system; Linux NFS clients emulate it.)

Several processes (torchrun)
----------------------------
With `world_size > 1` (default: the RANK / WORLD_SIZE variables torchrun sets), rank r evaluates
the samples whose index i has i % world_size == r and writes them to its own store,
`records.rank<r>.sqlite`, so no two processes write one SQLite file. The ranks synchronise through
torch.distributed (a gloo group, created from torchrun's variables if the caller has not
initialised one): rank 0 takes the lock and checks run.json before any rank starts, and merges the
rank stores into records.sqlite after all have finished. The summary every rank returns is over
all ranks. A resumed run may use another number of processes.

Stored logits are float32 (little-endian raw bytes, `numpy.frombuffer(blob, "<f4")`); nothing in a
run folder is pickled.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__, metrics
from .augment import task_views
from .data.base import CorruptImageError, MissingImageError
from .engine import Engine

__all__ = ["evaluate", "load_run", "summarize", "RunResult", "RunError", "RunLockedError",
           "RunMismatchError", "DEFAULT_BATCH_SIZE"]

log = logging.getLogger("tptlib.runs")

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8

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


class RunError(Exception):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


class RunLockedError(RunError):
    """Another process is running on the same folder."""


class RunMismatchError(RunError):
    """The folder holds a run with other parameters."""


@dataclass
class RunResult:
    """A run: its folder, parameters (run.json), per-sample records and summary."""

    out: Path
    params: dict
    records: pd.DataFrame
    summary: dict

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


# ----------------------------------------------------------------------------------------------
# run.json


def run_params(clip, task, method, *, seed: int, n_views: int, limit: int | None) -> dict:
    """The parameters a run's rows depend on (compared on every resume).

    A checkpoint file is recorded by its absolute path, so `ckpt.pt` and `./ckpt.pt` agree.
    """
    pretrained = clip.pretrained
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
    params = {
        "model": {"name": clip.name, "pretrained": pretrained, "precision": clip.precision},
        "task": {"name": task.name, "root": str(Path(task.root).expanduser().resolve()),
                 "size": len(task), "n_classes": len(task.classnames), "samples": _samples_digest(task)},
        "method": {"name": method.name, "config": method.config()},
        "seed": seed, "n_views": n_views, "limit": limit, "tptlib_version": __version__,
    }
    return json.loads(json.dumps(params))     # the form they take once stored (tuples become lists)


def _samples_digest(task) -> str:
    """A digest of the task's samples in order (paths relative to its root, labels) and class names.

    Record `idx` i is the task's i-th sample: if the listing, its order or the class names change,
    the records of an earlier run describe other images, and resuming must be refused.
    """
    root = Path(task.root)
    h = hashlib.sha256(json.dumps(list(task.classnames)).encode())
    for path, label in task.samples:
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        h.update(f"{rel}\t{int(label)}\n".encode())
    return h.hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def param_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value in `a`, value in `b`) for every leaf of two nested parameter dicts that
    differs; "(absent)" where one side lacks the key."""
    fa, fb = _flatten(a), _flatten(b)
    return [(key, fa.get(key, "(absent)"), fb.get(key, "(absent)"))
            for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def _check_or_write_params(out: Path, params: dict, info: dict) -> bool:
    """Write run.json for a new run, or refuse if the folder's run has other parameters.

    Returns True when the folder already held this run (a resume).
    """
    path = out / "run.json"
    if not path.exists():
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps({"params": params, "info": info}, indent=2) + "\n")
        os.replace(tmp, path)
        return False
    stored = _read_run_json(out)["params"]
    if stored == params:
        return True
    lines = [f"  {key}: {was!r} in the folder, {now!r} now" for key, was, now in param_differences(stored, params)]
    raise RunMismatchError(
        f"{out} holds a run with other parameters, so its records cannot be extended by this one:\n"
        + "\n".join(lines)
        + "\nUse another output folder (--out), or repeat the folder's parameters to resume it.")


def _read_run_json(out: Path) -> dict:
    path = out / "run.json"
    if not path.is_file():
        raise RunError(f"{out} is not a run folder: it has no run.json (evaluate() writes one when a run starts)")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# the lock


class _FolderLock:
    """Exclusive flock on `out/lock`; the file's text names the holder."""

    def __init__(self, out: Path):
        self.path = out / "lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that is just starting"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({holder}). Two runs must not write one "
                f"folder: wait for it to finish, or stop it and run this command again (it resumes), "
                f"or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------------------------
# the store


def _connect(path: Path) -> sqlite3.Connection:
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


def _main_store(out: Path) -> Path:
    return out / "records.sqlite"


def _rank_store(out: Path, rank: int) -> Path:
    return out / f"records.rank{rank}.sqlite"


def _rank_stores(out: Path) -> list[Path]:
    return sorted(out.glob("records.rank*.sqlite"))


def _merge_rank_stores(out: Path) -> int:
    """Move the rows of every `records.rank<r>.sqlite` into records.sqlite; returns rows moved.

    Each store is copied in one transaction, then deleted. A row already present is kept (the
    same sample evaluated twice gives the same row), so a merge interrupted after its commit is
    simply finished by the next one.
    """
    moved = 0
    conn = _connect(_main_store(out))
    try:
        for shard in _rank_stores(out):
            _connect(shard).close()                   # checks its layout version (and rolls back a torn batch)
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            names = ", ".join(_NAMES)
            with conn:
                moved += conn.execute(f"INSERT OR IGNORE INTO records ({names}) "
                                      f"SELECT {names} FROM shard.records").rowcount
            conn.execute("DETACH DATABASE shard")
            shard.unlink()
    finally:
        conn.close()
    return moved


def _done_indices(out: Path) -> set[int]:
    done: set[int] = set()
    for path in [_main_store(out), *_rank_stores(out)]:
        if path.exists():
            conn = _connect(path)
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


def _result_row(i: int, path: str, label: int, res: dict) -> dict:
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


def _error_row(i: int, path: str, label: int, error: str) -> dict:
    row = dict.fromkeys(_NAMES)
    row.update(idx=i, path=str(path), label=int(label), error=error)
    return row


def _write_rows(conn: sqlite3.Connection, rows: list[dict]) -> None:
    """All rows of one batch in one transaction (a kill mid-write leaves none of them)."""
    names = ", ".join(_NAMES)
    marks = ", ".join("?" for _ in _NAMES)
    with conn:
        conn.executemany(f"INSERT INTO records ({names}) VALUES ({marks})",
                         [tuple(row[name] for name in _NAMES) for row in rows])


def _read_rows(out: Path) -> pd.DataFrame:
    frames = []
    for path in [_main_store(out), *_rank_stores(out)]:
        if path.exists():
            conn = _connect(path)
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


# ----------------------------------------------------------------------------------------------
# summaries


def summarize(records: pd.DataFrame, n_expected: int | None = None) -> dict:
    """Counts and accuracies from records (all rows, or any subset such as one class).

    Accuracies and ECE are in percent and computed over the `n_scored` rows without an error;
    error rows only count in `n_errors`. `top1_ci` is the 95% Wilson interval of top1.
    `ece`/`ece_before`: 15-bin expected calibration error of view 0's softmax, after/before.
    """
    scored = records[records["error"].isna()]
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
        for key, column, correct in (("ece", "logits", "correct"), ("ece_before", "logits_before", "correct_before")):
            conf, _ = metrics.softmax_confidence(np.stack(scored[column].to_list()))
            summary[key] = 100 * metrics.expected_calibration_error(conf, scored[correct].to_numpy(dtype=bool))
    else:
        summary.update(top1_ci=[float("nan")] * 2, ece=float("nan"), ece_before=float("nan"))
    losses = scored["loss"].dropna()
    summary["mean_loss"] = float(losses.mean()) if len(losses) else None
    summary["kept_correct"] = 100 * float(scored["kept_correct"].mean()) if scored["kept_correct"].notna().any() else None
    summary["n_fp32_retries"] = int(scored["fp32_retry"].sum()) if n_scored else 0
    summary["seconds_per_sample"] = float(scored["seconds"].mean()) if n_scored else float("nan")
    summary["note"] = (f"accuracies and ECE in percent over the {n_scored} samples without errors; "
                       f"{n - n_scored} error rows (unreadable or missing images) are excluded")
    return summary


def _n_expected(params: dict) -> int:
    limit, size = params["limit"], params["task"]["size"]
    return size if limit is None else min(limit, size)


def _summary(params: dict, records: pd.DataFrame) -> dict:
    head = {"task": params["task"]["name"], "method": params["method"]["name"],
            "model": params["model"]["name"], "pretrained": params["model"]["pretrained"]}
    return {**head, **summarize(records, _n_expected(params))}


def load_run(out) -> RunResult:
    """Read a finished or partial run (all ranks' rows) without a model."""
    out = Path(out).expanduser()
    params = _read_run_json(out)["params"]
    records = _read_rows(out)
    return RunResult(out=out, params=params, records=records, summary=_summary(params, records))


# ----------------------------------------------------------------------------------------------
# several processes


class _Ranks:
    """This process's place among the run's processes, and the collectives the run needs."""

    def __init__(self, rank: int | None, world_size: int | None):
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..world_size-1; got rank={self.rank}, world_size={self.world_size}")
        self.group = None
        self.owns_group = False

    def __enter__(self) -> "_Ranks":
        if self.world_size == 1:
            return self
        import torch.distributed as dist
        if not dist.is_initialized():
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
            if missing:
                raise RunError(f"world_size={self.world_size} needs torch.distributed: start the processes "
                               f"with torchrun, or set {' and '.join(missing)} (and RANK, WORLD_SIZE) for each")
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size,
                                    timeout=datetime.timedelta(hours=12))
            self.owns_group = True
        elif dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise RunError(f"rank={self.rank}, world_size={self.world_size} disagree with the initialised "
                           f"process group (rank {dist.get_rank()} of {dist.get_world_size()})")
        if dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")   # small CPU messages, whatever the main backend
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            dist.barrier(group=self.group)

    def share_outcome(self, error: Exception | None) -> None:
        """Rank 0 tells every rank whether the run may start; a refusal is raised on all ranks."""
        if self.world_size == 1:
            if error is not None:
                raise error
            return
        import torch.distributed as dist
        text = "" if error is None else f"{type(error).__name__}\n{error}"
        data = torch.tensor(list(text.encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.group)
        if self.rank != 0:
            data = torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            dist.broadcast(data, src=0, group=self.group)
        if error is not None:
            raise error
        if int(size):
            kind, message = bytes(data.tolist()).decode().split("\n", 1)
            raise {"RunLockedError": RunLockedError, "RunMismatchError": RunMismatchError}.get(kind, RunError)(message)


# ----------------------------------------------------------------------------------------------
# evaluate


@contextmanager
def _run_log(out: Path, rank: int):
    """Open out/run.log for the duration of a run; yields the logger of the run's own notes.

    The file receives those notes (start, resume point, summary: INFO, file only) and every
    warning of the `tptlib` loggers (error rows, the engine's out-of-memory back-offs and fp32
    retries), which also reach the console as usual.
    """
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s"))
    notes = logging.getLogger("tptlib.run_log")
    notes.setLevel(logging.INFO)
    notes.propagate = False
    for logger in (notes, logging.getLogger("tptlib")):
        logger.addHandler(handler)
    try:
        yield notes
    finally:
        for logger in (notes, logging.getLogger("tptlib")):
            logger.removeHandler(handler)
        handler.close()


@dataclass(frozen=True)
class _ViewGeometry:
    """What `task_views` reads from a Clip: sent to loader workers instead of the model."""

    image_size: int
    mean: tuple
    std: tuple


class _Views(torch.utils.data.Dataset):
    """Sample index -> (index, views [V,3,S,S] or None, error text or None)."""

    def __init__(self, clip_geometry, task, indices: list[int], seed: int, n_views: int):
        self.clip, self.task, self.indices, self.seed, self.n_views = clip_geometry, task, indices, seed, n_views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        try:
            return i, task_views(self.clip, self.task, i, seed=self.seed, n_views=self.n_views), None
        except (CorruptImageError, MissingImageError) as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Loader items -> (indices of the readable samples, their views stacked `[b, V, 3, S, S]` (None
    if none), [(index, error)] of the others). Stacked here, in the worker, so that the DataLoader
    can pin the batch for an asynchronous copy to the GPU."""
    ok = [(i, v) for i, v, err in batch if err is None]
    views = torch.stack([v for _, v in ok]) if ok else None
    return [i for i, _ in ok], views, [(i, err) for i, _, err in batch if err is not None]


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def evaluate(clip, task, method, out, *, limit: int | None = None, seed: int = 0, n_views: int = 64,
             batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0, progress: bool = True,
             rank: int | None = None, world_size: int | None = None) -> RunResult:
    """Evaluate `method` on `task` with `clip`, one record per sample in the run folder `out`.

    limit: evaluate only the first `limit` samples of the task (None: all).
    seed: the views of sample i come from a generator seeded by (seed, i).
    n_views: views per sample, view 0 the original (64 in the paper).
    batch_size: samples per engine call; changes speed and memory, never the results.
    workers: processes that decode images and build views ahead of the engine (torch DataLoader);
        0 builds them in this process. On a GPU, view building is usually the bottleneck.
    progress: show a progress bar (tqdm.auto; also silenced by TQDM_DISABLE=1).
    rank, world_size: this process's shard (default: torchrun's RANK and WORLD_SIZE, else 0 and 1).

    Resumes a partial run with the same parameters; refuses a folder holding a run with other
    parameters (`RunMismatchError`) or in use by another process (`RunLockedError`). Returns the
    `RunResult` over all rows of the run (all ranks). See the module docstring for the folder
    layout, resume, bad samples and concurrency.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None; got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    ranks = _Ranks(rank, world_size)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit)
    n_expected = _n_expected(params)

    with ExitStack() as stack:
        stack.enter_context(ranks)
        notes = stack.enter_context(_run_log(out, ranks.rank))
        refusal = None
        if ranks.rank == 0:
            lock = _FolderLock(out)
            try:
                lock.acquire()
                stack.callback(lock.release)
                info = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
                        "device": str(clip.device), "command": " ".join(sys.argv)}
                resumed = _check_or_write_params(out, params, info)
                notes.info("%s run: %s", "resuming" if resumed else "new", json.dumps(params))
                moved = _merge_rank_stores(out)
                if moved:
                    notes.info("merged %d rows left by an earlier multi-process job", moved)
            except RunError as exc:
                refusal = exc
        ranks.share_outcome(refusal)

        done = _done_indices(out)
        mine = [i for i in range(n_expected) if i % ranks.world_size == ranks.rank]
        todo = [i for i in mine if i not in done]
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = _main_store(out) if ranks.world_size == 1 else _rank_store(out, ranks.rank)
            _evaluate_samples(clip, task, method, store, todo, already=len(mine) - len(todo), total=len(mine),
                              seed=seed, n_views=n_views, batch_size=batch_size, workers=workers,
                              show=_progress_enabled(progress) and ranks.rank == 0)
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", _merge_rank_stores(out), ranks.world_size)
        ranks.barrier()
        result = load_run(out)
        if ranks.rank == 0:
            notes.info("summary: %s", json.dumps(result.summary))
    return result


def _evaluate_samples(clip, task, method, store: Path, todo: list[int], *, already: int, total: int,
                      seed: int, n_views: int, batch_size: int, workers: int, show: bool) -> None:
    """Run the engine over `todo` and write each batch's rows to `store` in one transaction."""
    from tqdm.auto import tqdm

    engine = Engine(clip, method, task.classnames, batch_size=batch_size)
    if not method.tunes:
        n_views = 1         # a fixed classifier predicts view 0 alone: no augmented views to build or encode
    views = _Views(_ViewGeometry(clip.image_size, tuple(clip.mean), tuple(clip.std)), task, todo, seed, n_views)
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                         shuffle=False, pin_memory=clip.device.type == "cuda")
    conn = _connect(store)
    bar = tqdm(total=total, initial=already, disable=not show, unit="img", desc=f"{task.name} {method.name}")
    n_right = n_scored = 0
    try:
        for ok, stacked, errors in loader:
            rows = []
            for i, err in errors:
                log.warning("sample %d: %s (recorded as an error row)", i, err)
                rows.append(_error_row(i, *task.samples[i], err))
            if ok:
                results = engine.run_batch(stacked)
                for i, res in zip(ok, results):
                    path, label = task.samples[i]
                    rows.append(_result_row(i, str(path), int(label), res))
            _write_rows(conn, rows)
            n_scored += sum(r["error"] is None for r in rows)
            n_right += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows))
            if n_scored:
                bar.set_postfix(top1=f"{100 * n_right / n_scored:.1f}%", refresh=False)
    finally:
        bar.close()
        conn.close()
