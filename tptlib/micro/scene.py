"""Scene parameters from uniforms: what a micro world sample shows, before it is rendered.

Every sample is a function of ``(profile, seed, index)`` only: its uniforms come from
``tptlib.micro.uniforms``, and ``sample_scene`` consumes them column by column in a fixed order,
so a sample is the same whether it is drawn alone or in a batch of any size. The profile's ``ProfileSpec`` says what differs between profiles;
``tptlib.micro.layout`` places the instances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import layout
from .constants import COLOUR_RGB, COLOURS, K_MAX, SHAPES
from .profiles import spec
from .uniforms import Cols, lerp, pick


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


def luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _easy(hard, x):
    """``x`` where the scene is at full difficulty, else zero (easy scenes: plain photos...)."""
    return torch.where(hard, x, torch.zeros_like(x))


def _kind(c: Cols, sp, difficulty: float, B: int):
    """Difficulty, label, style, effect and close-up of each sample."""
    hard = c.take() < difficulty if sp.curriculum else torch.ones(B, dtype=torch.bool)
    n_sh = len(SHAPES)
    label = torch.minimum((c.take() * n_sh).long(), torch.tensor(n_sh - 1))
    style = pick(c.take(), sp.style)
    effect = pick(c.take(), sp.effect)
    effect_amt = c.take()
    closeup = (c.take() < sp.closeup).long()
    if sp.curriculum:
        style, effect, closeup = _easy(hard, style), _easy(hard, effect), _easy(hard, closeup)
    return hard, label, style, effect, effect_amt, closeup


def _counts(c: Cols, sp, hard, closeup):
    """Numbers of target instances and of distractors."""
    cnt_u, dis_u = c.take(), c.take()
    if sp.counts == "scatter":
        n_t = 1 + pick(cnt_u, [3, 4, 3, 1.5, 1])
        if sp.curriculum:
            n_t = torch.where(hard, n_t, 1 + pick(cnt_u, [3, 3, 2, 0, 0]))
        max_d = sp.max_distractors
        n_d = (dis_u * (max_d + 1)).long().clamp(max=max_d)
        n_d = torch.minimum(n_d, n_t - 1)
        if sp.curriculum:
            n_d = _easy(hard, n_d)
        if not sp.distractors:
            n_d = torch.zeros_like(n_d)
    elif sp.counts == "uniform":
        n_t = 1 + (cnt_u * 5).long().clamp(max=4)
        n_d = torch.zeros_like(n_t)
    elif sp.counts == "cluster":
        n_t = 3 + (cnt_u * 3).long().clamp(max=2)          # 3-5 small instances, clustered
        lo, hi = sp.cluster.distractors
        n_d = lo + (dis_u * (hi - lo + 1)).long().clamp(max=hi - lo)   # bigger distractors
    else:
        raise ValueError(f"ProfileSpec {sp.name}: counts must be 'scatter', 'uniform' or 'cluster', "
                         f"not {sp.counts!r}")
    n_t = torch.where(closeup.bool(), torch.ones_like(n_t), n_t)
    n_d = torch.where(closeup.bool(), torch.zeros_like(n_d), n_d)
    return n_t, n_d


def _shapes(c: Cols, label, n_t, n_d, B: int):
    """Slots: which are drawn, which are targets, and each slot's shape (distractors distinct)."""
    n_sh = len(SHAPES)
    slot = torch.arange(K_MAX)[None].expand(B, K_MAX)
    is_target = slot < n_t[:, None]
    active = slot < (n_t + n_d)[:, None]
    perm = torch.argsort(c.take(n_sh - 1), dim=1)                  # [B, n-1] order of other shapes
    others = (label[:, None] + 1 + perm) % n_sh
    didx = (slot - n_t[:, None]).clamp(min=0, max=others.shape[1] - 1)
    shape = torch.where(is_target, label[:, None].expand(B, K_MAX), torch.gather(others, 1, didx))
    return slot, is_target, active, shape


def _colours_and_fills(c: Cols, sp, is_target, B: int) -> dict:
    K = K_MAX
    rot_range = math.radians(sp.rotation_deg)
    rot = (c.take(K) * 2 - 1) * rot_range
    tcol = (c.take() * len(COLOURS)).long().clamp(max=len(COLOURS) - 1)
    dcol = (c.take(K) * len(COLOURS)).long().clamp(max=len(COLOURS) - 1)
    colidx = torch.where(is_target, tcol[:, None].expand(B, K), dcol)
    cj = (c.take(3 * K).view(B, K, 3) - 0.5) * 2 * sp.colour_jitter
    rgb = (COLOUR_RGB[colidx] + cj).clamp(0, 1)
    rgb2 = c.take(3 * K).view(B, K, 3)
    tfill = (c.take() * 4).long().clamp(max=3)
    dfill = (c.take(K) * 4).long().clamp(max=3)
    fill = torch.where(is_target, tfill[:, None].expand(B, K), dfill)
    return dict(rot=rot, tcol=tcol, rgb=rgb, rgb2=rgb2, fill=fill, line_w=lerp(c.take(K), 1.3, 2.4),
                period=lerp(c.take(K), 2.8, 4.2), pat_angle=c.take(K) * math.pi, noise_seed=c.take(K))


def _contrast_bg(c: Cols, B: int, target_rgb: torch.Tensor, sat_max: float = 0.35):
    """A background colour whose brightness is on the other side of the target colour's."""
    hue = c.take(3)
    sat = lerp(c.take(), 0.0, sat_max)
    lum_u = c.take()
    dark = luma(target_rgb) > 0.5
    lum = torch.where(dark, lerp(lum_u, 0.05, 0.35), lerp(lum_u, 0.68, 0.95))
    base = lum[:, None].expand(B, 3)
    col = base + sat[:, None] * (hue - 0.5)
    return col.clamp(0, 1)


def _background(c: Cols, sp, hard, tcol, B: int) -> dict:
    bg_kind = pick(c.take(), sp.background)
    if sp.curriculum:
        bg_kind = _easy(hard, bg_kind)
    bg1 = _contrast_bg(c, B, COLOUR_RGB[tcol])
    bg2 = (bg1 + (c.take(3) - 0.5) * 0.35).clamp(0, 1)
    bg_angle = c.take() * 2 * math.pi
    bg_grid = (c.take(16).view(B, 4, 4) - 0.5)
    bg_period = lerp(c.take(), 4.0, 8.0)
    if sp.cluster is not None:                      # clutter: independent ground colours
        bg1 = lerp(c.take(3), 0.2, 0.8)
        bg2 = lerp(c.take(3), 0.2, 0.8)
    return dict(bg_kind=bg_kind, bg1=bg1, bg2=bg2, bg_angle=bg_angle, bg_grid=bg_grid, bg_period=bg_period)


def _sketch(c: Cols, sp, style, d: dict, B: int) -> None:
    """Sketches: dark ink outlines on textured paper (in place on the parameter dict ``d``)."""
    K = K_MAX
    sk = (style == 1)
    ink = lerp(c.take(), 0.1, 0.5)
    sk_lw = lerp(c.take(K), *sp.sketch_line)
    paper = lerp(c.take(), 0.86, 1.0)
    sk_bg1 = torch.stack([paper, paper * 0.98, paper * 0.93], 1)
    d["rgb"] = torch.where(sk[:, None, None], ink[:, None, None].expand(B, K, 3), d["rgb"])
    d["fill"] = torch.where(sk[:, None], torch.ones_like(d["fill"]), d["fill"])
    d["line_w"] = torch.where(sk[:, None], sk_lw, d["line_w"])
    d["bg1"] = torch.where(sk[:, None], sk_bg1, d["bg1"])
    d["bg2"] = torch.where(sk[:, None], (sk_bg1 - 0.12).clamp(0, 1), d["bg2"])
    d["bg_kind"] = torch.where(sk, torch.full_like(d["bg_kind"], 2), d["bg_kind"])     # textured paper


def _rendition(c: Cols, sp, style, is_target, d: dict, B: int) -> None:
    """Renditions: pastel, neon or greyscale palettes, two-colour fills, busy grounds (in place)."""
    K = K_MAX
    rd = (style == 2)
    pal = pick(c.take(), [1, 1, 1])          # 0 pastel, 1 neon on black, 2 greyscale
    base = c.take(3 * K).view(B, K, 3)
    pastel = 0.65 + 0.3 * base
    neon_idx = (base[..., 0] * 4).long().clamp(max=3)
    neon = torch.tensor([[1.0, 0.1, 0.9], [0.2, 1.0, 0.2], [0.1, 0.9, 1.0], [1.0, 0.95, 0.1]])[neon_idx]
    grey = base[..., :1].expand(B, K, 3) * 0.9 + 0.05
    p = pal[:, None, None]
    r_rgb = torch.where(p == 0, pastel, torch.where(p == 1, neon, grey))
    r_rgb2 = torch.where(p == 0, 0.5 + 0.5 * d["rgb2"], torch.where(p == 1, neon.flip(1), 1 - grey))
    rf = 4 + (c.take() * 4).long().clamp(max=3)
    drf = 4 + (c.take(K) * 4).long().clamp(max=3)
    r_fill = torch.where(is_target, rf[:, None].expand(B, K), drf)
    busy_u, kind_u = c.take(), c.take()
    r_bg = torch.where(busy_u < sp.busy_renditions, 3 + (kind_u < 0.5).long(), (kind_u < 0.5).long())
    g = c.take()
    lum_bg = torch.where(pal == 0, 0.35 + 0.2 * g, torch.where(pal == 1, 0.05 + 0.08 * g, 0.5 + 0.4 * g))
    lum_bg = torch.where((pal == 2) & (luma(r_rgb[:, 0]) > 0.5), 0.1 + 0.2 * g, lum_bg)
    r_bg1 = torch.stack([lum_bg, lum_bg * 0.95, lum_bg * 1.05], 1).clamp(0, 1)
    d["rgb"] = torch.where(rd[:, None, None], r_rgb, d["rgb"])
    d["rgb2"] = torch.where(rd[:, None, None], r_rgb2, d["rgb2"])
    d["fill"] = torch.where(rd[:, None], r_fill, d["fill"])
    d["bg_kind"] = torch.where(rd, r_bg, d["bg_kind"])
    d["bg1"] = torch.where(rd[:, None], r_bg1, d["bg1"])
    d["bg2"] = torch.where(rd[:, None], (r_bg1 + 0.12).clamp(0, 1), d["bg2"])


def sample_scene(profile: str, u: torch.Tensor, difficulty: float = 1.0) -> Scene:
    """Turn uniforms into scene parameters for ``profile`` (its ``ProfileSpec``)."""
    sp = spec(profile)
    B = u.shape[0]
    c = Cols(u)
    hard, label, style, effect, effect_amt, closeup = _kind(c, sp, difficulty, B)
    n_t, n_d = _counts(c, sp, hard, closeup)
    slot, is_target, active, shape = _shapes(c, label, n_t, n_d, B)
    cx, cy, radius = layout.place(c, sp, hard, closeup, slot, n_t, n_d, B)
    d = _colours_and_fills(c, sp, is_target, B)
    d.update(_background(c, sp, hard, d["tcol"], B))
    _sketch(c, sp, style, d, B)
    _rendition(c, sp, style, is_target, d, B)
    tcol = torch.where((style > 0) | (effect == 4), torch.full_like(d["tcol"], -1), d["tcol"])
    fill = d["fill"]
    fill_name = torch.where(fill[:, 0] < 4, fill[:, 0], torch.full_like(fill[:, 0], -1))
    fill_name = torch.where(style == 1, torch.full_like(fill_name, -1), fill_name)
    win = layout.window(c, sp, hard, closeup, cx, cy, radius, is_target, n_t)
    return Scene(active=active, is_target=is_target, shape=shape, cx=cx, cy=cy, radius=radius,
                 rot=d["rot"], rgb=d["rgb"], rgb2=d["rgb2"], fill=fill, line_w=d["line_w"],
                 period=d["period"], pat_angle=d["pat_angle"], noise_seed=d["noise_seed"],
                 bg_kind=d["bg_kind"], bg1=d["bg1"], bg2=d["bg2"], bg_angle=d["bg_angle"],
                 bg_grid=d["bg_grid"], bg_period=d["bg_period"], effect=effect, effect_amt=effect_amt,
                 label=label, colour=tcol, fill_name=fill_name, style=style, **win)
