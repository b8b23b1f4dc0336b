"""`evaluate`: a method on a task, one record per sample in a resumable run folder.

The run folder, resume, bad samples, several processes, online methods and the feature cache are
described in `tptlib.runs`.
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
from ..methods.online import decode_update, encode_update
from .concurrency import FolderLock, Ranks
from .errors import RunError
from .features import FeatureCache
from .params import check_or_write_params, n_expected, run_params, stream_order
from .store import (connect, done_indices, error_row, main_store, merge_rank_stores, rank_store, read_stream,
                    result_row, write_rows)
from .summary import RunResult, load_run

log = logging.getLogger("tptlib.runs")

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8
#: The environment variable that gives `evaluate` a feature cache when the caller passes none.
FEATURE_CACHE_ENV = "TPTLIB_FEATURE_CACHE"


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
    """Sample index -> (index, views [V,3,S,S] or None, error text or None). Samples in `cached` (their
    features are in the feature cache) get no views: (index, None, None)."""

    def __init__(self, clip_geometry, task, indices: list[int], seed: int, n_views: int, cached: set | None = None):
        self.clip, self.task, self.indices, self.seed, self.n_views = clip_geometry, task, indices, seed, n_views
        self.cached = cached or set()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        if i in self.cached:
            return i, None, None
        try:
            return i, task_views(self.clip, self.task, i, seed=self.seed, n_views=self.n_views), None
        except (CorruptImageError, MissingImageError) as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]], list[int]]:
    """Loader items -> (indices of the readable samples, in batch order; the views of those that have
    views, stacked `[b, V, 3, S, S]` (None if none); [(index, error)] of the others; the indices
    whose features are cached). Stacked here, in the worker, so that the DataLoader can pin the
    batch for an asynchronous copy to the GPU."""
    ok = [i for i, _, err in batch if err is None]
    with_views = [v for _, v, err in batch if err is None and v is not None]
    views = torch.stack(with_views) if with_views else None
    cached = [i for i, v, err in batch if err is None and v is None]
    return ok, views, [(i, err) for i, _, err in batch if err is not None], cached


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def evaluate(clip, task, method, out, *, limit: int | None = None, seed: int = 0, n_views: int = 64,
             batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0, progress: bool = True,
             rank: int | None = None, world_size: int | None = None, stream_seed: int | None = None,
             feature_cache=None) -> RunResult:
    """Evaluate `method` on `task` with `clip`, one record per sample in the run folder `out`.

    The method's per-dataset defaults are resolved for the task first (`method.for_task`), so the
    parameters recorded are the ones that ran.

    limit: evaluate only the first `limit` samples of the task (None: all).
    seed: the views of sample i come from a generator seeded by (seed, i).
    stream_seed: an online method sees the samples in a permutation seeded by this (default: `seed`),
        recorded in run.json. Other methods see them in index order (their results do not depend on it).
    feature_cache: a folder where the view features are kept and looked up (`tptlib.runs.features`):
        samples already encoded by any run with the same model, task and seed are not encoded again.
        Default: the environment variable TPTLIB_FEATURE_CACHE if set (the workbook sets it, so that
        the notebooks' runs share one cache), else none.
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
    method = method.for_task(task.name)
    if feature_cache is None:
        feature_cache = os.environ.get(FEATURE_CACHE_ENV) or None
    ranks = Ranks(rank, world_size)
    if method.online and ranks.world_size > 1:
        raise RunError(f"{method.name} is an online method: each sample's prediction depends on the state the "
                       f"samples before it in the stream left, so its samples cannot be shared out among "
                       f"{ranks.world_size} processes. Run it in one process (without torchrun); several "
                       f"online runs (tasks, stream seeds) can run side by side, one per process.")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    size = len(task)
    stream = None
    if method.online:
        s_seed = seed if stream_seed is None else stream_seed
        stream = {"seed": s_seed, "order": stream_order(size if limit is None else min(limit, size), s_seed)}
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit, stream=stream)
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
        if stream is None:
            mine = [i for i in range(expected) if i % ranks.world_size == ranks.rank]
            todo = [i for i in mine if i not in done]
        else:
            mine = stream["order"]
            todo = mine[len(done):]
            if set(mine[:len(done)]) != done:
                raise RunError(f"{out}: the recorded samples are not the first {len(done)} of the run's stream "
                               f"order (run.json 'stream'), so the online state cannot be rebuilt; start a new folder")
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = main_store(out) if ranks.world_size == 1 else rank_store(out, ranks.rank)
            _evaluate_samples(clip, task, method, store, todo, already=len(mine) - len(todo), total=len(mine),
                              seed=seed, n_views=n_views, batch_size=batch_size, workers=workers,
                              show=_progress_enabled(progress) and ranks.rank == 0,
                              replay=_stored_updates(out, mine[:len(done)]) if stream is not None else None,
                              feature_cache=None if feature_cache is None else FeatureCache(feature_cache, clip, task, seed))
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", merge_rank_stores(out), ranks.world_size)
        ranks.barrier()
        result = load_run(out)
        if ranks.rank == 0:
            notes.info("summary: %s", json.dumps(result.summary))
    return result


def _stored_updates(out: Path, prefix: list[int]) -> list[dict]:
    """The state updates of the first samples of an online run's stream, checked against its order."""
    rows = read_stream(out)
    if [(pos, idx) for pos, idx, _ in rows] != list(enumerate(prefix)):
        raise RunError(f"{out}: the stored stream (table 'stream') does not match the recorded samples and the "
                       f"run's order; the online state cannot be rebuilt. Start a new folder.")
    return [decode_update(blob) for _, _, blob in rows if blob is not None]


def _evaluate_samples(clip, task, method, store: Path, todo: list[int], *, already: int, total: int,
                      seed: int, n_views: int, batch_size: int, workers: int, show: bool,
                      replay: list[dict] | None = None, feature_cache: FeatureCache | None = None) -> None:
    """Run the engine over `todo` (in that order) and write each batch's rows to `store` in one
    transaction, with the batch's cost and, for an online method, each sample's state update."""
    from tqdm.auto import tqdm

    engine = Engine(clip, method, task.classnames, batch_size=batch_size)
    if replay:
        engine.replay([{k: v.to(clip.device) for k, v in u.items()} for u in replay])
    n_views = method.views_used(n_views)   # a fixed classifier reads view 0 alone: no augmented views to build
    cached = feature_cache.available(todo, n_views) if feature_cache is not None else set()
    views = _Views(_ViewGeometry(clip.image_size, tuple(clip.mean), tuple(clip.std)), task, todo, seed, n_views,
                   cached)
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                         shuffle=False, pin_memory=clip.device.type == "cuda")
    conn = connect(store)
    bar = tqdm(total=total, initial=already, disable=not show, unit="img", desc=f"{task.name} {method.name}")
    n_right = n_scored = 0
    position = already
    try:
        for ok, stacked, errors, from_cache in loader:
            rows, updates = [], {}
            for i, err in errors:
                log.warning("sample %d: %s (recorded as an error row)", i, err)
                rows.append(error_row(i, *task.samples[i], err))
            batch = None
            if ok:
                if feature_cache is None:
                    results = engine.run_batch(stacked)
                else:
                    results = _run_with_cache(engine, feature_cache, ok, stacked, from_cache, n_views)
                batch = {"first_idx": ok[0], "device": str(clip.device), **engine.last_batch}
                batch["cached_features"] = len(from_cache) / len(ok) if feature_cache is not None else 0.0
                for i, res in zip(ok, results):
                    path, label = task.samples[i]
                    rows.append(result_row(i, str(path), int(label), res))
                    updates[i] = res["update"]
            stream = None
            if method.online:
                in_order = [i for i in todo[position - already:position - already + len(rows)]]
                stream = [(position + k, i, None if updates.get(i) is None else encode_update(updates[i]))
                          for k, i in enumerate(in_order)]
            write_rows(conn, rows, batch=batch, stream=stream)
            position += len(rows)
            n_scored += sum(r["error"] is None for r in rows)
            n_right += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows))
            if n_scored:
                bar.set_postfix(top1=f"{100 * n_right / n_scored:.1f}%", refresh=False)
    finally:
        bar.close()
        conn.close()


def _run_with_cache(engine, cache: FeatureCache, ok: list[int], stacked, from_cache: list[int], n_views: int):
    """The batch's results from view features: those of `from_cache` read from the cache, the others
    (whose views are `stacked`, in batch order) encoded now and stored."""
    fresh = [i for i in ok if i not in set(from_cache)]
    seconds = {}
    feats = {}
    peak = 0
    if fresh:
        new, tower_seconds, peak = engine.encode(stacked.to(engine.clip.device, non_blocking=True))
        cache.store(fresh, new, tower_seconds, peak)
        for b, i in enumerate(fresh):
            feats[i], seconds[i] = new[b], tower_seconds / len(fresh)
    if from_cache:
        old, old_seconds, old_peak = cache.load(from_cache, n_views, device=engine.clip.device)
        peak = max(peak, old_peak)
        for b, i in enumerate(from_cache):
            feats[i], seconds[i] = old[b], old_seconds[b]
    return engine.run_features(torch.stack([feats[i] for i in ok]), [seconds[i] for i in ok], peak)
