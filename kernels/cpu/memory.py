"""Reuse freed memory instead of returning it to the OS (glibc only).

glibc serves allocations above its mmap threshold (at most 32 MiB by default)
with a fresh ``mmap`` and unmaps them on free, so every large temporary (the
im2col matrices of the wide layers, the batch-last copies of the register-tiled
ones; DCEC's and DEPICT's 5x5 stride-2 layers had 40-63 MiB column matrices at
batch 256 before they were tiled) is page-faulted and zeroed by the kernel again
at every call: filling a fresh 40 MiB array takes 5-6.5 ms, a reused one 1.6 ms
(measured here).
Raising the mmap and trim thresholds makes freed blocks go back to malloc's
free lists, as torch's caching allocators do, at the price of the process
keeping its peak heap.  Set ``NBCLUST_KEEP_MEMORY=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 1 << 30  # 1 GiB: any single array of the engine's working set


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if done."""
    if os.environ.get("NBCLUST_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
