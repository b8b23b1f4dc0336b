"""The benchmark's profiling kit, apart from the algorithm it measures: peak memory (CUDA allocator or
an RSS sampler), wall and CPU time, FLOP counting with torch's FlopCounterMode, the device's matmul
peak. torch is imported when a measurement starts."""
from __future__ import annotations

import time

from ..memory import PeakMemory  # noqa: F401  (here for the benchmark; it lives below the runs, which use it too)

#: nominal dense tensor-core peaks (FLOP/s) by device-name fragment, for the JSON beside the measured peak
NOMINAL_PEAKS = {
    "H100": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H100 SXM dense"},
    "H200": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H200 SXM dense"},
    "A100": {"fp16": 312e12, "bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "note": "A100 dense"},
}


def count_flops(fn) -> int:
    """FLOPs torch's FlopCounterMode counts for `fn()` (matmuls, convolutions, attention).

    `nn.MultiheadAttention`'s fused inference path is switched off while counting: the counter
    does not see the projections inside it (the arithmetic is the same either way).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def device_peak(device, precision: str, seconds: float = 1.0) -> dict:
    """The device's matmul throughput, measured in this process (the best of several runs)."""
    import torch
    dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flop = 2 * n ** 3
    best = 0.0
    deadline = time.perf_counter() + seconds
    torch.matmul(a, b)
    while time.perf_counter() < deadline or best == 0.0:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        reps = 10 if device.type == "cuda" else 1
        for _ in range(reps):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, reps * flop / (time.perf_counter() - t))
    out = {"measured_flops": best, "how": f"best {n}x{n}x{n} {str(dtype).removeprefix('torch.')} matmul"}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in NOMINAL_PEAKS.items():
            if key in name:
                kind = {"amp": "fp16", "bf16": "bf16"}.get(precision, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
                out["nominal_flops"], out["nominal_note"] = peaks[kind], f"{peaks['note']} {kind}"
    return out


class Timer:
    """Wall time and process CPU time of the code inside `with` (synchronising CUDA at both ends)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
