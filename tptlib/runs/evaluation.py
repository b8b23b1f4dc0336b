"""`evaluate`: a method on a task, one record per sample in a resumable run folder.

The run folder, resume, bad samples and several processes are described in `tptlib.runs`.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..augment import task_views
from ..data.base import CorruptImageError, MissingImageError
from ..engine import Engine
from .concurrency import FolderLock, Ranks
from .errors import RunError
from .params import check_or_write_params, n_expected, run_params
from .store import connect, done_indices, error_row, main_store, merge_rank_stores, rank_store, result_row, write_rows
from .summary import RunResult, load_run

log = logging.getLogger("tptlib.runs")

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8


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
    ranks = Ranks(rank, world_size)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit)
    expected = n_expected(params)

    with ExitStack() as stack:
        stack.enter_context(ranks)
        notes = stack.enter_context(_run_log(out, ranks.rank))
        refusal = None
        if ranks.rank == 0:
            lock = FolderLock(out)
            try:
                lock.acquire()
                stack.callback(lock.release)
                info = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
                        "device": str(clip.device), "command": " ".join(sys.argv)}
                resumed = check_or_write_params(out, params, info)
                notes.info("%s run: %s", "resuming" if resumed else "new", json.dumps(params))
                moved = merge_rank_stores(out)
                if moved:
                    notes.info("merged %d rows left by an earlier multi-process job", moved)
            except RunError as exc:
                refusal = exc
        ranks.share_outcome(refusal)

        done = done_indices(out)
        mine = [i for i in range(expected) if i % ranks.world_size == ranks.rank]
        todo = [i for i in mine if i not in done]
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = main_store(out) if ranks.world_size == 1 else rank_store(out, ranks.rank)
            _evaluate_samples(clip, task, method, store, todo, already=len(mine) - len(todo), total=len(mine),
                              seed=seed, n_views=n_views, batch_size=batch_size, workers=workers,
                              show=_progress_enabled(progress) and ranks.rank == 0)
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", merge_rank_stores(out), ranks.world_size)
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
    conn = connect(store)
    bar = tqdm(total=total, initial=already, disable=not show, unit="img", desc=f"{task.name} {method.name}")
    n_right = n_scored = 0
    try:
        for ok, stacked, errors in loader:
            rows = []
            for i, err in errors:
                log.warning("sample %d: %s (recorded as an error row)", i, err)
                rows.append(error_row(i, *task.samples[i], err))
            if ok:
                results = engine.run_batch(stacked)
                for i, res in zip(ok, results):
                    path, label = task.samples[i]
                    rows.append(result_row(i, str(path), int(label), res))
            write_rows(conn, rows)
            n_scored += sum(r["error"] is None for r in rows)
            n_right += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows))
            if n_scored:
                bar.set_postfix(top1=f"{100 * n_right / n_scored:.1f}%", refresh=False)
    finally:
        bar.close()
        conn.close()
