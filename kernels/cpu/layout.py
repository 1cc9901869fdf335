"""Batch-last layout helpers shared by the conv kernels.

The conv kernels work on batch-last arrays (C, H, W, N): every copy and every
inner loop then runs over N contiguous values however small the image.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust.kernels.cpu.pointwise import run


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
