"""What a method returns: `MethodOutput` for a batch of samples (with the batching helpers the engine
needs to split and join batches), `Prediction` for one sample."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MethodOutput:
    """What a method returns for a batch of B samples with V views and C classes."""

    logits: torch.Tensor                       # [B, C] view 0 after adaptation
    logits_before: torch.Tensor                # [B, C] view 0 with the initial prompt
    loss: torch.Tensor                         # [B] adaptation loss at the first step (nan: no tuning)
    kept: torch.Tensor                         # [B, k] long, views kept by confidence selection (k=0: none)
    view_logits_before: torch.Tensor | None = None   # [B, V, C] all views, initial prompt
    nonfinite: torch.Tensor | None = None      # [B] bool: non-finite loss/gradient under fp16 autocast
    extra: dict = field(default_factory=dict)  # per-sample tensors [B, ...]
    updates: list | None = None                # online methods: per sample, the state update (dict of tensors)

    def select(self, idx: torch.Tensor) -> "MethodOutput":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return MethodOutput(self.logits[idx], self.logits_before[idx], self.loss[idx], self.kept[idx],
                            pick(self.view_logits_before), pick(self.nonfinite),
                            {k: v[idx] for k, v in self.extra.items()},
                            None if self.updates is None else [self.updates[int(i)] for i in idx])

    @staticmethod
    def cat(parts: list["MethodOutput"], order: torch.Tensor | None = None) -> "MethodOutput":
        """Concatenate batch parts; `order[i]` = position in the concatenation of output sample i."""
        def join(ts):
            if any(t is None for t in ts):
                return None
            out = torch.cat(ts)
            return out if order is None else out[order]
        updates = None
        if all(p.updates is not None for p in parts):
            updates = [u for p in parts for u in p.updates]
            updates = updates if order is None else [updates[int(i)] for i in order]
        return MethodOutput(join([p.logits for p in parts]), join([p.logits_before for p in parts]),
                            join([p.loss for p in parts]), join([p.kept for p in parts]),
                            join([p.view_logits_before for p in parts]), join([p.nonfinite for p in parts]),
                            {k: join([p.extra[k] for p in parts]) for k in parts[0].extra}, updates)


@dataclass
class Prediction:
    """One sample's result from `Method.predict`."""

    logits: torch.Tensor                # [C]
    logits_before: torch.Tensor         # [C]
    loss: float
    kept: list[int]
    view_logits_before: torch.Tensor | None
    fp32_retry: bool = False

    @property
    def pred(self) -> int:
        return int(self.logits.argmax())

    @property
    def pred_before(self) -> int:
        return int(self.logits_before.argmax())

    def topk(self, k: int = 5) -> list[int]:
        return self.logits.topk(min(k, self.logits.numel())).indices.tolist()

