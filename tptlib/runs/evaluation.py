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
from ..checks import count, describe_names, nonfinite_numbers, number
from ..clip import check_weights
from ..data.base import CorruptImageError, MissingImageError
from ..engine import Engine
from ..nested import flatten
from ..objectives import n_selected
from .concurrency import FolderLock, Ranks
from .errors import RunError
from .folder import check_out_path, open_run
from .params import n_expected, params_digest, run_params
from .store import (NONFINITE, connect, done_indices, error_row, main_store, merge_rank_stores, rank_store,
                    result_row, write_rows)
from .summary import RunResult, load_run

log = logging.getLogger("tptlib.runs")

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8
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
        handler = logging.FileHandler(out / "run.log")
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
    and (each sample's result depending only on its own row) is computed to the same bits."""
    blocks = []
    for start in range(0, len(mine), batch_size):
        block = [None if i in done else i for i in mine[start:start + batch_size]]
        if any(i is not None for i in block):
            blocks.append(block + [None] * (batch_size - len(block)))
    return blocks


class _Views(torch.utils.data.Dataset):
    """Block k -> (its slots' sample indices (None: empty), their views stacked `[B, V, 3, S, S]`
    (None if no image of the block was readable), {index: error} of the unreadable ones). An
    empty slot or an unreadable image runs zeros, so that the batch keeps its shape. Stacked here,
    in the worker, so that the DataLoader can pin the batch for an asynchronous copy to the GPU."""

    def __init__(self, clip_geometry, task, blocks: list[list[int | None]], seed: int, n_views: int):
        self.clip, self.task, self.blocks, self.seed, self.n_views = clip_geometry, task, blocks, seed, n_views

    def __len__(self) -> int:
        return len(self.blocks)

    def _views(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            return task_views(self.clip, self.task, i, seed=self.seed, n_views=self.n_views), None
        except (CorruptImageError, MissingImageError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def __getitem__(self, k: int):
        slots = self.blocks[k]
        made = {i: self._views(i) for i in slots if i is not None}
        errors = {i: err for i, (_, err) in made.items() if err is not None}
        readable = [views for views, err in made.values() if err is None]
        if not readable:
            return slots, None, errors
        zeros = torch.zeros_like(readable[0])
        stacked = torch.stack([zeros if i is None or i in errors else made[i][0] for i in slots])
        return slots, stacked, errors


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def check_run_arguments(*, limit=None, seed=0, n_views=64, batch_size=DEFAULT_BATCH_SIZE, workers=0) -> None:
    """Refuse (`ValueError`) a run argument that is not an integer in its range."""
    if limit is not None:
        count("limit", limit)
    count("seed", seed)
    count("n_views", n_views, low=1, high=MAX_VIEWS)
    count("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE)
    count("workers", workers)


def check_run_inputs(clip, task, method, n_views: int = 64) -> None:
    """Refuse (`ValueError`, `CheckpointError`) what would make a run's numbers meaningless, before
    any work: weights with a NaN or an inf (or a non-finite temperature), a task whose labels do not
    index its class names, a method parameter that is not finite, a selection ratio that keeps no
    view. Prepares the method's text side for the task (`method.prepare`, cached), so that a
    checkpoint it reads is refused now, not after the run folder exists."""
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
    if method.tunes and getattr(method, "selection_p", None) is not None:
        n_selected(n_views, method.selection_p)
    method.prepare(clip, task.classnames)


def evaluate(clip, task, method, out, *, limit: int | None = None, seed: int = 0, n_views: int = 64,
             batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0, progress: bool = True,
             rank: int | None = None, world_size: int | None = None) -> RunResult:
    """Evaluate `method` on `task` with `clip`, one record per sample in the run folder `out`.

    limit: evaluate only the first `limit` samples of the task (None: all).
    seed: the views of sample i come from a generator seeded by (seed, i).
    n_views: views per sample, view 0 the original (64 in the paper).
    batch_size: samples per engine call; changes speed and memory, not the results (beyond float
        rounding; for one batch size, a sample's record is the same to the bit however the run was
        interrupted, resumed or extended, see `_blocks`).
    workers: processes that decode images and build views ahead of the engine (torch DataLoader);
        0 builds them in this process. On a GPU, view building is usually the bottleneck.
    progress: show a progress bar (tqdm.auto; also silenced by TQDM_DISABLE=1).
    rank, world_size: this process's shard (default: torchrun's RANK and WORLD_SIZE, else 0 and 1).

    Resumes a partial run with the same parameters, and extends a run to a larger `limit`; refuses
    a folder holding a run with other parameters (`RunMismatchError`), in use by another process
    (`RunLockedError`) or that is not what it says (`RunError`: see `tptlib.runs.folder`). Every
    argument and input is checked before the folder is created or touched (`check_run_arguments`,
    `check_run_inputs`). Returns the `RunResult` over all rows of the run (all ranks). See the
    module docstring for the folder layout, resume, bad samples and concurrency.
    """
    out = check_out_path(out)
    check_run_arguments(limit=limit, seed=seed, n_views=n_views, batch_size=batch_size, workers=workers)
    ranks = Ranks(rank, world_size)
    check_run_inputs(clip, task, method, n_views)
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit)
    digest, expected = params_digest(params), n_expected(params)
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
        mine = [i for i in range(expected) if i % ranks.world_size == ranks.rank]
        todo = [i for i in mine if i not in done]
        notes.info("%d of this process's %d samples already recorded; %d to evaluate",
                   len(mine) - len(todo), len(mine), len(todo))
        if todo:
            store = main_store(out) if ranks.world_size == 1 else rank_store(out, ranks.rank)
            _evaluate_samples(clip, task, method, store, digest, _blocks(mine, done, batch_size),
                              already=len(mine) - len(todo), total=len(mine), seed=seed, n_views=n_views,
                              workers=workers, show=_progress_enabled(progress) and ranks.rank == 0)
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            notes.info("merged %d rows from %d processes", merge_rank_stores(out, digest), ranks.world_size)
        ranks.barrier()
        result = load_run(out)
        if ranks.rank == 0:
            notes.info("summary: %s", json.dumps(result.summary))
    return result


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
                      already: int, total: int, seed: int, n_views: int, workers: int, show: bool) -> None:
    """Run the engine over `blocks` (see `_blocks`) and write each one's rows to `store` in one transaction.

    A sample whose image cannot be read, whose views are not finite, or whose result holds a
    non-finite logit, loss or gradient gets an error row saying why; the others are scored."""
    from tqdm.auto import tqdm

    engine = Engine(clip, method, task.classnames, batch_size=len(blocks[0]))
    if not method.tunes:
        n_views = 1         # a fixed classifier predicts view 0 alone: no augmented views to build or encode
    views = _Views(_ViewGeometry(clip.image_size, tuple(clip.mean), tuple(clip.std)), task, blocks, seed, n_views)
    loader = torch.utils.data.DataLoader(views, batch_size=None, num_workers=workers, shuffle=False,
                                         pin_memory=clip.device.type == "cuda")
    conn = connect(store, digest)
    bar = tqdm(total=total, initial=already, disable=not show, unit="img", desc=f"{task.name} {method.name}")
    n_right = n_scored = 0
    try:
        for slots, stacked, errors in loader:
            if stacked is not None:           # views with a NaN or an inf are not scored (their slot runs zeros)
                finite = torch.isfinite(stacked.flatten(1)).all(1).tolist()
                for k, i in enumerate(slots):
                    if i is not None and i not in errors and not finite[k]:
                        errors[i] = f"{NONFINITE}: the views of the image are not finite"
                        stacked[k] = 0.0
            run = [i for i in slots if i is not None and i not in errors]
            rows = []
            for i, res in zip(slots, engine.run_batch(stacked) if run else []):
                if i is None or i in errors:
                    continue
                res["seconds"] *= len(slots) / len(run)           # the batch's time over the samples it had
                if (reason := _nonfinite_reason(res)) is not None:
                    errors[i] = reason
                else:
                    path, label = task.samples[i]
                    rows.append(result_row(i, str(path), int(label), res))
            for i, err in errors.items():
                log.warning("sample %d: %s (recorded as an error row)", i, err)
                rows.append(error_row(i, *task.samples[i], err))
            write_rows(conn, rows, store)
            n_scored += sum(r["error"] is None for r in rows)
            n_right += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows))
            if n_scored:
                bar.set_postfix(top1=f"{100 * n_right / n_scored:.1f}%", refresh=False)
    finally:
        bar.close()
        conn.close()
