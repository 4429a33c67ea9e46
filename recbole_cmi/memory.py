"""Peak memory, the one meter of every benchmark: the process's peak, or the peak of one block of work.

* :func:`peak_rss_mib`: the largest resident set the process has had (``getrusage``'s ``ru_maxrss``). The
  accuracy benchmark records it at the end of each run's process, which measures no block.
* :class:`PeakMemory`: around a block, the rise of the resident set above its level at entry, and on a GPU of
  ``torch.cuda.max_memory_allocated``. On Linux the kernel's peak (``VmHWM``) is reset at entry through
  ``/proc/self/clear_refs``; elsewhere a thread samples the RSS every 5 ms. The speed, retrieval and GPU
  benchmarks measure each phase with it. Linux's ``ru_maxrss`` reads the same peak counter, so after a block
  :func:`peak_rss_mib` no longer covers what came before it: one process measures either its whole life or
  blocks, not both.
* :func:`cuda_peak_mib`: ``torch.cuda.max_memory_allocated`` of a device, for a whole run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import sys
import threading

MIB = 2**20


def peak_rss_mib() -> float | None:
    """This process's peak resident set size in MiB (None where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (MIB if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def cuda_peak_mib(device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB when ``device`` is a GPU, else None."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / MIB, 1)


def rss_bytes() -> int:
    """The process's resident set size now."""
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return peak_rss_bytes() is not None
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The kernel's peak RSS (VmHWM) since the process started or :func:`reset_peak_rss`; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), flags=re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next phase starts from a low RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory above the level at entry (bytes), and on a GPU the peak allocated CUDA memory."""

    def __init__(self, device=None):
        self.device = device
        self.rss_peak_delta = 0
        self.cuda_peak_delta = None
        self._sampled = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import torch

        release_memory()
        self.start = rss_bytes()
        if not reset_peak_rss():  # not Linux: sample the RSS every 5 ms instead
            self._sampled = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, rss_bytes())

    def __exit__(self, *exc):
        import torch

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, rss_bytes())
        else:
            peak = peak_rss_bytes() or rss_bytes()
        self.rss_peak_delta = max(0, peak - self.start)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_delta = max(0, torch.cuda.max_memory_allocated(self.device) - self._cuda_start)
        return False
