"""The micro profile's test sets, rendered on first use into a cache folder as ordinary files.

    from tptlib.micro.sets import micro_task
    task = micro_task("A")            # or tpt.load_task("micro:A")

Layouts are the ones real datasets use, and the data module's generic readers read them:

- ``I``, ``V2``, ``Sketch``, ``R``, ``A``, ``A-pool`` - ImageFolder trees, one folder per class
  name (``circle/``, ``square/``, ...), files ``<world index>.png``;
- ``Colour``, ``Fill``, ``Count`` (the cross tasks: labels that were never a training label set) -
  a CoOp-style ``split_micro_<set>.json`` (``{"test": [[rel_path, label, classname], ...]}``) and
  an ``images/`` folder.

Images are stored at ``world.RAW_SIZE`` (96 px), twice the micro-CLIP's input, as real datasets
store photographs larger than CLIP's 224 px: view 0 is the image resized to 48 px, and a crop has
detail that view 0 does not.

Every set has a *dev* twin, ``<set>-dev`` (``micro:A-dev``, ...): the same generator with another
seed, for design decisions and exploration; the plain names are the test sets, measured once.

Sets live under ``$TPTLIB_CACHE`` (default ``~/.cache/tptlib``) in ``micro/<data version>/<set>``;
each is written to a temporary folder and renamed into place, so a half-written set is never
read. A ``set.json`` in each folder records what was rendered (set definition, sample indices,
a digest of the renderer's source) and ``content.sha256`` a digest of its files as rendered; a set
whose record or files do not match (an image rewritten, added or removed) is rendered again.

``micro:A`` is filtered like ImageNet-A (kept where a *different* model is wrong): a pool of
3000 scenes with small target instances clustered off-centre among bigger distractors and
clutter (``A-pool``) was classified at build time by a filter model of another architecture,
trained on another sample of the training world (``tptlib.micro.train.FILTER``); the scenes that
model got wrong are ``A``. Their pool indices ship in the manifest (``A_filter.kept``, and
``A_filter.kept_dev`` for ``A-dev``) and only those are rendered.

Micro-profile parameter ``min_crop_scale = 0.25``: TPT's augmented views use
RandomResizedCrop with scale (0.25, 1) instead of torchvision's (0.08, 1) on these sets. An 8%
crop of a 48 px image is a 14 px patch that holds almost nothing; a 25% crop (24 px, upsampled
twice) still holds whole objects. This is a setting of the micro profile, not a change to TPT's
published defaults, which the real datasets keep.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import world

MIN_CROP_SCALE = 0.25
#: the file beside set.json that holds the digest of a rendered set's files (`content_digest`)
CONTENT_FILE = "content.sha256"
TEST_SEED = 1
DEV_SEED = 11
MICRO_TASKS = ["I", "V2", "Sketch", "R", "A", "Colour", "Fill", "Count"]
SHIFTED = ["V2", "Sketch", "R", "A"]
CROSS = ["Colour", "Fill", "Count"]


@dataclass(frozen=True)
class SetSpec:
    name: str
    profile: str
    seed: int
    n: int
    layout: str                 # "imagefolder" or "split"
    label: str                  # "shape", "colour", "fill" or "count"
    classnames: tuple
    augmix: bool
    description: str
    min_crop_scale: float = MIN_CROP_SCALE
    filtered: bool = False      # indices come from the manifest's A filter
    split: str = "test"         # "test" or "dev"

    def describe(self) -> dict:
        d = asdict(self)
        d["classnames"] = list(self.classnames)
        return d


_SH = tuple(world.SHAPES)
SETS: dict[str, SetSpec] = {s.name: s for s in [
    SetSpec("I", "I", 1, 1000, "imagefolder", "shape", _SH, False,
            "in-distribution: several instances of the class shape among fewer distractors "
            "(the ImageNet analogue)"),
    SetSpec("V2", "V2", 1, 1000, "imagefolder", "shape", _SH, False,
            "the same generator re-sampled with shifted ranges: smaller objects, up to 3 "
            "distractors, wider colour jitter, more textured backgrounds"),
    SetSpec("Sketch", "Sketch", 1, 1000, "imagefolder", "shape", _SH, False,
            "thin dark outlines on light paper"),
    SetSpec("R", "R", 1, 1000, "imagefolder", "shape", _SH, False,
            "renditions: checkered, gradient, speckled and double-outline fills, pastel / neon / "
            "greyscale palettes, checked and striped backgrounds (none seen in training)"),
    SetSpec("A-pool", "A", 1, 3000, "imagefolder", "shape", _SH, False,
            "unfiltered pool of hard scenes: 3-5 small instances of the class shape clustered in "
            "a corner among 2-4 distractors as big or bigger, on busy backgrounds"),
    SetSpec("A", "A", 1, 3000, "imagefolder", "shape", _SH, False,
            "the A-pool scenes that a filter model of another architecture (a small ViT, trained "
            "on another sample of the world) gets wrong, as ImageNet-A was filtered against a "
            "ResNet-50", filtered=True),
    SetSpec("Colour", "Colour", 1, 1000, "split", "colour", tuple(world.COLOURS), True,
            "cross task: the colour of the objects (shapes vary)"),
    SetSpec("Fill", "Fill", 1, 1000, "split", "fill", tuple(world.FILLS), True,
            "cross task: the fill style of the objects (shapes vary)"),
    SetSpec("Count", "Count", 1, 1000, "split", "count", tuple(world.COUNTS), True,
            "cross task: how many objects (1-5 of one shape)"),
]}


def _dev_twin(spec: SetSpec) -> SetSpec:
    return replace(spec, name=f"{spec.name}-dev", seed=DEV_SEED, split="dev",
                   description=f"dev twin of {spec.name} (seed {DEV_SEED}): {spec.description}")


SETS.update({f"{k}-dev": _dev_twin(v) for k, v in list(SETS.items())})


def cache_root() -> Path:
    """``$TPTLIB_CACHE`` or ``~/.cache/tptlib``, then ``micro/<data version>``."""
    base = os.environ.get("TPTLIB_CACHE") or os.path.join("~", ".cache", "tptlib")
    return Path(base).expanduser() / "micro" / world.DATA_VERSION


def _canonical(name: str) -> str:
    for k in SETS:
        if k.lower() == name.lower():
            return k
    raise KeyError(f"unknown micro set {name!r}; micro sets: {', '.join(MICRO_TASKS + ['A-pool'])} "
                   "and their dev twins (<set>-dev)")


def set_indices(name: str, n: int | None = None) -> list[int]:
    """World indices of a set (for ``A``: the kept pool indices from the shipped manifest)."""
    spec = SETS[_canonical(name)]
    if spec.filtered:
        from . import manifest
        try:
            kept = manifest()["A_filter"]["kept_dev" if spec.split == "dev" else "kept"]
        except FileNotFoundError as exc:
            raise FileNotFoundError("micro:A needs the shipped manifest (tptlib/micro/weights/"
                                    "manifest.json); build it with `tpt micro build`") from exc
        idx = list(kept)
    else:
        idx = list(range(spec.n))
    return idx if n is None else idx[:n]


def render_arrays(name: str, indices, chunk: int = 500, size: int = world.RAW_SIZE):
    """Render world indices of a set: ``(uint8 [B,3,size,size], Scene)`` (the stored pixels at the
    default size); the scene's tensors are concatenated over chunks (labels etc. for every index)."""
    spec = SETS[_canonical(name)]
    indices = list(indices)
    imgs, scenes = [], []
    for s in range(0, len(indices), chunk):
        img, sc = world.render(spec.profile, spec.seed, indices[s:s + chunk], size=size)
        imgs.append(img)
        scenes.append(sc)
    if not scenes:
        raise ValueError(f"micro set {name}: no indices")
    merged = world.Scene(**{k: torch.cat([getattr(sc, k) for sc in scenes])
                            for k in vars(scenes[0])})
    return torch.cat(imgs), merged


def view0_images(img8: torch.Tensor) -> torch.Tensor:
    """Stored pixels ``uint8 [B,3,R,R]`` -> what view 0 shows, ``uint8 [B,3,48,48]``: the PIL bicubic
    resize of the evaluation's view 0 (``tptlib.clip.view0_transform`` before normalisation)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    out = [TF.pil_to_tensor(TF.resize(Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).numpy())),
                                      world.IMAGE_SIZE, interpolation=InterpolationMode.BICUBIC))
           for a in img8]
    return torch.stack(out)


def labels_of(name: str, sc) -> torch.Tensor:
    """The label of each rendered scene for set ``name``."""
    kind = SETS[_canonical(name)].label
    if kind == "shape":
        return sc.label
    if kind == "colour":
        return sc.colour
    if kind == "fill":
        return sc.fill_name
    if kind == "count":
        return sc.count - 1
    raise ValueError(kind)


def renderer_digest() -> str:
    """A digest of the renderer's source (``world.RENDERER_MODULES``): an edit to it renders the sets
    again, even when ``DATA_VERSION`` was not bumped, so a cache never serves images of an older
    renderer."""
    return world.renderer_digest()


def _fingerprint(spec: SetSpec, indices: list[int]) -> dict:
    h = hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]
    return {"set": spec.name, "data_version": world.DATA_VERSION, "renderer": renderer_digest(),
            "profile": spec.profile, "seed": spec.seed, "size": world.RAW_SIZE, "layout": spec.layout,
            "n": len(indices),
            "indices_sha": h, "classnames": list(spec.classnames)}


def _write_set(spec: SetSpec, indices: list[int], dest: Path) -> None:
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        entries = []
        if spec.layout == "imagefolder":
            for c in spec.classnames:
                (tmp / c).mkdir()
        else:
            (tmp / "images").mkdir()
        for s in range(0, len(indices), 500):
            part = indices[s:s + 500]
            img, sc = world.render(spec.profile, spec.seed, part, size=world.RAW_SIZE)
            y = labels_of(spec.name, sc).tolist()
            arr = img.permute(0, 2, 3, 1).numpy()
            for k, (i, lab) in enumerate(zip(part, y)):
                if lab < 0:
                    raise RuntimeError(f"micro set {spec.name}: index {i} has no label")
                cname = spec.classnames[lab]
                rel = f"{cname}/{i:05d}.png" if spec.layout == "imagefolder" else f"images/{i:05d}.png"
                Image.fromarray(np.ascontiguousarray(arr[k])).save(tmp / rel, compress_level=1)
                entries.append([rel if spec.layout == "imagefolder" else rel[len("images/"):],
                                int(lab), cname])
        if spec.layout == "split":
            (tmp / f"split_micro_{spec.name}.json").write_text(json.dumps({"test": entries}))
        (tmp / CONTENT_FILE).write_text(content_digest(tmp) + "\n")
        (tmp / "set.json").write_text(json.dumps(_fingerprint(spec, indices), indent=1))
        if dest.exists():     # an outdated set: move it aside, then remove it
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            # another process finished the same set first: keep theirs if it is complete
            if not (dest / "set.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _entries(folder: Path) -> list[tuple[tuple[str, ...], os.DirEntry]]:
    """Every entry under `folder` (links not followed), with its path relative to `folder` as a tuple
    of parts, in the order of `sorted(folder.rglob("*"))` (paths compare part by part)."""
    found, todo = [], [((), str(folder))]
    while todo:
        parts, path = todo.pop()
        with os.scandir(path) as it:
            for entry in it:
                rel = (*parts, entry.name)
                found.append((rel, entry))
                if entry.is_dir(follow_symlinks=False):
                    todo.append((rel, entry.path))
    return sorted(found, key=lambda item: item[0])


def content_digest(folder: Path) -> str:
    """A digest of every entry under a set's folder but its set.json and content.sha256: relative paths
    and the bytes of the files (a link or anything but a file or folder counts by its kind, unread)."""
    h = hashlib.sha256()
    for parts, entry in _entries(Path(folder)):
        rel = "/".join(parts)
        if rel in ("set.json", CONTENT_FILE):
            continue
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            h.update(f"{rel}\tnot a file\n".encode())
        elif entry.is_file():
            with open(entry.path, "rb") as f:
                h.update(f"{rel}\t{hashlib.sha256(f.read()).hexdigest()}\n".encode())
        else:
            h.update(f"{rel}/\n".encode())
    return h.hexdigest()


def _is_current(dest: Path, fp: dict) -> bool:
    """Whether `dest` holds the set `fp` describes, its files as they were rendered (content digest)."""
    try:
        if json.loads((dest / "set.json").read_text()) != fp:
            return False
        if not (dest / CONTENT_FILE).is_file():
            return False              # rendered by a tptlib that did not record its files' digest
        if (dest / CONTENT_FILE).read_text().strip() == content_digest(dest):
            return True
    except (OSError, ValueError):
        return False
    logging.getLogger("tptlib.micro").warning(
        "micro set %s in %s: its files are not those that were rendered (changed, added or removed); it is "
        "rendered again", fp["set"], dest)
    return False


def ensure_set(name: str, root=None, n: int | None = None) -> Path:
    """Render set ``name`` into the cache (or ``root``) unless it is already there; its folder."""
    spec = SETS[_canonical(name)]
    indices = set_indices(spec.name, n)
    base = Path(root).expanduser() if root is not None else cache_root()
    dest = base / (spec.name if n is None else f"{spec.name}-n{n}")
    fp = _fingerprint(spec, indices)
    if not _is_current(dest, fp):
        _write_set(spec, indices, dest)
    return dest


def _read(spec: SetSpec, dest: Path):
    from tptlib.data import read_imagefolder, read_split_json

    task_name = f"micro:{spec.name}"
    if spec.layout == "imagefolder":
        samples = read_imagefolder(dest, list(spec.classnames), task_name,
                                   hint="named by micro shape class")
        classnames = list(spec.classnames)
    else:
        samples, classnames = read_split_json(dest, f"split_micro_{spec.name}.json", "images", task_name)
        # classes absent from a (small) split would shorten the list: keep the full label set
        if classnames != list(spec.classnames)[:len(classnames)]:
            raise RuntimeError(f"{task_name}: split classnames {classnames} do not match the set")
        classnames = list(spec.classnames)
    return samples, classnames


def micro_task(name: str, root=None, n: int | None = None, **options):
    """The ``Task`` of micro set ``name`` (rendered first if needed). ``n``: only the first n.

    ``root``: where the sets are rendered (default: the cache). Loader options of real datasets
    (such as ``split_dir``) do not apply: the micro sets carry their own split files.
    """
    from tptlib.data.base import Task

    if options:
        raise TypeError(f"load_task('micro:{name}') got unexpected options {sorted(options)}; "
                        "micro sets accept none (they carry their own split files)")
    spec = SETS[_canonical(name)]
    dest = ensure_set(spec.name, root=root, n=n)
    samples, classnames = _read(spec, dest)
    index_of = [int(Path(p).stem) for p, _ in samples]
    return Task(name=f"micro:{spec.name}", classnames=classnames, samples=samples, root=dest,
                augmix=spec.augmix, min_crop_scale=spec.min_crop_scale,
                meta={"profile": spec.profile, "seed": spec.seed, "data_version": world.DATA_VERSION,
                      "description": spec.description, "world_index": index_of,
                      "layout": spec.layout})


__all__ = ["micro_task", "ensure_set", "render_arrays", "labels_of", "set_indices", "view0_images",
           "cache_root", "SETS", "SetSpec", "MICRO_TASKS", "SHIFTED", "CROSS", "MIN_CROP_SCALE",
           "TEST_SEED", "DEV_SEED"]
