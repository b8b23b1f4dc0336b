"""Dataset loaders on tiny fake folder trees: every layout, every refusal, the label mappings."""
from __future__ import annotations

import json
import sys
import types
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from tptlib.data import (CorruptImageError, DatasetLayoutError, MissingImageError, check_task, list_tasks,
                         load_task, read_imagefolder, read_split_json)
from tptlib.data.base import Task
from tptlib.data.catalog import _timm_info, interleave_classes


@pytest.fixture(scope="module")
def imagenet_names():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


WNIDS = _timm_info("imagenet_synsets.txt")
A_WNIDS = _timm_info("imagenet_a_synsets.txt")
A_INDICES = [int(i) for i in _timm_info("imagenet_a_indices.txt")]
R_WNIDS = _timm_info("imagenet_r_synsets.txt")
R_INDICES = [int(i) for i in _timm_info("imagenet_r_indices.txt")]
TPT_NAMES = json.loads(resources.files("tptlib").joinpath("resources/tpt_classnames.json").read_text())


def image(path: Path, fmt: str = "PNG", color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, fmt)
    return path


def class_tree(folder: Path, names, images: dict[str, int] | None = None) -> Path:
    """`folder` with one sub-folder per name; `images[name]` PNGs in the named ones."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for name, n in (images or {}).items():
        for k in range(n):
            image(folder / name / f"img{k}.png")
    return folder


def split_file(path: Path, test: list, classes: int | str) -> None:
    """A CoOp split file whose train list names every class once and whose test list is `test`.
    `classes`: how many (named `class_<y>` unless `test` names them), or a task whose TPT class
    names they take."""
    names = list(TPT_NAMES[classes]) if isinstance(classes, str) else [f"class_{y}" for y in range(classes)]
    for _, y, c in test:
        names[y] = c
    train = [[f"train/{y}.jpg", y, name] for y, name in enumerate(names)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": train, "val": [], "test": test}))


# --- the ImageNet family ---------------------------------------------------------------------

def test_imagenet_val_labels_follow_the_wnid_order(tmp_path, imagenet_names):
    val = class_tree(tmp_path / "ImageNet" / "val", WNIDS, {WNIDS[0]: 2, WNIDS[999]: 1, WNIDS[500]: 1})
    task = load_task("I", root=tmp_path)
    assert task.name == "I" and not task.augmix
    assert task.classnames == imagenet_names and len(task.classnames) == 1000
    assert task.labels == [0, 500, 999, 0]          # round-robin over classes, see interleave_classes
    assert task.root == val
    assert task.load_image(0).size == (8, 8)
    # the same folder reached from the ImageNet folder or given directly
    assert load_task("imagenet", root=tmp_path / "ImageNet").samples == task.samples
    assert load_task("I", root=val).samples == task.samples


def test_imagenet_a_labels_index_the_200_subset_in_timm_order(tmp_path, imagenet_names):
    folder = class_tree(tmp_path / "imagenet-a", A_WNIDS, {"n01498041": 1, A_WNIDS[-1]: 1})
    (folder / "README.txt").write_text("ImageNet-A")   # the archive ships one; files are not classes
    task = load_task("imagenet-a", root=tmp_path)
    assert task.name == "A" and len(task.classnames) == 200
    assert task.labels == [0, 199]
    # label 0 is n01498041, which is ImageNet class 6, 'stingray'
    assert A_WNIDS[0] == "n01498041" and A_INDICES[0] == 6 and task.classnames[0] == "stingray"
    assert task.classnames == [imagenet_names[i] for i in A_INDICES]
    assert task.meta["wnids"] == A_WNIDS


def test_imagenet_r_labels_index_its_200_subset(tmp_path, imagenet_names):
    class_tree(tmp_path / "imagenet-r", R_WNIDS, {R_WNIDS[0]: 1, R_WNIDS[57]: 1})
    task = load_task("R", root=tmp_path)
    assert task.labels == [0, 57]
    assert task.classnames[0] == "goldfish" == imagenet_names[R_INDICES[0]]
    assert task.classnames == [imagenet_names[i] for i in R_INDICES]


def test_imagenet_v2_numbered_folders_map_to_their_integer_not_their_sort_rank(tmp_path, imagenet_names):
    names = [str(i) for i in range(1000)]
    class_tree(tmp_path / "imagenetv2-matched-frequency-format-val", names, {"2": 1, "10": 1, "100": 1})
    task = load_task("V", root=tmp_path)
    # ImageFolder order sorts the names as strings ('10' < '100' < '2'), labels are the integers:
    # string-sort ranks would have given '10' label 2 and '2' label 112
    assert {Path(p).parent.name: label for p, label in task.samples} == {"10": 10, "100": 100, "2": 2}
    assert [Path(p).parent.name for p, _ in sorted(task.samples)] == ["10", "100", "2"]
    assert task.classnames == imagenet_names


def test_imagenet_sketch_accepts_the_archive_sketch_folder(tmp_path):
    class_tree(tmp_path / "ImageNet-Sketch" / "sketch", WNIDS, {WNIDS[3]: 2})
    task = load_task("K", root=tmp_path)
    assert task.labels == [3, 3] and task.root == tmp_path / "ImageNet-Sketch" / "sketch"


def test_only_image_files_count_and_hidden_folders_are_ignored(tmp_path):
    folder = class_tree(tmp_path / "imagenet-a", A_WNIDS)
    image(folder / A_WNIDS[1] / "b.JPEG", "JPEG")
    image(folder / A_WNIDS[1] / "a.webp", "WEBP")
    (folder / A_WNIDS[1] / "notes.txt").write_text("not an image")
    (folder / ".ipynb_checkpoints").mkdir()
    task = load_task("A", root=folder)
    assert [Path(p).name for p, _ in task.samples] == ["a.webp", "b.JPEG"]


def test_root_one_folder_too_high_is_refused_with_a_suggestion(tmp_path):
    folder = class_tree(tmp_path / "datasets" / "imagenet-a", A_WNIDS, {A_WNIDS[0]: 1})
    (tmp_path / "README.txt").write_text("")
    with pytest.raises(DatasetLayoutError) as err:
        load_task("A", root=tmp_path)
    msg = str(err.value)
    assert f"ImageNet-A at {tmp_path}: expected 200 class folders" in msg
    assert "n01498041, n01531178, ..." in msg
    assert "found 2 entries: ['README.txt', 'datasets']" in msg
    assert f"Did you mean root='{folder}'?" in msg


def test_root_one_folder_too_low_suggests_the_parent(tmp_path):
    folder = class_tree(tmp_path / "imagenet-a", A_WNIDS, {A_WNIDS[0]: 1})
    with pytest.raises(DatasetLayoutError) as err:
        load_task("A", root=folder / A_WNIDS[0])
    assert "The images sit directly in this folder" in str(err.value)
    assert f"Did you mean root='{folder}'?" in str(err.value)


def test_a_missing_class_folder_is_refused_and_named(tmp_path):
    folder = class_tree(tmp_path / "imagenet-r", R_WNIDS[1:], {R_WNIDS[1]: 1})
    with pytest.raises(DatasetLayoutError) as err:
        load_task("R", root=tmp_path)
    assert f"ImageNet-R at {folder}" in str(err.value)
    assert f"1 of them are missing: ['{R_WNIDS[0]}']" in str(err.value)


def test_an_extra_folder_is_refused_and_named(tmp_path):
    class_tree(tmp_path / "imagenet-r", [*R_WNIDS, "imagenet-r-extra"], {R_WNIDS[0]: 1})
    with pytest.raises(DatasetLayoutError, match=r"1 unexpected folder: \['imagenet-r-extra'\]"):
        load_task("R", root=tmp_path)


def test_class_folders_without_any_image_are_refused(tmp_path):
    class_tree(tmp_path / "imagenet-a", A_WNIDS)
    with pytest.raises(DatasetLayoutError, match="no image files"):
        load_task("A", root=tmp_path)


def test_read_imagefolder_takes_labels_from_a_function(tmp_path):
    class_tree(tmp_path, ["7", "3"], {"7": 1, "3": 1})
    assert [y for _, y in read_imagefolder(tmp_path, ["7", "3"], "toy")] == [1, 0]     # position in the list
    assert [y for _, y in read_imagefolder(tmp_path, ["7", "3"], "toy", labels_from=int)] == [3, 7]


# --- CoOp-split sets -------------------------------------------------------------------------

def test_flowers_split_reads_the_test_list_with_tpt_class_names(tmp_path):
    folder = tmp_path / "Flower102"
    image(folder / "jpg" / "image_00001.jpg", "JPEG")
    image(folder / "jpg" / "image_00002.jpg", "JPEG")
    split_file(folder / "split_zhou_OxfordFlowers.json",
               [["image_00002.jpg", 101, TPT_NAMES["Flower102"][101]],
                ["image_00001.jpg", 0, TPT_NAMES["Flower102"][0]]], "Flower102")
    task = load_task("Flowers", root=tmp_path)
    assert task.name == "Flower102" and task.augmix
    assert task.classnames == TPT_NAMES["Flower102"]
    assert sorted(task.samples, key=lambda s: s[1]) == [(str(folder / "jpg" / "image_00001.jpg"), 0),
                                                       (str(folder / "jpg" / "image_00002.jpg"), 101)]
    assert load_task("flower102", root=folder).samples == task.samples    # root = the dataset folder


def test_pets_in_coop_layout_and_in_tpt_layout_with_split_dir(tmp_path):
    keeshond = TPT_NAMES["Pets"].index("keeshond")
    test = [["keeshond_59.jpg", keeshond, "keeshond"]]
    # CoOp: $DATA/oxford_pets/{images/, split_zhou_OxfordPets.json}
    coop = tmp_path / "coop"
    image(coop / "oxford_pets" / "images" / "keeshond_59.jpg", "JPEG")
    split_file(coop / "oxford_pets" / "split_zhou_OxfordPets.json", test, "Pets")
    task = load_task("pets", root=coop)
    assert task.samples == [(str(coop / "oxford_pets" / "images" / "keeshond_59.jpg"), keeshond)]
    # TPT: $DATA/OxfordPets holds the images, the split files sit in the TPT checkout's data/data_splits
    tpt = tmp_path / "tpt"
    image(tpt / "OxfordPets" / "keeshond_59.jpg", "JPEG")
    split_file(tmp_path / "data_splits" / "split_zhou_OxfordPets.json", test, "Pets")
    task = load_task("Pets", root=tpt, split_dir=tmp_path / "data_splits")
    assert task.samples == [(str(tpt / "OxfordPets" / "keeshond_59.jpg"), keeshond)]
    assert task.classnames[keeshond] == "keeshond"


def test_a_missing_split_file_says_which_file_where(tmp_path):
    image(tmp_path / "DTD" / "images" / "banded" / "banded_0002.jpg", "JPEG")
    with pytest.raises(DatasetLayoutError) as err:
        load_task("DTD", root=tmp_path)
    assert "split_zhou_DescribableTextures.json" in str(err.value)
    assert str(tmp_path / "DTD") in str(err.value)


def test_a_split_whose_images_are_all_absent_is_a_layout_error(tmp_path):
    split_file(tmp_path / "eurosat" / "split_zhou_EuroSAT.json", [["Forest/Forest_1.jpg", 1, "Forest"]], 10)
    with pytest.raises(DatasetLayoutError, match=r"none of the 1 images .*eurosat/2750"):
        load_task("eurosat", root=tmp_path)


def test_a_split_with_another_class_count_than_tpt_is_refused(tmp_path):
    image(tmp_path / "DTD" / "images" / "a.jpg", "JPEG")
    split_file(tmp_path / "DTD" / "split_zhou_DescribableTextures.json", [["a.jpg", 0, "banded"]], 46)
    with pytest.raises(DatasetLayoutError, match="46 classes but TPT's class list has 47"):
        load_task("DTD", root=tmp_path)


def test_read_split_json_derives_class_names_from_the_split(tmp_path):
    image(tmp_path / "imgs" / "b.png")
    (tmp_path / "split.json").write_text(json.dumps(
        {"train": [["a.png", 0, "cat"]], "test": [["b.png", 1, "dog"], ["c.png", 0, "cat"]]}))
    samples, names = read_split_json(tmp_path, "split.json", "imgs", "toy")
    assert names == ["cat", "dog"]
    assert samples == [(str(tmp_path / "imgs" / "b.png"), 1), (str(tmp_path / "imgs" / "c.png"), 0)]


def test_a_listed_but_missing_file_fails_at_load_image_and_check_reports_it(tmp_path):
    folder = tmp_path / "Food101"
    image(folder / "images" / "apple_pie" / "1.jpg", "JPEG")
    split_file(folder / "split_zhou_Food101.json",
               [["apple_pie/1.jpg", 0, "apple_pie"], ["apple_pie/2.jpg", 0, "apple_pie"]], "Food101")
    task = load_task("Food101", root=tmp_path)
    assert len(task) == 2
    task.load_image(0)
    with pytest.raises(MissingImageError, match="apple_pie/2.jpg"):
        task.load_image(1)
    report = check_task("food", root=tmp_path)
    assert "listed files missing on disk: 1 of 2" in report
    assert report.splitlines()[-1].startswith("RESULT: PROBLEMS: 1 missing files")


def test_a_truncated_jpeg_is_a_corrupt_image_and_check_reports_it(tmp_path):
    folder = class_tree(tmp_path / "imagenet-a", A_WNIDS, {A_WNIDS[0]: 2})
    bad = image(folder / A_WNIDS[1] / "bad.jpg", "JPEG")
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    task = load_task("A", root=tmp_path)
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        task.load_image([Path(p).name for p, _ in task.samples].index("bad.jpg"))
    report = check_task("A", root=tmp_path)
    assert "opened 3 of 3 images on disk (all): 1 failed to open" in report
    assert "RESULT: PROBLEMS: 1 unreadable images, 198 empty classes" in report
    assert "      0      2  stingray" in report
    assert "opened 1 of 3 images on disk (an even spread)" in check_task("A", root=tmp_path, max_images=1)


# --- FGVC-Aircraft ---------------------------------------------------------------------------

def test_aircraft_reads_the_official_data_folder_in_variants_order(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    variants = TPT_NAMES["Aircraft"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    (data / "images_variant_test.txt").write_text("1514522 737-200\n0056978 F-16A/B\n")
    image(data / "images" / "1514522.jpg", "JPEG")
    image(data / "images" / "0056978.jpg", "JPEG")
    task = load_task("aircraft", root=tmp_path)
    assert task.name == "Aircraft" and task.augmix and task.classnames == variants
    assert task.labels == [variants.index("737-200"), variants.index("F-16A/B")] == [2, 72]
    assert task.samples[1][0] == str(data / "images" / "0056978.jpg")
    assert load_task("Aircraft", root=data).samples == task.samples


def test_aircraft_without_variants_file_is_refused(tmp_path):
    (tmp_path / "fgvc_aircraft" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"expected variants.txt in .*fgvc_aircraft"):
        load_task("Aircraft", root=tmp_path)


# --- names -----------------------------------------------------------------------------------

def test_list_tasks_gives_class_counts_and_the_authors_folder_names():
    info = {t.name: t for t in list_tasks()}
    counts = {"I": 1000, "A": 200, "V": 1000, "R": 200, "K": 1000, "Flower102": 102, "DTD": 47, "Pets": 37,
              "Cars": 196, "UCF101": 101, "Caltech101": 100, "Food101": 101, "SUN397": 397, "eurosat": 10,
              "Aircraft": 100}
    assert {n: t.n_classes for n, t in info.items()} == counts
    dirs = {"I": "ImageNet/val", "A": "imagenet-a", "K": "ImageNet-Sketch", "R": "imagenet-r",
            "V": "imagenetv2-matched-frequency-format-val", "Flower102": "Flower102", "DTD": "DTD",
            "Pets": "OxfordPets", "Cars": "StanfordCars", "UCF101": "UCF101", "Caltech101": "Caltech101",
            "Food101": "Food101", "SUN397": "SUN397", "Aircraft": "fgvc_aircraft", "eurosat": "eurosat"}
    assert {n: t.default_dir for n, t in info.items()} == dirs
    assert [n for n, t in info.items() if not t.augmix] == ["I", "A", "V", "R", "K"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'imagenet-c'; known tasks: I, A, V, R, K, Flower102"):
        load_task("imagenet-c", root=".")


def test_micro_names_are_delegated_to_the_micro_profile(monkeypatch):
    calls = []
    fake = types.ModuleType("tptlib.micro.sets")
    made = Task("micro:Sketch", ["a", "b"], [("x0", 0), ("x1", 0), ("y0", 1)], Path("/r"))
    fake.micro_task = lambda name, root=None, **kw: calls.append((name, root, kw)) or made
    monkeypatch.setitem(sys.modules, "tptlib.micro.sets", fake)
    assert load_task("micro:Sketch", root="/r", size=3) is made
    assert made.samples == [("x0", 0), ("y0", 1), ("x1", 0)]
    assert calls == [("Sketch", "/r", {"size": 3})]


def test_files_in_nested_class_subfolders_are_read_in_sorted_order(tmp_path):
    for sub in ("z", "m", "a"):
        image(tmp_path / "cls" / sub / "1.png")
    image(tmp_path / "cls" / "0.png")
    samples = read_imagefolder(tmp_path, ["cls"], "toy")
    assert [Path(p).relative_to(tmp_path / "cls").as_posix() for p, _ in samples] == ["0.png", "a/1.png", "m/1.png", "z/1.png"]


def test_aliases_are_case_insensitive_and_each_names_one_task(tmp_path):
    for alias, title in [("IMAGENET-A", "ImageNet-A"), ("ImageNet_Sketch", "ImageNet-Sketch"), ("in-v2", "ImageNet-V2")]:
        with pytest.raises(DatasetLayoutError, match=f"^{title} at "):
            load_task(alias, root=tmp_path)
    normalized = [a.lower().replace("-", "").replace("_", "") for t in list_tasks() for a in {t.name, *t.aliases}]
    assert len(normalized) == len(set(normalized))


def test_the_first_n_samples_of_a_task_cover_the_classes_evenly():
    samples = [(f"c{c}_{k}", c) for c in range(3) for k in range({0: 5, 1: 2, 2: 3}[c])]
    task = interleave_classes(Task("toy", ["a", "b", "c"], samples, Path("/")))
    assert [label for _, label in task.samples] == [0, 1, 2, 0, 1, 2, 0, 2, 0, 0]
    assert sorted(task.samples) == sorted(samples)
    assert [p for p, label in task.samples if label == 0] == [f"c0_{k}" for k in range(5)]
