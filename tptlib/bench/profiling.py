"""The benchmark's profiling kit, apart from the algorithm it measures: peak memory (CUDA allocator or
an RSS sampler), wall and CPU time, FLOP counting with torch's FlopCounterMode, the device's matmul
peak. torch is imported when a measurement starts."""
from __future__ import annotations

import ctypes
import os
import threading
import time

#: nominal dense tensor-core peaks (FLOP/s) by device-name fragment, for the JSON beside the measured peak
NOMINAL_PEAKS = {
    "H100": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H100 SXM dense"},
    "H200": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H200 SXM dense"},
    "A100": {"fp16": 312e12, "bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "note": "A100 dense"},
}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS, so that the next RSS baseline is honest (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside `with`, above the level before it (bytes in `.peak`).

    CUDA: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated before.
    CPU: resident set size sampled every 2 ms by a thread, minus the RSS before (after malloc_trim).
    """

    def __init__(self, device):
        self.device, self.peak, self.absolute = device, 0, 0

    def __enter__(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self.base = _rss_bytes()
            self._max = self.base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.absolute = max(self._max, _rss_bytes())
        self.peak = max(0, self.absolute - self.base)
        return False


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
