"""The micro world: a procedural renderer of image-caption pairs.

Every image is a function of ``(profile, seed, index)`` only: the parameters of sample ``index``
come from a NumPy generator seeded with ``[stream version, profile id, seed, index]``, and the
rendering is element-wise torch code, so a sample is the same whether it is rendered alone or in
a batch of any size.

A scene shows several instances of one *class shape* (the label), scattered like a texture,
among fewer *distractor* shapes of other classes. A crop of a scene therefore usually still
shows the label, and a zoomed crop looks like an ordinary scene with bigger objects. Nuisance
factors: colour, fill style, size, position, rotation (upright +-25 degrees), background,
number of instances.

Profiles (see ``PROFILES``):

- ``train`` - the training distribution (with an easy-first ``difficulty`` knob);
- ``I`` - the same distribution as ``train`` at full difficulty (in-distribution test);
- ``V2`` - the same generator with shifted parameter ranges (smaller objects, more distractors,
  more textured backgrounds, wider colour jitter, rotations up to +-50 degrees);
- ``Sketch`` - thin dark outlines on light paper;
- ``R`` - renditions: fills (checkered, gradient, speckled, double outline), palettes
  (pastel, neon, greyscale) and backgrounds (checks, stripes) never seen in training;
- ``A`` - small instances clustered off-centre among bigger distractors and clutter (the
  unfiltered pool; ``tptlib.micro.sets`` keeps the ones a different model gets wrong);
- ``Colour``, ``Fill``, ``Count`` - cross tasks whose label is an attribute, not the shape.

Captions always name the shape and name each other attribute (colour, fill, size, count)
with probability 1/4.
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
# training data included (the shipped weights were trained on stream 1).
DATA_VERSION = "w2"
_STREAM = 1
IMAGE_SIZE = 48

SHAPES = ["circle", "square", "triangle", "star", "cross",
          "heart", "crescent", "arrow", "house", "lightning"]
SHAPE_PLURALS = ["circles", "squares", "triangles", "stars", "crosses",
                 "hearts", "crescents", "arrows", "houses", "lightnings"]

COLOURS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"]
COLOUR_RGB = torch.tensor([
    [0.86, 0.14, 0.14], [0.96, 0.55, 0.08], [0.95, 0.87, 0.15], [0.15, 0.66, 0.22],
    [0.15, 0.80, 0.85], [0.16, 0.30, 0.88], [0.55, 0.22, 0.75], [0.97, 0.52, 0.75],
    [0.96, 0.96, 0.96], [0.06, 0.06, 0.06]])
FILLS = ["solid", "outlined", "striped", "dotted"]
# fills used only by the R profile (never in training captions or images)
R_FILLS = ["checkered", "gradient", "speckled", "double"]
SIZES = ["small", "large"]
COUNTS = ["one", "two", "three", "four", "five"]

K_MAX = 12          # instance slots per image
N_COLS = 384        # uniforms drawn per sample
# "{}" receives a noun phrase such as "a small red star" or "three stars"; the article is always
# "a", as in the zero-shot prompt "a photo of a {class}."
TEMPLATES = ["a photo of {}.", "a photo of {}.", "a picture of {}.", "an image of {}.",
             "{}.", "there is {}.", "a drawing of {}.", "a rendering of {}."]

PROFILES = ["train", "I", "V2", "Sketch", "R", "A", "Colour", "Fill", "Count"]
_PROFILE_ID = {p: i for i, p in enumerate(PROFILES)}


# ----------------------------------------------------------------------------- shapes as SDFs
_ATLAS_RES = 128
_ATLAS_EXTENT = 1.25   # the atlas covers [-1.25, 1.25]^2 in shape units


def _regular(n: int, r: float, phase: float = math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _polygons() -> dict:
    star = np.zeros((10, 2))
    t = math.pi / 2 + math.pi * np.arange(10) / 5
    rr = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    star[:, 0], star[:, 1] = rr * np.cos(t), rr * np.sin(t) - 0.05
    a, b = 0.3, 0.95
    cross = np.array([[a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a], [-a, -b],
                      [a, -b], [a, -a], [b, -a], [b, a], [a, a]])
    tt = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(tt) ** 3,
                      13 * np.cos(tt) - 5 * np.cos(2 * tt) - 2 * np.cos(3 * tt) - np.cos(4 * tt)], 1)
    heart = heart / 17.0 * 1.05 + np.array([0, 0.12])
    tri = _regular(3, 1.05) + np.array([0, -0.18])
    arrow = np.array([[-0.95, 0.2], [0.1, 0.2], [0.1, 0.62], [0.95, 0.0], [0.1, -0.62],
                      [0.1, -0.2], [-0.95, -0.2]])
    house = np.array([[-0.72, -0.85], [0.72, -0.85], [0.72, 0.12], [0.0, 0.92], [-0.72, 0.12]])
    lightning = np.array([[-0.15, 1.0], [0.55, 1.0], [0.12, 0.18], [0.55, 0.18], [-0.4, -1.0],
                          [-0.08, -0.08], [-0.5, -0.08]])
    square = np.array([[-0.78, -0.78], [0.78, -0.78], [0.78, 0.78], [-0.78, 0.78]])
    return {"square": square, "triangle": tri, "star": star, "cross": cross, "heart": heart,
            "arrow": arrow, "house": house, "lightning": lightning}


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
            s = np.linalg.norm(p, axis=1) - 0.9
        elif name == "crescent":
            d1 = np.linalg.norm(p, axis=1) - 0.92
            d2 = np.linalg.norm(p - np.array([0.42, 0.12]), axis=1) - 0.72
            s = np.maximum(d1, -d2)
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
    cx: torch.Tensor          # px
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
    # labels / caption facts
    label: torch.Tensor       # long [B] class shape
    colour: torch.Tensor      # long [B] target colour index (COLOURS), -1 if none
    fill_name: torch.Tensor   # long [B] target fill index (FILLS), -1 if not a FILLS fill
    size_name: torch.Tensor   # long [B] 0 small 1 large -1 medium
    count: torch.Tensor       # long [B] number of target instances


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
    hard = c.take() < difficulty if profile == "train" else torch.ones(B, dtype=torch.bool)

    label = torch.minimum((c.take() * len(SHAPES)).long(), torch.tensor(len(SHAPES) - 1))

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
        n_d = 3 + (dis_u * 3).long().clamp(max=2)          # 3-5 bigger distractors
    else:
        raise KeyError(profile)

    # ------------------------------------------------------------------ slots
    slot = torch.arange(K)[None].expand(B, K)
    is_target = slot < n_t[:, None]
    active = slot < (n_t + n_d)[:, None]
    n_tot = n_t + n_d

    # distractor shapes: distinct, never the label
    perm = torch.argsort(c.take(len(SHAPES) - 1), dim=1)          # [B, 9] order of other shapes
    others = (label[:, None] + 1 + perm) % len(SHAPES)
    dshape = torch.cat([others, others[:, : K - others.shape[1]]], 1)   # K wide
    shape = torch.where(is_target, label[:, None].expand(B, K), torch.zeros_like(dshape))
    # distractor j (slot n_t + j) takes others[j]
    didx = (slot - n_t[:, None]).clamp(min=0)
    shape = torch.where(is_target, shape, torch.gather(dshape, 1, didx.clamp(max=K - 1)))

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

    if profile == "A":
        # targets: a tight cluster in an off-centre corner region; distractors elsewhere, bigger
        corner = (c.take() * 4).long().clamp(max=3)
        ox = torch.where(corner % 2 == 0, torch.tensor(2.0), torch.tensor(S - 22.0))
        oy = torch.where(corner // 2 == 0, torch.tensor(2.0), torch.tensor(S - 22.0))
        tj = c.take(2 * K).view(B, K, 2)
        sub = torch.argsort(c.take(4), dim=1)           # 2x2 sub-grid of the 20 px cluster box
        subk = torch.cat([sub, sub, sub], 1)[:, :K]
        tx = ox[:, None] + (subk % 2).float() * 10 + 5 + (tj[..., 0] - 0.5) * 4
        ty = oy[:, None] + (subk // 2).float() * 10 + 5 + (tj[..., 1] - 0.5) * 4
        # a fifth target sits in the middle of the cluster box
        tx = torch.where(slot == 4, ox[:, None] + 10 + (tj[..., 0] - 0.5) * 2, tx)
        ty = torch.where(slot == 4, oy[:, None] + 10 + (tj[..., 1] - 0.5) * 2, ty)
        t_rad = _lerp(rad_u, 2.6, 3.8)
        # distractors: the 3x3 grid cells away from the cluster's corner
        far = {0: [8, 5, 7, 2, 6, 4], 1: [6, 3, 7, 0, 8, 4], 2: [2, 1, 5, 0, 8, 4], 3: [0, 1, 3, 2, 6, 4]}
        fartab = torch.tensor([far[i] for i in range(4)])[corner]        # [B,6]
        fperm = torch.argsort(c.take(6), dim=1)
        fcell = torch.gather(fartab, 1, fperm)                         # [B,6]
        didx6 = (slot - n_t[:, None]).clamp(0, 5)
        dc = torch.gather(fcell, 1, didx6)
        d_rad = _lerp(c.take(K), 5.0, 8.0)
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

    # ------------------------------------------------------------------ profile overrides
    if profile == "Sketch":
        ink = _lerp(c.take(), 0.1, 0.5)
        rgb = ink[:, None, None].expand(B, K, 3).clone()
        fill = torch.ones_like(fill)
        line_w = _lerp(c.take(K), 0.5, 0.9)          # pencil-thin strokes
        paper = _lerp(c.take(), 0.86, 1.0)
        bg1 = torch.stack([paper, paper * 0.98, paper * 0.93], 1)
        bg2 = (bg1 - 0.12).clamp(0, 1)
        bg_kind = torch.full_like(bg_kind, 2)        # textured paper
        tcol = torch.full_like(tcol, -1)
    if profile == "R":
        pal = _pick(c.take(), [1, 1, 1])          # 0 pastel, 1 neon on black, 2 greyscale
        base = c.take(3 * K).view(B, K, 3)
        pastel = 0.65 + 0.3 * base
        neon_idx = (base[..., 0] * 4).long().clamp(max=3)
        neon = torch.tensor([[1.0, 0.1, 0.9], [0.2, 1.0, 0.2], [0.1, 0.9, 1.0], [1.0, 0.95, 0.1]])[neon_idx]
        grey = base[..., :1].expand(B, K, 3) * 0.9 + 0.05
        p = pal[:, None, None]
        rgb = torch.where(p == 0, pastel, torch.where(p == 1, neon, grey))
        rgb2 = torch.where(p == 0, 0.5 + 0.5 * rgb2, torch.where(p == 1, neon.flip(1), 1 - grey))
        rf = 4 + (c.take() * 4).long().clamp(max=3)
        drf = 4 + (c.take(K) * 4).long().clamp(max=3)
        fill = torch.where(is_target, rf[:, None].expand(B, K), drf)
        bg_kind = 3 + (c.take() < 0.5).long()
        g = c.take()
        lum_bg = torch.where(pal == 0, 0.35 + 0.2 * g, torch.where(pal == 1, 0.05 + 0.08 * g, 0.5 + 0.4 * g))
        lum_bg = torch.where((pal == 2) & (_luma(rgb[:, 0]) > 0.5), 0.1 + 0.2 * g, lum_bg)
        bg1 = torch.stack([lum_bg, lum_bg * 0.95, lum_bg * 1.05], 1).clamp(0, 1)
        bg2 = (bg1 + 0.12).clamp(0, 1)
        tcol = torch.full_like(tcol, -1)
    if profile == "A":
        bg1 = _lerp(c.take(3), 0.2, 0.8)
        bg2 = _lerp(c.take(3), 0.2, 0.8)

    fill_name = torch.where(fill[:, 0] < 4, fill[:, 0], torch.full_like(fill[:, 0], -1))
    r_mean = radius[:, 0]
    size_name = torch.where(r_mean < 5.5, 0, torch.where(r_mean > 9.5, 1, -1))
    if profile == "A":
        size_name = torch.zeros_like(size_name)

    return Scene(active=active, is_target=is_target, shape=shape, cx=cx, cy=cy, radius=radius,
                 rot=rot, rgb=rgb, rgb2=rgb2, fill=fill, line_w=line_w, period=period,
                 pat_angle=pat_angle, noise_seed=noise_seed, bg_kind=bg_kind, bg1=bg1, bg2=bg2,
                 bg_angle=bg_angle, bg_grid=bg_grid, bg_period=bg_period, label=label,
                 colour=tcol, fill_name=fill_name, size_name=size_name, count=n_t)


# ----------------------------------------------------------------------------- rendering
def _background(sc: Scene, S: int) -> torch.Tensor:
    B = sc.bg1.shape[0]
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32) + 0.5,
                            torch.arange(S, dtype=torch.float32) + 0.5, indexing="ij")
    ca, sa = torch.cos(sc.bg_angle)[:, None, None], torch.sin(sc.bg_angle)[:, None, None]
    proj = ((xs - S / 2) * ca + (ys - S / 2) * sa) / S + 0.5          # [B,S,S] ~[0,1]
    grad_t = proj.clamp(0, 1)
    noise = F.interpolate(sc.bg_grid[:, None], size=(S, S), mode="bicubic", align_corners=False)[:, 0]
    noise_t = (noise * 1.6 + 0.5).clamp(0, 1)
    per = sc.bg_period[:, None, None]
    checks = ((torch.floor(xs / per) + torch.floor(ys / per)) % 2)
    stripes = (torch.sin(2 * math.pi * proj * S / per) > 0).float()
    k = sc.bg_kind[:, None, None]
    t = torch.where(k == 0, torch.zeros_like(grad_t),
        torch.where(k == 1, grad_t, torch.where(k == 2, noise_t, torch.where(k == 3, checks, stripes))))
    return sc.bg1[:, :, None, None] * (1 - t[:, None]) + sc.bg2[:, :, None, None] * t[:, None]


_BUCKETS = (12, 16, 24, 32, 48)
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
            speck = (torch.sin(dx[j] * 12.9898 + dy[j] * 78.233 + ph) * 43758.5453).frac().abs() > 0.45
            alpha[j] = torch.maximum(band, solid * speck.float())
        elif f == 7:    # double outline
            inner = (0.5 - ((d + 2.6 * w).abs() - w / 2)).clamp(0, 1)
            alpha[j] = torch.maximum(band, inner)
        else:
            raise ValueError(f"unknown fill {f}")
    return alpha, mix


def render_scene(sc: Scene, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Render a scene batch to float images ``[B, 3, size, size]`` in [0, 1].

    Only the active instances are rasterised, each in a small patch around it (sized to its
    radius), and each computes only its own fill pattern; patches are alpha-composited onto a
    padded canvas, distractors first, then targets.
    """
    S = size
    B, K = sc.shape.shape
    canvas = F.pad(_background(sc, S), (_PAD, _PAD, _PAD, _PAD))
    atlas = shape_atlas()
    n_shapes = atlas.shape[2]
    bi, ki = sc.active.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return canvas[:, :, _PAD:_PAD + S, _PAD:_PAD + S].clamp(0, 1)
    g = lambda t: t[bi, ki]  # noqa: E731
    scale = S / IMAGE_SIZE
    cx, cy, rad = g(sc.cx) * scale, g(sc.cy) * scale, g(sc.radius) * scale
    need = 2 * torch.ceil(rad * 1.2 + 1.5)
    buckets = torch.tensor(list(_BUCKETS) + [10 ** 6])
    P_of = buckets[torch.searchsorted(buckets, need.contiguous())]
    P_of = torch.where(P_of > 48, torch.tensor(int(S + 2 * _PAD)), P_of)
    ox = torch.round(cx - P_of / 2).long()
    oy = torch.round(cy - P_of / 2).long()
    ox = torch.minimum(torch.maximum(ox, torch.tensor(-_PAD)), S + _PAD - P_of)
    oy = torch.minimum(torch.maximum(oy, torch.tensor(-_PAD)), S + _PAD - P_of)
    rgb, rgb2 = g(sc.rgb), g(sc.rgb2)
    fields = dict(rot=g(sc.rot), shape=g(sc.shape), fill=g(sc.fill), lw=g(sc.line_w) * scale,
                  per=g(sc.period) * scale, pat=g(sc.pat_angle), nseed=g(sc.noise_seed))
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
    Sc = S + 2 * _PAD
    flat = canvas.view(-1)
    ch = torch.arange(3)
    for layer in range(int(rank.max()) + 1):
        for P, (j, alpha, mix) in patches.items():
            m = (rank[j] == layer).nonzero(as_tuple=True)[0]
            if m.numel() == 0:
                continue
            jj = j[m]
            ar = torch.arange(P)
            rows = (oy[jj] + _PAD)[:, None] + ar[None]                  # [n,P]
            cols = (ox[jj] + _PAD)[:, None] + ar[None]
            lin = (((bi[jj][:, None] * 3 + ch[None]) * Sc * Sc)[:, :, None, None]
                   + (rows * Sc)[:, None, :, None] + cols[:, None, None, :]).view(-1)
            a = alpha[m][:, None]
            col = rgb[jj][:, :, None, None] + (rgb2[jj] - rgb[jj])[:, :, None, None] * mix[m][:, None]
            cur = flat[lin].view(-1, 3, P, P)
            flat[lin] = (cur + (col - cur) * a).view(-1)
    return canvas[:, :, _PAD:_PAD + S, _PAD:_PAD + S].clamp(0, 1)


# ----------------------------------------------------------------------------- captions
_NUM = ["one", "two", "three", "four", "five"]


def caption_and_facts(sc: Scene, i: int, u_cap: np.ndarray) -> tuple[str, list[int]]:
    """Caption of sample ``i`` from its caption uniforms, and the facts it states.

    The shape is always named; size, colour, fill and count are each named with probability 1/4.
    Facts: ``[shape, size, colour, fill, count]`` with -1 where the caption says nothing.
    """
    words = []
    facts = [int(sc.label[i]), -1, -1, -1, -1]
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
        phrase = " ".join(["a"] + words + [SHAPES[lab]])
    t = TEMPLATES[min(int(u_cap[4] * len(TEMPLATES)), len(TEMPLATES) - 1)]
    return t.format(phrase), facts


def caption(sc: Scene, i: int, u_cap: np.ndarray) -> str:
    """Caption of sample ``i`` (see ``caption_and_facts``)."""
    return caption_and_facts(sc, i, u_cap)[0]


def image_facts(sc: Scene) -> torch.Tensor:
    """``[B, 5]`` facts of each image: shape, size, colour, fill, count (-1: not nameable)."""
    return torch.stack([sc.label, sc.size_name, sc.colour, sc.fill_name, sc.count], 1)


def consistent(img_facts: torch.Tensor, cap_facts: torch.Tensor) -> torch.Tensor:
    """``[B_img, B_cap]`` bool: the caption is true of the image (every fact it states holds)."""
    i, c = img_facts[:, None, :], cap_facts[None, :, :]
    return ((c == -1) | (c == i)).all(-1)


def caption_vocabulary() -> list[str]:
    """Every word a caption or a class name of the micro world can contain."""
    words = set()
    for t in TEMPLATES:
        words.update(t.replace("{}", "").replace(".", " ").split())
    words.update(SHAPES + SHAPE_PLURALS + COLOURS + FILLS + R_FILLS + SIZES + COUNTS + ["an", "a", "."])
    return sorted(words)


# ----------------------------------------------------------------------------- public API
def render(profile: str, seed: int, indices, difficulty: float = 1.0, size: int = IMAGE_SIZE,
           with_captions: bool = False):
    """Render samples ``indices`` of ``profile`` with ``seed``.

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
