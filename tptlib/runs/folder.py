"""The run folder is what it says: its run.json, read and checked, and the decision to start,
resume, extend or refuse a run in it.

`open_run(out, params, task, info)` is called twice by `evaluate`: once before anything is written
(`write=False`: a folder that cannot be used is refused and left exactly as it was, not even a lock
file added) and once under the folder's lock, where it writes. It refuses

- a path that is a file, or a folder that is neither new, empty nor a run folder;
- records without a run.json, a run.json that cannot be read, and stores that were not written
  under the folder's run.json (edited by hand, replaced, or records copied from another folder);
- other parameters than the folder's run (listing the differences), including an input file
  replaced at the same path (its content digest differs);
- a limit that leaves recorded rows outside it. A larger limit on a finished run extends it: the
  first N records do not depend on the limit, so the run goes on from N.

A run.json written before input files were pinned (no `inputs`) is upgraded on resume when the rest
of its parameters match: the files are pinned as they are then, unless one was modified after the
run started (refused: its records may come from the earlier file).
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from ..files import UnsafeFileError, check_regular, write_atomic
from ..nested import differences, flatten
from .errors import RunError, RunMismatchError
from .params import n_expected, params_digest
from .store import bind_store, existing_stores, recorded_rows

#: files a run writes besides run.json and its stores (a folder holding only these is not foreign)
_OWN_FILES = ("lock", "run.log", "run.json.tmp")
#: the run's own files that are written in place (a hard link there would change the file it shares)
_WRITTEN_IN_PLACE = ("lock", "run.log")
#: what a run.json's params must hold (dotted key -> accepted types) for a run to be read back
_REQUIRED = {"model.name": str, "task.name": str, "task.size": int, "task.n_classes": int, "method.name": str,
             "limit": (int, type(None))}
_MISSING = object()


def check_out_path(out) -> Path:
    """`out` as a Path, refused (`RunError`) when it is empty or names something that is not a folder."""
    if out is None or not str(out).strip():
        raise RunError("the run folder (--out) is empty; name a folder for the run's records")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path} is a file, not a folder; a run folder holds run.json, records.sqlite "
                       "and run.log. Name a new folder.")
    return path


def is_own_file(name: str) -> bool:
    """Whether `name` is one of the files a run writes in its folder (run.json, its temporary file,
    the lock, the log, the stores and their SQLite journals)."""
    return name == "run.json" or name in _OWN_FILES or name.startswith("records.")


def check_own_files(out: Path) -> None:
    """Refuse (`RunError`, changing nothing) a run folder one of whose own files is a symbolic link, a
    hard link shared with a file elsewhere (for the files written in place: the lock, the log, the
    stores) or not a regular file (a folder, a named pipe): the run would write through it."""
    try:
        names = sorted(os.listdir(out))
    except NotADirectoryError:
        return
    except OSError as exc:
        raise RunError(f"cannot read the folder {out} ({exc.strerror or exc})") from None
    for name in names:
        path = out / name
        if is_own_file(name) and (path.is_symlink() or not path.is_dir()):   # a folder: refused below
            try:
                check_regular(path, shared_ok=not (name in _WRITTEN_IN_PLACE or name.startswith("records.")))
            except UnsafeFileError as exc:
                raise RunError(f"the run folder {out} cannot be used: {exc.strerror}, or use another --out") from None


def read_run_json(out: Path) -> dict:
    """The folder's run.json (`{"params": ..., "info": ...}`), refused (`RunError`) when it is absent,
    unreadable, not JSON or not a run's parameters."""
    path = out / "run.json"
    if not path.is_file():
        raise RunError(f"{out} is not a run folder: it has no run.json (evaluate() writes one when a run starts)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} cannot be read ({type(exc).__name__}: {exc}), so the run in {out} cannot be "
                       "identified; nothing was changed. Restore run.json, or use another --out.") from None
    params = doc.get("params") if isinstance(doc, dict) else None
    flat = flatten(params) if isinstance(params, dict) else {}
    wrong = [key for key, kind in _REQUIRED.items()
             if not isinstance(value := flat.get(key, _MISSING), kind) or isinstance(value, bool)
             or (isinstance(value, int) and value < 0)]
    if wrong:
        raise RunError(f"{path} does not hold a run's parameters (missing or of the wrong type: {', '.join(wrong)}), "
                       f"so the run in {out} cannot be identified; nothing was changed. Restore run.json, or use "
                       "another --out.")
    return doc


def folder_digests(stored: dict, params: dict | None = None) -> tuple:
    """The digests the stores of a folder whose run.json holds `stored` may carry: its params digest;
    for a run.json from before input digests, None (version-1 stores) and, with the parameters
    `params` it is being upgraded to, theirs (an upgrade interrupted between stores and run.json)."""
    if "inputs" in stored:
        return (params_digest(stored),)
    return (None,) if params is None else (None, params_digest(params))


def open_run(out: Path, params: dict, task, info: dict, *, write: bool) -> list[str]:
    """Check that `out` can hold the run `params` of `task` and, with `write`, make it so (write or
    update run.json, bind legacy stores). Returns notes for the run log (empty for a new run).
    Raises `RunError` / `RunMismatchError` without changing anything when it cannot."""
    if not out.exists():
        if write:
            _write_run_json(out, params, info)
        return []
    check_own_files(out)
    if not (out / "run.json").exists():
        _check_new_folder(out)
        if write:
            _write_run_json(out, params, info)
        return []

    doc = read_run_json(out)
    stored = doc["params"]
    info_was = doc["info"] if isinstance(doc.get("info"), dict) else {}
    legacy = "inputs" not in stored
    rows = recorded_rows(out, folder_digests(stored, params))   # refuses stores not written under run.json
    mine = params if not legacy else {k: v for k, v in params.items() if k != "inputs"}
    changed = [d for d in differences(stored, mine) if d[0] != "limit"]
    beyond = [idx for idx, _, _ in rows if idx >= n_expected(params)]
    if beyond:
        changed.append(("limit", stored["limit"], params["limit"]))
    if changed:
        lines = [f"  {key}: {_shown(was)} in the folder, {_shown(now)} now;" for key, was, now in changed]
        why = (f"\n  ({len(beyond)} recorded samples lie beyond the new limit, from sample {min(beyond)}; a larger "
               "limit extends a run, a smaller one cannot hold it.)" if beyond else "")
        if any(key.startswith("stream.") for key, _, _ in changed) and stored["limit"] != params["limit"]:
            why += ("\n  (An online run's stream order is a permutation of its first `limit` samples, so its "
                    "limit cannot change.)")
        if any(key.startswith("inputs.") and key.endswith(".sha256") for key, _, _ in changed):
            why += "\n  (An input file's content differs from the run's: it was replaced or changed at its path.)"
        raise RunMismatchError(
            f"{out} holds a run with other parameters, so its records cannot be extended by this one:\n"
            + "\n".join(lines) + why
            + "\nUse another output folder (--out), or repeat the folder's parameters to resume it.")
    samples = [(str(path), int(label)) for path, label in task.samples]
    foreign = [idx for idx, path, label in rows if idx >= len(samples) or samples[idx] != (path, label)]
    if foreign:
        raise RunError(f"{out}: {len(foreign)} records (e.g. sample {foreign[0]}) name another image or label "
                       "than the task's sample of that index, so they are not adopted. Use another --out.")

    notes = []
    if legacy:
        _check_legacy_inputs(out, params["inputs"], info_was)
        notes.append("run.json predates input digests: pinned " + (", ".join(
            f"{role} {entry['path']} (sha256 {entry['sha256'][:12]})" for role, entry in params["inputs"].items())
            or "no input file") + " as they are now")
    if stored["limit"] != params["limit"]:
        notes.append(f"limit changed from {stored['limit']} to {params['limit']}: the recorded samples are kept")
    if write and (legacy or stored["limit"] != params["limit"]):
        if legacy:                    # stores first: until run.json follows, both digests are accepted
            for path in existing_stores(out):
                bind_store(path, params_digest(params))
        _write_run_json(out, params, {**info_was, "updated": info.get("created")})
    return notes


def _shown(value, n: int = 8) -> str:
    """A value for a message: a long list (a stream order) shortened to its first `n` items."""
    if isinstance(value, list) and len(value) > n:
        return "[" + ", ".join(repr(v) for v in value[:n]) + f", ... ({len(value)} items)]"
    return repr(value)


def _check_new_folder(out: Path) -> None:
    """Refuse a folder without run.json that holds records, or anything that is not a run's."""
    stores = [p.name for p in existing_stores(out)]
    if stores:
        raise RunError(f"{out} holds records ({', '.join(stores)}) but no run.json, so nothing says "
                       "what they were computed with; they are not adopted. Use another --out, or restore run.json.")
    try:
        entries = sorted(os.listdir(out))
    except OSError as exc:
        raise RunError(f"cannot read the folder {out} ({exc.strerror or exc})") from None
    foreign = [name for name in entries if not ((name in _OWN_FILES or name.startswith("records."))
                                                and (out / name).is_file())]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunError(f"--out {out} is a folder that is not a run folder and not empty (it holds {shown}); "
                       "a run writes run.json, records.sqlite and run.log into its folder. Name a new or empty folder.")


def _check_legacy_inputs(out: Path, inputs: dict, info: dict) -> None:
    """A run.json without input digests: refuse if an input file changed after the run started."""
    try:
        created = datetime.datetime.fromisoformat(str(info.get("created"))).timestamp()
    except ValueError:
        created = None
    for role, entry in inputs.items():
        path = Path(entry["path"])
        if not path.is_file():
            continue                  # the micro-CLIP weights shipped with tptlib: pinned from here on
        if created is None or int(path.stat().st_mtime) > created:      # `created` is in whole seconds
            when = "at an unknown time" if created is None else datetime.datetime.fromtimestamp(
                path.stat().st_mtime).isoformat(timespec="seconds")
            raise RunMismatchError(
                f"{out} was written by a tptlib that did not pin input files, and {role} ({path}) was modified "
                f"{when}, after the run started ({info.get('created', 'time unknown')}): its records may come "
                "from the earlier file. Use another --out.")


def _write_run_json(out: Path, params: dict, info: dict) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "run.json", (json.dumps({"params": params, "info": info}, indent=2) + "\n").encode())
    except UnsafeFileError as exc:
        raise RunError(f"the run folder {out} cannot be used: {exc.strerror}, or use another --out") from None
    except OSError as exc:
        raise RunError(f"cannot write {out / 'run.json'} ({exc.strerror or exc}); run.json is left as it was. "
                       "Free space or make the folder writable, then run the same command again, or use "
                       "another --out.") from None
