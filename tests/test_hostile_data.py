"""Hostile inputs, 2-4: one file never blocks a run; walking a dataset is finite and honest; split
files are checked, not trusted.

Each case is built in a temporary folder. A file that cannot be read is one error row (and one line
of `tpt data check`), every other sample scored exactly as in a clean run; a folder tree or split
file that would give a task whose labels mean something else is refused, saying what is wrong.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tptlib as tpt
from _helpers import EUROSAT_NAMES, make_eurosat, read_store
from test_data import A_WNIDS, TPT_NAMES, class_tree, image
from tptlib import cli, runs
from tptlib.data import DatasetLayoutError, load_task, read_imagefolder, read_split_json
from tptlib.data.base import CorruptImageError, Task

VIEWS = 8


# --- files that PIL cannot read, or reads wrongly ------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels (a decompression bomb to PIL) with no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


GREY = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


#: sample index -> (file bytes, what its error row says; None: scored)
HOSTILE = {
    1: (png_header_only(30000, 30000), "DecompressionBombError"),
    2: (encoded(Image.fromarray(GREY.astype(np.uint16) * 257), "PNG"), None),       # 16-bit, 'I;16'
    3: (encoded(Image.fromarray(GREY.astype(np.float32) / 255), "TIFF"), "32 bits (PIL mode 'F')"),
    4: (b"", "UnidentifiedImageError"),                                                 # a zero-byte file
    5: (b"<html>not found</html>\n", "UnidentifiedImageError"),                         # text named .jpg
    6: (encoded(Image.fromarray(GREY).convert("RGB"), "JPEG")[:300], "OSError: Truncated File Read"),
    7: (encoded(Image.new("L", (60000, 1)), "PNG"), "is 60000x1 pixels"),                # too elongated
    8: (encoded(Image.fromarray(GREY.astype(np.int32)), "TIFF"), "32 bits (PIL mode 'I')"),
}


def write_samples(root: Path, files: dict[int, bytes]) -> None:
    for i, data in files.items():
        (root / "eurosat" / "2750" / f"class{i % 10}" / f"img{i}.jpg").write_bytes(data)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A clean fake EuroSAT (sample 2 an 8-bit greyscale PNG) and the same with the hostile files."""
    clean = make_eurosat(tmp_path_factory.mktemp("clean"), n=12)
    write_samples(clean, {2: encoded(Image.fromarray(GREY), "PNG")})
    hostile = tmp_path_factory.mktemp("hostile")
    shutil.copytree(clean / "eurosat", hostile / "eurosat")
    write_samples(hostile, {i: data for i, (data, _) in HOSTILE.items()})
    return clean, hostile


@pytest.mark.slow
def test_every_unreadable_file_is_one_error_row_and_the_rest_scores_as_a_clean_run(clip, roots, tmp_path):
    clean_root, hostile_root = roots
    method = tpt.TPT(selection_p=0.25)
    clean = runs.evaluate(clip, load_task("eurosat", clean_root), method, tmp_path / "clean", n_views=VIEWS,
                          batch_size=4, progress=False)
    res = runs.evaluate(clip, load_task("eurosat", hostile_root), method, tmp_path / "hostile", n_views=VIEWS,
                        batch_size=4, progress=False)
    errors = dict(zip(res.records["idx"], res.records["error"]))
    for i, (_, expected) in HOSTILE.items():
        if expected is None:
            assert errors[i] is None
        else:
            assert errors[i].startswith("CorruptImageError: ") and expected in errors[i], errors[i]
            assert f"img{i}.jpg" in errors[i]
    bad = {i for i, (_, expected) in HOSTILE.items() if expected}
    assert all(errors[i] is None for i in range(12) if i not in bad)
    ours = {r[0]: r for r in read_store(tmp_path / "hostile" / "records.sqlite")}
    theirs = {r[0]: r for r in read_store(tmp_path / "clean" / "records.sqlite")}
    for i in range(12):
        if i not in bad:
            assert ours[i] == theirs[i], i                                  # the 16-bit PNG included
    assert res.summary["n_errors"] == len(bad) and res.summary["n_scored"] == 12 - len(bad)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(HOSTILE[2][0])
    assert Image.open(path).mode == "I;16"
    task = Task("toy", ["x"], [(str(path), 0)], tmp_path)
    rgb = np.asarray(task.load_image(0))
    assert rgb.shape == (40, 56, 3) and (rgb == GREY[..., None]).all()


def test_data_check_names_every_unreadable_file(roots, capsys):
    _, hostile_root = roots
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(hostile_root)]) == 1
    report = capsys.readouterr().out
    n_bad = sum(1 for _, expected in HOSTILE.values() if expected and "pixels" not in expected)
    assert f"RESULT: PROBLEMS: {n_bad} unreadable images" in report
    for i, (_, expected) in HOSTILE.items():
        if expected and "is 60000x1" not in expected:      # elongation is a matter of the model's input size
            assert any(f"img{i}.jpg" in line and expected in line for line in report.splitlines()), i


def test_a_decompression_bomb_is_a_corrupt_image_not_a_crash(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(40000, 40000))
    task = Task("toy", ["x"], [(str(path), 0)], tmp_path)
    with pytest.raises(CorruptImageError, match="DecompressionBombError"):
        task.load_image(0)


# --- walking a dataset -------------------------------------------------------------------------

@pytest.fixture
def imagenet_a(tmp_path):
    """ImageNet-A's 200 class folders, two of them holding images."""
    return class_tree(tmp_path / "imagenet-a", A_WNIDS, {A_WNIDS[0]: 2, A_WNIDS[1]: 1})


def test_a_link_loop_inside_a_class_folder_is_read_once(imagenet_a):
    image(imagenet_a / A_WNIDS[0] / "sub" / "img9.png")
    before = load_task("A", root=imagenet_a).samples
    assert len(before) == 4
    os.symlink("..", imagenet_a / A_WNIDS[0] / "sub" / "up")            # class/sub/up -> class
    os.symlink(".", imagenet_a / A_WNIDS[1] / "self")                   # class/self -> class
    assert load_task("A", root=imagenet_a).samples == before


def test_a_link_inside_a_class_folder_to_the_dataset_folder_is_refused(imagenet_a):
    os.symlink("..", imagenet_a / A_WNIDS[0] / "up")                    # class/up -> the dataset folder
    with pytest.raises(DatasetLayoutError, match="is the dataset folder itself"):
        load_task("A", root=imagenet_a)


def test_a_class_folder_linked_to_the_dataset_folder_is_refused(imagenet_a):
    target = imagenet_a / A_WNIDS[5]
    target.rmdir()
    os.symlink(".", target)                                              # n0... -> its parent
    with pytest.raises(DatasetLayoutError, match="reached from two places through a link") as err:
        load_task("A", root=imagenet_a)
    assert f"{A_WNIDS[5]}, read for class {A_WNIDS[5]!r}, is the dataset folder itself" in str(err.value)


def test_a_link_from_one_class_into_another_is_refused(imagenet_a):
    os.symlink(imagenet_a / A_WNIDS[1], imagenet_a / A_WNIDS[0] / "more")
    with pytest.raises(DatasetLayoutError, match="reached from two places through a link") as err:
        load_task("A", root=imagenet_a)
    assert A_WNIDS[0] in str(err.value) and A_WNIDS[1] in str(err.value)


def test_hidden_folders_and_files_inside_class_folders_are_skipped(imagenet_a):
    before = load_task("A", root=imagenet_a).samples
    image(imagenet_a / A_WNIDS[0] / ".ipynb_checkpoints" / "img0-checkpoint.png")
    image(imagenet_a / A_WNIDS[0] / ".git" / "objects" / "x.png")
    (imagenet_a / A_WNIDS[1] / "._img0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    assert load_task("A", root=imagenet_a).samples == before


def deny(monkeypatch, denied: Path) -> None:
    """os.scandir refuses `denied` as it would a folder without read permission (tests run as root)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_class_folder_is_reported_as_unreadable_not_empty(imagenet_a, monkeypatch, capsys):
    deny(monkeypatch, imagenet_a / A_WNIDS[1])
    with pytest.raises(DatasetLayoutError) as err:
        load_task("A", root=imagenet_a)
    assert f"cannot read 1 folder: ['{imagenet_a / A_WNIDS[1]} (Permission denied)']" in str(err.value)
    assert cli.main(["data", "check", "--task", "A", "--root", str(imagenet_a)]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("tpt: error: ImageNet-A at") and "Permission denied" in err_text
    assert err_text.count("\n") == 1


def test_an_unreadable_dataset_folder_is_reported_as_unreadable(imagenet_a, monkeypatch):
    deny(monkeypatch, imagenet_a)
    with pytest.raises(DatasetLayoutError, match=r"cannot read the folder .*imagenet-a \(Permission denied\)"):
        read_imagefolder(imagenet_a, A_WNIDS, "ImageNet-A")


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_class_folder_without_read_permission_is_reported(imagenet_a):
    (imagenet_a / A_WNIDS[1]).chmod(0)
    try:
        with pytest.raises(DatasetLayoutError, match="cannot read 1 folder"):
            load_task("A", root=imagenet_a)
    finally:
        (imagenet_a / A_WNIDS[1]).chmod(0o755)


# --- split files -------------------------------------------------------------------------------

def eurosat_split(root: Path, test: list, names=EUROSAT_NAMES, train=None) -> Path:
    folder = root / "eurosat"
    image(folder / "2750" / "Forest" / "Forest_1.jpg", "JPEG")
    train = [[f"train/{y}.jpg", y, name] for y, name in enumerate(names)] if train is None else train
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": train, "val": [], "test": test}))
    return root


GOOD = ["Forest/Forest_1.jpg", 1, "Forest"]


@pytest.mark.parametrize("entry, message", [
    (["/etc/passwd", 1, "Forest"], "has the path '/etc/passwd', which is absolute"),
    (["../../outside.jpg", 1, "Forest"], "has the path '../../outside.jpg', which leaves the image folder"),
    (["Forest/../../x.jpg", 1, "Forest"], "has the path 'Forest/../../x.jpg', which leaves the image folder"),
    (["", 1, "Forest"], "has the path '', which is not a non-empty string"),
    (["Forest/Forest_1.jpg", "1", "Forest"], "has the label '1', not an integer >= 0"),
    (["Forest/Forest_1.jpg", 1.0, "Forest"], "has the label 1.0, not an integer >= 0"),
    (["Forest/Forest_1.jpg", True, "Forest"], "has the label True, not an integer >= 0"),
    (["Forest/Forest_1.jpg", -1, "Forest"], "has the label -1, not an integer >= 0"),
    (["Forest/Forest_1.jpg", 1], "is ['Forest/Forest_1.jpg', 1], not [path, label, name]"),
    (["Forest/Forest_1.jpg", 1, None], "has the class name None, not a string"),
])
def test_a_bad_split_entry_is_refused_and_named(tmp_path, entry, message):
    root = eurosat_split(tmp_path, [GOOD, entry])
    with pytest.raises(DatasetLayoutError) as err:
        load_task("eurosat", root)
    assert "entry 1 " + message in str(err.value)


def test_an_image_listed_twice_is_refused(tmp_path):
    root = eurosat_split(tmp_path, [GOOD, ["Forest/Forest_2.jpg", 1, "Forest"], GOOD])
    with pytest.raises(DatasetLayoutError, match=r"entry 2 lists 'Forest/Forest_1.jpg' again \(first at entry 0\)"):
        load_task("eurosat", root)


def test_a_permuted_split_is_refused_showing_the_first_disagreements(tmp_path):
    permuted = [EUROSAT_NAMES[1], EUROSAT_NAMES[0], *EUROSAT_NAMES[2:]]
    root = eurosat_split(tmp_path, [["Forest/Forest_1.jpg", 0, "Forest"]], names=permuted)
    with pytest.raises(DatasetLayoutError) as err:
        load_task("eurosat", root)
    msg = str(err.value)
    assert "maps labels to other classes than TPT's class list for EuroSAT at 2 of 10 labels" in msg
    assert "label 0: 'Forest' in the file, 'Annual Crop Land' in TPT's list" in msg
    assert "label 1: 'Annual Crop Land' in the file, 'Forest' in TPT's list" in msg


def test_a_foreign_split_is_refused(tmp_path):
    dtd = TPT_NAMES["DTD"][:10]                      # ten classes, like EuroSAT, but textures
    root = eurosat_split(tmp_path, [["Forest/Forest_1.jpg", 1, dtd[1]]], names=dtd)
    with pytest.raises(DatasetLayoutError, match="at 10 of 10 labels .*label 0: 'banded' in the file"):
        load_task("eurosat", root)


def test_a_label_beyond_the_task_classes_is_refused(tmp_path):
    names = [*EUROSAT_NAMES, "Glacier"]
    root = eurosat_split(tmp_path, [["Forest/Forest_1.jpg", 10, "Glacier"]], names=names)
    with pytest.raises(DatasetLayoutError, match="name 11 classes but TPT's class list has 10"):
        load_task("eurosat", root)


def test_split_names_agree_ignoring_case_spaces_and_punctuation(tmp_path):
    names = [n.upper().replace(" ", "_") for n in EUROSAT_NAMES]
    root = eurosat_split(tmp_path, [["Forest/Forest_1.jpg", 1, names[1]]], names=names)
    assert load_task("eurosat", root).classnames == EUROSAT_NAMES


@pytest.mark.parametrize("content", [b"[" * 100000, b"\xff\xfe not text", b'{"test": {"a": 1}}', b"null"])
def test_a_split_file_that_is_not_one_is_refused(tmp_path, content):
    root = eurosat_split(tmp_path, [GOOD])
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_bytes(content)
    with pytest.raises(DatasetLayoutError, match="is not a split file of the expected form"):
        load_task("eurosat", root)


def test_read_split_json_refuses_a_path_out_of_the_image_folder(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"test": [["../secret.png", 0, "cat"]]}))
    with pytest.raises(DatasetLayoutError, match="leaves the image folder"):
        read_split_json(tmp_path, "split.json", "imgs", "toy")


def aircraft(root: Path, lines: list[str]) -> Path:
    data = root / "fgvc_aircraft"
    image(data / "images" / "0001.jpg", "JPEG")
    (data / "variants.txt").write_text("\n".join(TPT_NAMES["Aircraft"]) + "\n")
    (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("line, message", [
    ("0001 707-320", "line 2 lists '0001' again (first on line 1)"),
    ("../0001 707-320", "line 2 names the image '../0001', which leaves the image folder"),
    ("0002 Concorde-X", "line 2 names the variant 'Concorde-X', which is not in variants.txt"),
])
def test_aircraft_lists_are_checked_too(tmp_path, line, message):
    root = aircraft(tmp_path, ["0001 707-320", line])
    with pytest.raises(DatasetLayoutError) as err:
        load_task("Aircraft", root)
    assert message in str(err.value)


def test_an_aircraft_list_that_is_not_text_is_refused(tmp_path):
    root = aircraft(tmp_path, ["0001 707-320"])
    (root / "fgvc_aircraft" / "variants.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetLayoutError, match="cannot read .*variants.txt as text"):
        load_task("Aircraft", root)


def test_the_command_line_refuses_a_bad_split_in_one_line(tmp_path, capsys):
    root = eurosat_split(tmp_path, [GOOD, ["/abs/x.jpg", 1, "Forest"]])
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tpt: error: EuroSAT: ") and "is absolute" in err and err.count("\n") == 1
