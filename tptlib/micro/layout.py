"""Where a micro scene's instances go: the grid layout, A's clustered layout, zoomed windows.

Positions and radii are in 48-px scene units (``IMAGE_SIZE``). Instances are scattered over a
grid of G x G cells (one per instance, G from the number of instances), jittered within their
cell; a close-up is one large instance off-centre. The A profile clusters its small targets in a
corner box and puts bigger distractors in the grid cells away from it. Training images can show a
zoomed window of their scene that holds the centre of a target instance (``window``).
"""
from __future__ import annotations

import torch

from .constants import IMAGE_SIZE, K_MAX
from .uniforms import Cols, lerp

_S = float(IMAGE_SIZE)
#: A's distractor cells (of the 3x3 grid) away from the targets' corner, nearest last
_FAR = {0: [8, 5, 7, 2, 6, 4], 1: [6, 3, 7, 0, 8, 4], 2: [2, 1, 5, 0, 8, 4], 3: [0, 1, 3, 2, 6, 4]}


def _cells(cell_perm, G, B: int):
    """A random permutation of the G*G cells of each image's grid (from one 16-cell permutation)."""
    cell = torch.zeros(B, K_MAX, dtype=torch.long)
    for g in range(1, 5):
        cand = torch.argsort(cell_perm[:, : g * g], dim=1)
        cand = cand.repeat(1, K_MAX // (g * g) + 1)[:, :K_MAX]
        cell = torch.where((G == g)[:, None], cand, cell)
    return cell


def place(c: Cols, sp, hard, closeup, slot, n_t, n_d, B: int):
    """Centres and radii ``[B, K_MAX]`` of every slot (``sp``: the profile's ``ProfileSpec``)."""
    K = K_MAX
    n_tot = n_t + n_d
    cell_perm = torch.argsort(c.take(16), dim=1)              # random order of cells
    jit = c.take(2 * K).view(B, K, 2)
    rad_u = c.take(K)
    gx = torch.ceil(torch.sqrt(n_tot.float())).long()
    grow = c.take() < 0.2
    G = torch.where(grow, gx + 1, gx).clamp(1, 4)
    if sp.curriculum:
        G = torch.where(hard, G, torch.where(n_tot == 1, torch.ones_like(G), G))
    if sp.cluster is not None:
        G = torch.full_like(G, 3)
    G = torch.where(closeup.bool(), torch.ones_like(G), G)
    cell = _cells(cell_perm, G, B)
    cellsize = _S / G.float()
    row, col = cell // G[:, None], cell % G[:, None]
    cs = cellsize[:, None]
    radius = cs / 2 * lerp(rad_u, *sp.radius)
    radius = radius.clamp(max=20.0)
    if sp.curriculum:
        easy_r = cs / 2 * lerp(rad_u, 0.7, 1.0)
        radius = torch.where(hard[:, None], radius, easy_r.clamp(max=20.0))
    slack = (cs / 2 - radius * 0.8).clamp(min=0)
    cx = (col.float() + 0.5) * cs + (jit[..., 0] * 2 - 1) * slack
    cy = (row.float() + 0.5) * cs + (jit[..., 1] * 2 - 1) * slack
    # close-ups: one instance larger than the frame's half, off-centre, partly cut
    cu = closeup.bool()[:, None]
    radius = torch.where(cu, lerp(rad_u, 24.0, 34.0), radius)
    cx = torch.where(cu, _S / 2 + (jit[..., 0] - 0.5) * 16, cx)
    cy = torch.where(cu, _S / 2 + (jit[..., 1] - 0.5) * 16, cy)
    if sp.cluster is not None:
        cx, cy, radius = _cluster(c, sp.cluster, slot, n_t, jit, rad_u, B)
    return cx, cy, radius


def _cluster(c: Cols, cl, slot, n_t, jit, rad_u, B: int):
    """A's layout: targets in a tight cluster in an off-centre corner box; distractors elsewhere, bigger."""
    K = K_MAX
    is_target = slot < n_t[:, None]
    corner = (c.take() * 4).long().clamp(max=3)
    box = cl.box
    ox = torch.where(corner % 2 == 0, torch.tensor(2.0), torch.tensor(_S - 2.0 - box))
    oy = torch.where(corner // 2 == 0, torch.tensor(2.0), torch.tensor(_S - 2.0 - box))
    tj = c.take(2 * K).view(B, K, 2)
    sub = torch.argsort(c.take(4), dim=1)           # 2x2 sub-grid of the cluster box
    subk = torch.cat([sub, sub, sub], 1)[:, :K]
    tx = ox[:, None] + (subk % 2).float() * box / 2 + box / 4 + (tj[..., 0] - 0.5) * 4
    ty = oy[:, None] + (subk // 2).float() * box / 2 + box / 4 + (tj[..., 1] - 0.5) * 4
    # a fifth target sits in the middle of the cluster box
    tx = torch.where(slot == 4, ox[:, None] + box / 2 + (tj[..., 0] - 0.5) * 2, tx)
    ty = torch.where(slot == 4, oy[:, None] + box / 2 + (tj[..., 1] - 0.5) * 2, ty)
    t_rad = lerp(rad_u, *cl.target_radius)
    fartab = torch.tensor([_FAR[i] for i in range(4)])[corner]        # [B,6]
    fperm = torch.argsort(c.take(6), dim=1)
    fcell = torch.gather(fartab, 1, fperm)                         # [B,6]
    didx6 = (slot - n_t[:, None]).clamp(0, 5)
    dc = torch.gather(fcell, 1, didx6)
    d_rad = lerp(c.take(K), *cl.distractor_radius)
    dcx = (dc % 3).float() * 16 + 8 + (jit[..., 0] - 0.5) * 4
    dcy = (dc // 3).float() * 16 + 8 + (jit[..., 1] - 0.5) * 4
    return (torch.where(is_target, tx, dcx), torch.where(is_target, ty, dcy),
            torch.where(is_target, t_rad, d_rad))


def window(c: Cols, sp, hard, closeup, cx, cy, radius, is_target, n_t) -> dict:
    """The window of the scene each image shows, and the facts that depend on it.

    With probability ``sp.zoom_p`` (full-difficulty scenes that are not close-ups) the image is a
    window of area ``sp.zoom_area`` holding the centre of one target instance, chosen at random;
    its count is the targets inside it, and a window under 60% of the side is a close-up.
    Returns ``win_x0``, ``win_y0``, ``win_s``, ``count``, ``closeup`` and ``size_name``.
    """
    B = cx.shape[0]
    zu = c.take(4)
    win_s = torch.ones(B)
    win_x0, win_y0 = torch.zeros(B), torch.zeros(B)
    count = n_t
    if sp.zoom_p > 0:
        zoom = hard & (zu[:, 0] < sp.zoom_p) & ~closeup.bool()
        side = torch.sqrt(lerp(zu[:, 1], *sp.zoom_area))
        t = (zu[:, 2] * n_t.float()).long().clamp(max=K_MAX - 1)
        tcx, tcy = cx.gather(1, t[:, None])[:, 0], cy.gather(1, t[:, None])[:, 0]
        w = side * _S
        fx, fy = zu[:, 3], torch.frac(zu[:, 3] * 7.0)
        room = _S - w
        lo_x = torch.minimum((tcx - w * 0.85).clamp(min=0), room)
        hi_x = torch.minimum((tcx - w * 0.15).clamp(min=0), room)
        lo_y = torch.minimum((tcy - w * 0.85).clamp(min=0), room)
        hi_y = torch.minimum((tcy - w * 0.15).clamp(min=0), room)
        win_s = torch.where(zoom, side, win_s)
        win_x0 = torch.where(zoom, lerp(fx, lo_x, hi_x), win_x0)
        win_y0 = torch.where(zoom, lerp(fy, lo_y, hi_y), win_y0)
        inside = ((cx >= win_x0[:, None]) & (cx < (win_x0 + win_s * _S)[:, None])
                  & (cy >= win_y0[:, None]) & (cy < (win_y0 + win_s * _S)[:, None]))
        count = torch.where(zoom, (inside & is_target).sum(1).clamp(min=1), n_t)
        closeup = torch.where(zoom & (win_s < 0.6), torch.ones_like(closeup), closeup)
    r_mean = radius[:, 0] / win_s           # apparent size
    size_name = torch.where(r_mean < 5.5, 0, torch.where(r_mean > 9.5, 1, -1))
    if sp.cluster is not None:
        size_name = torch.zeros_like(size_name)
    return dict(win_x0=win_x0, win_y0=win_y0, win_s=win_s, count=count, closeup=closeup,
                size_name=size_name)
