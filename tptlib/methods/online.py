"""Online methods: state carried from one test sample to the next, over a stream in a fixed order.

An online method splits its work per sample into a prediction and an *update* of its state (a cache,
a memory). The update is a small dict of tensors (a feature, a pseudo-label, an entropy) from which
`apply_update` changes the state, and the state is a function of the updates applied so far, in
order. That is what makes a run resumable exactly: `tpt.evaluate` stores each sample's update with
its record, in the batch's transaction, and a resumed run replays the stored updates into a fresh
state before it goes on (`tptlib.runs`).

    state = method.init_state(prepared)
    out, updates = method.run_online(clip, prepared, state, view_feats)   # samples in stream order
    for update in updates: method.apply_update(prepared, other_state, update)   # same state

A subclass implements `init_state`, `apply_update` and `step` (one sample: update the state through
`apply_update`, then predict). `run` (a batch with a fresh state, e.g. `method.predict` on one image)
is `run_online` on a new state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Method
from .output import MethodOutput


@dataclass
class Step:
    """What `OnlineMethod.step` returns for one sample."""

    logits: torch.Tensor           # [C] the method's prediction scores (log-probabilities)
    logits_before: torch.Tensor    # [C] view 0 with the method's zero-shot classifier, no state
    kept: torch.Tensor             # [k] long: views the method selected ([0] if none)
    update: dict                   # name -> tensor: what `apply_update` needs


class OnlineMethod(Method):
    """Base class of the online methods (state over the test stream)."""

    online = True
    tunes = False

    def init_state(self, prepared):
        """A fresh state for a task (`prepared` is `method.prepare(clip, classnames)`)."""
        raise NotImplementedError

    def apply_update(self, prepared, state, update: dict) -> None:
        """Change `state` in place by one sample's `update` (the same in a live run and a replay)."""
        raise NotImplementedError

    def step(self, clip, prepared, state, feats: torch.Tensor) -> Step:
        """One sample's views `[V, D]` (the first `views_used` of them): update `state` (through
        `apply_update`) and predict."""
        raise NotImplementedError

    @torch.no_grad()
    def run_online(self, clip, prepared, state, view_feats: torch.Tensor, class_chunk=None,
                   loss_scale=None) -> MethodOutput:
        """The samples of a batch `[B, V, D]` in order, each seeing the state the previous ones left
        (`class_chunk` and `loss_scale` are the engine's, for an online method that tunes)."""
        steps = [self.step(clip, prepared, state, view_feats[b].float()) for b in range(view_feats.shape[0])]
        B = len(steps)
        k = max(s.kept.numel() for s in steps)
        kept = torch.stack([torch.cat([s.kept.cpu(), s.kept.new_full((k - s.kept.numel(),), -1).cpu()])
                            for s in steps]) if k else torch.empty(B, 0, dtype=torch.long)
        return MethodOutput(logits=torch.stack([s.logits for s in steps]).float(),
                            logits_before=torch.stack([s.logits_before for s in steps]).float(),
                            loss=torch.full((B,), math.nan), kept=kept, view_logits_before=None,
                            nonfinite=torch.zeros(B, dtype=torch.bool), updates=[s.update for s in steps])

    def run(self, clip, prepared, view_feats, class_chunk=None, loss_scale=None):
        """A batch on a fresh state (`method.predict` on one image: the first sample of a stream)."""
        return self.run_online(clip, prepared, self.init_state(prepared), view_feats)


def encode_update(update: dict) -> bytes:
    """An update as bytes (safetensors: exact, no pickle)."""
    from safetensors.torch import save
    return save({k: v.detach().cpu().contiguous() for k, v in update.items()})


def decode_update(blob: bytes, device=None) -> dict:
    from safetensors.torch import load
    out = load(bytes(blob))
    return out if device is None else {k: v.to(device) for k, v in out.items()}

