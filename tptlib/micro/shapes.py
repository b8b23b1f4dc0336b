"""The micro world's shapes as signed distance fields, sampled once into an atlas."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .constants import SHAPES

ATLAS_EXTENT = 1.25   # the atlas covers [-ATLAS_EXTENT, ATLAS_EXTENT]^2 in shape units
_ATLAS_RES = 160


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
    lin = np.linspace(-ATLAS_EXTENT, ATLAS_EXTENT, _ATLAS_RES)
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


