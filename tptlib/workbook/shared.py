"""The code every notebook shares, defined once (as d2l keeps its `#@save` code in its package).

    book = tpt.workbook.Book(prof, clip, runs_dir="runs", limit=300, seed=0, batch_size=16)
    run = book.run                                   # run(task, method) -> the stored or computed run
    logits, labels = book.view_logits("micro:A")     # every view's zero-shot logits, cached

A run lives in a folder named by everything that decides its records (`run_dir`), so notebooks
that ask for the same (model, task, method, limit, seed, views) share one computation.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path


def run_dir(runs_root: str | Path, clip, task, method, *, limit: int | None = None, seed: int = 0,
            n_views: int = 64) -> Path:
    """The run folder notebooks share for one (model, task, method, limit, seed, views) combination.

    Notebooks that ask for the same combination get the same folder, so a later notebook reuses the
    records an earlier one wrote instead of recomputing them.
    """
    key = json.dumps({"model": clip.name, "pretrained": clip.pretrained, "precision": clip.precision,
                      "task": task.name, "method": method.config(), "limit": limit, "seed": seed,
                      "n_views": n_views}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(s))  # noqa: E731
    return Path(runs_root) / f"{safe(clip.name)}__{safe(task.name)}__{safe(method.name)}__{digest}"


def cached_view_logits(runs_root: str | Path, clip, task, *, limit: int | None = None, seed: int = 0,
                       n_views: int = 64, batch_size: int = 16, feature_cache: str | Path | None = None):
    """Zero-shot logits of every view of a task's first `limit` samples, cached under `runs_root`.

    Returns `(logits [N, V, C] tensor, labels [N] array)`, as `tptlib.analysis.view_logits` computes
    them (views `task_views(..., seed)`, the ones `evaluate` builds). The cache file is keyed like
    `run_dir` (model, task and its sample listing, limit, seed, views), so notebooks that ask for the
    same views share one computation, as they share runs. `feature_cache` (default: the environment
    variable TPTLIB_FEATURE_CACHE, which the workbook's runner sets) reads the view features the runs
    stored instead of encoding the views again, and stores the ones encoded here.
    """
    import numpy as np
    import torch

    from ..analysis import sample_view_logits as compute
    from ..files import write_atomic
    from ..methods import ZeroShot
    from ..runs.features import images_digest
    from ..runs.params import samples_digest
    n = len(task) if limit is None else min(limit, len(task))
    folder = run_dir(runs_root, clip, task, ZeroShot(), limit=n, seed=seed, n_views=n_views)
    digest = f"{samples_digest(task)}-{images_digest(task, range(n))[:16]}"      # listing and image content
    path = folder.with_name(folder.name.replace("__zeroshot__", "__views__")) / f"views-{digest}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            logits, labels = stored["logits"], stored["labels"].numpy().astype(np.int64)
            if logits.shape[:2] == (n, n_views) and labels.shape == (n,):
                return logits, labels
        except Exception as exc:          # a damaged file (torch's and pickle's own error types)
            logging.getLogger("tptlib.workbook").warning("%s cannot be read (%s: %s); computed again",
                                                         path, type(exc).__name__, exc)
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")   # as in a report (run_notebook)
    logits, labels = compute(clip, task, range(n), seed=seed, n_views=n_views, batch_size=batch_size,
                             progress=not quiet, feature_cache=feature_cache or os.environ.get("TPTLIB_FEATURE_CACHE"))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"logits": logits.float(), "labels": torch.as_tensor(labels)}, buffer)
    write_atomic(path, buffer.getvalue())
    return logits, labels


@dataclass
class Book:
    """One notebook's runs: a profile's model and tasks, the shared run folders, `limit` and `seed`.

    `run(task, method)` is what every notebook calls: the run of `method` on the task's first
    `limit` samples (or `n`), read back from `runs_dir` when a notebook already stored it, else
    computed and stored there. Keyword arguments go to `tpt.evaluate` (`stream_seed` of an online
    method gets a folder of its own, `feature_cache` shares the view features between methods).
    """

    profile: object
    clip: object
    runs_dir: str | Path = "runs"
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    feature_cache: str | Path | None = None    # where view features are shared between methods (None: evaluate's default)

    def run(self, task_name: str, method, n: int | None = None, **kwargs):
        from ..runs import evaluate
        n = self.limit if n is None else n
        task = self.profile.load_task(task_name)
        out = run_dir(self.runs_dir, self.clip, task, method, limit=n, seed=self.seed)
        stream = kwargs.get("stream_seed")
        if stream is not None and stream != self.seed:
            out = out.with_name(f"{out.name}__stream{stream}")
        if self.feature_cache is not None:
            kwargs.setdefault("feature_cache", self.feature_cache)
        return evaluate(self.clip, task, method, out=out, limit=n, seed=self.seed, batch_size=self.batch_size,
                        **kwargs)

    def view_logits(self, task_name: str, n: int | None = None):
        """`cached_view_logits` of the task's first `limit` (or `n`) samples: `(logits [N, V, C], labels [N])`."""
        return cached_view_logits(self.runs_dir, self.clip, self.profile.load_task(task_name),
                                  limit=self.limit if n is None else n, seed=self.seed, batch_size=self.batch_size,
                                  feature_cache=self.feature_cache)
