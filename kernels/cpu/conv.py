"""Numba conv kernels (see nbclust.engine.optable: arguments arrive validated, in normal form).

Convolutions are im2col + one GEMM, batch innermost: the input is transposed
to (C, H, W, N), a Numba kernel lays the patches out as
``cols[(c, i, j), (ho, wo, n)]`` (every copy a contiguous run of N values,
however small the image), and a single ``np.matmul`` (BLAS, outside any Numba
region) multiplies them with the weight matrix.  The adjoint, col2im, is in
gather form: each output pixel sums its own column entries in a fixed order,
so it is race-free and deterministic.

- conv2d: forward ``w_mat @ im2col(x)``; grad_w ``g_mat @ cols.T``; grad_x ``col2im(w_mat.T @ g_mat)``.
- conv_transpose2d (its adjoint in x): forward ``col2im(w_mat.T @ x_mat)``;
  grad_x ``w_mat @ im2col(g)``; grad_w ``x_mat @ im2col(g).T``.

Here ``w_mat`` is the weight as a (rows, C*kh*kw) matrix and ``g_mat``/``x_mat``
are (C, H*W*N) matrices.  Stride-1 layers with few channels and large kernels
take the direct kernels (below) instead, layers with a single-channel image side a
per-sample variant, and strided layers with large kernels the register-tiled kernels
(:func:`_path`).  ``linear`` is one BLAS call per product.  Then come the direct kernels, max
pooling and unpooling, and the register-tiled kernels.

Padding may be asymmetric (``((top, bottom), (left, right))``, or ``"tf_same"``, see
:mod:`nbclust.engine.convshape`) on every path: the kernels index from the top/left padding, and
the bottom/right padding only sets the output size (conv2d) or the size of the full
transposed output that is cropped (conv_transpose2d).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange, uint64

from nbclust.engine import convshape
from nbclust.kernels.cpu._runtime import (
    VECTOR_BYTES, batch_first, batch_last, contiguous, lanes, placed, prefetch, run, vfma, vload, vsplat, vstore,
    vsum, vzero,
)


@njit(cache=True, parallel=True)
def _im2col(xt, kh, kw, sh, sw, ph, pw, cols):
    """cols[(c,i,j), a, b, n] = xt[c, a*sh+i-ph, b*sw+j-pw, n], zero in the padding
    (``ph``, ``pw``: the top and left padding; the bottom and right follow from the size of ``cols``).

    Batch innermost: ``xt`` is (C, H, W, N) and ``cols`` (C*kh*kw, Ho, Wo, N), so
    every copy is a contiguous run of N values however small the image is.
    Parallel over the rows (c, i, j).
    """
    n_ch, h, wd, nb = xt.shape
    ho_size, wo_size = cols.shape[1], cols.shape[2]
    for k in prange(n_ch * kh * kw):
        c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
        for a in range(ho_size):
            hi = a * sh + i - ph
            for b in range(wo_size):
                wi = b * sw + j - pw
                dst = cols[k, a, b]
                if 0 <= hi < h and 0 <= wi < wd:
                    src = xt[c, hi, wi]
                    for n in range(nb):
                        dst[n] = src[n]
                else:
                    for n in range(nb):
                        dst[n] = 0


@njit(cache=True, parallel=True)
def _col2im(cols, kh, kw, sh, sw, ph, pw, start, out):
    """Adjoint of :func:`_im2col`, gathered per output pixel:
    out[c,h,v,n] = start[c] + sum cols[(c,i,j), a, b, n] over a*sh+i = h+ph, b*sw+j = v+pw,
    in a fixed order (i, j ascending), each term a contiguous run of N values
    (``ph``, ``pw``: the top and left padding, or crop of a transposed convolution)
    (``start``: the bias of a transposed convolution, or zeros).
    Parallel over (c, h): race-free and deterministic.
    """
    n_ch, h_size, w_size, nb = out.shape
    ho_size, wo_size = cols.shape[1], cols.shape[2]
    for t in prange(n_ch * h_size):
        c, h = t // h_size, t % h_size
        hp = h + ph
        for v in range(w_size):
            vp = v + pw
            dst = out[c, h, v]
            dst[:] = start[c]
            for i in range(kh):
                if hp < i or (hp - i) % sh != 0 or (hp - i) // sh >= ho_size:
                    continue
                a = (hp - i) // sh
                for j in range(kw):
                    if vp < j or (vp - j) % sw != 0 or (vp - j) // sw >= wo_size:
                        continue
                    src = cols[(c * kh + i) * kw + j, a, (vp - j) // sw]
                    for n in range(nb):
                        dst[n] += src[n]


def _patches(xt, kernel, geometry, out_hw, ones_row=False):
    """im2col of a batch-last ``xt`` (C, H, W, N) as a (C*kh*kw, Ho*Wo*N) matrix; with ``ones_row``
    a last row of ones is appended, so that ``[w_mat | b] @ cols`` adds the bias inside the GEMM
    and ``g_mat @ cols.T`` yields the bias gradient as its last column (no pass of its own)."""
    (kh, kw), (ho, wo) = kernel, out_hw
    k = xt.shape[0] * kh * kw
    cols = np.empty((k + ones_row, ho, wo, xt.shape[3]), dtype=xt.dtype)
    run(_im2col, cols[:k].size, xt, kh, kw, *geometry, cols[:k])
    cols[k:] = 1
    return cols.reshape(cols.shape[0], -1)


def _unpatch(mat, kernel, geometry, in_hw, out_shape, start=None):
    """col2im of a (C*kh*kw, Ho*Wo*N) matrix onto a new batch-last array of ``out_shape`` (C, H, W, N),
    each channel c starting from ``start[c]`` (default zero)."""
    out = np.empty(out_shape, dtype=mat.dtype)
    start = np.zeros(out_shape[0], mat.dtype) if start is None else start.astype(mat.dtype)
    run(_col2im, mat.size, mat.reshape(mat.shape[0], *in_hw, out_shape[3]), *kernel, *geometry, start, out)
    return out


def _times_transposed(a, b):
    """``a @ b.T`` for a long inner dimension, computed as ``(b @ a.T).T``:
    OpenBLAS is several times faster with that layout."""
    return np.ascontiguousarray(np.matmul(b, a.T).T)


def _geometry(stride, padding):
    """``(sh, sw, top, left)``: all the im2col/col2im and direct kernels need of a normal-form
    ``padding`` ``((top, bottom), (left, right))``; the bottom and right padding only set the
    output size (conv2d) or the input size (conv_transpose2d), which the callers pass."""
    (sh, sw), ((top, _), (left, _)) = stride, padding
    return sh, sw, top, left


def _path(image_channels, c_in, c_out, kernel, stride) -> str:
    """How a layer runs: ``"direct"`` (see :func:`use_direct`), ``"per_sample"`` when its image side
    (the input of a conv2d, the output of a conv_transpose2d) has one channel, ``"tiled"`` (the
    register-tiled kernels below, see :func:`use_tiled`), else ``"im2col"``.

    Per sample: the first convolutions of DEPICT and DCEC and their last transposed ones have
    1 channel on the image side and 32-50 on the other, whose batch-last transpose (8.6 MB at
    batch 256) costs more than the GEMM.  There the small column matrix is transposed to
    per-sample columns (N, K, Ho*Wo) instead, and one stacked matmul reads or writes the wide
    side in (N, C, H, W) order directly (about 2x faster for those layers).
    """
    if use_direct(c_in, c_out, kernel, stride):
        return "direct"
    if image_channels == 1:
        return "per_sample"
    return "tiled" if use_tiled(kernel, stride) else "im2col"


def _with_bias_column(w_mat, b, dtype):
    return w_mat if b is None else np.hstack([w_mat, b.astype(dtype)[:, None]])


def _split_bias(grad_wb, w_shape, has_bias):
    """[grad_w | grad_b] (the bias column from the ones row of the columns) -> (grad_w, grad_b)."""
    grad_w = np.ascontiguousarray(grad_wb[:, :int(np.prod(w_shape[1:]))]).reshape(w_shape)
    return grad_w, (grad_wb[:, -1].copy() if has_bias else None)


def _sample_sum(a, cols):
    """sum_n a[n] @ cols[n].T for per-sample (N, R, P) and (N, K, P): one stacked matmul, summed over
    the samples in order."""
    return np.matmul(a, cols.transpose(0, 2, 1)).sum(axis=0)


def conv2d_forward(x, w, b, stride, padding):
    n, o, ho, wo = convshape.conv_output_shape(x, w, stride, padding)
    geometry = _geometry(stride, padding)
    x = contiguous(x, x.dtype)
    w = contiguous(w, x.dtype)
    path = _path(x.shape[1], x.shape[1], o, w.shape[2:], geometry[:2])
    if path == "direct":
        # stride 1: the padded input is (Ho + kh - 1, Wo + kw - 1), x placed at (top, left)
        xt = placed(batch_last(x), *geometry[2:], (ho + w.shape[2] - 1, wo + w.shape[3] - 1))
        yt = np.empty((o, ho, wo, n), dtype=x.dtype)
        run(_direct, yt.size * w[0].size, xt, w, b, yt)
        return batch_first(yt), (x.shape, w, xt, b is not None, geometry, path)
    if path == "tiled":
        y, xt = _tiled_conv2d_forward(x, w, b, geometry, (ho, wo))
        return y, (x.shape, w, xt, b is not None, geometry, path)
    cols = _patches(batch_last(x), w.shape[2:], geometry, (ho, wo), ones_row=b is not None)
    w_mat = _with_bias_column(w.reshape(o, -1), b, x.dtype)
    if path == "per_sample":
        cols = batch_first(cols.reshape(cols.shape[0], ho * wo, n))  # (N, K, Ho*Wo)
        return np.matmul(w_mat, cols).reshape(n, o, ho, wo), (x.shape, w, cols, b is not None, geometry, path)
    y = batch_first(np.matmul(w_mat, cols).reshape(o, ho, wo, n))
    return y, (x.shape, w, cols, b is not None, geometry, path)


def conv2d_backward(grad_y, ctx, input_grad=True):
    x_shape, w, saved, has_bias, geometry, path = ctx
    g = contiguous(grad_y, w.dtype)
    n, c, h, wd = x_shape
    if path == "direct":
        grad_b = g.sum(axis=(0, 2, 3)) if has_bias else None
        gt = batch_last(g)
        grad_w = np.empty(w.shape, dtype=w.dtype)
        run(_direct_w, gt.size * w[0].size, saved, gt, grad_w)
        grad_x = batch_first(direct_adjoint(gt, w, geometry[2:], x_shape[2:])) if input_grad else None
        return grad_x, grad_w, grad_b
    if path == "tiled":
        grad_b = g.sum(axis=(0, 2, 3)) if has_bias else None
        return (*_tiled_conv2d_backward(g, saved, w, geometry, x_shape, input_grad), grad_b)
    if path == "per_sample":
        g3 = g.reshape(n, g.shape[1], -1)
        grad_w, grad_b = _split_bias(_sample_sum(g3, saved), w.shape, has_bias)
        grad_cols = batch_last(np.matmul(w.reshape(w.shape[0], -1).T, g3)).reshape(w[0].size, -1) if input_grad else None
    else:
        g_mat = batch_last(g).reshape(g.shape[1], -1)
        grad_w, grad_b = _split_bias(_times_transposed(g_mat, saved), w.shape, has_bias)
        grad_cols = np.matmul(w.reshape(w.shape[0], -1).T, g_mat) if input_grad else None
    if not input_grad:
        return None, grad_w, grad_b
    grad_x = batch_first(_unpatch(grad_cols, w.shape[2:], geometry, g.shape[2:], (c, h, wd, n)))
    return grad_x, grad_w, grad_b


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding):
    n, cout, hout, wout = convshape.conv_transpose_output_shape(x, w, stride, padding, output_padding)
    geometry = _geometry(stride, padding)
    x = contiguous(x, x.dtype)
    w = contiguous(w, x.dtype)
    path = _path(cout, x.shape[1], cout, w.shape[2:], geometry[:2])
    if path == "direct":
        xt = batch_last(x)
        yt = direct_adjoint(xt, w, geometry[2:], (hout, wout), b)
        return batch_first(yt), (x.shape, xt, w, b is not None, geometry, path)
    if path == "tiled":
        y, saved = _tiled_conv_transpose2d_forward(x, w, b, geometry, (hout, wout))
        return y, (x.shape, saved, w, b is not None, geometry, path)
    w_mat = w.reshape(w.shape[0], -1)
    if path == "per_sample":
        saved = x.reshape(n, x.shape[1], -1)
        cols = batch_last(np.matmul(w_mat.T, saved)).reshape(w_mat.shape[1], -1)  # (N, K, h*w) -> batch last
    else:
        saved = batch_last(x).reshape(x.shape[1], -1)
        cols = np.matmul(w_mat.T, saved)
    y = batch_first(_unpatch(cols, w.shape[2:], geometry, x.shape[2:], (cout, hout, wout, n), start=b))
    return y, (x.shape, saved, w, b is not None, geometry, path)


def conv_transpose2d_backward(grad_y, ctx, input_grad=True):
    x_shape, saved, w, has_bias, geometry, path = ctx
    g = contiguous(grad_y, w.dtype)
    grad_b = g.sum(axis=(0, 2, 3)) if has_bias else None
    if path == "direct":
        # stride 1: the padded gradient is (H + kh - 1, W + kw - 1), g placed at (top, left)
        gt = batch_last(g)
        gpad = placed(gt, *geometry[2:], (x_shape[2] + w.shape[2] - 1, x_shape[3] + w.shape[3] - 1))
        grad_x = None
        if input_grad:
            grad_xt = np.empty((*x_shape[1:], x_shape[0]), dtype=w.dtype)
            run(_direct, grad_xt.size * w[0].size, gpad, w, None, grad_xt)
            grad_x = batch_first(grad_xt)
        grad_w = np.empty(w.shape, dtype=w.dtype)
        run(_direct_w, saved.size * w[0].size, gpad, saved, grad_w)
        return grad_x, grad_w, grad_b
    if path == "tiled":
        return (*_tiled_conv_transpose2d_backward(g, saved, w, geometry, x_shape, input_grad), grad_b)
    w_mat = w.reshape(w.shape[0], -1)
    cols = _patches(batch_last(g), w.shape[2:], geometry, x_shape[2:])
    if path == "per_sample":
        cols = batch_first(cols.reshape(cols.shape[0], -1, x_shape[0]))  # (N, K, h*w)
        grad_x = np.matmul(w_mat, cols).reshape(x_shape) if input_grad else None
        return grad_x, _sample_sum(saved, cols).reshape(w.shape), grad_b
    grad_x = None
    if input_grad:
        grad_x = batch_first(np.matmul(w_mat, cols).reshape(x_shape[1], *x_shape[2:], x_shape[0]))
    return grad_x, _times_transposed(saved, cols).reshape(w.shape), grad_b


def linear_forward(x, w, b):
    w = contiguous(w, x.dtype)
    y = np.matmul(x, w.T)
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    return y, (x, w, b is not None)


def linear_backward(grad_y, ctx, input_grad=True):
    x, w, has_bias = ctx
    g = contiguous(grad_y, x.dtype)
    return (np.matmul(g, w) if input_grad else None), np.matmul(g.T, x), (g.sum(axis=0) if has_bias else None)


# ------------------------------------------------------------------ direct stride-1 kernels
#
# Direct stride-1 convolution kernels, batch last, for narrow layers with large kernels.
#
# DCTL's and DCAE's 9x9 filters, DCAE's 17x17 transposed filter and FCAE's
# 1->6 and 6->1 5x5 layers have a few channel pairs per kernel tap: there the
# im2col matrix is kh*kw times the image for a GEMM of a few rows, and these
# kernels (no column matrix) are faster.  :func:`use_direct` decides per layer.
#
# Batch last, an image row ``xt[c, h]`` (W, N) is one contiguous vector and the
# kernel column j shifts it by j*N: the output row ``yt[o, a]`` (Wo*N values)
# is ``sum_{c,i,j} w[o,c,i,j] xt[c,a+i].flat[j*N:][:Wo*N]``, a sum of long
# contiguous streams.  The inner loops run over (a block of) that whole row,
# several taps per pass, so loop overhead, alias checks and accumulator traffic
# are amortised over thousands of values (the former loops over N alone, per
# output pixel, were dominated by them).  Their indices are unsigned: Numba's
# negative-index wraparound otherwise keeps LLVM from vectorising them.

BLOCK = 4096
"""Output values (of one output row, Wo*N) per parallel task of :func:`_direct`."""


def _tap_offsets(shape, kh, kw, count):
    """Offsets into ``xt.reshape(-1)``, xt of ``shape`` (C, Hp, Wp, N), of the taps (c, i, j),
    row-major, for output row 0, ``count`` >= C*kh*kw of them (the extra ones repeat the last
    tap): tap k of output row a reads ``xt.flat[a*Wp*N + off[k]:]``, whose value m = b*N + n
    is xt[c, a+i, b+j, n]."""
    k = np.minimum(np.arange(count), shape[0] * kh * kw - 1)
    return ((k // (kh * kw) * shape[1] + k // kw % kh) * shape[2] + k % kw) * shape[3]


def _direct(xt, w, b, yt):
    """yt[o,a,b,:] = b[o] + sum_{c,i,j} w[o,c,i,j] xt[c,a+i,b+j,:], stride 1, batch innermost.

    ``xt`` is the padded input (C, Hp, Wp, N), ``yt`` (O, Ho, Wo, N) is overwritten
    (both C-contiguous); ``b`` is the bias or None.  The taps (c, i, j) go in
    row-major order four at a time (one load and store of the output per four
    multiply-adds), the last group completed with zero weights on a zero row.
    """
    n_out, taps = w.shape[0], w[0].size
    wk = np.zeros((n_out, -(-taps // 4) * 4), dtype=yt.dtype)
    wk[:, :taps] = w.reshape(n_out, taps)
    start = np.zeros(n_out, yt.dtype) if b is None else b.astype(yt.dtype)
    off = _tap_offsets(xt.shape, w.shape[2], w.shape[3], wk.shape[1])
    _tap_rows(xt.reshape(-1), off, wk, start, taps, xt.shape[2] * xt.shape[3], yt)


@njit(cache=True, parallel=True, fastmath={"contract"})
def _tap_rows(x, off, wk, start, taps, row, yt):
    """yt[o, a].flat[m] = start[o] + sum_k wk[o, k] x[a*row + off[k] + m], taps k < ``taps`` in
    order, four per pass.  Parallel over (o, output row a, block of ``BLOCK`` values of the row):
    every output value is summed in the same order whatever the thread count; the start value
    is written block by block, while the block is in cache (no separate pass to zero ``yt``)."""
    n_out, ho_size = yt.shape[0], yt.shape[1]
    size = yt.shape[2] * yt.shape[3]
    blocks = (size + BLOCK - 1) // BLOCK
    zero = np.zeros(size, yt.dtype)
    for t in prange(n_out * ho_size * blocks):
        o, a, m0 = t // (ho_size * blocks), (t // blocks) % ho_size, (t % blocks) * BLOCK
        m1 = min(m0 + BLOCK, size)
        y, base = yt[o, a].reshape(size), a * row
        y[m0:m1] = start[o]
        for k in range(0, taps, 4):
            s0 = x[base + off[k]:]
            s1 = x[base + off[k + 1]:] if k + 1 < taps else zero
            s2 = x[base + off[k + 2]:] if k + 2 < taps else zero
            s3 = x[base + off[k + 3]:] if k + 3 < taps else zero
            w0, w1, w2, w3 = wk[o, k], wk[o, k + 1], wk[o, k + 2], wk[o, k + 3]
            for m in range(uint64(m0), uint64(m1)):
                y[m] = y[m] + w0 * s0[m] + w1 * s1[m] + w2 * s2[m] + w3 * s3[m]


def _direct_w(xt, gt, gw):
    """gw[o,c,i,j] = sum_{a,b,n} gt[o,a,b,n] xt[c,a+i,b+j,n], stride 1, batch innermost
    (``xt`` and ``gt`` C-contiguous), eight taps (c, i, j) at a time: see :func:`_tap_dots`."""
    n_out, taps = gw.shape[0], gw[0].size
    out = np.empty((n_out, -(-taps // 8) * 8), dtype=gw.dtype)
    off = _tap_offsets(xt.shape, gw.shape[2], gw.shape[3], out.shape[1])
    _tap_dots(xt.reshape(-1), off, xt.shape[2] * xt.shape[3], gt, out)
    gw[...] = out[:, :taps].reshape(gw.shape)


@njit(cache=True, parallel=True, fastmath=True)
def _tap_dots(x, off, row, gt, out):
    """out[o, k] = sum_a dot(gt[o, a].flat, x[a*row + off[k]:][:Wo*N]).

    Per output row a, the dot products of the Wo*N contiguous values of
    ``gt[o, a]`` with eight taps' shifted input rows at once (each loaded
    gradient value feeds eight sums), in the working precision, the rows
    summed in float64 in a fixed order.  Parallel over (o, group of 8 taps).
    """
    n_out, ho_size = gt.shape[0], gt.shape[1]
    size, groups = gt.shape[2] * gt.shape[3], out.shape[1] // 8
    for t in prange(n_out * groups):
        o, k = t // groups, (t % groups) * 8
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
        for a in range(ho_size):
            g, base = gt[o, a].reshape(size), a * row
            s0, s1, s2, s3 = x[base + off[k]:], x[base + off[k + 1]:], x[base + off[k + 2]:], x[base + off[k + 3]:]
            s4, s5, s6, s7 = x[base + off[k + 4]:], x[base + off[k + 5]:], x[base + off[k + 6]:], x[base + off[k + 7]:]
            d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = g[0] * np.float32(0)  # float32 sums stay float32
            for m in range(size):
                v = g[m]
                d0 += v * s0[m]
                d1 += v * s1[m]
                d2 += v * s2[m]
                d3 += v * s3[m]
                d4 += v * s4[m]
                d5 += v * s5[m]
                d6 += v * s6[m]
                d7 += v * s7[m]
            t0, t1, t2, t3, t4, t5, t6, t7 = t0 + d0, t1 + d1, t2 + d2, t3 + d3, t4 + d4, t5 + d5, t6 + d6, t7 + d7
        out[o, k], out[o, k + 1], out[o, k + 2], out[o, k + 3] = t0, t1, t2, t3
        out[o, k + 4], out[o, k + 5], out[o, k + 6], out[o, k + 7] = t4, t5, t6, t7


def use_direct(c_in, c_out, kernel, stride) -> bool:
    """Direct kernels for stride-1 layers with few channel pairs per kernel tap (DCTL's 9x9
    filters, DCAE's 9x9 convolutions and 17x17 transposed one, FCAE's 1->6 and 6->1 5x5), where
    the column matrix is kh*kw times the image for a GEMM of a few rows; batch-last im2col + one
    GEMM for everything else.  The threshold was measured per layer (benchmarks/)."""
    return tuple(stride) == (1, 1) and 5 * c_in * c_out <= 2 * kernel[0] * kernel[1]


def _flipped(w):
    """(A, B, kh, kw) -> (B, A, kh, kw) rotated by 180 degrees: the kernel of the adjoint correlation."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def direct_adjoint(gt, w, padding, hw, b=None):
    """out[c,h,v] = b[c] + sum_{o,i,j} w[o,c,i,j] gt[o,h+ph-i,v+pw-j] (the adjoint of a stride-1
    correlation in its input, plus a bias or None), as a correlation of gt, placed at
    (kh-1-ph, kw-1-pw), with the flipped kernel.  Batch last: returns (C, H, W, N).

    ``padding`` is ``(ph, pw)``, the *top and left* padding of the correlation (the crop of a
    transposed one): the bottom and right padding need not be known, as ``hw`` fixes the output
    and :func:`placed` drops whatever of ``gt`` falls outside; so asymmetric paddings work as they are."""
    (kh, kw), (ph, pw) = w.shape[2:], padding
    gpad = placed(gt, kh - 1 - ph, kw - 1 - pw, (hw[0] + kh - 1, hw[1] + kw - 1))
    out = np.empty((w.shape[1], *hw, gt.shape[3]), dtype=gt.dtype)
    run(_direct, out.size * w[:, 0].size, gpad, _flipped(w), b, out)
    return out


# ------------------------------------------------------------------ max pooling and unpooling
#
# Numba max pooling with indices and max unpooling.
#
# One parallel kernel (:func:`_planes`) for the four passes (cold compile time
# counts), parallel over the (n, c) planes: (P, H, W) arrays for pooling, (P, 1,
# size) for the index moves, so that all share one type signature per dtype.
# One thread owns a plane, so the scatters (pooling's backward, unpooling's
# forward) are race-free and deterministic.

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

# ------------------------------------------------------------ register-tiled kernels
"""Register-tiled convolution kernels (implicit GEMM, explicit vectors, batch last).

The strided layers with large kernels (DEPICT's and DCEC's 5x5 stride-2 layers, 32-64
channels; see :func:`use_tiled`) as two Numba kernels over batch-last arrays ``(C, H, W, Np)``,
the batch padded with zeros to ``Np``, a multiple of the vector length L
(:mod:`nbclust.kernels.cpu._runtime`): no column matrix, no BLAS call, one parallel region per product.

- :func:`_correlate`, ``y[o, dst[v]:][:L] = start[o] + sum_k w[o, k] x[taps[k] + src[v]:][:L]``:
  every output vector v (L batch entries of one output pixel) is the sum over the taps k
  (input channel, kernel row, kernel column) of a weight times the input vector the tap
  reads; ``taps`` and ``src`` are element offsets, so strides and padding are only tables.
  Register tile: 4 output channels x 3 vectors, 12 accumulators, each loaded input vector
  feeding 4 fused multiply-adds and each broadcast weight 3.  The 3 vectors' taps are first
  copied to a contiguous buffer (while the next tile's are prefetched), which the groups of
  4 channels then stream.
- :func:`_correlate_grad`, ``gw[o, k] = sum_p dot(g[o, gpix[p]:][:Np], x[taps[k] + xpix[p]:][:Np])``:
  the weight gradient, 4 channels x 6 taps per register tile (24 accumulators), the Np batch
  values of each pixel contiguous in both operands; lane sums kept per (o, k) across pixels,
  added in a fixed order at the end.

With them (``A`` the weight's first axis):

- conv2d _tiled_forward and conv_transpose2d's input gradient are :func:`_tiled_forward` (a strided
  correlation of a padded input);
- conv2d's input gradient and conv_transpose2d _tiled_forward are :func:`_tiled_adjoint`, by phases: output
  row h + top = s*h' + r only meets kernel rows i = r + s*m, at input row h' - m, so each of
  the s_h * s_w phases is a stride-1 correlation of the zero-padded input with its sub-kernel
  w[:, :, r + s*m, q + s*m'], written to its own rows and columns (each output once: no
  scatter, no races);
- both weight gradients are :func:`_tiled_weight_gradient`.

Every output value is summed in one fixed order whatever the thread count.
"""

ROWS, VECTORS, TAPS = 4, 3, 6
"""Register tiles: output channels and vectors of :func:`_correlate`; channels (``ROWS``) and
taps of :func:`_correlate_grad`."""

TAP_BLOCK, PIXEL_BLOCK = 8, 8
"""Tiles of taps per parallel task of :func:`_correlate_grad`, and pixels per pass of its register tile."""


@njit(cache=True)
def _splat3(b):
    v = vsplat(b)
    return v, v, v


@njit(cache=True)
def _fma3(w, x, acc):
    """acc[i] + w * x[i] for the three vectors of the tuples ``x`` and ``acc`` (``w`` a scalar)."""
    return vfma(w, x[0], acc[0]), vfma(w, x[1], acc[1]), vfma(w, x[2], acc[2])


@njit(cache=True)
def _store3(a, offsets, v):
    """The three vectors of the tuple ``v`` to ``a`` at the three ``offsets``."""
    vstore(a, offsets[0], v[0])
    vstore(a, offsets[1], v[1])
    vstore(a, offsets[2], v[2])


@njit(cache=True, parallel=True)
def _correlate(x, taps, w, start, src, dst, y):
    """y[o, dst[v]:][:L] = start[o] + sum_k w[o // 4, k, o % 4] x[taps[k] + src[v]:][:L], k in order.

    ``x`` flat; ``w`` (O/4, K, 4) packed weights; ``src``, ``dst`` a multiple of 3 long; ``y``
    (O, size) rows.  Parallel over tiles of 3 vectors; the accumulators are four 3-tuples.
    """
    groups, n_taps = w.shape[0], w.shape[1]
    n = lanes(x)
    last = src.size - VECTORS
    for t in prange(src.size // VECTORS):
        v = t * VECTORS
        s0, s1, s2 = src[v], src[v + 1], src[v + 2]
        p0, p2 = src[min(v + VECTORS, last)], src[min(v + VECTORS, last) + 2] + n - 1
        buf = np.empty(n_taps * VECTORS * n, x.dtype)
        for k in range(n_taps):
            b = taps[k]
            prefetch(x, b + p0)
            prefetch(x, b + p2)
            vstore(buf, VECTORS * n * k, vload(x, b + s0))
            vstore(buf, VECTORS * n * k + n, vload(x, b + s1))
            vstore(buf, VECTORS * n * k + 2 * n, vload(x, b + s2))
        d = (dst[v], dst[v + 1], dst[v + 2])
        for g in range(groups):
            o = ROWS * g
            a0, a1, a2, a3 = _splat3(start[o]), _splat3(start[o + 1]), _splat3(start[o + 2]), _splat3(start[o + 3])
            wg = w[g]
            for k in range(uint64(n_taps)):
                b = VECTORS * n * k
                xs = vload(buf, b), vload(buf, b + n), vload(buf, b + 2 * n)
                a0, a1 = _fma3(wg[k, 0], xs, a0), _fma3(wg[k, 1], xs, a1)
                a2, a3 = _fma3(wg[k, 2], xs, a2), _fma3(wg[k, 3], xs, a3)
            _store3(y[o], d, a0)
            _store3(y[o + 1], d, a1)
            _store3(y[o + 2], d, a2)
            _store3(y[o + 3], d, a3)


@njit(cache=True)
def _load6(a, i, n):
    """Six consecutive vectors of ``a`` from ``i``."""
    return (vload(a, i), vload(a, i + n), vload(a, i + 2 * n),
            vload(a, i + 3 * n), vload(a, i + 4 * n), vload(a, i + 5 * n))


@njit(cache=True)
def _store6(a, i, n, v):
    """The six vectors of the tuple ``v`` to ``a`` from ``i``."""
    vstore(a, i, v[0])
    vstore(a, i + n, v[1])
    vstore(a, i + 2 * n, v[2])
    vstore(a, i + 3 * n, v[3])
    vstore(a, i + 4 * n, v[4])
    vstore(a, i + 5 * n, v[5])


@njit(cache=True)
def _gather6(a, offsets, m):
    """The vectors of ``a`` at the six ``offsets`` plus ``m``."""
    o0, o1, o2, o3, o4, o5 = offsets
    return vload(a, o0 + m), vload(a, o1 + m), vload(a, o2 + m), vload(a, o3 + m), vload(a, o4 + m), vload(a, o5 + m)


@njit(cache=True)
def _fma6(v, y, acc):
    """acc[i] + v * y[i] for the six vectors of the tuples ``y`` and ``acc``."""
    return (vfma(v, y[0], acc[0]), vfma(v, y[1], acc[1]), vfma(v, y[2], acc[2]),
            vfma(v, y[3], acc[3]), vfma(v, y[4], acc[4]), vfma(v, y[5], acc[5]))


@njit(cache=True, parallel=True)
def _correlate_grad(x, taps, xpix, g, gpix, run_length, acc, gw):
    """gw[o, k] = sum_p sum_{m < run_length} g[o, gpix[p] + m] x[taps[k] + xpix[p] + m].

    ``x`` flat; ``g`` (O, size) rows; ``gw`` (O', K), O' >= O a multiple of 4 (rows o >= O are
    left undefined); ``taps`` a multiple of 6 long; ``run_length`` a multiple of L.  Register
    tile: 4 channels x 6 taps, 24 accumulators (AVX-512 has 32 vector registers; with AVX2's 16
    some would spill) as four 6-tuples, each loaded g vector feeding 6 of them, over
    ``PIXEL_BLOCK`` pixels at a time; ``acc`` (O', K, L) keeps the lane sums between pixel
    blocks, the pixels in order (the vectors of a pixel in order), then each gw[o, k] adds its
    lanes in order.  Parallel over blocks of ``TAP_BLOCK`` tiles of taps.
    """
    n_rows, n_taps, n = gw.shape[0], gw.shape[1], lanes(x)
    row, last = g.shape[1], g.shape[0] - 1  # rows of the tile past the last read the last one
    tiles, lane_rows = n_taps // TAPS, uint64(n_taps * n)
    gf, af, end = g.reshape(-1), acc.reshape(-1), uint64(run_length)
    for block in prange((tiles + TAP_BLOCK - 1) // TAP_BLOCK):
        t0, t1 = block * TAP_BLOCK, min(block * TAP_BLOCK + TAP_BLOCK, tiles)
        for p0 in range(0, xpix.size, PIXEL_BLOCK):
            for o in range(0, n_rows, ROWS):
                for t in range(t0, t1):
                    c0 = uint64((o * n_taps + TAPS * t) * n)
                    if p0 == 0:
                        z = vzero(x)
                        a0 = a1 = a2 = a3 = (z, z, z, z, z, z)
                    else:
                        a0, a1 = _load6(af, c0, n), _load6(af, c0 + lane_rows, n)
                        a2, a3 = _load6(af, c0 + 2 * lane_rows, n), _load6(af, c0 + 3 * lane_rows, n)
                    for p in range(p0, min(p0 + PIXEL_BLOCK, xpix.size)):
                        g0, g1 = uint64(o * row + gpix[p]), uint64(min(o + 1, last) * row + gpix[p])
                        g2, g3 = uint64(min(o + 2, last) * row + gpix[p]), uint64(min(o + 3, last) * row + gpix[p])
                        k, xp = TAPS * t, xpix[p]
                        offsets = (uint64(taps[k] + xp), uint64(taps[k + 1] + xp), uint64(taps[k + 2] + xp),
                                   uint64(taps[k + 3] + xp), uint64(taps[k + 4] + xp), uint64(taps[k + 5] + xp))
                        for m in range(uint64(0), end, uint64(n)):
                            y = _gather6(x, offsets, m)
                            a0 = _fma6(vload(gf, g0 + m), y, a0)
                            a1 = _fma6(vload(gf, g1 + m), y, a1)
                            a2 = _fma6(vload(gf, g2 + m), y, a2)
                            a3 = _fma6(vload(gf, g3 + m), y, a3)
                    _store6(af, c0, n, a0)
                    _store6(af, c0 + lane_rows, n, a1)
                    _store6(af, c0 + 2 * lane_rows, n, a2)
                    _store6(af, c0 + 3 * lane_rows, n, a3)
        for o in range(n_rows):
            for k in range(TAPS * t0, TAPS * t1):
                gw[o, k] = vsum(vload(af, (o * n_taps + k) * n))


_TILED_SERIAL = {kernel: njit(cache=True)(kernel.py_func) for kernel in (_correlate, _correlate_grad)}


def _tiled_for_dtype(kernel, dtype):
    """``kernel`` for float32, the dtype networks train in; for float64 (gradient checks, reference
    runs) a serial compilation of the same code: compiling the parallel form for both dtypes adds
    2 s to the cold compile of every kernel (benchmarks/startup.py), which has a 30 s budget."""
    return kernel if np.dtype(dtype) == np.float32 else _TILED_SERIAL[kernel]


def _tiled_lanes(dtype) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tiled_batch_last(x, top, left, hw):
    """x (N, C, H, W) -> (C, *hw, Np), placed at (top, left) in zeros (cropped where it does not
    fit), Np = N rounded up to the vector length (the extra lanes zero)."""
    (n, c, h, w), lanes_n = x.shape, _ceil_to(x.shape[0], _tiled_lanes(x.dtype))
    xt = batch_last(x)
    if top == left == 0 and tuple(hw) == (h, w) and lanes_n == n:
        return xt
    out = np.empty((c, *hw, lanes_n), dtype=x.dtype)
    r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + h, hw[0]), min(left + w, hw[1])
    out[:, r0:r1, c0:c1, :n] = xt[:, r0 - top:r1 - top, c0 - left:c1 - left]
    out[:, :r0], out[:, r1:] = 0, 0  # the padding only: the copy above overwrites the rest
    out[:, r0:r1, :c0], out[:, r0:r1, c1:], out[:, r0:r1, c0:c1, n:] = 0, 0, 0
    return out


def _tiled_batch_first(yt, shape):
    """The (N, C, H, W) ``shape`` of a batch-last (C', H, W, Np) ``yt`` (C' >= C, Np >= N) back in
    batch-first order."""
    return batch_first(yt[:shape[1]])[:shape[0]]


def _tiled_table(build):
    """``build`` memoised (its arguments are ints): the offset tables depend on shapes only, and
    building them costs more than a small layer's arithmetic.  The arrays are read-only."""
    @functools.lru_cache(maxsize=512)
    def cached(*args):
        out = build(*args)
        out.flags.writeable = False
        return out
    return cached


@_tiled_table
def _tiled_grid(rows, cols, pitch, run_length, n, multiple):
    """Offsets ((r * pitch + c) * run_length + j * n) for r, c in the ``(start, count, step)`` ranges
    ``rows`` and ``cols`` and j < run_length / n, in that order (the vectors, or with n = run_length
    the pixels, of a batch-last array of row pitch ``pitch``), the last repeated up to a multiple of
    ``multiple``."""
    r = rows[0] + rows[2] * np.arange(rows[1])
    c = cols[0] + cols[2] * np.arange(cols[1])
    pix = (r[:, None] * pitch + c[None, :]).reshape(-1, 1) * run_length
    return _tiled_padded((pix + np.arange(0, run_length, n)[None, :]).reshape(-1), multiple)


@_tiled_table
def _tiled_taps(channels, rows, cols, shape, multiple):
    """Offsets of the taps (c, i, j), row-major, into a batch-last array of ``shape`` (C, H, W, Np),
    i and j in the ``(start, count, step)`` ranges ``rows`` and ``cols`` (the kernel's row and
    column offsets), the last repeated up to a multiple of ``multiple``."""
    _, h, w, run_length = shape
    i = rows[0] + rows[2] * np.arange(rows[1])
    j = cols[0] + cols[2] * np.arange(cols[1])
    tap = (np.arange(channels)[:, None, None] * h + i[None, :, None]) * w + j[None, None, :]
    return _tiled_padded(tap.reshape(-1) * run_length, multiple)


def _tiled_padded(a, multiple):
    """``a`` with its last entry repeated up to a multiple of ``multiple``."""
    return np.concatenate([a, np.repeat(a[-1:], -a.size % multiple)]) if a.size else a


def _tiled_packed(w_mat, dtype):
    """(B, K) weights -> (ceil(B/4), K, 4): each group of 4 output channels' weights per tap together."""
    rows = _ceil_to(w_mat.shape[0], ROWS)
    wp = np.zeros((rows, w_mat.shape[1]), dtype)
    wp[:w_mat.shape[0]] = w_mat
    return np.ascontiguousarray(wp.reshape(rows // ROWS, ROWS, -1).transpose(0, 2, 1))


def _tiled_starts(b, rows, dtype):
    start = np.zeros(_ceil_to(rows, ROWS), dtype)
    if b is not None:
        start[:rows] = b
    return start


def _tiled_correlation(xt, taps, w_mat, b, src, dst, out):
    """``out`` (B', size) rows o < B: b[o] + sum_k w_mat[o, k] xt.flat[taps[k] + src[v]:][:L] at dst[v]."""
    run(_tiled_for_dtype(_correlate, xt.dtype), src.size * taps.size * out.shape[0] * _tiled_lanes(xt.dtype), xt.reshape(-1), taps,
        _tiled_packed(w_mat, xt.dtype), _tiled_starts(b, w_mat.shape[0], xt.dtype), src, dst, out)


def _tiled_forward(xt, w_mat, b, stride, kernel, out_hw):
    """y (B', Ho, Wo, Np) = b + the correlation, at ``stride``, of the padded batch-last ``xt``
    (C, (Ho-1)*sh + kh, (Wo-1)*sw + kw, Np) with the (B, C*kh*kw) ``w_mat``; rows B' >= B padded."""
    (sh, sw), (ho, wo), (_, _, wp, run_length) = stride, out_hw, xt.shape
    n = _tiled_lanes(xt.dtype)
    taps = _tiled_taps(xt.shape[0], (0, kernel[0], 1), (0, kernel[1], 1), xt.shape, 1)
    src = _tiled_grid((0, ho, sh), (0, wo, sw), wp, run_length, n, VECTORS)
    dst = _tiled_grid((0, ho, 1), (0, wo, 1), wo, run_length, n, VECTORS)
    out = np.empty((_ceil_to(w_mat.shape[0], ROWS), ho, wo, run_length), dtype=xt.dtype)
    _tiled_correlation(xt, taps, w_mat, b, src, dst, out.reshape(out.shape[0], -1))
    return out


def _tiled_adjoint_layout(x, kernel, stride, out_hw, top_left):
    """(batch-last x zero-padded for :func:`_tiled_adjoint`, its (top, left) padding): ceil(k/s) - 1 rows
    and columns before the image and enough after it for every phase's reads."""
    pads = tuple(-(-k // s) - 1 for k, s in zip(kernel, stride))
    size = tuple(p + max(n, (m - 1 + c) // s + 1)
                 for p, n, m, c, s in zip(pads, x.shape[2:], out_hw, top_left, stride))
    return _tiled_batch_last(x, *pads, size), pads


def _tiled_adjoint(xa, w, b, stride, top_left, out_hw, pads):
    """out (B', H, W, Np): out[c, h, v] = b[c] + sum_{a,i,j} w[a, c, i, j] x[a, (h+top-i)/sh, (v+left-j)/sw]
    over the i, j where both divide (the _tiled_adjoint of a strided correlation), phase by phase;
    ``xa``, ``pads`` from :func:`_tiled_adjoint_layout`, ``w`` (A, B, kh, kw)."""
    (sh, sw), (top, left), (height, width) = stride, top_left, out_hw
    (pt, pl), (_, _, wg, run_length), n = pads, xa.shape, _tiled_lanes(xa.dtype)
    out = np.empty((_ceil_to(w.shape[1], ROWS), height, width, run_length), dtype=xa.dtype)
    for rh in range(sh):
        r0, r1 = -((rh - top) // sh), (height - 1 + top - rh) // sh + 1  # x rows h' of this phase
        for rw in range(sw):
            c0, c1 = -((rw - left) // sw), (width - 1 + left - rw) // sw + 1
            if r1 <= r0 or c1 <= c0:
                continue
            sub = w[:, :, rh::sh, rw::sw]  # kernel rows rh + sh*m meet x row h' - m
            taps = _tiled_taps(w.shape[0], (pt, sub.shape[2], -1), (pl, sub.shape[3], -1), xa.shape, 1)
            src = _tiled_grid((r0, r1 - r0, 1), (c0, c1 - c0, 1), wg, run_length, n, VECTORS)
            dst = _tiled_grid((r0 * sh + rh - top, r1 - r0, sh), (c0 * sw + rw - left, c1 - c0, sw), width, run_length, n,
                        VECTORS)
            w_mat = sub.transpose(1, 0, 2, 3).reshape(w.shape[1], -1)
            _tiled_correlation(xa, taps, w_mat, b, src, dst, out.reshape(out.shape[0], -1))
    return out


def _tiled_weight_gradient(xt, kernel, stride, ga, pads, small_hw):
    """gw (A, C*kh*kw): gw[a, (c, i, j)] = sum_{p, q, n} g[a, p, q, n] xt[c, p*sh + i, q*sw + j, n]
    for the :func:`_tiled_forward` layout ``xt`` and the :func:`_tiled_adjoint_layout` ``ga`` (``pads``) of the
    small image g (``small_hw``)."""
    (sh, sw), (_, _, wp, run_length), (pt, pl), (ho, wo) = stride, xt.shape, pads, small_hw
    taps = _tiled_taps(xt.shape[0], (0, kernel[0], 1), (0, kernel[1], 1), xt.shape, TAPS)
    xpix = _tiled_grid((0, ho, sh), (0, wo, sw), wp, run_length, run_length, 1)
    gpix = _tiled_grid((pt, ho, 1), (pl, wo, 1), ga.shape[2], run_length, run_length, 1)
    acc = np.empty((_ceil_to(ga.shape[0], ROWS), taps.size, _tiled_lanes(xt.dtype)), dtype=xt.dtype)
    gw = np.empty(acc.shape[:2], dtype=xt.dtype)
    run(_tiled_for_dtype(_correlate_grad, xt.dtype), gw.size * xpix.size * run_length, xt.reshape(-1), taps, xpix,
        ga.reshape(ga.shape[0], -1), gpix, run_length, acc, gw)
    return gw[:ga.shape[0], :xt.shape[0] * kernel[0] * kernel[1]]


def _tiled_conv2d_forward(x, w, b, geometry, out_hw):
    """(y, xt saved for the backward pass) of a conv2d (``geometry`` (sh, sw, top, left))."""
    (sh, sw, top, left), (kh, kw), (ho, wo) = geometry, w.shape[2:], out_hw
    xt = _tiled_batch_last(x, top, left, ((ho - 1) * sh + kh, (wo - 1) * sw + kw))
    yt = _tiled_forward(xt, w.reshape(w.shape[0], -1), b, (sh, sw), (kh, kw), out_hw)
    return _tiled_batch_first(yt, (x.shape[0], w.shape[0], ho, wo)), xt


def _tiled_conv2d_backward(g, xt, w, geometry, x_shape, input_grad):
    """(grad_x or None, grad_w) of :func:`_tiled_conv2d_forward`."""
    stride, top_left, kernel = geometry[:2], geometry[2:], w.shape[2:]
    ga, pads = _tiled_adjoint_layout(g, kernel, stride, x_shape[2:], top_left)
    grad_w = _tiled_weight_gradient(xt, kernel, stride, ga, pads, g.shape[2:]).reshape(w.shape)
    if not input_grad:
        return None, grad_w
    return _tiled_batch_first(_tiled_adjoint(ga, w, None, stride, top_left, x_shape[2:], pads), x_shape), grad_w


def _tiled_conv_transpose2d_forward(x, w, b, geometry, out_hw):
    """(y, (x in the _tiled_adjoint layout, its padding) saved) of a conv_transpose2d (w (Cin, Cout, kh, kw))."""
    stride, top_left, kernel = geometry[:2], geometry[2:], w.shape[2:]
    xa, pads = _tiled_adjoint_layout(x, kernel, stride, out_hw, top_left)
    yt = _tiled_adjoint(xa, w, b, stride, top_left, out_hw, pads)
    return _tiled_batch_first(yt, (x.shape[0], w.shape[1], *out_hw)), (xa, pads)


def _tiled_conv_transpose2d_backward(g, saved, w, geometry, x_shape, input_grad):
    """(grad_x or None, grad_w) of :func:`_tiled_conv_transpose2d_forward`."""
    (xa, pads), (sh, sw, top, left), (kh, kw) = saved, geometry, w.shape[2:]
    gt = _tiled_batch_last(g, top, left, ((x_shape[2] - 1) * sh + kh, (x_shape[3] - 1) * sw + kw))
    grad_w = _tiled_weight_gradient(gt, (kh, kw), (sh, sw), xa, pads, x_shape[2:]).reshape(w.shape)
    if not input_grad:
        return None, grad_w
    yt = _tiled_forward(gt, w.reshape(w.shape[0], -1), None, (sh, sw), (kh, kw), x_shape[2:])
    return _tiled_batch_first(yt, x_shape), grad_w


def use_tiled(kernel, stride) -> bool:
    """These kernels for strided layers with at least 4 kernel taps per phase on average (DEPICT's
    and DCEC's 5x5 stride-2 layers; 4x4 stride 2): faster there than im2col + GEMM at every channel
    count measured (4 to 64, benchmarks/); im2col + GEMM for 3x3 stride 2, where a phase has 1-4
    taps and the per-tile overheads dominate."""
    return max(stride) > 1 and kernel[0] * kernel[1] >= 4 * stride[0] * stride[1]
