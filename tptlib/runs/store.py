"""The store of a run's records: its files (created bound to the run's parameters, opened, checked),
each batch's rows written in one transaction, the rows read back, and the merge of the rank stores of
a multi-process run. The columns and the encoding of a row are `tptlib.runs.rows` (re-exported here).

    records.sqlite              table `records`, one row per sample (primary key: the sample index);
                                table `run`, whose `params_digest` ties the rows to run.json;
                                table `batches`, one row per engine batch (time and peak memory of
                                the image tower and of the method); for an online method, table
                                `stream`, one row per sample in stream order with its state update
    records.rank<r>.sqlite      rows of rank r of a multi-process run, merged into records.sqlite
                                (with its `batches` rows)

A store is created with the digest of the parameters its rows are computed under
(`params.params_digest`), and opened only by a run whose run.json has that digest: records are never
adopted by a run.json they were not written under. Stores of layout version 1 (before the digest)
have none, and are opened only with a run.json of that time (which `folder.open_run` upgrades).
A file that is not such a store (corrupt, foreign, a table missing) raises `RunError` and is left
as it is: only `create_store` writes a store's layout, and only into a new or empty file.

The `batches` and `stream` tables are made with the store, and added next to `records` when a
batch is first written into a store made before they existed (such a store reads as having none).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pandas as pd

from ..files import UnsafeFileError, check_regular
from .errors import RunError
from .rows import BATCH_COLUMNS, BATCH_NAMES, COLUMNS, NAMES, READABLE_VERSIONS, SCHEMA_VERSION, decode_rows
# the names of the rows that were defined here before `rows` existed, importable from here as before
from .rows import BATCH_DOCS, COLUMN_DOCS, LOGITS_DTYPE, NONFINITE, error_row, result_row  # noqa: F401


def _ensure_side_tables(conn: sqlite3.Connection) -> None:
    columns = ", ".join(f"{name} {sqltype}" for name, sqltype, _ in BATCH_COLUMNS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS batches ({columns})")
    conn.execute("CREATE TABLE IF NOT EXISTS stream (pos INTEGER PRIMARY KEY, idx INTEGER NOT NULL, "
                 "state_update BLOB)")


def _has_table(conn: sqlite3.Connection, name: str, schema: str = "main") -> bool:
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


#: the files SQLite keeps beside a database, which it writes (and reads back) as it writes the database
_SIDE_FILES = ("", "-journal", "-wal", "-shm")


def _check_files(path: Path) -> None:
    """Refuse (`RunError`) a store whose file or journal is a link, shared or not a regular file:
    SQLite would write (or roll back a journal) through it."""
    for suffix in _SIDE_FILES:
        try:
            check_regular(f"{path}{suffix}")
        except UnsafeFileError as exc:
            raise RunError(f"the records store {path} cannot be used: {exc.strerror}, or use another --out") from None


def _open(path: Path, create: bool = False, **kwargs) -> sqlite3.Connection:
    """A connection to an existing store file (a missing one is not created unless `create`)."""
    _check_files(path)
    mode = "rwc" if create else "rw"
    return sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode={mode}", uri=True, timeout=60, **kwargs)


def _unreadable(path: Path, why) -> RunError:
    return RunError(f"{path} is not a readable records store ({why}). It is left as it is; move it away to "
                    "start this run afresh, or use another --out.")


def store_digest(path: Path) -> str | None:
    """The parameter digest a store was created with (None: a version-1 store, or one holding no
    table at all, an empty file). Raises `RunError` for a file that is not a records store."""
    try:
        conn = _open(path)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            return None
        if version == 0:
            raise _unreadable(path, f"it holds the tables {sorted(tables)}, not a records store's")
        if version not in READABLE_VERSIONS:
            raise RunError(f"{path} has record layout version {version}; this tptlib reads versions "
                           f"{READABLE_VERSIONS}. Use the tptlib version that wrote it, or a new folder.")
        if "records" not in tables:
            raise _unreadable(path, "it has no records table")
        columns = [row[1] for row in conn.execute("PRAGMA table_info(records)")]
        if columns != NAMES:
            raise _unreadable(path, f"its records table has the columns {columns}, not {NAMES}")
        if version == 1:
            return None
        row = conn.execute("SELECT value FROM run WHERE key = 'params_digest'").fetchone() if "run" in tables else None
        if row is None:
            raise _unreadable(path, "it holds no parameter digest")
        return str(row[0])
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    finally:
        conn.close()


def is_empty_file(path: Path) -> bool:
    """True for a store file that holds no table at all (a new, empty SQLite file)."""
    try:
        with contextlib.closing(_open(path)) as conn:
            return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def open_store(path: Path, digest: str | None | tuple) -> sqlite3.Connection:
    """A connection to the existing store `path`, refused (`RunError`) unless it is a records store
    created under the parameter digest `digest` (None: a version-1 store; a tuple: any of them)."""
    if store_digest(path) not in (digest if isinstance(digest, tuple) else (digest,)):
        raise RunError(f"{path} was not written under this folder's run.json (run.json was edited or replaced "
                       "after the records were written, or the records come from another run), so its records "
                       "are not adopted. Restore the original run.json, or use another --out.")
    return _open(path)


def create_store(path: Path, digest: str) -> sqlite3.Connection:
    """A new store bound to the parameter digest `digest` at `path` (absent, or an empty SQLite file).

    The whole layout is written into `<path>.new` in one transaction, then renamed to `path`: a
    failure (a full disk) leaves no store, and a kill leaves at most the `.new` file, which the next
    run replaces; never a store without its digest, which would refuse every later run."""
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    try:
        if path.exists() and not is_empty_file(path):
            raise RunError(f"{path} already holds tables; a new records store is not written over it")
        for old in (tmp, Path(f"{tmp}-journal")):
            if os.path.lexists(old):
                _check_files(tmp)
                os.unlink(old)               # left by a run killed while it created the store
        columns = ", ".join(f"{name} {sqltype}" for name, sqltype, _ in COLUMNS)
        with contextlib.closing(_open(tmp, create=True, isolation_level=None)) as conn:
            conn.execute("BEGIN")
            conn.execute(f"CREATE TABLE records ({columns})")
            conn.execute("CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO run VALUES ('params_digest', ?)", (digest,))
            _ensure_side_tables(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        os.replace(tmp, path)
        return _open(path)
    except (sqlite3.Error, OSError) as exc:
        for old in (tmp, Path(f"{tmp}-journal")):
            with contextlib.suppress(OSError):
                os.unlink(old)
        raise RunError(f"cannot create the records store {path} ({type(exc).__name__}: {exc}); no store was left "
                       "behind. Free space or fix the cause, then run the same command again (it starts "
                       "afresh), or use another --out.") from None


def connect(path: Path, digest: str) -> sqlite3.Connection:
    """The store `path` for writing this run's rows: opened if it exists (and was written under
    `digest`), created otherwise."""
    if path.exists() and not is_empty_file(path):
        return open_store(path, digest)
    return create_store(path, digest)


def bind_store(path: Path, digest: str) -> None:
    """Upgrade a version-1 store (no digest) to the current layout, bound to `digest`."""
    try:
        with contextlib.closing(_open(path)) as conn, conn:
            conn.execute("CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR REPLACE INTO run VALUES ('params_digest', ?)", (digest,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise RunError(f"cannot write the records store {path} ({exc})") from None


def main_store(out: Path) -> Path:
    return out / "records.sqlite"


def rank_store(out: Path, rank: int) -> Path:
    return out / f"records.rank{rank}.sqlite"


def rank_stores(out: Path) -> list[Path]:
    return sorted(out.glob("records.rank*.sqlite"))


def existing_stores(out: Path) -> list[Path]:
    """The store files of a run folder that hold anything (an empty SQLite file counts as absent)."""
    return [p for p in [main_store(out), *rank_stores(out)] if p.exists() and not is_empty_file(p)]


@contextlib.contextmanager
def _reading(path: Path):
    """Turn an SQLite error met while reading or writing `path` into a `RunError` naming it."""
    try:
        yield
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:
        raise RunError(f"cannot use the records store {path} ({type(exc).__name__}: {exc})") from None


def merge_rank_stores(out: Path, digest: str) -> int:
    """Move the rows of every `records.rank<r>.sqlite` into records.sqlite; returns rows moved.

    Each store is copied in one transaction, then deleted. A row already present is kept (the
    same sample evaluated twice gives the same row), so a merge interrupted after its commit is
    simply finished by the next one. Every store must have been written under `digest`.
    """
    shards = [p for p in rank_stores(out) if p.exists()]
    if not shards:
        return 0
    moved = 0
    conn = connect(main_store(out), digest)
    try:
        for shard in shards:
            if not is_empty_file(shard):
                open_store(shard, digest).close()     # checks it (and rolls back a torn batch)
                with _reading(shard):
                    conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
                    names = ", ".join(NAMES)
                    with conn:
                        new = conn.execute(f"INSERT OR IGNORE INTO records ({names}) "
                                           f"SELECT {names} FROM shard.records").rowcount
                        # the shard's batches go with its rows: none when its rows were merged before
                        # (a merge killed between its commit and the shard's deletion)
                        if new and _has_table(conn, "batches", "shard"):
                            _ensure_side_tables(conn)
                            batch_names = ", ".join(BATCH_NAMES)
                            conn.execute(f"INSERT INTO batches ({batch_names}) "
                                         f"SELECT {batch_names} FROM shard.batches")
                        moved += new
                    conn.execute("DETACH DATABASE shard")
            shard.unlink()
    finally:
        conn.close()
    return moved


def recorded_rows(out: Path, digest: str | None | tuple) -> list[tuple[int, str, int]]:
    """(idx, path, label) of every row in the folder's stores, which must have been written under `digest`."""
    rows: list[tuple[int, str, int]] = []
    for path in existing_stores(out):
        with contextlib.closing(open_store(path, digest)) as conn, _reading(path):
            rows += conn.execute("SELECT idx, path, label FROM records").fetchall()
    return rows


def done_indices(out: Path, digest: str | None | tuple) -> set[int]:
    return {idx for idx, _, _ in recorded_rows(out, digest)}


def write_rows(conn: sqlite3.Connection, rows: list[dict], path: Path, batch: dict | None = None,
               stream: list[tuple[int, int, bytes | None]] | None = None) -> None:
    """All rows of one batch in one transaction (a kill mid-write leaves none of them), with the
    batch's cost (`batch`: the `batches` columns) and, for an online method, its stream rows
    (`stream`: (position, sample index, encoded state update, None where the method did not run)).
    `path` is the store's file, named in the `RunError` a failed write raises."""
    names = ", ".join(NAMES)
    marks = ", ".join("?" for _ in NAMES)
    try:
        with conn:
            if batch is not None or stream:
                _ensure_side_tables(conn)
            conn.executemany(f"INSERT INTO records ({names}) VALUES ({marks})",
                             [tuple(row[name] for name in NAMES) for row in rows])
            if batch is not None:
                conn.execute(f"INSERT INTO batches ({', '.join(BATCH_NAMES)}) "
                             f"VALUES ({', '.join('?' for _ in BATCH_NAMES)})",
                             tuple(batch.get(name) for name in BATCH_NAMES))
            if stream:
                conn.executemany("INSERT INTO stream (pos, idx, state_update) VALUES (?, ?, ?)", stream)
    except sqlite3.Error as exc:
        raise RunError(f"cannot write records to {path} ({type(exc).__name__}: {exc}). The batches before "
                       "this one are kept: fix the cause and run the same command again to resume.") from None


def read_batches(out: Path, digest: str | None | tuple) -> pd.DataFrame:
    """The `batches` rows of a run (all stores, written under `digest`), in the order they were written."""
    frames = []
    for path in existing_stores(out):
        with contextlib.closing(open_store(path, digest)) as conn, _reading(path):
            if _has_table(conn, "batches"):
                frames.append(pd.read_sql_query(f"SELECT {', '.join(BATCH_NAMES)} FROM batches ORDER BY rowid", conn))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({name: [] for name in BATCH_NAMES})


def read_stream(out: Path, digest: str | None | tuple) -> list[tuple[int, int, bytes | None]]:
    """The `stream` rows of an online run (its main store, written under `digest`): (position, sample
    index, state update), by position."""
    path = main_store(out)
    if path not in existing_stores(out):
        return []
    with contextlib.closing(open_store(path, digest)) as conn, _reading(path):
        if not _has_table(conn, "stream"):
            return []
        return [(int(p), int(i), u) for p, i, u in conn.execute("SELECT pos, idx, state_update FROM stream ORDER BY pos")]


def read_rows(out: Path, digest: str | None | tuple) -> pd.DataFrame:
    """Every row of the folder's stores (written under `digest`), decoded, by sample index."""
    frames = []
    for path in existing_stores(out):
        with contextlib.closing(open_store(path, digest)) as conn, _reading(path):
            frames.append(pd.read_sql_query(f"SELECT {', '.join(NAMES)} FROM records", conn))
    if not frames:
        return decode_rows(pd.DataFrame({name: [] for name in NAMES}))
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("idx", keep="first")
    try:
        return decode_rows(rows.sort_values("idx").reset_index(drop=True))
    except (ValueError, TypeError) as exc:
        raise RunError(f"the records in {out} cannot be decoded ({type(exc).__name__}: {exc}); "
                       "a store was altered by hand or damaged") from None
