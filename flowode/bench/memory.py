"""Peak memory of a block of code (:class:`MemoryMeter`)."""

from __future__ import annotations

import os
import sys
import tracemalloc
from typing import Any, Union

import torch

__all__ = ["MemoryMeter"]


class MemoryMeter:
    """Peak extra memory of a block of code, in bytes; ``method`` says how it was measured.

    * ``"cuda_max_allocated"``: CUDA device: ``torch.cuda.max_memory_allocated`` minus the memory
      allocated on entry (tensors only, exact).
    * ``"rss_hwm"``: Linux CPU: the process's resident-set high-water mark (``VmHWM``), reset on entry
      through ``/proc/self/clear_refs``, minus the resident set on entry. Counts every allocation
      (tensors, Python, allocator slack), so small results are noisy at the page level.
    * ``"tracemalloc"``: elsewhere: Python allocations only. torch's CPU tensors do not go through
      Python's allocator, so this underestimates tensor memory; treat it as a lower bound.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0
        if self.device.type == "cuda":
            self.method = "cuda_max_allocated"
        elif sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK):
            self.method = "rss_hwm"
        else:
            self.method = "tracemalloc"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0  # pragma: no cover

    def __enter__(self) -> "MemoryMeter":
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss_hwm":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:  # pragma: no cover
                self.method = "tracemalloc"
            self._base = self._status("VmRSS")
        if self.method == "tracemalloc":
            tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method == "rss_hwm":
            self.peak = self._status("VmHWM") - self._base
        else:
            self.peak = tracemalloc.get_traced_memory()[1] - self._base
            tracemalloc.stop()
        self.peak = max(int(self.peak), 0)

