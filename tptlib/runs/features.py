"""The feature cache: the image features of a task's views, computed once and read by every method.

    evaluate(clip, task, method, out, feature_cache="runs/features")

With a feature cache, a run looks up each sample's view features before building its views: a
sample already encoded (by this run or any other with the same model, task and seed) is not
augmented or encoded again, and the method runs on the stored features. So ZERO, MTA, TDA, DMN, TPT
and C-TPT on one task encode the 64 views of each image once between them.

    <feature_cache>/<model>__<task>__s<seed>__<digest>/
        cache.json          what the features depend on: model (name, weights, the SHA-256 of
                            the weights file, precision), task (name, root, sample digest, views'
                            augmentation), seed, view geometry, tptlib version, cache layout; the
                            folder name's digest is a hash of it
        features.sqlite     table `features`: one row per sample (idx, n_views, dim, float32 bytes
                            [n_views, dim], the image tower's seconds and peak memory for them, the
                            SHA-256 of the image file they were computed from, and the row's digest)

A cache cannot lie (`entry_digest`, `image_digest`): each row is bound by its digest to its cache
(the folder's digest), its sample index, its shape, its features' bytes and the content of its
image file, so an image rewritten at the same path, a row damaged on disk, copied from another
cache or moved to another index is not used: its sample is encoded again and the row replaced,
with one warning per run that says how many and why. A cache entry that cannot be read at all
(a damaged or foreign `features.sqlite`, a `cache.json` that is not this folder's, a link where
its files belong) is ignored for the run with a warning, and one that cannot be written (a full
disk) stops being written to: the run's records are those of a run without a cache either way. A
cache folder (`feature_cache`) that cannot hold a cache (a file, not writable, a path too long)
is refused by `check_cache_root` before any work.

The views of sample i come from a generator seeded by (seed, i) and view k does not depend on how
many views follow it, so the first k stored views are the k views a method reading k of them would
build. A sample stored with fewer views than a method needs is encoded again with all of them.
Features are computed with the whole block of the run that computes them (empty and cached slots
run zeros; `tptlib.runs.evaluation`), as an episodic run without a cache computes them; computed
in another batch shape they agree up to float rounding (as the engine's batches do; see
`tests/test_runs.py`). Times are those of the run that computed the features: a run
that reads them counts that image-tower time (and peak memory), scaled to the views it reads, in its
`seconds` (and its batches' `image_peak_bytes`).
"""
from __future__ import annotations

import hashlib
import contextlib
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import torch

from ..files import UnsafeFileError, check_regular, write_atomic
from ..version import __version__
from .errors import RunError
from .params import samples_digest

log = logging.getLogger("tptlib.runs.features")

_DTYPE = "<f4"
#: the layout of a cache folder (its table's columns), part of the key: another layout is another folder
LAYOUT = 2
_COLUMNS = ("idx INTEGER PRIMARY KEY, n_views INTEGER NOT NULL, dim INTEGER NOT NULL, feats BLOB NOT NULL, "
            "image_seconds REAL, image_peak_bytes INTEGER, image_sha256 TEXT NOT NULL, digest TEXT NOT NULL")


def _safe(text) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))


def cache_key(clip, task, seed: int) -> dict:
    """What a sample's view features depend on (model, task and its views, seed, tptlib version)."""
    pretrained = clip.pretrained
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
    return {"model": {"name": clip.name, "pretrained": pretrained, "precision": clip.precision,
                      "weights_sha256": getattr(clip, "weights_sha256", None)},
            "task": {"name": task.name, "root": str(Path(task.root).expanduser().resolve()),
                     "samples": samples_digest(task), "augmix": bool(task.augmix),
                     "min_crop_scale": float(task.min_crop_scale)},
            "views": {"image_size": clip.image_size, "mean": list(clip.mean), "std": list(clip.std)},
            "seed": seed, "tptlib_version": __version__, "layout": LAYOUT}


def key_digest(key: dict) -> str:
    """The digest of a cache key: the end of its folder's name, and part of every row's digest."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def image_digest(path) -> str | None:
    """The SHA-256 of an image file's bytes, or None when it cannot be read as a regular file (absent,
    unreadable, a named pipe: such a sample is never served from the cache)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        while block := os.read(fd, 1 << 20):
            h.update(block)
    except OSError:
        return None
    finally:
        os.close(fd)
    return h.hexdigest()


def images_digest(task, indices) -> str:
    """One digest of the content of the image files of `indices` (in that order; an unreadable file
    counts as such): what a cache of results over several images is keyed on, beside their paths."""
    h = hashlib.sha256()
    for i in indices:
        h.update(f"{int(i)}\t{image_digest(task.samples[int(i)][0])}\n".encode())
    return h.hexdigest()


def entry_digest(cache: str, idx: int, n_views: int, dim: int, image_sha256: str, feats: bytes) -> str:
    """The digest a cached row is stored with and checked against before it is used: its cache's key
    digest, its sample index, its shape, the content digest of its image and its features' bytes."""
    h = hashlib.sha256(f"{cache}\t{int(idx)}\t{int(n_views)}\t{int(dim)}\t{image_sha256}\n".encode())
    h.update(feats)
    return h.hexdigest()


def check_cache_root(root) -> Path:
    """`root` as a Path, refused (`RunError`, one line, nothing created) when it cannot hold a feature
    cache: a file, a folder this process cannot write, a path too long, under a file."""
    path = Path(str(root)).expanduser()
    if not str(root).strip():
        raise RunError("the feature cache folder is empty; name a folder (--feature-cache DIR) or give none")
    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len(os.fsencode(str(path.absolute()))) >= 4096 or any(len(os.fsencode(p)) > name_max for p in path.parts):
        raise RunError(f"the feature cache folder {str(path)[:80]}... is a path too long for this file system; "
                       "choose a shorter --feature-cache")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise RunError(f"the feature cache folder {path} {what}, not a folder; choose another --feature-cache")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"the feature cache folder {path} cannot be written ({existing} is not writable); choose "
                       "a writable --feature-cache, or run without one")
    return path


class FeatureCache:
    """The cached view features of one (model, task, seed), checked by digest before they are used."""

    def __init__(self, root, clip, task, seed: int):
        key = cache_key(clip, task, seed)
        self.key = key_digest(key)
        self.dir = check_cache_root(root) / f"{_safe(clip.name)}__{_safe(task.name)}__s{seed}__{self.key}"
        self.path = self.dir / "features.sqlite"
        self.images = [str(path) for path, _ in task.samples]
        self.usable, self.writable, self._images = True, True, {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the feature cache folder {self.dir} ({exc.strerror or exc}); choose "
                           "another --feature-cache, or run without one") from None
        try:
            for name in ("cache.json", "cache.json.tmp", "features.sqlite", "features.sqlite-journal"):
                check_regular(self.dir / name)
            meta = self.dir / "cache.json"
            if os.path.lexists(meta):
                if json.loads(meta.read_text(encoding="utf-8")) != json.loads(json.dumps(key)):
                    raise ValueError(f"{meta} describes other features than its folder name's digest says")
            else:
                write_atomic(meta, (json.dumps(key, indent=2) + "\n").encode())
            with contextlib.closing(self._connect()) as conn, conn:
                conn.execute(f"CREATE TABLE IF NOT EXISTS features ({_COLUMNS})")
                columns = [row[1] for row in conn.execute("PRAGMA table_info(features)")]
            if columns != [c.split()[0] for c in _COLUMNS.split(", ")]:
                raise ValueError(f"{self.path} holds another table than a feature cache's ({columns})")
        except (OSError, ValueError, sqlite3.Error) as exc:
            self._ignore(exc)

    def _ignore(self, exc) -> None:
        self.usable = self.writable = False
        why = exc.strerror if isinstance(exc, UnsafeFileError) else f"{type(exc).__name__}: {exc}"
        log.warning("the feature cache %s cannot be used (%s); it is ignored: this run encodes every view and "
                    "keeps none. Remove the folder to rebuild it.", self.dir, why)

    def _connect(self) -> sqlite3.Connection:
        check_regular(self.path)
        check_regular(f"{self.path}-journal")
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=rwc", uri=True, timeout=60)

    def _image(self, idx: int) -> str | None:
        if idx not in self._images:
            self._images[idx] = image_digest(self.images[idx])
        return self._images[idx]

    def _rows(self, indices: list[int]):
        """(idx, n_views, dim, feats, seconds, peak, image digest, digest) of the stored rows of `indices`."""
        conn = self._connect()
        try:
            for start in range(0, len(indices), 500):
                part = indices[start:start + 500]
                yield from conn.execute(
                    "SELECT idx, n_views, dim, feats, image_seconds, image_peak_bytes, image_sha256, digest "
                    f"FROM features WHERE idx IN ({','.join('?' for _ in part)})", part)
        finally:
            conn.close()

    def _why_not(self, row) -> str | None:
        """Why a stored row may not be used (None: it may): its image changed, or it is damaged or foreign."""
        idx, v, d, blob, _, _, image_sha, digest = row
        if not (isinstance(blob, bytes) and isinstance(v, int) and isinstance(d, int) and v > 0 and d > 0
                and len(blob) == v * d * 4 and isinstance(digest, str)
                and digest == entry_digest(self.key, idx, v, d, str(image_sha), blob)):
            return "damaged or not this cache's"
        if image_sha != self._image(idx):
            return "image changed since"
        return None

    def available(self, indices, n_views: int) -> set[int]:
        """The samples among `indices` stored with at least `n_views` views whose row checks out (digest,
        image content); the others are encoded again, with one warning for those that were stored."""
        indices = sorted({int(i) for i in indices})
        if not self.usable or not indices:
            return set()
        have, refused = set(), {}
        try:
            for row in self._rows(indices):
                why = self._why_not(row)
                if why is None and row[1] >= n_views:
                    have.add(row[0])
                elif why is not None:
                    refused.setdefault(why, []).append(row[0])
        except (OSError, sqlite3.Error) as exc:
            self._ignore(exc)
            return set()
        if refused:
            log.warning("the feature cache %s: %s not used, encoded again", self.dir, "; ".join(
                f"{len(idx)} samples ({why}, e.g. sample {idx[0]})" for why, idx in refused.items()))
        return have

    def load(self, indices: list[int], n_views: int, device=None) -> tuple[torch.Tensor, list[float], int]:
        """Features `[B, n_views, D]` of `indices` (in that order), the image tower's seconds per sample
        and the largest stored peak memory among them, both scaled to `n_views` of the stored views
        (the tower's cost grows with the views it encodes; the scaling is an estimate). Every row is
        checked again; one that no longer checks out (changed during the run) raises `RunError`."""
        try:
            rows = {row[0]: row for row in self._rows([int(i) for i in indices])}
        except (OSError, sqlite3.Error) as exc:
            raise RunError(f"the feature cache {self.path} cannot be read any more ({exc}); run the same command "
                           "again (it resumes)") from None
        feats, seconds, peak = [], [], 0
        for i in indices:
            row = rows.get(int(i))
            if row is None or self._why_not(row) is not None or row[1] < n_views:
                raise RunError(f"the feature cache {self.path} changed while this run read it (sample {i}); run "
                               "the same command again (it resumes and checks the cache anew)")
            _, v, d, blob, sec, pk, _, _ = row
            feats.append(torch.from_numpy(np.frombuffer(blob, dtype=_DTYPE).reshape(v, d)[:n_views].copy()))
            seconds.append(float(sec or 0.0) * n_views / v)
            peak = max(peak, int(int(pk or 0) * n_views / v))
        out = torch.stack(feats)
        return (out if device is None else out.to(device)), seconds, peak

    def store(self, indices: list[int], feats: torch.Tensor, seconds: float, peak_bytes: int) -> None:
        """Keep the features `[B, V, D]` of `indices`; `seconds`: the image tower's time for all of them.
        A sample whose image cannot be read now is not kept; a cache that cannot be written (a full
        disk) is written no more in this run, with a warning."""
        if not self.writable:
            return
        arr = feats.detach().float().cpu().numpy().astype(_DTYPE)
        share = seconds / max(len(indices), 1)
        rows = []
        for b, i in enumerate(indices):
            if (image_sha := self._image(int(i))) is not None:
                blob = arr[b].tobytes()
                rows.append((int(i), arr.shape[1], arr.shape[2], blob, share, int(peak_bytes), image_sha,
                             entry_digest(self.key, int(i), arr.shape[1], arr.shape[2], image_sha, blob)))
        try:
            conn = self._connect()
            try:
                with conn:
                    conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as exc:
            self.writable = False
            log.warning("cannot write to the feature cache %s (%s): the features computed from now on are not "
                        "kept; the run goes on", self.path, exc)
