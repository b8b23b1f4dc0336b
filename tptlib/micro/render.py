"""Rendering a micro scene: background, instances rasterised from the shape atlas, effects.

The rendering is element-wise torch code, so an image is the same whether it is rendered alone or
in a batch of any size, and at any resolution (shapes are signed distance fields): a scene is
rendered at ``size`` px by scaling its 48-px scene units, and a zoomed window is drawn at full
detail.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .constants import IMAGE_SIZE
from .scene import Scene, luma
from .shapes import ATLAS_EXTENT, shape_atlas


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
    grid = torch.stack([lx / ATLAS_EXTENT, ly / ATLAS_EXTENT, z[:, None, None].expand(n, P, P)], -1)
    sdf = F.grid_sample(atlas, grid[None], mode="bilinear", padding_mode="border",
                        align_corners=True)[0, 0] * r                     # [n,P,P] px
    far = (lx.abs() > ATLAS_EXTENT) | (ly.abs() > ATLAS_EXTENT)
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
    grey = luma(out.permute(0, 2, 3, 1))[:, None].expand_as(out)
    out = torch.where(ee == 4, grey, out)
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
    reach = sc.radius[bi, ki] * zoom * ATLAS_EXTENT + 2
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


