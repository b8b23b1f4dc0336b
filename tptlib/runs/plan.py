"""`plan`: every check of a run, done once before anything is written, and what the run will do.

    run = plan(clip, task, method, out="runs/x", limit=100)   # refuses bad input (ValueError, RunError)
    result = evaluate(run)                                   # the loop: `tptlib.runs.evaluation`

The command line (`tpt eval`) and `evaluate(clip, task, method, out, ...)` both go through `plan`,
so every refusal of a run lives here: the run arguments, the method as it runs on the task
(`method.bind`) and the views it would keep, the model's weights, the task's labels, an online
method shared out among processes; the method's text side is prepared, so that a checkpoint or
file it reads is refused before the run folder exists (a run whose folder already holds every row is
only read back, and prepares nothing). The run folder itself is checked by
`tptlib.runs.folder` when the run starts.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checks import describe_names, integer, nonfinite_numbers, number
from ..clip import check_weights
from ..memory import check_fits
from ..nested import flatten
from .concurrency import Ranks
from .errors import RunError
from .features import check_cache_root
from .folder import check_out_path
from .params import n_expected, params_digest, run_params, stream_order
from .store import done_indices

#: Samples per engine call when `evaluate` is not given a batch size.
DEFAULT_BATCH_SIZE = 8
#: The environment variable that gives `evaluate` a feature cache when the caller passes none.
FEATURE_CACHE_ENV = "TPTLIB_FEATURE_CACHE"
#: the most views per sample and samples per engine call a run accepts (the paper: 64 views)
MAX_VIEWS = MAX_BATCH_SIZE = 1024


@dataclass(frozen=True)
class RunPlan:
    """A run, checked: what `evaluate(plan)` does, and the parameters its records are bound to."""

    clip: object
    task: object
    method: object             # bound to the task and model (`method.bind`): what runs and is recorded
    out: Path
    limit: int | None
    seed: int
    n_views: int
    batch_size: int
    workers: int
    progress: bool
    rank: int
    world_size: int
    feature_cache: str | None
    stream: dict | None        # an online method's order: {"seed", "order"}
    params: dict               # run.json's parameters
    digest: str                # what the records are bound to
    expected: int              # samples the run covers
    #: called before each engine batch with its samples and rows (`tptlib.runs.loop.evaluate_samples`);
    #: raising from it stops the run between batches. Not a parameter of the results.
    on_batch: Callable[[list[int], int], None] | None = None


def plan(clip, task, method, out, *, limit: int | None = None, seed: int = 0, n_views: int = 64,
         batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0, progress: bool = True,
         rank: int | None = None, world_size: int | None = None, stream_seed: int | None = None,
         feature_cache=None, on_batch: Callable[[list[int], int], None] | None = None) -> RunPlan:
    """Check a run of `method` on `task` with `clip` into the folder `out` and say what it will do.

    Refuses (`ValueError`, `CheckpointError`, `RunError`) before any work: see the module docstring.
    The arguments are `evaluate`'s. feature_cache: default the environment variable
    TPTLIB_FEATURE_CACHE when set. on_batch(samples, rows): called before each engine batch with
    the samples it runs and the rows it is given; raising from it (KeyboardInterrupt) interrupts the
    run between batches, as Ctrl-C would.
    """
    out = check_out_path(out)
    check_run_arguments(limit=limit, seed=seed, n_views=n_views, batch_size=batch_size, workers=workers,
                        stream_seed=stream_seed)
    method = method.bind(clip, task)
    ranks = Ranks(rank, world_size)
    if method.online and ranks.world_size > 1:
        raise RunError(f"{method.name} is an online method: each sample's prediction depends on the state the "
                       f"samples before it in the stream left, so its samples cannot be shared out among "
                       f"{ranks.world_size} processes. Run it in one process (without torchrun); several "
                       f"online runs (tasks, stream seeds) can run side by side, one per process.")
    check_run_inputs(clip, task, method, n_views, prepare=False)
    stream = None
    if method.online:        # the order is in run.json, so in the parameter digest the records are bound to
        s_seed = seed if stream_seed is None else stream_seed
        stream = {"seed": s_seed, "order": stream_order(min(limit, len(task)) if limit is not None else len(task),
                                                        s_seed)}
    params = run_params(clip, task, method, seed=seed, n_views=n_views, limit=limit, stream=stream)
    if feature_cache is None:
        feature_cache = os.environ.get(FEATURE_CACHE_ENV) or None
    if feature_cache is not None:
        check_cache_root(feature_cache)         # a folder that cannot hold it: refused before any work
    expected = n_expected(params)
    digest = params_digest(params)
    if not _finished(out, digest, expected):
        # the text side of a run with work to do is prepared now, so that a checkpoint or file it reads
        # is refused before the folder is touched; a finished run only reads its records back
        method.prepare(clip, task.classnames)
    # never more slots than this process has samples: a block of empty slots costs the memory of real ones
    batch_size = max(1, min(batch_size, -(-expected // ranks.world_size)))
    _check_views_fit(clip, batch_size, method.views_used(n_views))
    return RunPlan(clip=clip, task=task, method=method, out=out, limit=limit, seed=seed, n_views=n_views,
                   batch_size=batch_size, workers=workers, progress=progress, rank=ranks.rank,
                   world_size=ranks.world_size, feature_cache=feature_cache, stream=stream, params=params,
                   digest=digest, expected=expected, on_batch=on_batch)


def _finished(out: Path, digest: str, expected: int) -> bool:
    """Whether the folder `out` already holds a row for each of the run's `expected` samples under
    `digest` (evaluate will only read them back). A folder that cannot be read this way is not:
    evaluate's own checks say what is wrong with it."""
    try:
        return out.is_dir() and done_indices(out, digest) >= set(range(expected))
    except (RunError, OSError, sqlite3.Error, ValueError):
        return False


def check_run_arguments(*, limit=None, seed=0, n_views=64, batch_size=DEFAULT_BATCH_SIZE, workers=0,
                        stream_seed=None) -> None:
    """Refuse (`ValueError`) a run argument that is not an integer in its range."""
    if limit is not None:
        integer("limit", limit)
    integer("seed", seed)
    if stream_seed is not None:
        integer("stream_seed", stream_seed)
    integer("n_views", n_views, low=1, high=MAX_VIEWS)
    integer("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE)
    integer("workers", workers)


def check_run_inputs(clip, task, method, n_views: int = 64, prepare: bool = True) -> None:
    """Refuse (`ValueError`, `CheckpointError`) what would make a run's numbers meaningless, before
    any work: weights with a NaN or an inf (or a non-finite temperature), a task whose labels do not
    index its class names, a method parameter that is not finite, a selection ratio that keeps no
    view (`method.check_views`). `method` is the bound one (`method.bind`); with `prepare`, its text
    side is prepared (`method.prepare`, cached), so that a checkpoint or file it reads is refused
    now, not after the run folder exists (`plan` prepares it only for a run with work to do)."""
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
    method.check_views(n_views)
    if prepare:
        method.prepare(clip, task.classnames)


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
