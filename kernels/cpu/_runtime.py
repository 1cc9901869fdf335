"""The cpu backend's runtime: the thread runner, the batch-last layout helpers, memory reuse.

Thread runner
-------------
:func:`run` runs a parallel kernel on one thread below :data:`SERIAL_BELOW` units of work.

Layout
------
Batch-last layout helpers shared by the conv kernels.

The conv kernels work on batch-last arrays (C, H, W, N): every copy and every
inner loop then runs over N contiguous values however small the image.

Memory
------
Reuse freed memory instead of returning it to the OS (glibc only).

glibc serves allocations above its mmap threshold (at most 32 MiB by default)
with a fresh ``mmap`` and unmaps them on free, so every im2col matrix of the
wide layers (40-63 MiB at batch 256 for DCEC's and DEPICT's 5x5 stride-2
layers) is page-faulted and zeroed by the kernel again at every call: filling
a fresh 40 MiB array takes 5-6.5 ms, a reused one 1.6 ms (measured here).
Raising the mmap and trim thresholds makes freed blocks go back to malloc's
free lists, as torch's caching allocators do, at the price of the process
keeping its peak heap.  Set ``NBCLUST_KEEP_MEMORY=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numba
import numpy as np
from numba import njit, prange


SERIAL_BELOW = 1 << 18
"""Work (elements, or multiply-adds for the conv kernels) below which a parallel kernel runs on one thread."""


def run(kernel, work: int, *args):
    """``kernel(*args)``, on one thread when ``work < SERIAL_BELOW``."""
    if work >= SERIAL_BELOW:
        return kernel(*args)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


@njit(cache=True, parallel=True)
def _transpose(a, out):
    """out = a.T for 2-D ``a``, in 16 x 16 tiles (cache-friendly both ways); full tiles have
    constant trip counts, which LLVM unrolls (10-30% faster than 32 x 32 tiles with variable
    bounds).  Parallel over row strips of ``a``."""
    rows, cols = a.shape
    for strip in prange((rows + 15) // 16):
        r0 = strip * 16
        c0 = 0
        if r0 + 16 <= rows:
            while c0 + 16 <= cols:
                for c in range(16):
                    for r in range(16):
                        out[c0 + c, r0 + r] = a[r0 + r, c0 + c]
                c0 += 16
        for c in range(c0, cols):
            for r in range(r0, min(r0 + 16, rows)):
                out[c, r] = a[r, c]


def contiguous(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def batch_last(a):
    """(N, C, H, W) -> (C, H, W, N), batch innermost (any rank: the first axis moves last)."""
    out = np.empty((*a.shape[1:], a.shape[0]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(a.shape[0], -1), out.reshape(-1, a.shape[0]))
    return out


def batch_first(a):
    """(C, H, W, N) -> (N, C, H, W) (any rank: the last axis moves first)."""
    out = np.empty((a.shape[-1], *a.shape[:-1]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(-1, a.shape[-1]), out.reshape(a.shape[-1], -1))
    return out


def placed(at, top, left, hw):
    """Batch-last ``at`` (C, H, W, N) shifted by (top, left) into zeros of spatial size ``hw``
    (zero padding where the shift is positive, cropping where it is negative); ``at`` itself
    when there is nothing to do."""
    c, h, w, n = at.shape
    if top == left == 0 and tuple(hw) == (h, w):
        return at
    out = np.zeros((c, *hw, n), dtype=at.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, hw[0]), min(left + w, hw[1])
    out[:, r0:r1, c0:c1] = at[:, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


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
