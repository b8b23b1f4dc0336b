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
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from ..augment import task_views
from ..checks import count, describe_names, nonfinite_numbers, number
from ..clip import check_weights
from ..data.base import CorruptImageError, MissingImageError
from ..engine import Engine
from ..files import UnsafeFileError, open_regular
from ..jsonout import dumps
from ..memory import check_fits
from ..methods.online import decode_update, encode_update
from ..nested import flatten
from ..objectives import n_selected
from .concurrency import FolderLock, Ranks
from .errors import RunError
from .features import FeatureCache, check_cache_root
from .folder import check_out_path, open_run
from .params import n_expected, params_digest, run_params, stream_order
from .store import (NONFINITE, connect, done_indices, error_row, main_store, merge_rank_stores, rank_store,
                    read_stream, result_row, write_rows)
from .summary import RunResult, load_run

log = logging.getLogger("tptlib.runs")

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8
#: The environment variable that gives `evaluate` a feature cache when the caller passes none.
FEATURE_CACHE_ENV = "TPTLIB_FEATURE_CACHE"
#: the most views per sample and samples per engine call a run accepts (the paper: 64 views)
MAX_VIEWS = MAX_BATCH_SIZE = 1024


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


@dataclass(frozen=True)
class _ViewGeometry:
    """What `task_views` reads from a Clip: sent to loader workers instead of the model."""

    image_size: int
    mean: tuple
    std: tuple


def _blocks(mine: list[int], done: set[int], batch_size: int) -> list[list[int | None]]:
    """This process's samples as the engine runs them: block k is always `mine[k*B:(k+1)*B]`, B the
    batch size, with a sample already recorded, and the end of the last block, as an empty slot
    (None); blocks with nothing to evaluate are left out. A sample therefore always takes the
    same place in a batch of the same shape, however the run was resumed or its limit extended,
    and (each sample's result depending only on its own row) is computed to the same bits.

    For an online method `mine` is the run's stream order, so the blocks are aligned to stream
    positions; such a run resumes only after a prefix of its stream, and its method sees the
    samples of a block alone, in order, without the empty slots (see `_run_block`)."""
    blocks = []
    for start in range(0, len(mine), batch_size):
        block = [None if i in done else i for i in mine[start:start + batch_size]]
        if any(i is not None for i in block):
            blocks.append(block + [None] * (batch_size - len(block)))
    return blocks


class _Views(torch.utils.data.Dataset):
    """Block k -> (its slots' sample indices (None: empty), their views stacked `[B, V, 3, S, S]`
    (None if no image of the block was read), {index: error} of the unreadable ones, the indices
    whose features are in the feature cache). An empty slot, an unreadable image or a sample whose
    features are cached (its image is not read) runs zeros, so that the batch keeps its shape.
    Stacked here, in the worker, so that the DataLoader can pin the batch for an asynchronous copy
    to the GPU."""

    def __init__(self, clip_geometry, task, blocks: list[list[int | None]], seed: int, n_views: int,
                 cached: set | None = None):
        self.clip, self.task, self.blocks, self.seed, self.n_views = clip_geometry, task, blocks, seed, n_views
        self.cached = cached or set()

    def __len__(self) -> int:
        return len(self.blocks)

    def _views(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            return task_views(self.clip, self.task, i, seed=self.seed, n_views=self.n_views), None
        except (CorruptImageError, MissingImageError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def __getitem__(self, k: int):
        slots = self.blocks[k]
        cached = [i for i in slots if i is not None and i in self.cached]
        made = {i: self._views(i) for i in slots if i is not None and i not in self.cached}
        errors = {i: err for i, (_, err) in made.items() if err is not None}
        readable = [views for views, err in made.values() if err is None]
        if not readable:
            return slots, None, errors, cached
        zeros = torch.zeros_like(readable[0])
        stacked = torch.stack([made[i][0] if i in made and i not in errors else zeros for i in slots])
        return slots, stacked, errors, cached


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def check_run_arguments(*, limit=None, seed=0, n_views=64, batch_size=DEFAULT_BATCH_SIZE, workers=0,
                        stream_seed=None) -> None:
    """Refuse (`ValueError`) a run argument that is not an integer in its range."""
    if limit is not None:
        count("limit", limit)
    count("seed", seed)
    if stream_seed is not None:
        count("stream_seed", stream_seed)
    count("n_views", n_views, low=1, high=MAX_VIEWS)
    count("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE)
    count("workers", workers)


def check_run_inputs(clip, task, method, n_views: int = 64) -> None:
    """Refuse (`ValueError`, `CheckpointError`) what would make a run's numbers meaningless, before
    any work: weights with a NaN or an inf (or a non-finite temperature), a task whose labels do not
    index its class names, a method parameter that is not finite, a selection ratio that keeps no
    view. Checks the method as it runs on the task (`method.for_task`) and prepares its text side
    (`method.prepare`, cached), so that a checkpoint or file it reads is refused now, not after the
    run folder exists."""
    method = method.for_task(task.name)
    check_weights(clip.model, f"the model {clip.name} ({clip.weights_file or clip.pretrained or 'random weights'})")
    for k, (mean, std) in enumerate(zip(clip.mean, clip.std)):
        number(f"clip.mean[{k}]", mean)
        number(f"clip.std[{k}]", std, low=0.0, low_open=True)
    number(f"task {task.name}: min_crop_scale", task.min_crop_scale, low=0.0, low_open=True, high=1.0)
    if not task.classnames:
        raise ValueError(f"task {task.name} has no class names")
    bad = [(path, label) for path, label in task.samples
           if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(task.classnames)]
    if bad:
        raise ValueError(f"task {task.name}: {len(bad)} samples have a label that is not an integer in "
                         f"0..{len(task.classnames) - 1}, e.g. {bad[0]}")
    if not_finite := nonfinite_numbers(flatten(method.config())):
        raise ValueError(f"method {method.name}: {describe_names(not_finite)} must be finite; "
                         f"got {', '.join(repr(flatten(method.config())[k]) for k in not_finite[:5])}")
    used = method.views_used(n_views)
    if getattr(method, "selection_p", None) is not None and (method.tunes or used > 1):
        n_selected(used, method.selection_p)
    method.prepare(clip, task.classnames)


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
    batch_size: samples per engine call, at most the run's samples (per process); changes speed and
        memory, not the results (beyond float rounding; for one batch size, a sample's record is the
        same to the bit however the run was interrupted, resumed or extended from a run of at least
        that many samples, see `_blocks`). A block whose views cannot fit in memory is refused
        (`RunError`, with the size it would need) before any is built.
    workers: processes that decode images and build views ahead of the engine (torch DataLoader);
        0 builds them in this process. On a GPU, view building is usually the bottleneck.
    progress: show a progress bar (tqdm.auto; also silenced by TQDM_DISABLE=1).
    rank, world_size: this process's shard (default: torchrun's RANK and WORLD_SIZE, else 0 and 1).

    Resumes a partial run with the same parameters, and extends an episodic run to a larger
    `limit`; refuses a folder holding a run with other parameters (`RunMismatchError`), in use by
    another process (`RunLockedError`) or that is not what it says (`RunError`: see
    `tptlib.runs.folder`). Every argument and input is checked before the folder is created or
    touched (`check_run_arguments`, `check_run_inputs`). Returns the `RunResult` over all rows of
    the run (all ranks). See the module docstring for the folder layout, resume, bad samples,
    concurrency, online methods and the feature cache.
    """
    out = check_out_path(out)
    check_run_arguments(limit=limit, seed=seed, n_views=n_views, batch_size=batch_size, workers=workers,
                        stream_seed=stream_seed)
    method = method.for_task(task.name)
    if feature_cache is None:
        feature_cache = os.environ.get(FEATURE_CACHE_ENV) or None
    if feature_cache is not None:
        check_cache_root(feature_cache)         # a folder that cannot hold it: refused before any work
    ranks = Ranks(rank, world_size)
    if method.online and ranks.world_size > 1:
        raise RunError(f"{method.name} is an online method: each sample's prediction depends on the state the "
                       f"samples before it in the stream left, so its samples cannot be shared out among "
                       f"{ranks.world_size} processes. Run it in one process (without torchrun); several "
                       f"online runs (tasks, stream seeds) can run side by side, one per process.")
    check_run_inputs(clip, task, method, n_views)
    stream = None
    if method.online:        # the order is in run.json, so in the parameter digest the records are bound to
        s_seed = seed if stream_seed is None else stream_seed
        stream = {"seed": s_seed, "order": stream_order(min(limit, len(task)) if limit is not None else len(task),
                                                        s_seed)}
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit, stream=stream)
    digest, expected = params_digest(params), n_expected(params)
    # never more slots than this process has samples: a block of empty slots costs the memory of real ones
    block = max(1, min(batch_size, -(-expected // ranks.world_size)))
    _check_views_fit(clip, block, method.views_used(n_views))
    info = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(clip.device), "command": " ".join(sys.argv)}

    with ExitStack() as stack:
        stack.enter_context(ranks)
        refusal, opening, moved = None, [], 0
        if ranks.rank == 0:
            try:
                resumed = (out / "run.json").exists()
                open_run(out, params, task, info, write=False)      # refuses before anything is written
                _make_folder(out)
                lock = FolderLock(out)
                lock.acquire()
                stack.callback(lock.release)
                opening = open_run(out, params, task, info, write=True)
                moved = merge_rank_stores(out, digest)
            except RunError as exc:
                refusal = exc
        ranks.share_outcome(refusal)
        notes = stack.enter_context(_run_log(out, ranks.rank))
        if ranks.rank == 0:
            notes.info("%s run: %s", "resuming" if resumed else "new", json.dumps(params))
            for note in opening:
                notes.info("%s", note)
            if moved:
                notes.info("merged %d rows left by an earlier multi-process job", moved)

        done = done_indices(out, digest)
        if stream is None:
            mine = [i for i in range(expected) if i % ranks.world_size == ranks.rank]
        else:
            mine = stream["order"]
            if set(mine[:len(done)]) != done:
                raise RunError(f"{out}: the recorded samples are not the first {len(done)} of the run's stream "
                               f"order (run.json 'stream'), so the online state cannot be rebuilt; start a new folder")
        todo = [i for i in mine if i not in done]
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = main_store(out) if ranks.world_size == 1 else rank_store(out, ranks.rank)
            replay = _stored_updates(out, digest, mine[:len(done)]) if stream is not None else None
            cache = None if feature_cache is None else FeatureCache(feature_cache, clip, task, seed)
            _evaluate_samples(clip, task, method, store, digest, _blocks(mine, done, block),
                              already=len(mine) - len(todo), total=len(mine), seed=seed, n_views=n_views,
                              workers=workers, show=_progress_enabled(progress) and ranks.rank == 0,
                              replay=replay, stream_positions=None if stream is None else mine,
                              feature_cache=cache)
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", merge_rank_stores(out, digest), ranks.world_size)
        ranks.barrier()
        result = load_run(out)
        if ranks.rank == 0:
            notes.info("summary: %s", dumps(result.summary))
    return result


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


def _check_views_fit(clip, block: int, n_views: int) -> None:
    """Refuse (`RunError`) a block whose views cannot fit in memory, before any is built: its samples'
    views and their stack (float32) on the CPU, and the stack on the model's device."""
    need = block * n_views * 3 * clip.image_size ** 2 * 4
    what = f"a block of {block} samples x {n_views} views of {clip.image_size}x{clip.image_size} px"
    try:
        check_fits(what, 2 * need, torch.device("cpu"), "lower --batch-size (or --views)")
        if clip.device.type != "cpu":
            check_fits(what, need, clip.device, "lower --batch-size (or --views)")
    except MemoryError as exc:
        raise RunError(str(exc)) from None


def _make_folder(out: Path) -> None:
    """Create the run folder, refusing (`RunError`) one that cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run folder {out} ({exc.strerror or exc}); choose a writable --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunError(f"the run folder {out} is not writable; a run writes its records there. "
                       "Choose a writable --out (tpt show reads a finished run without writing).")


def _nonfinite_reason(res: dict) -> str | None:
    """Why an engine result cannot be scored (a non-finite logit, loss or gradient), or None."""
    for key, what in (("logits", "view 0's logits after adaptation"), ("logits_before", "view 0's logits before it")):
        values = res[key]
        if not bool(torch.isfinite(values).all()):
            n = int((~torch.isfinite(values)).sum())
            return f"{NONFINITE}: {what} are not finite (NaN or inf in {n} of {values.numel()} classes)"
    if res.get("nonfinite"):
        return (f"{NONFINITE}: the loss or its gradient was not finite at a tuning step"
                + (" (in fp32 too)" if res.get("fp32_retry") else ""))
    return None


def _evaluate_samples(clip, task, method, store: Path, digest: str, blocks: list[list[int | None]], *,
                      already: int, total: int, seed: int, n_views: int, workers: int, show: bool,
                      replay: list[dict] | None = None, stream_positions: list[int] | None = None,
                      feature_cache: FeatureCache | None = None) -> None:
    """Run the engine over `blocks` (see `_blocks`) and write each one's rows to `store` in one
    transaction, with the block's cost (table `batches`) and, for an online method, each sample's
    stream position and state update (table `stream`; `stream_positions`: the stream order).

    A sample whose image cannot be read, whose views are not finite, or whose result holds a
    non-finite logit, loss or gradient gets an error row saying why; the others are scored."""
    from tqdm.auto import tqdm

    engine = Engine(clip, method, task.classnames, batch_size=len(blocks[0]))
    if replay:
        engine.replay([{k: v.to(clip.device) for k, v in u.items()} for u in replay])
    n_views = method.views_used(n_views)   # a fixed classifier reads view 0 alone: no augmented views to build
    todo = [i for block in blocks for i in block if i is not None]
    cached = feature_cache.available(todo, n_views) if feature_cache is not None else set()
    views = _Views(_ViewGeometry(clip.image_size, tuple(clip.mean), tuple(clip.std)), task, blocks, seed, n_views,
                   cached)
    loader = torch.utils.data.DataLoader(views, batch_size=None, num_workers=workers, shuffle=False,
                                         pin_memory=clip.device.type == "cuda")
    stream_pos = None if stream_positions is None else {i: p for p, i in enumerate(stream_positions)}
    conn = connect(store, digest)
    bar = tqdm(total=total, initial=already, disable=not show, unit="img", desc=f"{task.name} {method.name}")
    n_right = n_scored = 0
    try:
        for slots, stacked, errors, from_cache in loader:
            if stacked is not None:           # views with a NaN or an inf are not scored (their slot runs zeros)
                finite = torch.isfinite(stacked.flatten(1)).all(1).tolist()
                for k, i in enumerate(slots):
                    if i is not None and i not in errors and i not in from_cache and not finite[k]:
                        errors[i] = f"{NONFINITE}: the views of the image are not finite"
                        stacked[k] = 0.0
            run = [i for i in slots if i is not None and i not in errors]
            rows, updates, batch = [], {}, None
            if run:
                results = _run_block(engine, feature_cache, slots, stacked, run, from_cache, n_views)
                batch = {"first_idx": run[0], "device": str(clip.device), **engine.last_batch, "n": len(run),
                         "cached_features": (sum(i in from_cache for i in run) / len(run)
                                             if feature_cache is not None else 0.0)}
                for i in run:
                    res = results[i]
                    updates[i] = res.get("update")
                    if (reason := _nonfinite_reason(res)) is not None:
                        errors[i] = reason
                    else:
                        path, label = task.samples[i]
                        rows.append(result_row(i, str(path), int(label), res))
            for i, err in errors.items():
                log.warning("sample %d: %s (recorded as an error row)", i, err)
                rows.append(error_row(i, *task.samples[i], err))
            stream = None
            if stream_pos is not None:
                # every sample of the block in stream order, with the update the method applied to its
                # state (None where the method did not run): a replay rebuilds the state it went on with
                stream = [(stream_pos[i], i, None if updates.get(i) is None else encode_update(updates[i]))
                          for i in slots if i is not None]
            write_rows(conn, rows, store, batch=batch, stream=stream)
            n_scored += sum(r["error"] is None for r in rows)
            n_right += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows))
            if n_scored:
                bar.set_postfix(top1=f"{100 * n_right / n_scored:.1f}%", refresh=False)
    finally:
        bar.close()
        conn.close()


def _run_block(engine, cache: FeatureCache | None, slots: list[int | None], stacked: torch.Tensor | None,
               run: list[int], from_cache: list[int], n_views: int) -> dict[int, dict]:
    """The engine's results for the samples `run` of a block, by sample index, each with its own share
    of the engine time in `seconds` (and `engine.last_batch` the block's cost).

    An episodic method runs on the whole block (`stacked`, `[B, V, 3, S, S]`, zeros in the slots
    that are empty or unreadable), the empty slots included (their results are dropped), so that a
    sample's record does not depend on which other samples of its block were run (index-aligned
    blocks, see `_blocks`). An online method runs on the samples of `run` alone, in stream order:
    an empty slot must not enter its state. Its records are still the same whatever the resume
    point: each block's rows are written in one transaction, so a run stops after whole blocks of
    its stream, and with the same batch size a resumed run's blocks are those of an uninterrupted
    run.

    With a feature cache, the samples of `from_cache` are read from it (their slots in `stacked`
    are zeros) and the others are encoded with the whole block, then stored; the method runs on the
    features as above (an empty slot of an episodic block runs a copy of a sample's features)."""
    k_of = {i: k for k, i in enumerate(slots) if i is not None}
    online = engine.method.online
    if cache is None:
        if online:
            rows = torch.tensor([k_of[i] for i in run])
            results = dict(zip(run, engine.run_batch(stacked[rows])))
        else:
            results = {i: res for i, res in zip(slots, engine.run_batch(stacked)) if i in run}
    else:
        feats, seconds, peak = [None] * len(slots), [0.0] * len(slots), 0
        fresh = [i for i in run if i not in from_cache]
        if fresh:
            new, tower_seconds, peak = engine.encode(stacked.to(engine.clip.device, non_blocking=True))
            cache.store(fresh, new[[k_of[i] for i in fresh]], tower_seconds, peak)
            for i in fresh:
                feats[k_of[i]], seconds[k_of[i]] = new[k_of[i]], tower_seconds / len(fresh)
        old = [i for i in run if i in from_cache]
        if old:
            loaded, old_seconds, old_peak = cache.load(old, n_views, device=engine.clip.device)
            peak = max(peak, old_peak)
            for b, i in enumerate(old):
                feats[k_of[i]], seconds[k_of[i]] = loaded[b], old_seconds[b]
        if online:
            ks = [k_of[i] for i in run]
            results = dict(zip(run, engine.run_features(torch.stack([feats[k] for k in ks]),
                                                        [seconds[k] for k in ks], peak)))
        else:
            filler = feats[k_of[run[0]]]          # an empty slot runs a copy of a sample's features
            block = torch.stack([filler if f is None else f for f in feats])
            results = {i: res for i, res in zip(slots, engine.run_features(block, seconds, peak)) if i in run}
    n_ran = engine.last_batch["n"]
    for res in results.values():              # the engine shared the time over the rows it ran
        res["seconds"] *= n_ran / len(run)
    return results
