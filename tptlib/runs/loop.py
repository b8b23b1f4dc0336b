"""The loop of a run: its samples in index-aligned blocks, views built ahead (DataLoader workers), the
engine over each block, and each block's rows, cost and stream updates written in one transaction.
`tptlib.runs.evaluation.evaluate` opens the run folder and hands the blocks here."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..augment import task_views
from ..data.base import CorruptImageError, MissingImageError
from ..engine import Engine
from ..meter import Meter
from ..methods.online import encode_update
from .features import FeatureCache
from .rows import NONFINITE, error_row, result_row
from .source import FeatureSource
from .store import connect, write_rows

log = logging.getLogger("tptlib.runs")


@dataclass(frozen=True)
class _ViewGeometry:
    """What `task_views` reads from a Clip: sent to loader workers instead of the model."""

    image_size: int
    mean: tuple
    std: tuple


def blocks(mine: list[int], done: set[int], batch_size: int) -> list[list[int | None]]:
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


def progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


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


def evaluate_samples(clip, task, method, store: Path, digest: str, blocks: list[list[int | None]], *,
                      already: int, total: int, seed: int, n_views: int, workers: int, show: bool,
                      replay: list[dict] | None = None, stream_positions: list[int] | None = None,
                      feature_cache: FeatureCache | None = None,
                      on_batch: Callable[[list[int], int], None] | None = None) -> None:
    """Run the engine over `blocks` (see `blocks`) and write each one's rows to `store` in one
    transaction, with the block's cost (table `batches`) and, for an online method, each sample's
    stream position and state update (table `stream`; `stream_positions`: the stream order).

    A sample whose image cannot be read, whose views are not finite, or whose result holds a
    non-finite logit, loss or gradient gets an error row saying why; the others are scored.
    on_batch(samples, rows): called before each engine batch with the samples it runs and the rows
    it is given (empty slots included); raising from it stops the run between batches."""
    from tqdm.auto import tqdm

    current: list[int] = []               # the samples of the block the engine is given
    engine = Engine(clip, method, task.classnames, batch_size=len(blocks[0]), meter=Meter(clip.device),
                    on_batch=None if on_batch is None else lambda rows: on_batch(list(current), rows))
    if replay:
        engine.replay([{k: v.to(clip.device) for k, v in u.items()} for u in replay])
    source = FeatureSource(engine, feature_cache)
    n_views = method.views_used(n_views)   # a fixed classifier reads view 0 alone: no augmented views to build
    cached = source.cached([i for block in blocks for i in block if i is not None], n_views)
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
                current[:] = run
                results = source.run_block(slots, stacked, run, from_cache, n_views)
                cost = engine.last_batch
                batch = {"first_idx": run[0], "device": str(clip.device), **cost, "n": len(run),
                         "cached_features": (sum(i in from_cache for i in run) / len(run)
                                             if feature_cache is not None else 0.0)}
                for i in run:
                    res = results[i]
                    # the block's engine time shared over its samples (not over empty slots)
                    res["seconds"] = (cost["image_seconds"] + cost["method_seconds"]) / len(run)
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
