"""A run's parameters: what its rows depend on, pinned in `run.json` and compared on every resume.

`run_params` collects them: model, task and a digest of its sample listing, method config, seed,
views, limit, tptlib version, `inputs`, the content digest of every file besides the images that
defines the results (the weights file, a CoOp/CoCoOp checkpoint, the split file), so that a file
replaced at the same path is told apart, and for an online method `stream`, the seeded order it
sees the samples in. `params_digest` is what a records store is bound to (everything but the limit,
which an episodic run may extend; an online run's stream order depends on its limit, so it is in
the digest through `stream`). `tptlib.runs.folder` compares them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..checks import file_sha256
from ..nested import flatten
from ..version import __version__

#: method config keys whose (string) value names a file the results depend on (`cupl`: DMN's CuPL
#: descriptions)
_FILE_KEYS = ("ckpt", "checkpoint", "_file", "_path", "cupl")
#: how `inputs` records the micro-CLIP weights shipped with tptlib (not by a path of this install)
SHIPPED_WEIGHTS = "(the micro-CLIP weights shipped with tptlib)"


def run_params(clip, task, method, *, seed: int, n_views: int, limit: int | None,
               stream: dict | None = None) -> dict:
    """The parameters a run's rows depend on (compared on every resume).

    A checkpoint file is recorded by its absolute path, so `ckpt.pt` and `./ckpt.pt` agree.
    stream: for an online method, the order it sees the samples in (`stream_order`): recorded as
    `stream` = {"seed": ..., "order": [sample indices]}; absent for other methods.
    """
    pretrained = clip.pretrained
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
    params = {
        "model": {"name": clip.name, "pretrained": pretrained, "precision": clip.precision},
        "task": {"name": task.name, "root": str(Path(task.root).expanduser().resolve()),
                 "size": len(task), "n_classes": len(task.classnames), "samples": samples_digest(task)},
        "method": {"name": method.name, "config": method.config()},
        "seed": seed, "n_views": n_views, "limit": limit, "tptlib_version": __version__,
        "inputs": input_digests(clip, task, method),
    }
    if stream is not None:
        params["stream"] = stream
    return json.loads(json.dumps(params))     # the form they take once stored (tuples become lists)


def stream_order(n: int, seed: int) -> list[int]:
    """The order an online method sees the first `n` samples in: a permutation seeded by `seed`
    (numpy's PCG64), recorded in run.json so that a resume is checked against it."""
    import numpy as np
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def input_digests(clip, task, method) -> dict:
    """`{role: {"path", "sha256"}}` for every file besides the images that defines a run's results:
    the model's weights file (`clip.weights_sha256`, taken when it was loaded), the files a method's
    config names (keys ending in ckpt, checkpoint, _file, _path, cupl) and the task's input files
    (`task.meta["input_files"]`: split files)."""
    inputs = {}
    if getattr(clip, "weights_sha256", None):
        shipped = clip.pretrained is None
        inputs["model.weights"] = {"path": SHIPPED_WEIGHTS if shipped else clip.weights_file,
                                   "sha256": clip.weights_sha256}
    files = {f"method.{key}": value for key, value in flatten(method.config()).items()
             if isinstance(value, str) and key.endswith(_FILE_KEYS)}
    files.update({f"task.{role}": path for role, path in task.meta.get("input_files", {}).items()})
    for role, path in files.items():
        path = Path(path).expanduser()
        if path.is_file():
            inputs[role] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    return inputs


def params_digest(params: dict) -> str:
    """The digest a records store is bound to: every parameter but the limit (which a run may
    extend without changing any record)."""
    rest = {key: value for key, value in params.items() if key != "limit"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def samples_digest(task) -> str:
    """A digest of the task's samples in order (paths relative to its root, labels) and class names.

    Record `idx` i is the task's i-th sample: if the listing, its order or the class names change,
    the records of an earlier run describe other images, and resuming must be refused.
    """
    try:
        key = (str(task.root), tuple(task.classnames), tuple(task.samples))    # compared whole on a hit
        known = _SAMPLE_DIGESTS.get(key)
    except TypeError:                          # a listing of unhashable items: digested every time
        return _samples_digest(task)
    if known is None:
        if len(_SAMPLE_DIGESTS) >= 256:
            _SAMPLE_DIGESTS.clear()
        known = _SAMPLE_DIGESTS[key] = _samples_digest(task)
    return known


def _samples_digest(task) -> str:
    root = Path(task.root)
    h = hashlib.sha256(json.dumps(list(task.classnames)).encode())
    for path, label in task.samples:
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        h.update(f"{rel}\t{int(label)}\n".encode())
    return h.hexdigest()[:16]


#: listings already digested in this process (a listing is compared whole before its digest is reused)
_SAMPLE_DIGESTS: dict[tuple, str] = {}


def n_expected(params: dict) -> int:
    """How many rows the finished run holds: the task's size, or `limit` when smaller."""
    limit, size = params["limit"], params["task"]["size"]
    return size if limit is None else min(limit, size)
