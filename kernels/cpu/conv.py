"""Numba conv kernels (see nbclust.optable for the calling convention).

Convolutions are im2col + one GEMM: a Numba kernel lays the patches out as
``cols[(c, i, j), n, (ho, wo)]`` and a single ``np.matmul`` (BLAS, outside any
Numba region) multiplies them with the weight matrix.  The adjoint, col2im,
is in gather form: each output pixel sums its own column entries in a fixed
order (float64 accumulator), so it is race-free and deterministic.

- conv2d: forward ``w_mat @ im2col(x)``; grad_w ``g_mat @ cols.T``; grad_x ``col2im(w_mat.T @ g_mat)``.
- conv_transpose2d (its adjoint in x): forward ``col2im(w_mat.T @ x_mat)``;
  grad_x ``w_mat @ im2col(g)``; grad_w ``x_mat @ im2col(g).T``.

Here ``w_mat`` is the weight as a (rows, C*kh*kw) matrix and ``g_mat``/``x_mat``
are (C, N*H*W) matrices.  Pooling has one kernel each way; unpooling,
``linear`` and ``reshape`` are vectorised NumPy (one BLAS call for ``linear``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust import convshape


@njit(cache=True, parallel=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, wo_size, cols):
    """cols[(c,i,j), n, ho*Wo+wo] = x[n, c, ho*sh+i-ph, wo*sw+j-pw], zero in the padding.

    ``cols`` is (C*kh*kw, N, Ho*Wo).  Parallel over the rows (c, i, j).
    """
    n_batch, n_ch, h, wd = x.shape
    ho_size = cols.shape[2] // wo_size
    for k in prange(n_ch * kh * kw):
        c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
        for n in range(n_batch):
            for ho in range(ho_size):
                hi = ho * sh + i - ph
                row = ho * wo_size
                for wo in range(wo_size):
                    wi = wo * sw + j - pw
                    if 0 <= hi < h and 0 <= wi < wd:
                        cols[k, n, row + wo] = x[n, c, hi, wi]
                    else:
                        cols[k, n, row + wo] = 0


@njit(cache=True, parallel=True)
def _col2im(cols, kh, kw, sh, sw, ph, pw, wo_size, out):
    """Adjoint of :func:`_im2col`, gathered per output pixel:
    out[n,c,h,v] = sum cols[(c,i,j), n, ho*Wo+wo] over h+ph = ho*sh+i, v+pw = wo*sw+j.

    For a given h the valid kernel rows are i = (h+ph) mod sh, + sh, ... up to
    min(kh-1, h+ph), starting no lower than h+ph-(Ho-1)*sh so that ho < Ho;
    likewise for columns.  Parallel over (n, c).
    """
    n_batch, n_ch, h_size, w_size = out.shape
    ho_size = cols.shape[2] // wo_size
    for t in prange(n_batch * n_ch):
        n, c = t // n_ch, t % n_ch
        for h in range(h_size):
            hp = h + ph
            i0, i1 = max(hp % sh, hp - (ho_size - 1) * sh), min(kh, hp + 1)
            for v in range(w_size):
                vp = v + pw
                j0, j1 = max(vp % sw, vp - (wo_size - 1) * sw), min(kw, vp + 1)
                acc = 0.0
                for i in range(i0, i1, sh):
                    row = (c * kh + i) * kw
                    col = ((hp - i) // sh) * wo_size
                    for j in range(j0, j1, sw):
                        acc += cols[row + j, n, col + (vp - j) // sw]
                out[n, c, h, v] = acc


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


def _as(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _patches(x, kernel, geometry, out_hw):
    """im2col of ``x`` as a (C*kh*kw, N*Ho*Wo) matrix."""
    (kh, kw), (ho, wo) = kernel, out_hw
    cols = np.empty((x.shape[1] * kh * kw, x.shape[0], ho * wo), dtype=x.dtype)
    _im2col(x, kh, kw, *geometry, wo, cols)
    return cols.reshape(cols.shape[0], -1)


def _unpatch(mat, kernel, geometry, out_hw, shape, dtype):
    """col2im of a (C*kh*kw, N*Ho*Wo) matrix onto a new array of ``shape``."""
    out = np.empty(shape, dtype=dtype)
    _col2im(mat.reshape(mat.shape[0], shape[0], -1), *kernel, *geometry, out_hw[1], out)
    return out


def _channels_first(a):
    """(N, C, H, W) -> (C, N*H*W) matrix."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).reshape(a.shape[1], -1)


def _batch_first(mat, n, hw):
    """(C, N*H*W) matrix -> (N, C, H, W) array."""
    return np.ascontiguousarray(mat.reshape(mat.shape[0], n, *hw).transpose(1, 0, 2, 3))


def _times_transposed(a, b):
    """``a @ b.T`` for a long inner dimension, computed as ``(b @ a.T).T``:
    OpenBLAS is several times faster with that layout."""
    return np.ascontiguousarray(np.matmul(b, a.T).T)


def _geometry(stride, padding):
    (sh, sw), (ph, pw) = convshape.normalize_pair(stride, "stride"), convshape.normalize_pair(padding, "padding")
    return sh, sw, ph, pw


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    n, o, ho, wo = convshape.check_conv_input(x, w, b, stride, padding)
    geometry = _geometry(stride, padding)
    x = _as(x, x.dtype)
    w = _as(w, x.dtype)
    cols = _patches(x, w.shape[2:], geometry, (ho, wo))
    y = _batch_first(np.matmul(w.reshape(o, -1), cols), n, (ho, wo))
    if b is not None:
        y += b.astype(x.dtype, copy=False)[:, None, None]
    return y, (x.shape, w, cols, b is not None, geometry)


def conv2d_backward(grad_y, ctx):
    x_shape, w, cols, has_bias, geometry = ctx
    g = _as(grad_y, w.dtype)
    g_mat = _channels_first(g)
    grad_w = _times_transposed(g_mat, cols).reshape(w.shape)
    grad_cols = np.matmul(w.reshape(w.shape[0], -1).T, g_mat)
    grad_x = _unpatch(grad_cols, w.shape[2:], geometry, g.shape[2:], x_shape, w.dtype)
    return grad_x, grad_w, (g.sum(axis=(0, 2, 3)) if has_bias else None)


def conv_transpose2d_forward(x, w, b, stride=(1, 1), padding=(0, 0), output_padding=(0, 0)):
    n, cout, hout, wout = convshape.check_conv_transpose_input(x, w, b, stride, padding, output_padding)
    geometry = _geometry(stride, padding)
    w = _as(w, x.dtype)
    x_mat = _channels_first(x)
    cols = np.matmul(w.reshape(w.shape[0], -1).T, x_mat)
    y = _unpatch(cols, w.shape[2:], geometry, x.shape[2:], (n, cout, hout, wout), x.dtype)
    if b is not None:
        y += b.astype(x.dtype, copy=False)[:, None, None]
    return y, (x.shape, x_mat, w, b is not None, geometry)


def conv_transpose2d_backward(grad_y, ctx):
    x_shape, x_mat, w, has_bias, geometry = ctx
    g = _as(grad_y, w.dtype)
    cols = _patches(g, w.shape[2:], geometry, x_shape[2:])
    grad_x = _batch_first(np.matmul(w.reshape(w.shape[0], -1), cols), x_shape[0], x_shape[2:])
    grad_w = _times_transposed(x_mat, cols).reshape(w.shape)
    return grad_x, grad_w, (g.sum(axis=(0, 2, 3)) if has_bias else None)


def max_pool2d_forward(x, kernel=(2, 2), stride=(2, 2)):
    shape = convshape.check_pool_input(x, kernel, stride)
    (kh, kw), (sh, sw) = convshape.normalize_pair(kernel, "kernel"), convshape.normalize_pair(stride, "stride")
    x = _as(x, x.dtype)
    y = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=np.int64)
    _max_pool(x, kh, kw, sh, sw, y, indices)
    return (y, indices), (indices, x.shape)


def max_pool2d_backward(grad_y, ctx):
    indices, x_shape = ctx
    n, c, h, w = x_shape
    g = _as(grad_y, grad_y.dtype).reshape(n * c, -1)
    grad_x = np.zeros((n * c, h * w), dtype=g.dtype)
    _pool_grad(g, indices.reshape(n * c, -1), grad_x)
    return (grad_x.reshape(x_shape),)


def max_unpool2d_forward(x, indices, output_size=(1, 1)):
    n, c, h, w = convshape.check_unpool_input(x, indices, output_size)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= h * w):
        raise ValueError(f"max_unpool2d: indices must lie in [0, {h * w}) (the output plane)")
    flat = np.ascontiguousarray(indices, dtype=np.int64).reshape(n, c, -1)
    y = np.zeros((n, c, h * w), dtype=x.dtype)
    np.put_along_axis(y, flat, x.reshape(n, c, -1), axis=2)
    return y.reshape(n, c, h, w), (flat, x.shape)


def max_unpool2d_backward(grad_y, ctx):
    flat, x_shape = ctx
    g = grad_y.reshape(x_shape[0], x_shape[1], -1)
    return np.take_along_axis(g, flat, axis=2).reshape(x_shape), None


def linear_forward(x, w, b):
    convshape.check_linear_input(x, w, b)
    w = _as(w, x.dtype)
    y = np.matmul(x, w.T)
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    return y, (x, w, b is not None)


def linear_backward(grad_y, ctx):
    x, w, has_bias = ctx
    g = _as(grad_y, x.dtype)
    return np.matmul(g, w), np.matmul(g.T, x), (g.sum(axis=0) if has_bias else None)


def reshape_forward(x, shape=(-1,)):
    return x.reshape(convshape.check_reshape(x, shape)), x.shape


def reshape_backward(grad_y, x_shape):
    return (grad_y.reshape(x_shape),)


OPS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward),
    "max_pool2d": (max_pool2d_forward, max_pool2d_backward),
    "max_unpool2d": (max_unpool2d_forward, max_unpool2d_backward),
    "linear": (linear_forward, linear_backward),
    "reshape": (reshape_forward, reshape_backward),
}
