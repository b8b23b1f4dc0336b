"""The micro world: a procedural renderer of image-caption pairs.

Every image is a function of ``(profile, seed, index)`` only: the parameters of sample ``index``
come from a NumPy generator seeded with ``[stream version, profile id, seed, index]``, and the
rendering is element-wise torch code, so a sample is the same whether it is rendered alone or in
a batch of any size, and at any resolution (shapes are signed distance fields).

The world is built from parts, each in its module: ``constants`` (names, sizes, versions),
``profiles`` (each profile's ``ProfileSpec``: what differs between profiles, as data),
``uniforms`` (the random streams), ``scene`` (uniforms -> ``Scene`` parameters), ``layout``
(where instances go, zoomed windows), ``shapes`` (the shapes' distance fields), ``render``
(``Scene`` -> pixels) and ``captions`` (captions and the facts they state). This module is their
public face: ``render`` and ``render_training``, and the names of the parts.

A scene shows several instances of one *class shape* (the label), scattered like a texture,
among fewer *distractor* shapes of other classes, so a crop of a scene usually still shows the
label. The 20 classes come in families that look alike when small (circle, oval, octagon,
hexagon; square, rectangle, diamond; star, sparkle, cross; arrow, chevron; ...): the details that
tell them apart need pixels, as fine-grained ImageNet classes do.

Images have a *style* (photo, sketch, rendition), an *effect* (none, blurry, dark, bright,
black and white, pixelated) and a *viewpoint* (close-up or not). The training world is mostly
photos, with sketches, renditions and effects at low rates, and its captions sometimes name them
("a sketch of a star.", "a blurry photo of two hearts.", "a close-up photo of a drop."), as
CLIP's captions name the kind of picture they describe. The shifted test profiles change those
proportions and ranges, as ImageNet-Sketch and -R do for CLIP, rather than show styles never seen.

Profiles (see ``PROFILES`` and ``profiles.SPECS``):

- ``train`` - the training distribution (with an easy-first ``difficulty`` knob);
- ``I`` - the training distribution at full difficulty (in-distribution test);
- ``V2`` - the same generator with shifted ranges (smaller objects, more distractors, more
  textured backgrounds, wider colour jitter, rotations up to +-50 degrees);
- ``Sketch`` - every image a sketch, with thinner (pencil) strokes than the training sketches;
- ``R`` - every image a rendition, on busier backgrounds than the training renditions;
- ``A`` - 3-5 small instances clustered off-centre among bigger distractors on clutter (the
  unfiltered pool; ``tptlib.micro.sets`` keeps the ones a different model gets wrong);
- ``Colour``, ``Fill``, ``Count`` - cross tasks whose label is an attribute, not the shape.

Test sets are rendered at ``RAW_SIZE`` (96 px), twice the model's input: view 0 is the image
resized to 48 px, and a zoomed crop has real detail, as a crop of a full-size photograph has.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .captions import (CLOSEUP_PREFIXES, EFFECT_PREFIXES, N_FACTS, NEUTRAL_PREFIXES, STYLE_PREFIXES,
                       caption, caption_and_facts, caption_vocabulary, consistent, image_facts)
from .constants import (COLOUR_RGB, COLOURS, COUNTS, DATA_VERSION, EFFECTS, FILLS, IMAGE_SIZE, K_MAX,
                        N_COLS, R_FILLS, RAW_SIZE, SHAPE_PLURALS, SHAPES, SIZES, STYLES)
from .profiles import (A_BOX, A_DISTRACTOR_RADIUS, A_DISTRACTORS, A_TARGET_RADIUS, PROFILES, SPECS, ZOOM_AREA,
                       ZOOM_P, ProfileSpec)
from .render import render_scene
from .scene import Scene, sample_scene
from .shapes import shape_atlas
from .uniforms import sample_uniforms

#: the modules whose source decides the pictures (``renderer_digest`` hashes them)
RENDERER_MODULES = ("constants", "profiles", "uniforms", "scene", "layout", "shapes", "render", "captions",
                    "world")


def renderer_digest(root=None) -> str:
    """A digest of the renderer's source: every module of ``RENDERER_MODULES`` in ``root`` (default:
    this package's folder)."""
    h = hashlib.sha256()
    here = Path(root) if root is not None else Path(__file__).resolve().parent
    for name in RENDERER_MODULES:
        h.update(name.encode() + b"\0" + (here / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


def _draw(profile: str, seed: int, indices: list, difficulty: float, size: int):
    """Images (uint8), scene and caption uniforms of samples ``indices``."""
    u = sample_uniforms(profile, seed, indices)
    sc = sample_scene(profile, u[:, :-8], difficulty=difficulty)
    img8 = (render_scene(sc, size=size) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return img8, sc, u[:, -8:].numpy()


def render(profile: str, seed: int, indices, difficulty: float = 1.0, size: int = IMAGE_SIZE,
           with_captions: bool = False):
    """Render samples ``indices`` of ``profile`` with ``seed`` at ``size`` px.

    Returns ``(images uint8 [B,3,size,size], scene)`` or, with ``with_captions``,
    ``(images, scene, captions)``.
    """
    indices = list(indices)
    img8, sc, capu = _draw(profile, seed, indices, difficulty, size)
    if not with_captions:
        return img8, sc
    caps = [caption(sc, i, capu[i]) for i in range(len(indices))]
    return img8, sc, caps


def render_training(seed: int, indices, difficulty: float = 1.0):
    """Training pairs: ``(images uint8, captions, consistency [B,B] bool)``.

    ``consistency[i, j]``: caption j is true of image i (used as the contrastive targets).
    """
    indices = list(indices)
    img8, sc, capu = _draw("train", seed, indices, difficulty, IMAGE_SIZE)
    pairs = [caption_and_facts(sc, i, capu[i]) for i in range(len(indices))]
    cap_facts = torch.tensor([f for _, f in pairs])
    return img8, [c for c, _ in pairs], consistent(image_facts(sc), cap_facts)


__all__ = ["render", "render_training", "renderer_digest", "RENDERER_MODULES", "Scene", "sample_scene",
           "sample_uniforms", "render_scene", "shape_atlas", "caption", "caption_and_facts",
           "caption_vocabulary", "consistent", "image_facts", "N_FACTS", "NEUTRAL_PREFIXES", "STYLE_PREFIXES",
           "EFFECT_PREFIXES", "CLOSEUP_PREFIXES", "DATA_VERSION", "IMAGE_SIZE", "RAW_SIZE", "SHAPES",
           "SHAPE_PLURALS", "COLOURS", "COLOUR_RGB", "FILLS", "R_FILLS", "SIZES", "COUNTS", "STYLES", "EFFECTS",
           "K_MAX", "N_COLS", "PROFILES", "SPECS", "ProfileSpec", "ZOOM_P", "ZOOM_AREA", "A_TARGET_RADIUS",
           "A_BOX", "A_DISTRACTORS", "A_DISTRACTOR_RADIUS"]
