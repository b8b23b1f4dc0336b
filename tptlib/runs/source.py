"""Where the engine's view features come from: the image tower, or a feature cache in front of it.

    source = FeatureSource(engine, cache)            # cache: a `tptlib.runs.features.FeatureCache`, or None
    skip = source.cached(indices, n_views)           # samples whose views need not be built
    results = source.run_block(slots, stacked, run, skip, n_views)      # what `tpt.evaluate` runs
    feats = source.features(task, indices, seed, n_views)              # what `analysis.view_logits_of` reads

The one home of the cache's path (look up, encode what is missing with the block, store, read), used
alike by runs and the analysis. What computing the features cost goes to the engine's meter: a
fresh encoding is measured as it runs, features read from the cache count the cost recorded with them.
"""
from __future__ import annotations

import torch

from ..augment import task_views
from .features import FeatureCache


class FeatureSource:
    """The view features an engine runs on: encoded by its image tower, or read from `cache`."""

    def __init__(self, engine, cache: FeatureCache | None = None):
        self.engine, self.cache = engine, cache

    def cached(self, indices, n_views: int) -> set[int]:
        """The samples among `indices` whose features are in the cache (their views need not be built)."""
        return set() if self.cache is None else self.cache.available(indices, n_views)

    def run_block(self, slots: list[int | None], stacked: torch.Tensor | None, run: list[int],
                  from_cache, n_views: int) -> dict[int, dict]:
        """The engine's results for the samples `run` of a block, by sample index (and
        `engine.last_batch` the block's cost).

        An episodic method runs on the whole block (`stacked`, `[B, V, 3, S, S]`, zeros in the slots
        that are empty or unreadable), the empty slots included (their results are dropped), so that a
        sample's record does not depend on which other samples of its block were run (index-aligned
        blocks, `tptlib.runs.loop.blocks`). An online method runs on the samples of `run` alone, in
        stream order: an empty slot must not enter its state. Its records are still the same whatever
        the resume point: each block's rows are written in one transaction, so a run stops after whole
        blocks of its stream, and with the same batch size a resumed run's blocks are those of an
        uninterrupted run.

        With a cache, the samples of `from_cache` are read from it (their slots in `stacked` are
        zeros) and the others are encoded with the whole block, then stored; the method runs on the
        features as above (an empty slot of an episodic block runs a copy of a sample's features)."""
        engine = self.engine
        k_of = {i: k for k, i in enumerate(slots) if i is not None}
        if self.cache is None:
            if engine.method.online:
                return dict(zip(run, engine.run_batch(stacked[torch.tensor([k_of[i] for i in run])])))
            return {i: res for i, res in zip(slots, engine.run_batch(stacked)) if i in run}
        feats = [None] * len(slots)
        fresh = [i for i in run if i not in from_cache]
        if fresh:
            new, seconds, peak = engine.encode(stacked.to(engine.clip.device, non_blocking=True))
            self.cache.store(fresh, new[[k_of[i] for i in fresh]], seconds, peak)
            for i in fresh:
                feats[k_of[i]] = new[k_of[i]]
        old = [i for i in run if i in from_cache]
        if old:
            loaded, seconds, peak = self.cache.load(old, n_views, device=engine.clip.device)
            engine.meter.add("image", sum(seconds), peak)        # what computing them cost, as recorded
            for b, i in enumerate(old):
                feats[k_of[i]] = loaded[b]
        if engine.method.online:
            return dict(zip(run, engine.run_features(torch.stack([feats[k_of[i]] for i in run]))))
        filler = feats[k_of[run[0]]]          # an empty slot runs a copy of a sample's features
        block = torch.stack([filler if f is None else f for f in feats])
        return {i: res for i, res in zip(slots, engine.run_features(block)) if i in run}

    def features(self, task, indices: list[int], seed: int, n_views: int) -> torch.Tensor:
        """The view features `[N, V, D]` of `task`'s samples `indices`, views `task_views(..., seed)`:
        from the cache where they are, the others encoded (and stored in the cache when there is one)."""
        engine = self.engine
        have = self.cached(indices, n_views)
        missing = [i for i in indices if i not in have]
        if self.cache is None:
            views = torch.stack([task_views(engine.clip, task, i, seed=seed, n_views=n_views) for i in indices])
            return engine.encode(views)[0]
        if missing:
            views = torch.stack([task_views(engine.clip, task, i, seed=seed, n_views=n_views) for i in missing])
            self.cache.store(missing, *engine.encode(views))
        return self.cache.load(indices, n_views, device=engine.clip.device)[0]
