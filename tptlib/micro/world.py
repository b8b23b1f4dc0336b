"""The micro world: a procedural renderer of image-caption pairs.

Every image is a function of ``(profile, seed, index)`` only: the parameters of sample ``index``
come from a NumPy generator seeded with ``[stream version, profile id, seed, index]``, and the
rendering is element-wise torch code, so a sample is the same whether it is rendered alone or in
a batch of any size, and at any resolution (shapes are signed distance fields).

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

Profiles (see ``PROFILES``):

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

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# DATA_VERSION names the rendered sets (cache folders, manifest); bump it whenever any profile's
# pictures change. _STREAM keys the random streams: changing it changes every sample, the
# training data included (the shipped weights were trained on stream 2).
DATA_VERSION = "w3"
_STREAM = 2
IMAGE_SIZE = 48      # the micro-CLIP's input
RAW_SIZE = 96        # test sets are stored at this size

SHAPES = ["circle", "oval", "square", "rectangle", "diamond", "triangle", "pentagon", "hexagon",
          "octagon", "star", "sparkle", "cross", "heart", "crescent", "arrow", "chevron",
          "house", "lightning", "drop", "cloud"]
SHAPE_PLURALS = ["circles", "ovals", "squares", "rectangles", "diamonds", "triangles", "pentagons",
                 "hexagons", "octagons", "stars", "sparkles", "crosses", "hearts", "crescents",
                 "arrows", "chevrons", "houses", "lightnings", "drops", "clouds"]

COLOURS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"]
COLOUR_RGB = torch.tensor([
    [0.86, 0.14, 0.14], [0.96, 0.55, 0.08], [0.95, 0.87, 0.15], [0.15, 0.66, 0.22],
    [0.15, 0.80, 0.85], [0.16, 0.30, 0.88], [0.55, 0.22, 0.75], [0.97, 0.52, 0.75],
    [0.96, 0.96, 0.96], [0.06, 0.06, 0.06]])
FILLS = ["solid", "outlined", "striped", "dotted"]
# fills of renditions (never named in captions)
R_FILLS = ["checkered", "gradient", "speckled", "double"]
SIZES = ["small", "large"]
COUNTS = ["one", "two", "three", "four", "five"]
STYLES = ["photo", "sketch", "rendition"]
EFFECTS = ["none", "blurry", "dark", "bright", "black and white", "pixelated"]

K_MAX = 12          # instance slots per image
N_COLS = 448        # uniforms drawn per sample (the last 8 are the caption's)

# caption prefixes and the facts they state (style, effect, close-up; None: states nothing)
NEUTRAL_PREFIXES = ["a picture of", "an image of", "there is", ""]
STYLE_PREFIXES = {0: ["a photo of", "a good photo of"],
                  1: ["a sketch of", "a drawing of", "a pencil sketch of"],
                  2: ["a rendering of", "a painting of", "art of", "a cartoon of"]}
EFFECT_PREFIXES = {1: ["a blurry photo of"], 2: ["a dark photo of"], 3: ["a bright photo of"],
                   4: ["a black and white photo of"], 5: ["a pixelated photo of", "a low resolution photo of"]}
CLOSEUP_PREFIXES = ["a close-up photo of", "a cropped photo of"]

PROFILES = ["train", "I", "V2", "Sketch", "R", "A", "Colour", "Fill", "Count"]
_PROFILE_ID = {p: i for i, p in enumerate(PROFILES)}

# per profile: P(style) over STYLES, P(effect) over EFFECTS, P(close-up); training images are
# also zoomed windows of their scene with probability ZOOM_P (see ``sample_scene``)
_TRAIN_EFFECTS = [0.75, 0.05, 0.05, 0.05, 0.05, 0.05]
_NO_EFFECTS = [1, 0, 0, 0, 0, 0]
# the A profile: 3-5 targets of A_TARGET_RADIUS px in a corner box of A_BOX px, A_DISTRACTORS
# bigger distractors elsewhere (all in 48-px scene units)
A_TARGET_RADIUS = (5.0, 6.2)
A_BOX = 26.0
A_DISTRACTORS = (2, 4)
A_DISTRACTOR_RADIUS = (4.5, 7.0)
ZOOM_P = 0.4
ZOOM_AREA = (0.1, 1.0)
_MIX = {
    "train": ([0.88, 0.06, 0.06], _TRAIN_EFFECTS, 0.08),
    "I": ([0.88, 0.06, 0.06], _TRAIN_EFFECTS, 0.08),
    "V2": ([0.88, 0.06, 0.06], _TRAIN_EFFECTS, 0.04),
    "Sketch": ([0, 1, 0], _TRAIN_EFFECTS, 0.0),
    "R": ([0, 0, 1], _TRAIN_EFFECTS, 0.0),
    "A": ([1, 0, 0], _NO_EFFECTS, 0.0),
    "Colour": ([1, 0, 0], _NO_EFFECTS, 0.0),
    "Fill": ([1, 0, 0], _NO_EFFECTS, 0.0),
    "Count": ([1, 0, 0], _NO_EFFECTS, 0.0),
}


# ----------------------------------------------------------------------------- shapes as SDFs
_ATLAS_RES = 160
_ATLAS_EXTENT = 1.25   # the atlas covers [-1.25, 1.25]^2 in shape units


def _regular(n: int, r: float, phase: float = math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star(points: int, outer: float, inner: float, dy: float = 0.0) -> np.ndarray:
    t = math.pi / 2 + math.pi * np.arange(2 * points) / points
    rr = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rr * np.cos(t), rr * np.sin(t) + dy], 1)


def _polygons() -> dict:
    a, b = 0.3, 0.95
    cross = np.array([[a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a], [-a, -b],
                      [a, -b], [a, -a], [b, -a], [b, a], [a, a]])
    tt = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(tt) ** 3,
                      13 * np.cos(tt) - 5 * np.cos(2 * tt) - 2 * np.cos(3 * tt) - np.cos(4 * tt)], 1)
    heart = heart / 17.0 * 1.05 + np.array([0, 0.12])
    te = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    oval = np.stack([1.0 * np.cos(te), 0.58 * np.sin(te)], 1)
    ta = np.linspace(math.radians(-28), math.radians(208), 40)
    drop = np.concatenate([np.stack([0.66 * np.cos(ta), 0.66 * np.sin(ta) - 0.3], 1)[::-1],
                           [[0.0, 1.0]]])
    drop = np.concatenate([drop[-1:], drop[:-1]])
    return {
        "oval": oval,
        "square": np.array([[-0.78, -0.78], [0.78, -0.78], [0.78, 0.78], [-0.78, 0.78]]),
        "rectangle": np.array([[-1.0, -0.5], [1.0, -0.5], [1.0, 0.5], [-1.0, 0.5]]),
        "diamond": np.array([[0.0, 1.05], [-0.66, 0.0], [0.0, -1.05], [0.66, 0.0]]),
        "triangle": _regular(3, 1.05) + np.array([0, -0.18]),
        "pentagon": _regular(5, 0.97) + np.array([0, -0.04]),
        "hexagon": _regular(6, 0.95, phase=0.0),
        "octagon": _regular(8, 0.95, phase=math.pi / 8),
        "star": _star(5, 1.0, 0.42, dy=-0.05),
        "sparkle": _star(4, 1.02, 0.3),
        "cross": cross,
        "heart": heart,
        "arrow": np.array([[-0.95, 0.2], [0.1, 0.2], [0.1, 0.62], [0.95, 0.0], [0.1, -0.62],
                           [0.1, -0.2], [-0.95, -0.2]]),
        "chevron": np.array([[-0.75, 0.95], [-0.2, 0.95], [0.75, 0.0], [-0.2, -0.95], [-0.75, -0.95],
                             [0.2, 0.0]]),
        "house": np.array([[-0.72, -0.85], [0.72, -0.85], [0.72, 0.12], [0.0, 0.92], [-0.72, 0.12]]),
        "lightning": np.array([[-0.15, 1.0], [0.55, 1.0], [0.12, 0.18], [0.55, 0.18], [-0.4, -1.0],
                               [-0.08, -0.08], [-0.5, -0.08]]),
        "drop": drop,
    }


def _polygon_sdf(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact signed distance from points ``p`` [N,2] to the polygon ``v`` [M,2] (negative inside)."""
    d = np.full(len(p), np.inf)
    inside = np.zeros(len(p), bool)
    for i in range(len(v)):
        a, b = v[i], v[(i + 1) % len(v)]
        e, w = b - a, p - a
        h = np.clip((w @ e) / (e @ e), 0, 1)
        d = np.minimum(d, np.linalg.norm(w - h[:, None] * e, axis=1))
        cond = (a[1] > p[:, 1]) != (b[1] > p[:, 1])
        xint = a[0] + (p[:, 1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1] + 1e-12)
        inside ^= cond & (p[:, 0] < xint)
    return np.where(inside, -d, d)


def _circle_sdf(p: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.linalg.norm(p - np.array([cx, cy]), axis=1) - r


@lru_cache(maxsize=1)
def shape_atlas() -> torch.Tensor:
    """SDFs of the shapes, ``[1, 1, n_shapes, R, R]`` in shape units (shape radius ~1)."""
    lin = np.linspace(-_ATLAS_EXTENT, _ATLAS_EXTENT, _ATLAS_RES)
    xx, yy = np.meshgrid(lin, lin)
    p = np.stack([xx.ravel(), -yy.ravel()], 1)   # row 0 is the top: y up
    polys = _polygons()
    out = []
    for name in SHAPES:
        if name == "circle":
            s = _circle_sdf(p, 0, 0, 0.9)
        elif name == "crescent":
            s = np.maximum(_circle_sdf(p, 0, 0, 0.92), -_circle_sdf(p, 0.42, 0.12, 0.72))
        elif name == "cloud":
            s = np.minimum.reduce([_circle_sdf(p, -0.52, -0.2, 0.42), _circle_sdf(p, 0.02, 0.12, 0.56),
                                   _circle_sdf(p, 0.55, -0.15, 0.42),
                                   _polygon_sdf(p, np.array([[-0.52, -0.62], [0.55, -0.57], [0.55, -0.2],
                                                             [-0.52, -0.2]]))])
        else:
            s = _polygon_sdf(p, polys[name])
        out.append(s.reshape(_ATLAS_RES, _ATLAS_RES))
    return torch.tensor(np.stack(out), dtype=torch.float32)[None, None]


# ----------------------------------------------------------------------------- sampling
def sample_uniforms(profile: str, seed: int, indices) -> torch.Tensor:
    """``[B, N_COLS]`` uniforms, one row per index, each a function of (profile, seed, index)."""
    pid = _PROFILE_ID[profile]
    rows = [np.random.default_rng([_STREAM, pid, int(seed), int(i)]).random(N_COLS) for i in indices]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


class _Cols:
    """Hands out columns of the uniform matrix in a fixed order."""

    def __init__(self, u: torch.Tensor):
        self.u, self.i = u, 0

    def take(self, n: int = 1) -> torch.Tensor:
        if self.i + n > self.u.shape[1]:
            raise RuntimeError("world: out of uniform columns")
        out = self.u[:, self.i:self.i + n]
        self.i += n
        return out if n > 1 else out[:, 0]


def _pick(u: torch.Tensor, weights) -> torch.Tensor:
    """Categorical draw from uniforms ``u`` with (unnormalised) ``weights`` (list or [B, n])."""
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.dim() == 1:
        w = w.expand(u.shape[0], -1)
    c = torch.cumsum(w, 1)
    c = c / c[:, -1:]
    return torch.searchsorted(c, u[:, None].contiguous(), right=True)[:, 0].clamp_(max=w.shape[1] - 1)


def _lerp(u, lo, hi):
    return lo + (hi - lo) * u


@dataclass
class Scene:
    """Rendering parameters for a batch (tensors with leading dim B; per-instance [B, K_MAX])."""

    active: torch.Tensor      # bool [B,K]  slot drawn
    is_target: torch.Tensor   # bool [B,K]
    shape: torch.Tensor       # long [B,K]
    cx: torch.Tensor          # px (in IMAGE_SIZE units)
    cy: torch.Tensor
    radius: torch.Tensor      # px
    rot: torch.Tensor         # radians
    rgb: torch.Tensor         # [B,K,3]
    rgb2: torch.Tensor        # [B,K,3] second colour (gradient / checkered fills)
    fill: torch.Tensor        # long [B,K]: 0 solid 1 outlined 2 striped 3 dotted 4 checkered 5 gradient 6 speckled 7 double
    line_w: torch.Tensor      # px
    period: torch.Tensor      # px, stripes / dots / checks
    pat_angle: torch.Tensor
    noise_seed: torch.Tensor  # [B,K] float in [0,1): phase for speckle
    bg_kind: torch.Tensor     # long [B]: 0 flat 1 gradient 2 noise 3 checks 4 stripes
    bg1: torch.Tensor         # [B,3]
    bg2: torch.Tensor         # [B,3]
    bg_angle: torch.Tensor    # [B]
    bg_grid: torch.Tensor     # [B,4,4] low-frequency noise
    bg_period: torch.Tensor   # [B]
    effect: torch.Tensor      # long [B] index into EFFECTS
    effect_amt: torch.Tensor  # [B] in [0,1): strength of the effect
    # labels / caption facts
    label: torch.Tensor       # long [B] class shape
    colour: torch.Tensor      # long [B] target colour index (COLOURS), -1 if none
    fill_name: torch.Tensor   # long [B] target fill index (FILLS), -1 if not a FILLS fill
    size_name: torch.Tensor   # long [B] 0 small 1 large -1 medium
    count: torch.Tensor       # long [B] number of target instances
    style: torch.Tensor       # long [B] index into STYLES
    closeup: torch.Tensor     # long [B] 1: a close-up (one large instance, or a zoomed window)
    win_x0: torch.Tensor      # [B] the window of the scene the image shows (px, scene units):
    win_y0: torch.Tensor      # [B] top-left corner
    win_s: torch.Tensor       # [B] side as a fraction of the scene (1: the whole scene)


def _luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _contrast_bg(c: _Cols, B: int, target_rgb: torch.Tensor, sat_max: float = 0.35):
    """A background colour whose brightness is on the other side of the target colour's."""
    hue = c.take(3)
    sat = _lerp(c.take(), 0.0, sat_max)
    lum_u = c.take()
    dark = _luma(target_rgb) > 0.5
    lum = torch.where(dark, _lerp(lum_u, 0.05, 0.35), _lerp(lum_u, 0.68, 0.95))
    base = lum[:, None].expand(B, 3)
    col = base + sat[:, None] * (hue - 0.5)
    return col.clamp(0, 1)


def sample_scene(profile: str, u: torch.Tensor, difficulty: float = 1.0) -> Scene:
    """Turn uniforms into scene parameters for ``profile``."""
    B = u.shape[0]
    c = _Cols(u)
    S = float(IMAGE_SIZE)
    K = K_MAX
    n_sh = len(SHAPES)
    hard = c.take() < difficulty if profile == "train" else torch.ones(B, dtype=torch.bool)

    label = torch.minimum((c.take() * n_sh).long(), torch.tensor(n_sh - 1))
    style_p, effect_p, closeup_p = _MIX[profile]
    style = _pick(c.take(), style_p)
    effect = _pick(c.take(), effect_p)
    effect_amt = c.take()
    closeup = (c.take() < closeup_p).long()
    if profile == "train":      # easy scenes: plain photos
        style = torch.where(hard, style, torch.zeros_like(style))
        effect = torch.where(hard, effect, torch.zeros_like(effect))
        closeup = torch.where(hard, closeup, torch.zeros_like(closeup))

    # ------------------------------------------------------------------ counts
    cnt_u, dis_u = c.take(), c.take()
    if profile in ("train", "I", "V2", "Sketch", "R", "Colour", "Fill"):
        n_t = 1 + _pick(cnt_u, [3, 4, 3, 1.5, 1])
        if profile == "train":
            n_t = torch.where(hard, n_t, 1 + _pick(cnt_u, [3, 3, 2, 0, 0]))
        max_d = {"V2": 3}.get(profile, 2)
        n_d = (dis_u * (max_d + 1)).long().clamp(max=max_d)
        n_d = torch.minimum(n_d, n_t - 1)
        if profile == "train":
            n_d = torch.where(hard, n_d, torch.zeros_like(n_d))
        if profile in ("Colour", "Fill"):   # attribute tasks: no distractors (other colours/fills)
            n_d = torch.zeros_like(n_d)
    elif profile == "Count":
        n_t = 1 + (cnt_u * 5).long().clamp(max=4)
        n_d = torch.zeros_like(n_t)
    elif profile == "A":
        n_t = 3 + (cnt_u * 3).long().clamp(max=2)          # 3-5 small instances, clustered
        lo, hi = A_DISTRACTORS
        n_d = lo + (dis_u * (hi - lo + 1)).long().clamp(max=hi - lo)   # bigger distractors
    else:
        raise KeyError(profile)
    n_t = torch.where(closeup.bool(), torch.ones_like(n_t), n_t)
    n_d = torch.where(closeup.bool(), torch.zeros_like(n_d), n_d)

    # ------------------------------------------------------------------ slots
    slot = torch.arange(K)[None].expand(B, K)
    is_target = slot < n_t[:, None]
    active = slot < (n_t + n_d)[:, None]
    n_tot = n_t + n_d

    # distractor shapes: distinct, never the label
    perm = torch.argsort(c.take(n_sh - 1), dim=1)                  # [B, n-1] order of other shapes
    others = (label[:, None] + 1 + perm) % n_sh
    didx = (slot - n_t[:, None]).clamp(min=0, max=others.shape[1] - 1)
    shape = torch.where(is_target, label[:, None].expand(B, K), torch.gather(others, 1, didx))

    # ------------------------------------------------------------------ layout
    cell_perm = torch.argsort(c.take(16), dim=1)              # random order of cells
    jit = c.take(2 * K).view(B, K, 2)
    rad_u = c.take(K)
    gx = torch.ceil(torch.sqrt(n_tot.float())).long()
    grow = c.take() < 0.2
    G = torch.where(grow, gx + 1, gx).clamp(1, 4)
    if profile == "train":
        G = torch.where(hard, G, torch.where(n_tot == 1, torch.ones_like(G), G))
    if profile == "A":
        G = torch.full_like(G, 3)
    G = torch.where(closeup.bool(), torch.ones_like(G), G)
    # a random permutation of the G*G cells of each image's grid (from one 16-cell permutation)
    cell = torch.zeros(B, K, dtype=torch.long)
    for g in range(1, 5):
        cand = torch.argsort(cell_perm[:, : g * g], dim=1)
        cand = cand.repeat(1, K // (g * g) + 1)[:, :K]
        cell = torch.where((G == g)[:, None], cand, cell)
    cellsize = S / G.float()
    row, col = cell // G[:, None], cell % G[:, None]
    cs = cellsize[:, None]
    rad_lo, rad_hi = 0.65, 1.0
    if profile == "V2":
        rad_lo, rad_hi = 0.40, 0.78
    radius = cs / 2 * _lerp(rad_u, rad_lo, rad_hi)
    radius = radius.clamp(max=20.0)
    if profile == "train":
        easy_r = cs / 2 * _lerp(rad_u, 0.7, 1.0)
        radius = torch.where(hard[:, None], radius, easy_r.clamp(max=20.0))
    slack = (cs / 2 - radius * 0.8).clamp(min=0)
    cx = (col.float() + 0.5) * cs + (jit[..., 0] * 2 - 1) * slack
    cy = (row.float() + 0.5) * cs + (jit[..., 1] * 2 - 1) * slack
    # close-ups: one instance larger than the frame's half, off-centre, partly cut
    cu = closeup.bool()[:, None]
    radius = torch.where(cu, _lerp(rad_u, 24.0, 34.0), radius)
    cx = torch.where(cu, S / 2 + (jit[..., 0] - 0.5) * 16, cx)
    cy = torch.where(cu, S / 2 + (jit[..., 1] - 0.5) * 16, cy)

    if profile == "A":
        # targets: a tight cluster in an off-centre corner region; distractors elsewhere, bigger
        corner = (c.take() * 4).long().clamp(max=3)
        box = A_BOX
        ox = torch.where(corner % 2 == 0, torch.tensor(2.0), torch.tensor(S - 2.0 - box))
        oy = torch.where(corner // 2 == 0, torch.tensor(2.0), torch.tensor(S - 2.0 - box))
        tj = c.take(2 * K).view(B, K, 2)
        sub = torch.argsort(c.take(4), dim=1)           # 2x2 sub-grid of the cluster box
        subk = torch.cat([sub, sub, sub], 1)[:, :K]
        tx = ox[:, None] + (subk % 2).float() * box / 2 + box / 4 + (tj[..., 0] - 0.5) * 4
        ty = oy[:, None] + (subk // 2).float() * box / 2 + box / 4 + (tj[..., 1] - 0.5) * 4
        # a fifth target sits in the middle of the cluster box
        tx = torch.where(slot == 4, ox[:, None] + box / 2 + (tj[..., 0] - 0.5) * 2, tx)
        ty = torch.where(slot == 4, oy[:, None] + box / 2 + (tj[..., 1] - 0.5) * 2, ty)
        t_rad = _lerp(rad_u, *A_TARGET_RADIUS)
        # distractors: the 3x3 grid cells away from the cluster's corner
        far = {0: [8, 5, 7, 2, 6, 4], 1: [6, 3, 7, 0, 8, 4], 2: [2, 1, 5, 0, 8, 4], 3: [0, 1, 3, 2, 6, 4]}
        fartab = torch.tensor([far[i] for i in range(4)])[corner]        # [B,6]
        fperm = torch.argsort(c.take(6), dim=1)
        fcell = torch.gather(fartab, 1, fperm)                         # [B,6]
        didx6 = (slot - n_t[:, None]).clamp(0, 5)
        dc = torch.gather(fcell, 1, didx6)
        d_rad = _lerp(c.take(K), *A_DISTRACTOR_RADIUS)
        dcx = (dc % 3).float() * 16 + 8 + (jit[..., 0] - 0.5) * 4
        dcy = (dc // 3).float() * 16 + 8 + (jit[..., 1] - 0.5) * 4
        cx = torch.where(is_target, tx, dcx)
        cy = torch.where(is_target, ty, dcy)
        radius = torch.where(is_target, t_rad, d_rad)

    # objects are upright up to a jitter (as most photographed objects are); V2 widens the range
    rot_range = math.radians({"V2": 50.0}.get(profile, 25.0))
    rot = (c.take(K) * 2 - 1) * rot_range

    # ------------------------------------------------------------------ colours and fills
    col_u = c.take()
    tcol = (col_u * len(COLOURS)).long().clamp(max=len(COLOURS) - 1)
    dcol = (c.take(K) * len(COLOURS)).long().clamp(max=len(COLOURS) - 1)
    colidx = torch.where(is_target, tcol[:, None].expand(B, K), dcol)
    jit_amt = {"V2": 0.16}.get(profile, 0.07)
    cj = (c.take(3 * K).view(B, K, 3) - 0.5) * 2 * jit_amt
    rgb = (COLOUR_RGB[colidx] + cj).clamp(0, 1)
    rgb2 = c.take(3 * K).view(B, K, 3)

    fill_u = c.take()
    tfill = (fill_u * 4).long().clamp(max=3)
    dfill = (c.take(K) * 4).long().clamp(max=3)
    fill = torch.where(is_target, tfill[:, None].expand(B, K), dfill)
    line_w = _lerp(c.take(K), 1.3, 2.4)
    period = _lerp(c.take(K), 2.8, 4.2)
    pat_angle = c.take(K) * math.pi
    noise_seed = c.take(K)

    # ------------------------------------------------------------------ background
    bg_kind = _pick(c.take(), [0.5, 0.3, 0.2, 0.0, 0.0])
    if profile == "train":
        bg_kind = torch.where(hard, bg_kind, torch.zeros_like(bg_kind))
    if profile == "V2":
        bg_kind = _pick(c.u[:, c.i - 1], [0.25, 0.35, 0.4, 0.0, 0.0])
    if profile == "A":
        bg_kind = _pick(c.u[:, c.i - 1], [0.0, 0.4, 0.6, 0.0, 0.0])
    bg1 = _contrast_bg(c, B, COLOUR_RGB[tcol])
    bg2 = (bg1 + (c.take(3) - 0.5) * 0.35).clamp(0, 1)
    bg_angle = c.take() * 2 * math.pi
    bg_grid = (c.take(16).view(B, 4, 4) - 0.5)
    bg_period = _lerp(c.take(), 4.0, 8.0)
    if profile == "A":
        bg1 = _lerp(c.take(3), 0.2, 0.8)
        bg2 = _lerp(c.take(3), 0.2, 0.8)

    # ------------------------------------------------------------------ styles
    sk = (style == 1)
    ink = _lerp(c.take(), 0.1, 0.5)
    lw_u = c.take(K)
    sk_lw = _lerp(lw_u, 0.45, 0.9) if profile == "Sketch" else _lerp(lw_u, 0.7, 1.3)   # pencil vs pen
    paper = _lerp(c.take(), 0.86, 1.0)
    sk_bg1 = torch.stack([paper, paper * 0.98, paper * 0.93], 1)
    rgb = torch.where(sk[:, None, None], ink[:, None, None].expand(B, K, 3), rgb)
    fill = torch.where(sk[:, None], torch.ones_like(fill), fill)
    line_w = torch.where(sk[:, None], sk_lw, line_w)
    bg1 = torch.where(sk[:, None], sk_bg1, bg1)
    bg2 = torch.where(sk[:, None], (sk_bg1 - 0.12).clamp(0, 1), bg2)
    bg_kind = torch.where(sk, torch.full_like(bg_kind, 2), bg_kind)       # textured paper

    rd = (style == 2)
    pal = _pick(c.take(), [1, 1, 1])          # 0 pastel, 1 neon on black, 2 greyscale
    base = c.take(3 * K).view(B, K, 3)
    pastel = 0.65 + 0.3 * base
    neon_idx = (base[..., 0] * 4).long().clamp(max=3)
    neon = torch.tensor([[1.0, 0.1, 0.9], [0.2, 1.0, 0.2], [0.1, 0.9, 1.0], [1.0, 0.95, 0.1]])[neon_idx]
    grey = base[..., :1].expand(B, K, 3) * 0.9 + 0.05
    p = pal[:, None, None]
    r_rgb = torch.where(p == 0, pastel, torch.where(p == 1, neon, grey))
    r_rgb2 = torch.where(p == 0, 0.5 + 0.5 * rgb2, torch.where(p == 1, neon.flip(1), 1 - grey))
    rf = 4 + (c.take() * 4).long().clamp(max=3)
    drf = 4 + (c.take(K) * 4).long().clamp(max=3)
    r_fill = torch.where(is_target, rf[:, None].expand(B, K), drf)
    # renditions in training sit on flat or gradient grounds half the time; R's on checks or stripes
    busy = {"R": 1.0}.get(profile, 0.5)
    busy_u, kind_u = c.take(), c.take()
    r_bg = torch.where(busy_u < busy, 3 + (kind_u < 0.5).long(), (kind_u < 0.5).long())
    g = c.take()
    lum_bg = torch.where(pal == 0, 0.35 + 0.2 * g, torch.where(pal == 1, 0.05 + 0.08 * g, 0.5 + 0.4 * g))
    lum_bg = torch.where((pal == 2) & (_luma(r_rgb[:, 0]) > 0.5), 0.1 + 0.2 * g, lum_bg)
    r_bg1 = torch.stack([lum_bg, lum_bg * 0.95, lum_bg * 1.05], 1).clamp(0, 1)
    rgb = torch.where(rd[:, None, None], r_rgb, rgb)
    rgb2 = torch.where(rd[:, None, None], r_rgb2, rgb2)
    fill = torch.where(rd[:, None], r_fill, fill)
    bg_kind = torch.where(rd, r_bg, bg_kind)
    bg1 = torch.where(rd[:, None], r_bg1, bg1)
    bg2 = torch.where(rd[:, None], (r_bg1 + 0.12).clamp(0, 1), bg2)

    styled = style > 0
    grey_fx = effect == 4
    tcol = torch.where(styled | grey_fx, torch.full_like(tcol, -1), tcol)
    fill_name = torch.where(fill[:, 0] < 4, fill[:, 0], torch.full_like(fill[:, 0], -1))
    fill_name = torch.where(sk, torch.full_like(fill_name, -1), fill_name)
    # ------------------------------------------------------------------ zoomed windows (training)
    zu = c.take(4)
    win_s = torch.ones(B)
    win_x0, win_y0 = torch.zeros(B), torch.zeros(B)
    count = n_t
    if profile == "train":
        zoom = hard & (zu[:, 0] < ZOOM_P) & ~closeup.bool()
        side = torch.sqrt(_lerp(zu[:, 1], *ZOOM_AREA))
        # the window holds the centre of one target instance, chosen at random
        t = (zu[:, 2] * n_t.float()).long().clamp(max=K - 1)
        tcx, tcy = cx.gather(1, t[:, None])[:, 0], cy.gather(1, t[:, None])[:, 0]
        w = side * S
        fx, fy = zu[:, 3], torch.frac(zu[:, 3] * 7.0)
        room = S - w
        lo_x, hi_x = torch.minimum((tcx - w * 0.85).clamp(min=0), room), torch.minimum((tcx - w * 0.15).clamp(min=0), room)
        lo_y, hi_y = torch.minimum((tcy - w * 0.85).clamp(min=0), room), torch.minimum((tcy - w * 0.15).clamp(min=0), room)
        win_s = torch.where(zoom, side, win_s)
        win_x0 = torch.where(zoom, _lerp(fx, lo_x, hi_x), win_x0)
        win_y0 = torch.where(zoom, _lerp(fy, lo_y, hi_y), win_y0)
        inside = ((cx >= win_x0[:, None]) & (cx < (win_x0 + win_s * S)[:, None])
                  & (cy >= win_y0[:, None]) & (cy < (win_y0 + win_s * S)[:, None]))
        count = torch.where(zoom, (inside & is_target).sum(1).clamp(min=1), n_t)
        closeup = torch.where(zoom & (win_s < 0.6), torch.ones_like(closeup), closeup)
    r_mean = radius[:, 0] / win_s           # apparent size
    size_name = torch.where(r_mean < 5.5, 0, torch.where(r_mean > 9.5, 1, -1))
    if profile == "A":
        size_name = torch.zeros_like(size_name)

    return Scene(active=active, is_target=is_target, shape=shape, cx=cx, cy=cy, radius=radius,
                 rot=rot, rgb=rgb, rgb2=rgb2, fill=fill, line_w=line_w, period=period,
                 pat_angle=pat_angle, noise_seed=noise_seed, bg_kind=bg_kind, bg1=bg1, bg2=bg2,
                 bg_angle=bg_angle, bg_grid=bg_grid, bg_period=bg_period, effect=effect,
                 effect_amt=effect_amt, label=label, colour=tcol, fill_name=fill_name,
                 size_name=size_name, count=count, style=style, closeup=closeup,
                 win_x0=win_x0, win_y0=win_y0, win_s=win_s)


# ----------------------------------------------------------------------------- rendering
def _background(sc: Scene, S: int) -> torch.Tensor:
    Z = float(IMAGE_SIZE)
    pix = (torch.arange(S, dtype=torch.float32) + 0.5) * (Z / S)             # scene units, whole frame
    w = sc.win_s[:, None, None]
    xs = sc.win_x0[:, None, None] + pix[None, None, :] * w                    # [B,1,S]
    ys = sc.win_y0[:, None, None] + pix[None, :, None] * w                    # [B,S,1]
    ca, sa = torch.cos(sc.bg_angle)[:, None, None], torch.sin(sc.bg_angle)[:, None, None]
    proj = ((xs - Z / 2) * ca + (ys - Z / 2) * sa) / Z + 0.5                  # [B,S,S] ~[0,1]
    grad_t = proj.clamp(0, 1)
    grid = torch.stack([(xs / Z * 2 - 1).expand(-1, S, S), (ys / Z * 2 - 1).expand(-1, S, S)], -1)
    noise = F.grid_sample(sc.bg_grid[:, None], grid, mode="bicubic", padding_mode="border",
                          align_corners=False)[:, 0]
    noise_t = (noise * 1.6 + 0.5).clamp(0, 1)
    per = sc.bg_period[:, None, None]
    checks = ((torch.floor(xs / per) + torch.floor(ys / per)) % 2)
    stripes = (torch.sin(2 * math.pi * proj * Z / per) > 0).float()
    k = sc.bg_kind[:, None, None]
    t = torch.where(k == 0, torch.zeros_like(grad_t),
        torch.where(k == 1, grad_t, torch.where(k == 2, noise_t, torch.where(k == 3, checks, stripes))))
    return sc.bg1[:, :, None, None] * (1 - t[:, None]) + sc.bg2[:, :, None, None] * t[:, None]


_BUCKETS = (12, 16, 24, 32, 48, 64, 96, 128, 192)
_PAD = 32


def _raster(atlas, n_shapes, ox, oy, cx, cy, rad, rot, shape, fill, lw, per, pat, nseed, P):
    """Alpha and colour-mix maps ``[n, P, P]`` of n instances whose patches start at (ox, oy)."""
    n = cx.numel()
    pos = torch.arange(P, dtype=torch.float32) + 0.5
    dx = (ox[:, None, None] + pos[None, None, :] - cx[:, None, None]).expand(n, P, P)
    dy = (oy[:, None, None] + pos[None, :, None] - cy[:, None, None]).expand(n, P, P)
    ca, sa = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    r = rad[:, None, None]
    lx = (dx * ca + dy * sa) / r
    ly = (dy * ca - dx * sa) / r                                         # image y points down
    z = shape.float() * 2 / (n_shapes - 1) - 1                           # slice centres
    grid = torch.stack([lx / _ATLAS_EXTENT, ly / _ATLAS_EXTENT, z[:, None, None].expand(n, P, P)], -1)
    sdf = F.grid_sample(atlas, grid[None], mode="bilinear", padding_mode="border",
                        align_corners=True)[0, 0] * r                     # [n,P,P] px
    far = (lx.abs() > _ATLAS_EXTENT) | (ly.abs() > _ATLAS_EXTENT)
    sdf = sdf.masked_fill(far, 10.0)
    alpha = torch.empty(n, P, P)
    mix = torch.zeros(n, P, P)
    lw = lw[:, None, None]
    per = per[:, None, None]
    for f in fill.unique().tolist():
        j = (fill == f).nonzero(as_tuple=True)[0]
        d, w = sdf[j], lw[j]
        solid = (0.5 - d).clamp(0, 1)
        if f == 0:
            alpha[j] = solid
            continue
        band = (0.5 - ((d + w / 2).abs() - w / 2)).clamp(0, 1)
        if f == 1:
            alpha[j] = band
            continue
        pj = per[j]
        pa, pb = torch.cos(pat[j])[:, None, None], torch.sin(pat[j])[:, None, None]
        u = dx[j] * pa + dy[j] * pb
        v = dy[j] * pa - dx[j] * pb
        if f == 2:      # stripes
            stripe = (torch.sin(2 * math.pi * u / pj) * pj / 2 + 0.5).clamp(0, 1)
            alpha[j] = torch.maximum(band, solid * stripe)
        elif f == 3:    # dots
            du, dv = u / pj - torch.round(u / pj), v / pj - torch.round(v / pj)
            dots = (0.5 - (torch.sqrt(du ** 2 + dv ** 2) * pj - 0.3 * pj - 0.2)).clamp(0, 1)
            alpha[j] = torch.maximum(band, solid * dots)
        elif f == 4:    # checkered, two colours
            alpha[j] = solid
            mix[j] = (torch.floor(u / pj) + torch.floor(v / pj)) % 2
        elif f == 5:    # gradient, two colours
            alpha[j] = solid
            mix[j] = (u / (2 * r[j]) + 0.5).clamp(0, 1)
        elif f == 6:    # speckled
            ph = nseed[j][:, None, None] * 100.0
            cell = torch.floor(dx[j] / (pj / 3)) * 12.9898 + torch.floor(dy[j] / (pj / 3)) * 78.233
            speck = (torch.sin(cell + ph) * 43758.5453).frac().abs() > 0.45
            alpha[j] = torch.maximum(band, solid * speck.float())
        elif f == 7:    # double outline
            inner = (0.5 - ((d + 2.6 * w).abs() - w / 2)).clamp(0, 1)
            alpha[j] = torch.maximum(band, inner)
        else:
            raise ValueError(f"unknown fill {f}")
    return alpha, mix


def _gaussian_blur(img: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each image ``[n,3,S,S]`` with its own ``sigma`` [n] (px)."""
    n, ch, S, _ = img.shape
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)               # [n*3, 2r+1]
    y = F.pad(img.reshape(1, n * ch, S, S), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * ch)
    y = F.conv2d(y, k[:, None, :, None], groups=n * ch)
    return y.reshape(n, ch, S, S)


def _apply_effects(img: torch.Tensor, sc: Scene) -> torch.Tensor:
    """The scene's photographic effect on rendered images ``[B,3,S,S]`` (sizes in 48-px units)."""
    S = img.shape[-1]
    scale = S / IMAGE_SIZE
    out = img
    e, a = sc.effect, sc.effect_amt
    if bool((e == 1).any()):
        j = (e == 1).nonzero(as_tuple=True)[0]
        out = out.clone()
        out[j] = _gaussian_blur(img[j], (0.8 + 0.6 * a[j]) * scale, radius=int(math.ceil(4.2 * scale)))
    dark = (0.3 + 0.25 * a)[:, None, None, None]
    bright = (0.3 + 0.25 * a)[:, None, None, None]
    ee = e[:, None, None, None]
    out = torch.where(ee == 2, out * dark, out)
    out = torch.where(ee == 3, 1 - (1 - out) * bright, out)
    luma = _luma(out.permute(0, 2, 3, 1))[:, None].expand_as(out)
    out = torch.where(ee == 4, luma, out)
    if bool((e == 5).any()):
        j = (e == 5).nonzero(as_tuple=True)[0]
        out = out.clone()
        factor = 3 + (a[j] >= 0.5).long()                               # 3x or 4x coarser
        for f in (3, 4):
            jj = j[factor == f]
            if jj.numel():
                small = F.interpolate(out[jj], size=(S // f, S // f), mode="area")
                out[jj] = F.interpolate(small, size=(S, S), mode="nearest")
    return out


def render_scene(sc: Scene, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Render a scene batch to float images ``[B, 3, size, size]`` in [0, 1].

    Only the active instances are rasterised, each in a small patch around it (sized to its
    radius), and each computes only its own fill pattern; patches are alpha-composited onto a
    padded canvas, distractors first, then targets; then the scene's effect is applied.
    """
    S = size
    B, K = sc.shape.shape
    pad = int(_PAD * S / IMAGE_SIZE)
    canvas = F.pad(_background(sc, S), (pad, pad, pad, pad))
    atlas = shape_atlas()
    n_shapes = atlas.shape[2]
    bi, ki = sc.active.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return _apply_effects(canvas[:, :, pad:pad + S, pad:pad + S].clamp(0, 1), sc)
    zoom = (S / IMAGE_SIZE) / sc.win_s[bi]                       # scene px -> image px
    cx, cy = (sc.cx[bi, ki] - sc.win_x0[bi]) * zoom, (sc.cy[bi, ki] - sc.win_y0[bi]) * zoom
    reach = sc.radius[bi, ki] * zoom * _ATLAS_EXTENT + 2
    seen = (cx + reach > 0) & (cx - reach < S) & (cy + reach > 0) & (cy - reach < S)
    if not bool(seen.all()):                                     # instances outside a zoomed window
        bi, ki, zoom, cx, cy = bi[seen], ki[seen], zoom[seen], cx[seen], cy[seen]
    g = lambda t: t[bi, ki]  # noqa: E731
    rad = g(sc.radius) * zoom
    need = 2 * torch.ceil(rad * 1.2 + 1.5)
    buckets = torch.tensor(list(_BUCKETS) + [10 ** 6])
    P_of = buckets[torch.searchsorted(buckets, need.contiguous())]
    P_of = torch.where(P_of > S + 2 * pad, torch.tensor(int(S + 2 * pad)), P_of)
    ox = torch.round(cx - P_of / 2).long()
    oy = torch.round(cy - P_of / 2).long()
    ox = torch.minimum(torch.maximum(ox, torch.tensor(-pad)), S + pad - P_of)
    oy = torch.minimum(torch.maximum(oy, torch.tensor(-pad)), S + pad - P_of)
    rgb, rgb2 = g(sc.rgb), g(sc.rgb2)
    fields = dict(rot=g(sc.rot), shape=g(sc.shape), fill=g(sc.fill), lw=g(sc.line_w) * zoom,
                  per=g(sc.period) * zoom, pat=g(sc.pat_angle), nseed=g(sc.noise_seed))
    # layer order inside each image: distractors first, then targets, slot order within each
    key = sc.is_target.float() * 100 + torch.arange(K).float()[None]
    key = key.masked_fill(~sc.active, 1e9)
    rank = torch.argsort(torch.argsort(key, dim=1), dim=1)[bi, ki]
    patches = {}
    for P in P_of.unique().tolist():
        j = (P_of == P).nonzero(as_tuple=True)[0]
        alpha, mix = _raster(atlas, n_shapes, ox[j].float(), oy[j].float(), cx[j], cy[j], rad[j],
                             P=P, **{k: v[j] for k, v in fields.items()})
        patches[P] = (j, alpha, mix)
    Sc = S + 2 * pad
    flat = canvas.view(-1)
    ch = torch.arange(3)
    for layer in range(int(rank.max()) + 1):
        for P, (j, alpha, mix) in patches.items():
            m = (rank[j] == layer).nonzero(as_tuple=True)[0]
            if m.numel() == 0:
                continue
            jj = j[m]
            ar = torch.arange(P)
            rows = (oy[jj] + pad)[:, None] + ar[None]                  # [n,P]
            cols = (ox[jj] + pad)[:, None] + ar[None]
            lin = (((bi[jj][:, None] * 3 + ch[None]) * Sc * Sc)[:, :, None, None]
                   + (rows * Sc)[:, None, :, None] + cols[:, None, None, :]).view(-1)
            a = alpha[m][:, None]
            col = rgb[jj][:, :, None, None] + (rgb2[jj] - rgb[jj])[:, :, None, None] * mix[m][:, None]
            cur = flat[lin].view(-1, 3, P, P)
            flat[lin] = (cur + (col - cur) * a).view(-1)
    return _apply_effects(canvas[:, :, pad:pad + S, pad:pad + S].clamp(0, 1), sc)


# ----------------------------------------------------------------------------- captions
_NUM = ["one", "two", "three", "four", "five"]
N_FACTS = 8     # shape, size, colour, fill, count, style, effect, close-up


def _prefix(sc: Scene, i: int, u_p: float, u_q: float) -> tuple[str, int, int, int]:
    """The caption's opening words and the (style, effect, close-up) facts they state (-1: none)."""
    style, effect, closeup = int(sc.style[i]), int(sc.effect[i]), int(sc.closeup[i])
    pick = lambda lst: lst[min(int(u_q * len(lst)), len(lst) - 1)]  # noqa: E731
    if closeup and style == 0 and u_p < 0.5:
        return pick(CLOSEUP_PREFIXES), 0, -1, 1
    if effect and style == 0 and u_p < 0.5:
        return pick(EFFECT_PREFIXES[effect]), 0, effect, -1
    if style and u_p < 0.6:
        return pick(STYLE_PREFIXES[style]), style, -1, -1
    if style == 0 and u_p < 0.8:
        return pick(STYLE_PREFIXES[0]), 0, -1, -1
    return pick(NEUTRAL_PREFIXES), -1, -1, -1


def caption_and_facts(sc: Scene, i: int, u_cap: np.ndarray) -> tuple[str, list[int]]:
    """Caption of sample ``i`` from its caption uniforms, and the facts it states.

    The shape is always named; size, colour, fill and count are each named with probability 1/4;
    the opening words name the style, the effect or the close-up viewpoint when the image has one
    (half the time or more), else say "a photo of" (photos) or nothing in particular.
    Facts: ``[shape, size, colour, fill, count, style, effect, close-up]``, -1 where the caption
    says nothing.
    """
    words = []
    facts = [int(sc.label[i]), -1, -1, -1, -1, -1, -1, -1]
    n = int(sc.count[i])
    use_count = u_cap[0] < 0.25
    if u_cap[1] < 0.25 and int(sc.size_name[i]) >= 0:
        words.append(SIZES[int(sc.size_name[i])])
        facts[1] = int(sc.size_name[i])
    if u_cap[2] < 0.25 and int(sc.colour[i]) >= 0:
        words.append(COLOURS[int(sc.colour[i])])
        facts[2] = int(sc.colour[i])
    if u_cap[3] < 0.25 and int(sc.fill_name[i]) >= 0:
        words.append(FILLS[int(sc.fill_name[i])])
        facts[3] = int(sc.fill_name[i])
    lab = int(sc.label[i])
    if use_count:
        noun = SHAPES[lab] if n == 1 else SHAPE_PLURALS[lab]
        phrase = " ".join([_NUM[n - 1]] + words + [noun])
        facts[4] = n
    else:
        article = "the" if u_cap[7] < 0.15 else "a"
        phrase = " ".join([article] + words + [SHAPES[lab]])
    prefix, facts[5], facts[6], facts[7] = _prefix(sc, i, float(u_cap[4]), float(u_cap[5]))
    return (f"{prefix} {phrase}." if prefix else f"{phrase}."), facts


def caption(sc: Scene, i: int, u_cap: np.ndarray) -> str:
    """Caption of sample ``i`` (see ``caption_and_facts``)."""
    return caption_and_facts(sc, i, u_cap)[0]


def image_facts(sc: Scene) -> torch.Tensor:
    """``[B, N_FACTS]`` facts of each image (-1: not nameable); see ``caption_and_facts``."""
    return torch.stack([sc.label, sc.size_name, sc.colour, sc.fill_name, sc.count, sc.style,
                        sc.effect, sc.closeup], 1)


def consistent(img_facts: torch.Tensor, cap_facts: torch.Tensor) -> torch.Tensor:
    """``[B_img, B_cap]`` bool: the caption is true of the image (every fact it states holds)."""
    i, c = img_facts[:, None, :], cap_facts[None, :, :]
    return ((c == -1) | (c == i)).all(-1)


def caption_vocabulary() -> list[str]:
    """Every word a caption or a class name of the micro world can contain."""
    words = set()
    prefixes = (NEUTRAL_PREFIXES + CLOSEUP_PREFIXES + [p for v in STYLE_PREFIXES.values() for p in v]
                + [p for v in EFFECT_PREFIXES.values() for p in v])
    for p in prefixes:
        words.update(p.split())
    words.update(SHAPES + SHAPE_PLURALS + COLOURS + FILLS + R_FILLS + SIZES + COUNTS + ["an", "a", "the", "."])
    return sorted(words)


# ----------------------------------------------------------------------------- public API
def render(profile: str, seed: int, indices, difficulty: float = 1.0, size: int = IMAGE_SIZE,
           with_captions: bool = False):
    """Render samples ``indices`` of ``profile`` with ``seed`` at ``size`` px.

    Returns ``(images uint8 [B,3,size,size], scene)`` or, with ``with_captions``,
    ``(images, scene, captions)``.
    """
    indices = list(indices)
    u = sample_uniforms(profile, seed, indices)
    sc = sample_scene(profile, u[:, :-8], difficulty=difficulty)
    img = render_scene(sc, size=size)
    img8 = (img * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    if not with_captions:
        return img8, sc
    capu = u[:, -8:].numpy()
    caps = [caption(sc, i, capu[i]) for i in range(len(indices))]
    return img8, sc, caps


def render_training(seed: int, indices, difficulty: float = 1.0):
    """Training pairs: ``(images uint8, captions, consistency [B,B] bool)``.

    ``consistency[i, j]``: caption j is true of image i (used as the contrastive targets).
    """
    indices = list(indices)
    u = sample_uniforms("train", seed, indices)
    sc = sample_scene("train", u[:, :-8], difficulty=difficulty)
    img8 = (render_scene(sc) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    capu = u[:, -8:].numpy()
    pairs = [caption_and_facts(sc, i, capu[i]) for i in range(len(indices))]
    cap_facts = torch.tensor([f for _, f in pairs])
    return img8, [c for c, _ in pairs], consistent(image_facts(sc), cap_facts)
