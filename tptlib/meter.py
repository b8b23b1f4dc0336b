"""The one home of timing and memory: a `Meter` times the stages of a computation ("image": the
image tower, "method": tuning and prediction), the device synchronised around each, with the peak
memory of each stage (`tptlib.memory.PeakMemory`).

    meter = Meter(device, active=True)
    with meter.stage("image"):
        feats = ...
    meter.add("image", seconds, peak_bytes)    # a cost measured elsewhere (features read from a cache)
    meter.take_batch()       # {"image_seconds", "method_seconds", "image_peak_bytes", "method_peak_bytes"}
    meter.totals             # seconds per stage, summed over every batch

The engine measures through the meter it is handed (`Engine(meter=...)`); `tpt.evaluate` records
each batch's cost, the benchmark reads the totals. An inactive meter (the engine's default, e.g.
for `tpt.predict`) measures nothing and costs nothing. torch is imported when a measurement starts.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from .memory import PeakMemory

STAGES = ("image", "method")


@dataclass
class Cost:
    """What one stage cost: wall seconds and peak bytes above the level before it."""

    seconds: float = 0.0
    peak_bytes: int = 0


class Meter:
    """Wall time and peak memory per stage, per batch and in total.

    active: measure at all (else `stage` only runs its block). memory: also the peak memory of each
    stage (a sampling thread on a CPU; the benchmark, which measures memory around whole calls,
    turns it off).
    """

    def __init__(self, device, active: bool = True, memory: bool = True):
        self.device, self.active, self.memory = device, active, memory
        self.totals: dict[str, float] = {}
        self._batch = self._empty()

    @staticmethod
    def _empty() -> dict:
        return {**{f"{s}_seconds": 0.0 for s in STAGES}, **{f"{s}_peak_bytes": 0 for s in STAGES}}

    def clock(self) -> float:
        """The time, after the device has finished what it was given."""
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str, always: bool = False):
        """Time the block as stage `name` (and its peak memory), added to the batch and the totals;
        yields the block's `Cost`, filled in when it ends. always: measure even when inactive."""
        cost = Cost()
        if not (self.active or always):
            yield cost
            return
        peak = PeakMemory(self.device) if self.memory else None
        start = self.clock()
        if peak is None:
            yield cost
        else:
            with peak:
                yield cost
                self.clock()
        cost.seconds, cost.peak_bytes = self.clock() - start, 0 if peak is None else peak.peak
        if self.active:
            self.add(name, cost.seconds, cost.peak_bytes)

    def add(self, name: str, seconds: float, peak_bytes: int = 0) -> None:
        """Count a cost measured elsewhere as stage `name` of the batch being measured."""
        self._batch[f"{name}_seconds"] += float(seconds)
        self._batch[f"{name}_peak_bytes"] = max(self._batch[f"{name}_peak_bytes"], int(peak_bytes))
        self.totals[name] = self.totals.get(name, 0.0) + float(seconds)

    def take_batch(self) -> dict:
        """The costs counted since the last call, per stage; starts the next batch."""
        batch, self._batch = self._batch, self._empty()
        return batch
