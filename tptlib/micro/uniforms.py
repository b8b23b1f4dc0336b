"""The micro world's random streams: every sample's uniforms, handed out in a fixed order."""
from __future__ import annotations

import numpy as np
import torch

from .constants import N_COLS, STREAM
from .profiles import PROFILES

_PROFILE_ID = {p: i for i, p in enumerate(PROFILES)}


def sample_uniforms(profile: str, seed: int, indices) -> torch.Tensor:
    """``[B, N_COLS]`` uniforms, one row per index, each a function of (profile, seed, index)."""
    pid = _PROFILE_ID[profile]
    rows = [np.random.default_rng([STREAM, pid, int(seed), int(i)]).random(N_COLS) for i in indices]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


class Cols:
    """Hands out columns of the uniform matrix in a fixed order."""

    def __init__(self, u: torch.Tensor):
        self.u, self.i = u, 0

    def take(self, n: int = 1) -> torch.Tensor:
        if self.i + n > self.u.shape[1]:
            raise RuntimeError("world: out of uniform columns")
        out = self.u[:, self.i:self.i + n]
        self.i += n
        return out if n > 1 else out[:, 0]


def pick(u: torch.Tensor, weights) -> torch.Tensor:
    """Categorical draw from uniforms ``u`` with (unnormalised) ``weights`` (list or [B, n])."""
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.dim() == 1:
        w = w.expand(u.shape[0], -1)
    c = torch.cumsum(w, 1)
    c = c / c[:, -1:]
    return torch.searchsorted(c, u[:, None].contiguous(), right=True)[:, 0].clamp_(max=w.shape[1] - 1)


def lerp(u, lo, hi):
    return lo + (hi - lo) * u
