"""Numba max pooling with indices and max unpooling.

One parallel kernel (:func:`_planes`) for the four passes (cold compile time
counts), parallel over the (n, c) planes: (P, H, W) arrays for pooling, (P, 1,
size) for the index moves, so that all share one type signature per dtype.
One thread owns a plane, so the scatters (pooling's backward, unpooling's
forward) are race-free and deterministic.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust import convshape
from nbclust.kernels.cpu.layout import contiguous
from nbclust.kernels.cpu.pointwise import run

POOL, SCATTER_ADD, SCATTER, GATHER = range(4)


@njit(cache=True)
def _take_if_greater(v, at, best, arg):
    """(v, at) if v beats ``best`` (greater, or NaN over a number), else (best, arg); as selects.

    ``v`` beats a number unless ``v <= best``, and nothing beats NaN: this form compiles to selects,
    ``(v > best) | (v != v) & (best == best)`` to branches (3x slower on random data).
    """
    better = (best == best) & (not (v <= best))
    return (v if better else best), (at if better else arg)


@njit(cache=True)
def _max_pool_plane(xp, kh, kw, sh, sw, yp, ip):
    """Window maxima of the (H, W) plane ``xp`` and their flat plane indices; the first maximum
    (row-major) wins, NaN counts as maximal.

    Branch-free: each candidate replaces the running maximum through selects (data-dependent
    branches mispredict half the time on real data); the common 2 x 2 stride-2 window is unrolled.
    """
    wd = xp.shape[1]
    ho_size, wo_size = yp.shape
    for ho in range(ho_size):
        r0 = ho * sh
        if kh == 2 and kw == 2 and sh == 2 and sw == 2:
            top, bottom = xp[r0], xp[r0 + 1]
            for wo in range(wo_size):
                c0 = 2 * wo
                at = r0 * wd + c0
                best, arg = _take_if_greater(top[c0 + 1], at + 1, top[c0], at)
                best, arg = _take_if_greater(bottom[c0], at + wd, best, arg)
                best, arg = _take_if_greater(bottom[c0 + 1], at + wd + 1, best, arg)
                yp[ho, wo] = best
                ip[ho, wo] = arg
        else:
            for wo in range(wo_size):
                c0 = wo * sw
                best, arg = xp[r0, c0], r0 * wd + c0
                for i in range(kh):
                    for j in range(kw):
                        best, arg = _take_if_greater(xp[r0 + i, c0 + j], (r0 + i) * wd + c0 + j, best, arg)
                yp[ho, wo] = best
                ip[ho, wo] = arg


@njit(cache=True)
def _move_plane(mode, src, ip, dst):
    """SCATTER_ADD (pooling's backward): dst = 0, then dst[ip[k]] += src[k]; SCATTER (unpooling):
    dst = 0, then dst[ip[k]] = src[k] (the last write wins); GATHER (unpooling's backward):
    dst[k] = src[ip[k]].  The op table has checked the indices; a scattered index outside
    [0, dst.size) is still never written (memory safety)."""
    if mode == GATHER:
        for k in range(dst.size):
            dst[k] = src[ip[k]]
        return
    dst[:] = 0
    for k in range(src.size):
        j = ip[k]
        if 0 <= j < dst.size:
            dst[j] = dst[j] + src[k] if mode == SCATTER_ADD else src[k]


@njit(cache=True, parallel=True)
def _planes(mode, a, indices, b, geometry):
    """Per plane p of the 3-D ``a``, ``indices``, ``b``: POOL: b[p], indices[p] = the maxima
    and arg-maxima of a[p] (:func:`_max_pool_plane`, ``geometry`` = (kh, kw, sh, sw)); else
    :func:`_move_plane` from a[p, 0] to b[p, 0] (planes as (P, 1, size) arrays)."""
    kh, kw, sh, sw = geometry
    for p in prange(a.shape[0]):
        if mode == POOL:
            _max_pool_plane(a[p], kh, kw, sh, sw, b[p], indices[p])
        else:
            _move_plane(mode, a[p, 0], indices[p, 0], b[p, 0])


_NO_GEOMETRY = (0,) * 4


def max_pool2d_forward(x, kernel, stride):
    n, c, ho, wo = convshape.pool_output_shape(x, kernel, stride)
    x = contiguous(x, x.dtype)
    y = np.empty((n * c, ho, wo), dtype=x.dtype)
    indices = np.empty((n * c, ho, wo), dtype=np.int64)
    run(_planes, x.size, POOL, x.reshape(n * c, *x.shape[2:]), indices, y, (*kernel, *stride))
    indices = indices.reshape(n, c, ho, wo)
    return (y.reshape(n, c, ho, wo), indices), (indices, x.shape)


def max_pool2d_backward(grad_y, ctx):
    indices, x_shape = ctx
    n, c, h, w = x_shape
    g = contiguous(grad_y, grad_y.dtype).reshape(n * c, 1, -1)
    grad_x = np.empty((n * c, 1, h * w), dtype=g.dtype)
    run(_planes, grad_x.size, SCATTER_ADD, g, indices.reshape(n * c, 1, -1), grad_x, _NO_GEOMETRY)
    return (grad_x.reshape(x_shape),)


def max_unpool2d_forward(x, indices, output_size):
    (n, c), (h, w) = x.shape[:2], output_size
    xs = contiguous(x, x.dtype).reshape(n * c, 1, -1)
    flat = contiguous(indices, np.int64).reshape(n * c, 1, -1)
    y = np.empty((n * c, 1, h * w), dtype=x.dtype)
    run(_planes, y.size, SCATTER, xs, flat, y, _NO_GEOMETRY)
    return y.reshape(n, c, h, w), (flat, x.shape)


def max_unpool2d_backward(grad_y, ctx):
    flat, x_shape = ctx
    g = contiguous(grad_y, grad_y.dtype).reshape(flat.shape[0], 1, -1)
    grad_x = np.empty(flat.shape, dtype=g.dtype)
    run(_planes, g.size, GATHER, g, flat, grad_x, _NO_GEOMETRY)
    return grad_x.reshape(x_shape), None

