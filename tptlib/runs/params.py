"""A run's parameters: what its rows depend on, pinned in `run.json` and compared on every resume.

`run_params` collects them (model, task and a digest of its sample listing, method config, seed,
views, limit, tptlib version); `check_or_write_params` writes run.json for a new run and refuses a
folder that holds a run with other parameters, listing the differences.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..nested import differences
from ..version import __version__
from .errors import RunError, RunMismatchError


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
    }
    if stream is not None:
        params["stream"] = stream
    return json.loads(json.dumps(params))     # the form they take once stored (tuples become lists)


def stream_order(n: int, seed: int) -> list[int]:
    """The order an online method sees the first `n` samples in: a permutation seeded by `seed`
    (numpy's PCG64), recorded in run.json so that a resume is checked against it."""
    import numpy as np
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def samples_digest(task) -> str:
    """A digest of the task's samples in order (paths relative to its root, labels) and class names.

    Record `idx` i is the task's i-th sample: if the listing, its order or the class names change,
    the records of an earlier run describe other images, and resuming must be refused.
    """
    root = Path(task.root)
    h = hashlib.sha256(json.dumps(list(task.classnames)).encode())
    for path, label in task.samples:
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        h.update(f"{rel}\t{int(label)}\n".encode())
    return h.hexdigest()[:16]


def check_or_write_params(out: Path, params: dict, info: dict) -> bool:
    """Write run.json for a new run, or refuse if the folder's run has other parameters.

    Returns True when the folder already held this run (a resume).
    """
    path = out / "run.json"
    if not path.exists():
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps({"params": params, "info": info}, indent=2) + "\n")
        os.replace(tmp, path)
        return False
    stored = read_run_json(out)["params"]
    if stored == params:
        return True
    lines = [f"  {key}: {was!r} in the folder, {now!r} now" for key, was, now in differences(stored, params)]
    raise RunMismatchError(
        f"{out} holds a run with other parameters, so its records cannot be extended by this one:\n"
        + "\n".join(lines)
        + "\nUse another output folder (--out), or repeat the folder's parameters to resume it.")


def read_run_json(out: Path) -> dict:
    path = out / "run.json"
    if not path.is_file():
        raise RunError(f"{out} is not a run folder: it has no run.json (evaluate() writes one when a run starts)")
    return json.loads(path.read_text())


def n_expected(params: dict) -> int:
    """How many rows the finished run holds: the task's size, or `limit` when smaller."""
    limit, size = params["limit"], params["task"]["size"]
    return size if limit is None else min(limit, size)
