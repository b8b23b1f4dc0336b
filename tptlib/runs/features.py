"""The feature cache: the image features of a task's views, computed once and read by every method.

    evaluate(clip, task, method, out, feature_cache="runs/features")

With a feature cache, a run looks up each sample's view features before building its views: a
sample already encoded (by this run or any other with the same model, task and seed) is not
augmented or encoded again, and the method runs on the stored features. So ZERO, MTA, TDA, DMN, TPT
and C-TPT on one task encode the 64 views of each image once between them.

    <feature_cache>/<model>__<task>__s<seed>__<digest>/
        cache.json          what the features depend on: model (name, weights, precision), task
                            (name, root, sample digest, views' augmentation), seed, view geometry,
                            tptlib version; the folder name's digest is a hash of it
        features.sqlite     table `features`: one row per sample (idx, n_views, dim, float32 bytes
                            [n_views, dim], the image tower's seconds and peak memory for them)

The views of sample i come from a generator seeded by (seed, i) and view k does not depend on how
many views follow it, so the first k stored views are the k views a method reading k of them would
build. A sample stored with fewer views than a method needs is encoded again with all of them.
Features computed in a batch agree with those computed alone up to float rounding (as the engine's
batches do; see `tests/test_runs.py`). Times are those of the run that computed the features: a run
that reads them counts that image-tower time (and peak memory), scaled to the views it reads, in its
`seconds` (and its batches' `image_peak_bytes`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import torch

from ..version import __version__
from .errors import RunError
from .params import samples_digest

_DTYPE = "<f4"


def _safe(text) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))


def cache_key(clip, task, seed: int) -> dict:
    """What a sample's view features depend on (model, task and its views, seed, tptlib version)."""
    pretrained = clip.pretrained
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
    return {"model": {"name": clip.name, "pretrained": pretrained, "precision": clip.precision},
            "task": {"name": task.name, "root": str(Path(task.root).expanduser().resolve()),
                     "samples": samples_digest(task), "augmix": bool(task.augmix),
                     "min_crop_scale": float(task.min_crop_scale)},
            "views": {"image_size": clip.image_size, "mean": list(clip.mean), "std": list(clip.std)},
            "seed": seed, "tptlib_version": __version__}


class FeatureCache:
    """The cached view features of one (model, task, seed)."""

    def __init__(self, root, clip, task, seed: int):
        key = cache_key(clip, task, seed)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(root).expanduser() / f"{_safe(clip.name)}__{_safe(task.name)}__s{seed}__{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "cache.json"
        if meta.exists():
            if json.loads(meta.read_text()) != json.loads(json.dumps(key)):
                raise RunError(f"{meta} describes other features than its folder name's digest says; "
                               f"remove {self.dir} (it is only a cache)")
        else:
            tmp = self.dir / "cache.json.tmp"
            tmp.write_text(json.dumps(key, indent=2) + "\n")
            os.replace(tmp, meta)
        self.path = self.dir / "features.sqlite"
        with self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS features (idx INTEGER PRIMARY KEY, n_views INTEGER NOT NULL, "
                         "dim INTEGER NOT NULL, feats BLOB NOT NULL, image_seconds REAL, image_peak_bytes INTEGER)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def available(self, indices, n_views: int) -> set[int]:
        """The samples among `indices` stored with at least `n_views` views."""
        conn = self._connect()
        try:
            have = {i for i, v in conn.execute("SELECT idx, n_views FROM features") if v >= n_views}
        finally:
            conn.close()
        return have & set(int(i) for i in indices)

    def load(self, indices: list[int], n_views: int, device=None) -> tuple[torch.Tensor, list[float], int]:
        """Features `[B, n_views, D]` of `indices` (in that order), the image tower's seconds per sample
        and the largest stored peak memory among them, both scaled to `n_views` of the stored views
        (the tower's cost grows with the views it encodes; the scaling is an estimate)."""
        conn = self._connect()
        try:
            rows = {i: (v, d, blob, sec, peak) for i, v, d, blob, sec, peak in conn.execute(
                f"SELECT idx, n_views, dim, feats, image_seconds, image_peak_bytes FROM features "
                f"WHERE idx IN ({','.join('?' for _ in indices)})", [int(i) for i in indices])}
        finally:
            conn.close()
        feats, seconds, peak = [], [], 0
        for i in indices:
            v, d, blob, sec, pk = rows[int(i)]
            feats.append(torch.from_numpy(np.frombuffer(blob, dtype=_DTYPE).reshape(v, d)[:n_views].copy()))
            seconds.append(float(sec or 0.0) * n_views / v)
            peak = max(peak, int(int(pk or 0) * n_views / v))
        out = torch.stack(feats)
        return (out if device is None else out.to(device)), seconds, peak

    def store(self, indices: list[int], feats: torch.Tensor, seconds: float, peak_bytes: int) -> None:
        """Keep the features `[B, V, D]` of `indices`; `seconds`: the image tower's time for all of them."""
        arr = feats.detach().float().cpu().numpy().astype(_DTYPE)
        share = seconds / max(len(indices), 1)
        conn = self._connect()
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)",
                                 [(int(i), arr.shape[1], arr.shape[2], arr[b].tobytes(), share, int(peak_bytes))
                                  for b, i in enumerate(indices)])
        finally:
            conn.close()
