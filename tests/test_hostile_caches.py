"""Hostile inputs, 8: caches cannot lie.

The feature cache serves a sample's features only when its row checks out against its digest
(bound to the cache, the sample index, the shape, the bytes and the content of the image file): an
image rewritten at the same path, a damaged, moved or foreign row, a truncated or foreign database
or a link in the cache folder is never used; the run's records are those of a run without a cache,
with a warning. A cache folder that cannot hold a cache is a one-line refusal before any work.
The micro sets' cache is checked by the digest of its files. The runs use the micro-CLIP
architecture with seeded random weights on a fake EuroSAT (test_runs.py's helpers).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tptlib as tpt
from _helpers import assert_one_line_refusal, make_eurosat, read_store, run_cli
from test_hostile_values import N, VIEWS
from tptlib import runs
from tptlib.micro import sets as msets
from tptlib.runs import features

WARNED = "tptlib.runs.features"


def evaluate(clip, task, out, **kw):
    kw = {"n_views": VIEWS, "batch_size": 3, "progress": False, **kw}
    return runs.evaluate(clip, task, tpt.TPT(selection_p=0.25), out, **kw)


@pytest.fixture
def data(tmp_path):
    """A fresh fake EuroSAT per test (some tests rewrite its images)."""
    root = make_eurosat(tmp_path / "data", n=N)
    return root, tpt.load_task("eurosat", root)


@pytest.fixture
def cached(clip, data, tmp_path):
    """A feature cache filled by a first run; (cache folder, its entry folder)."""
    cache = tmp_path / "features"
    evaluate(clip, data[1], tmp_path / "first", feature_cache=cache)
    (entry,) = cache.iterdir()
    return cache, entry


def records(out: Path):
    return read_store(out / "records.sqlite")


def assert_same_records(a: Path, b: Path) -> None:
    ra, rb = records(a), records(b)
    assert [(i, p) for i, p, _, _ in ra] == [(i, p) for i, p, _, _ in rb]
    for (_, _, la, xa), (_, _, lb, xb) in zip(ra, rb):
        assert la == pytest.approx(lb, abs=1e-5)
        np.testing.assert_allclose(np.frombuffer(xa, "<f4"), np.frombuffer(xb, "<f4"), atol=1e-4)


def rewrite_images(root: Path) -> None:
    """Other pictures at the same paths, with the same sizes and modification times."""
    rng = np.random.default_rng(99)
    for path in sorted((root / "eurosat" / "2750").rglob("*.jpg")):
        st = path.stat()
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, "JPEG")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_images_rewritten_at_the_same_paths_do_not_get_the_old_features(clip, data, cached, tmp_path, caplog):
    root, task = data
    rewrite_images(root)
    task = tpt.load_task("eurosat", root)
    with caplog.at_level(logging.WARNING, WARNED):
        evaluate(clip, task, tmp_path / "cached", feature_cache=cached[0])
    assert "image changed since" in caplog.text
    evaluate(clip, task, tmp_path / "plain")
    assert_same_records(tmp_path / "cached", tmp_path / "plain")
    assert records(tmp_path / "cached") != records(tmp_path / "first")


def damage_a_row(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        blob = bytearray(conn.execute("SELECT feats FROM features WHERE idx = 2").fetchone()[0])
        blob[40:44] = np.float32(7.0).tobytes()
        conn.execute("UPDATE features SET feats = ? WHERE idx = 2", (bytes(blob),))


def swap_two_rows(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE features SET idx = -1 WHERE idx = 1")
        conn.execute("UPDATE features SET idx = 1 WHERE idx = 4")
        conn.execute("UPDATE features SET idx = 4 WHERE idx = -1")


def shorten_a_row(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE features SET feats = substr(feats, 1, 100) WHERE idx = 0")


@pytest.mark.parametrize("damage", [damage_a_row, swap_two_rows, shorten_a_row])
def test_a_damaged_or_moved_row_is_encoded_again_and_replaced(clip, data, cached, tmp_path, caplog, damage):
    db = cached[1] / "features.sqlite"
    damage(db)
    with caplog.at_level(logging.WARNING, WARNED):
        evaluate(clip, data[1], tmp_path / "cached", feature_cache=cached[0])
    assert "damaged or not this cache's" in caplog.text
    assert_same_records(tmp_path / "cached", tmp_path / "first")
    caplog.clear()
    with caplog.at_level(logging.WARNING, WARNED):            # the rows were rebuilt: no warning now
        evaluate(clip, data[1], tmp_path / "again", feature_cache=cached[0])
    assert caplog.text == ""
    assert_same_records(tmp_path / "again", tmp_path / "first")


def rows_of_another_seed(clip, task, entry, tmp_path):
    other = tmp_path / "other-cache"
    evaluate(clip, task, tmp_path / "seed1", seed=1, feature_cache=other)
    (other_entry,) = other.iterdir()
    shutil.copy(other_entry / "features.sqlite", entry / "features.sqlite")


def truncate(clip, task, entry, tmp_path):
    db = entry / "features.sqlite"
    db.write_bytes(db.read_bytes()[:1500])


def foreign_database(clip, task, entry, tmp_path):
    (entry / "features.sqlite").unlink()
    with sqlite3.connect(entry / "features.sqlite") as conn:
        conn.execute("CREATE TABLE features (idx INTEGER, stuff TEXT)")


def garbage(clip, task, entry, tmp_path):
    (entry / "features.sqlite").write_bytes(os.urandom(8192))


def foreign_cache_json(clip, task, entry, tmp_path):
    meta = entry / "cache.json"
    key = json.loads(meta.read_text())
    key["seed"] = 5
    meta.write_text(json.dumps(key))


@pytest.mark.parametrize("damage, warning", [
    (rows_of_another_seed, "damaged or not this cache's"),
    (truncate, "cannot be used"), (foreign_database, "cannot be used"), (garbage, "cannot be used"),
    (foreign_cache_json, "cannot be used"),
])
def test_a_damaged_or_foreign_cache_is_not_used(clip, data, cached, tmp_path, caplog, damage, warning):
    damage(clip, data[1], cached[1], tmp_path)
    with caplog.at_level(logging.WARNING, WARNED):
        evaluate(clip, data[1], tmp_path / "cached", feature_cache=cached[0])
    assert warning in caplog.text
    assert_same_records(tmp_path / "cached", tmp_path / "first")


@pytest.mark.parametrize("name", ["features.sqlite", "cache.json", "features.sqlite-journal"])
def test_a_link_in_the_cache_folder_is_not_written_through(clip, data, cached, tmp_path, caplog, name):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (cached[1] / name).unlink(missing_ok=True)
    os.symlink(victim, cached[1] / name)
    with caplog.at_level(logging.WARNING, WARNED):
        evaluate(clip, data[1], tmp_path / "cached", feature_cache=cached[0])
    assert "is a symbolic link" in caplog.text and "it is ignored" in caplog.text
    assert victim.read_text() == "keep me\n"
    assert_same_records(tmp_path / "cached", tmp_path / "first")


class _FullDisk(sqlite3.Connection):
    def executemany(self, *args):
        raise sqlite3.OperationalError("database or disk is full")


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_run_completes(clip, data, tmp_path, caplog,
                                                                           monkeypatch):
    monkeypatch.setattr(features.FeatureCache, "_connect",
                        lambda self: sqlite3.connect(self.path, factory=_FullDisk))
    with caplog.at_level(logging.WARNING, WARNED):
        result = evaluate(clip, data[1], tmp_path / "cached", feature_cache=tmp_path / "features")
    assert "cannot write to the feature cache" in caplog.text and caplog.text.count("cannot write") == 1
    assert result.summary["n"] == N and result.summary["n_errors"] == 0
    evaluate(clip, data[1], tmp_path / "plain")
    assert_same_records(tmp_path / "cached", tmp_path / "plain")


def too_long(tmp: Path) -> str:
    return str(tmp / ("x" * 300))


@pytest.mark.parametrize("make, message", [
    (lambda tmp: (tmp / "notes.txt").write_text("x") and str(tmp / "notes.txt"), "is a file, not a folder"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and str(tmp / "notes.txt" / "cache"), "which is a file"),
    (too_long, "is a path too long"),
    (lambda tmp: " ", "the feature cache folder is empty"),
])
def test_a_cache_folder_that_cannot_hold_a_cache_is_one_line_before_any_work(weights, tmp_path, capsys, make, message):
    root = make_eurosat(tmp_path / "data", n=3)
    cache = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["eval", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root), "--views", "4",
            "--method", "zeroshot", "--out", str(tmp_path / "run"), "--no-progress", "--feature-cache", cache]
    code, err = run_cli(args, capsys)
    assert_one_line_refusal(code, err, message)
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# --- the micro sets' cache ---------------------------------------------------------------------

def test_a_micro_set_whose_files_changed_is_rendered_again(tmp_path, caplog):
    folder = msets.ensure_set("Fill", root=tmp_path, n=12)
    images = sorted((folder / "images").glob("*.png"))
    original = images[3].read_bytes()
    Image.new("RGB", (96, 96), "white").save(images[3])                 # an image rewritten in place
    with caplog.at_level(logging.WARNING, "tptlib.micro"):
        task = msets.micro_task("Fill", root=tmp_path, n=12)
    assert "are not those that were rendered" in caplog.text
    assert images[3].read_bytes() == original and len(task) == 12
    caplog.clear()
    (folder / "images" / "99999.png").write_bytes(original)             # a file added
    with caplog.at_level(logging.WARNING, "tptlib.micro"):
        msets.ensure_set("Fill", root=tmp_path, n=12)
    assert "are not those that were rendered" in caplog.text
    assert not (folder / "images" / "99999.png").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "tptlib.micro"):              # as rendered: used as it is
        msets.ensure_set("Fill", root=tmp_path, n=12)
    assert caplog.text == ""


def test_a_micro_set_digest_reads_every_entry_in_path_order(tmp_path):
    """The digest recorded by every rendered set: relative paths in `sorted(rglob)` order (part by
    part: "a/b" before "a-b"), file bytes, folders, and links counted by kind, never followed."""
    import hashlib
    for rel in ["a/b.png", "a-b.png", "a/c/d.png", "A.png", "set.json", msets.CONTENT_FILE]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    (tmp_path / "link.png").symlink_to(tmp_path / "A.png")
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)

    def by_definition(folder):
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if rel in ("set.json", msets.CONTENT_FILE):
                continue
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                h.update(f"{rel}\tnot a file\n".encode())
            elif path.is_file():
                h.update(f"{rel}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
            else:
                h.update(f"{rel}/\n".encode())
        return h.hexdigest()

    assert msets.content_digest(tmp_path) == by_definition(tmp_path)
    before = msets.content_digest(tmp_path)
    (tmp_path / "a" / "c" / "d.png").write_bytes(b"changed")
    assert msets.content_digest(tmp_path) != before


# --- the workbook's view-logits cache ------------------------------------------------------------

def test_the_workbook_view_logits_cache_follows_the_images_and_survives_damage(clip, data, tmp_path, caplog):
    import torch

    from tptlib import analysis, workbook
    root, task = data
    old, _ = workbook.cached_view_logits(tmp_path / "runs", clip, task, limit=3, n_views=4)
    rewrite_images(root)
    task = tpt.load_task("eurosat", root)
    fresh, labels = analysis.sample_view_logits(clip, task, range(3), n_views=4, batch_size=16, progress=False)
    new, _ = workbook.cached_view_logits(tmp_path / "runs", clip, task, limit=3, n_views=4)
    assert torch.equal(new, fresh) and not torch.equal(new, old)
    for path in (tmp_path / "runs").rglob("views-*.pt"):
        path.write_bytes(path.read_bytes()[:300])                     # truncated
    with caplog.at_level(logging.WARNING, "tptlib.workbook"):
        again, again_labels = workbook.cached_view_logits(tmp_path / "runs", clip, task, limit=3, n_views=4)
    assert "cannot be read" in caplog.text
    assert torch.equal(again, fresh) and (again_labels == labels).all()
