"""Numba max pooling with indices (its backward scatters each plane in one thread);
unpooling is the reference's NumPy put/take, already one pass."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust import convshape
from nbclust.kernels.cpu.layout import contiguous
from nbclust.kernels.cpu.pointwise import run
from nbclust.reference import conv as reference_conv


@njit(cache=True, parallel=True)
def _max_pool(x, kh, kw, sh, sw, y, indices):
    """Window maxima and their flat plane indices; the first maximum (row-major) wins, NaN counts as maximal."""
    n_batch, n_ch, h, wd = x.shape
    ho_size, wo_size = y.shape[2], y.shape[3]
    for t in prange(n_batch * n_ch):
        n, c = t // n_ch, t % n_ch
        for ho in range(ho_size):
            for wo in range(wo_size):
                best = x[n, c, ho * sh, wo * sw]
                arg = ho * sh * wd + wo * sw
                for i in range(kh):
                    for j in range(kw):
                        v = x[n, c, ho * sh + i, wo * sw + j]
                        if v > best or (v != v and best == best):
                            best = v
                            arg = (ho * sh + i) * wd + wo * sw + j
                y[n, c, ho, wo] = best
                indices[n, c, ho, wo] = arg


@njit(cache=True, parallel=True)
def _pool_grad(g, indices, grad_x):
    """grad_x[p, indices[p, k]] += g[p, k] for each (n, c) plane p; one thread owns a plane."""
    for p in prange(g.shape[0]):
        for k in range(g.shape[1]):
            grad_x[p, indices[p, k]] += g[p, k]


def max_pool2d_forward(x, kernel=(2, 2), stride=(2, 2)):
    shape = convshape.check_pool_input(x, kernel, stride)
    (kh, kw), (sh, sw) = convshape.normalize_pair(kernel, "kernel"), convshape.normalize_pair(stride, "stride")
    x = contiguous(x, x.dtype)
    y = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=np.int64)
    run(_max_pool, x.size, x, kh, kw, sh, sw, y, indices)
    return (y, indices), (indices, x.shape)


def max_pool2d_backward(grad_y, ctx):
    indices, x_shape = ctx
    n, c, h, w = x_shape
    g = contiguous(grad_y, grad_y.dtype).reshape(n * c, -1)
    grad_x = np.zeros((n * c, h * w), dtype=g.dtype)
    run(_pool_grad, grad_x.size, g, indices.reshape(n * c, -1), grad_x)
    return (grad_x.reshape(x_shape),)


OPS = {
    "max_pool2d": (max_pool2d_forward, max_pool2d_backward),
    "max_unpool2d": reference_conv.OPS["max_unpool2d"],
}
