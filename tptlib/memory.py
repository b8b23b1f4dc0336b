"""Peak memory of a piece of code: the CUDA allocator's high-water mark, or on a CPU the resident set
size's high-water mark (Linux's VmHWM, reset through /proc/self/clear_refs), or where that cannot be
reset the resident set size sampled by a thread. Used by `tpt.evaluate` (each batch's image tower and method) and by the
benchmark (`tptlib.bench`). torch is imported when a measurement starts."""
from __future__ import annotations

import ctypes
import os
import threading


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kib(path: str, key: str) -> int | None:
    """The value in bytes of the "key:  N kB" line of a /proc file, or None if unknown."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_hwm() -> int | None:
    """The process's peak resident set size since it was last reset (VmHWM), or None if unknown."""
    return _proc_kib("/proc/self/status", "VmHWM")


def reset_hwm() -> bool:
    """Reset the peak resident set size (VmHWM) to the current one; False where that is not possible
    (not Linux, or /proc/self/clear_refs not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_hwm() is not None


def malloc_trim() -> None:
    """Give freed heap memory back to the OS, so that the next RSS baseline is honest (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside `with`, above the level before it (bytes in `.peak`).

    CUDA: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated before.
    CPU: the peak resident set size (VmHWM, reset at the start) minus the RSS before (after malloc_trim);
    where the peak cannot be reset, the RSS sampled every 2 ms by a thread instead.
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
            malloc_trim()
            self.base = rss_bytes()
            self._max = self.base
            self._thread = None
            if reset_hwm():
                return self
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._max = max(self._max, rss_bytes())

    def __exit__(self, *exc):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            self.absolute = max(_read_hwm() or 0, rss_bytes())
        else:
            self._stop.set()
            self._thread.join()
            self.absolute = max(self._max, rss_bytes())
        self.peak = max(0, self.absolute - self.base)
        return False


def available_bytes(device) -> int | None:
    """What a new allocation on `device` can take now: the free memory of a CUDA device, or on a CPU
    the kernel's estimate of available memory (MemAvailable, /proc/meminfo); None when unknown."""
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def check_fits(what: str, need: int, device, hint: str) -> None:
    """Refuse (`MemoryError`, before anything is allocated) `need` bytes for `what` on `device` when
    more than it has available, with both sizes and `hint` (what to lower)."""
    free = available_bytes(device)
    if free is not None and need > free:
        raise MemoryError(f"{what} needs {need / 2**30:,.1f} GiB, and {device} has {free / 2**30:,.1f} GiB "
                          f"available; {hint}")
