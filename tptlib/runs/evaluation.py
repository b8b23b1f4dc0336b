"""`evaluate`: a method on a task, one record per sample in a resumable run folder.

`evaluate(plan(...))`, or `evaluate(clip, task, method, out, ...)`, which makes the plan: the checks
are `tptlib.runs.plan`'s, the loop over the samples `tptlib.runs.loop`'s; this module opens the run
folder (start, resume, lock, rank stores) and collects the result. The run folder, resume, bad
samples, several processes, online methods and the feature cache are described in `tptlib.runs`.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from ..files import UnsafeFileError, open_regular
from ..jsonout import dumps
from ..methods.online import decode_update
from .concurrency import FolderLock, Ranks
from .errors import RunError
from .features import FeatureCache
from .folder import open_run
from .loop import blocks, evaluate_samples, progress_enabled
from .plan import RunPlan, plan
from .store import done_indices, main_store, merge_rank_stores, rank_store, read_stream
from .summary import RunResult, load_run

log = logging.getLogger("tptlib.runs")


@contextmanager
def _run_log(out: Path, rank: int):
    """Open out/run.log for the duration of a run; yields the logger of the run's own notes.

    The file receives those notes (start, resume point, summary: INFO, file only) and every
    warning of the `tptlib` loggers (error rows, the engine's out-of-memory back-offs and fp32
    retries), which also reach the console as usual.
    """
    try:
        handler = _QuietHandler(os.fdopen(open_regular(out / "run.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                                          "a", encoding="utf-8"))
    except UnsafeFileError as exc:
        raise RunError(f"the run folder {out} cannot be used: {exc.strerror}, or use another --out") from None
    except OSError as exc:
        raise RunError(f"cannot write {out / 'run.log'} ({exc.strerror or exc}); a run folder must be writable") from None
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
        with suppress(OSError):
            handler.stream.close()


class _QuietHandler(logging.StreamHandler):
    """The run log's handler: a note that cannot be written (a full disk) is dropped without the
    traceback logging would print; the records, written in their own transactions, say what ran."""

    def handleError(self, record) -> None:
        pass


def evaluate(clip, task=None, method=None, out=None, **options) -> RunResult:
    """Evaluate `method` on `task` with `clip`, one record per sample in the run folder `out`; or run
    a `RunPlan` (`evaluate(plan(clip, task, method, out, ...))`, the first argument alone).

    The method's per-dataset defaults and model-dependent settings are resolved first
    (`method.bind`), so the parameters recorded are the ones that ran.

    limit: evaluate only the first `limit` samples of the task (None: all).
    seed: the views of sample i come from a generator seeded by (seed, i).
    stream_seed: an online method sees the samples in a permutation seeded by this (default: `seed`),
        recorded in run.json. Other methods see them in index order (their results do not depend on it).
    feature_cache: a folder where the view features are kept and looked up (`tptlib.runs.features`):
        samples already encoded by any run with the same model, task and seed are not encoded again.
        Default: the environment variable TPTLIB_FEATURE_CACHE if set (the workbook sets it, so that
        the notebooks' runs share one cache), else none.
    n_views: views per sample, view 0 the original (64 in the paper).
    batch_size: samples per engine call; changes speed and memory, not the results (beyond float
        rounding; for one batch size, a sample's record is the same to the bit however the run was
        interrupted, resumed or extended, see `tptlib.runs.loop.blocks`).
    workers: processes that decode images and build views ahead of the engine (torch DataLoader);
        0 builds them in this process. On a GPU, view building is usually the bottleneck.
    progress: show a progress bar (tqdm.auto; also silenced by TQDM_DISABLE=1).
    rank, world_size: this process's shard (default: torchrun's RANK and WORLD_SIZE, else 0 and 1).

    Resumes a partial run with the same parameters, and extends an episodic run to a larger
    `limit`; refuses a folder holding a run with other parameters (`RunMismatchError`), in use by
    another process (`RunLockedError`) or that is not what it says (`RunError`: see
    `tptlib.runs.folder`). Every argument and input is checked before the folder is created or
    touched (`tptlib.runs.plan`). Returns the `RunResult` over all rows of
    the run (all ranks). See the module docstring for the folder layout, resume, bad samples,
    concurrency, online methods and the feature cache.
    """
    if isinstance(clip, RunPlan):
        if task is not None or method is not None or out is not None or options:
            raise TypeError("evaluate(plan) takes the plan alone; its arguments are plan()'s")
        run = clip
    else:
        run = plan(clip, task, method, out, **options)
    info = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(run.clip.device), "command": " ".join(sys.argv)}
    with ExitStack() as stack:
        ranks = stack.enter_context(Ranks(run.rank, run.world_size))
        notes = _open_folder(run, ranks, info, stack)
        done = done_indices(run.out, run.digest)
        if run.stream is None:
            mine = [i for i in range(run.expected) if i % ranks.world_size == ranks.rank]
        else:
            mine = run.stream["order"]
            if set(mine[:len(done)]) != done:
                raise RunError(f"{run.out}: the recorded samples are not the first {len(done)} of the run's stream "
                               f"order (run.json 'stream'), so the online state cannot be rebuilt; start a new folder")
        todo = [i for i in mine if i not in done]
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = main_store(run.out) if ranks.world_size == 1 else rank_store(run.out, ranks.rank)
            replay = _stored_updates(run.out, run.digest, mine[:len(done)]) if run.stream is not None else None
            cache = (None if run.feature_cache is None
                     else FeatureCache(run.feature_cache, run.clip, run.task, run.seed))
            evaluate_samples(run.clip, run.task, run.method, store, run.digest, blocks(mine, done, run.batch_size),
                             already=len(mine) - len(todo), total=len(mine), seed=run.seed, n_views=run.n_views,
                             workers=run.workers, show=progress_enabled(run.progress) and ranks.rank == 0,
                             replay=replay, stream_positions=None if run.stream is None else mine,
                             feature_cache=cache, on_batch=run.on_batch)
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", merge_rank_stores(run.out, run.digest), ranks.world_size)
        ranks.barrier()
        result = load_run(run.out)
        if ranks.rank == 0:
            notes.info("summary: %s", dumps(result.summary))
    return result


def _open_folder(run: RunPlan, ranks: Ranks, info: dict, stack: ExitStack):
    """Start or resume the run folder (rank 0, under the folder lock, which `stack` releases; every
    rank learns of a refusal), and open its log; returns the log's notes."""
    out, refusal, opening, moved, resumed = run.out, None, [], 0, False
    if ranks.rank == 0:
        try:
            resumed = (out / "run.json").exists()
            open_run(out, run.params, run.task, info, write=False)      # refuses before anything is written
            _make_folder(out)
            lock = FolderLock(out)
            lock.acquire()
            stack.callback(lock.release)
            opening = open_run(out, run.params, run.task, info, write=True)
            moved = merge_rank_stores(out, run.digest)
        except RunError as exc:
            refusal = exc
    ranks.share_outcome(refusal)
    notes = stack.enter_context(_run_log(out, ranks.rank))
    if ranks.rank == 0:
        notes.info("%s run: %s", "resuming" if resumed else "new", json.dumps(run.params))
        for note in opening:
            notes.info("%s", note)
        if moved:
            notes.info("merged %d rows left by an earlier multi-process job", moved)
    return notes


def _stored_updates(out: Path, digest: str, prefix: list[int]) -> list[dict]:
    """The state updates of the first samples of an online run's stream, checked against its order."""
    rows = read_stream(out, digest)
    if [(pos, idx) for pos, idx, _ in rows] != list(enumerate(prefix)):
        raise RunError(f"{out}: the stored stream (table 'stream') does not match the recorded samples and the "
                       f"run's order; the online state cannot be rebuilt. Start a new folder.")
    try:
        return [decode_update(blob) for _, _, blob in rows if blob is not None]
    except Exception as exc:          # safetensors' own error types: a damaged or altered blob
        raise RunError(f"{out}: a stored state update (table 'stream') cannot be read ({type(exc).__name__}: "
                       f"{exc}); the online state cannot be rebuilt. Start a new folder.") from None


def _make_folder(out: Path) -> None:
    """Create the run folder, refusing (`RunError`) one that cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run folder {out} ({exc.strerror or exc}); choose a writable --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunError(f"the run folder {out} is not writable; a run writes its records there. "
                       "Choose a writable --out (tpt show reads a finished run without writing).")
