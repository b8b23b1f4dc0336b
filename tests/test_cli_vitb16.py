"""`tpt eval` end to end (`cli.main`, the program's entry point) with a real-size architecture
(ViT-B/16, random weights) on a fake ImageNet-A tree: it runs on the CPU and a second call resumes
without duplicating a record.

Slow (TPT through ViT-B/16's text tower for 200 classes): half a minute on a free 2-core CPU.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tptlib import cli
from tptlib.data.catalog import _timm_info


def make_imagenet_a(root: Path, per_class: int = 2, n_classes: int = 3) -> Path:
    """A fake ImageNet-A: the 200 WordNet-id folders, noise images in the first `n_classes`."""
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(_timm_info("imagenet_a_synsets.txt")):
        folder = root / "imagenet-a" / wnid
        folder.mkdir(parents=True)
        for j in range(per_class if k < n_classes else 0):
            Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / f"{j}.jpg")
    return root


@pytest.mark.slow
def test_vitb16_tpt_on_a_fake_imagenet_a_runs_and_resumes_without_duplicates(tmp_path, capsys):
    root, out = make_imagenet_a(tmp_path / "data"), tmp_path / "run"
    args = ["eval", "--model", "ViT-B-16", "--pretrained", "none", "--task", "A", "--root", str(root),
            "--method", "tpt", "--limit", "2", "--views", "2", "--selection-p", "0.5", "--out", str(out),
            "--no-progress"]
    assert cli.main(args) == 0
    first = capsys.readouterr()
    assert "tpt on A with ViT-B-16 (random weights)" in first.out and "2 of 2 recorded, 0 errors" in first.out
    with sqlite3.connect(out / "records.sqlite") as conn:
        rows = conn.execute("SELECT idx, pred, loss FROM records ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == [0, 1] and all(r[2] is not None for r in rows)

    assert cli.main(args) == 0                          # the same command again: a resume with nothing to do
    with sqlite3.connect(out / "records.sqlite") as conn:
        assert conn.execute("SELECT idx, pred, loss FROM records ORDER BY idx").fetchall() == rows
    assert "2 of this process's 2 samples already recorded; 0 to evaluate" in (out / "run.log").read_text()
