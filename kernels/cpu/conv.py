"""Numba conv kernels (see nbclust.optable for the calling convention).

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
(DCTL's and DCAE's 9x9 filters, DCAE's 17x17 transposed one, FCAE's 5x5 on
one channel) take direct batch-last kernels instead (:func:`_use_direct`):
there the column matrix is 25-289 times the image for a GEMM of a few rows.
Pooling has one kernel each way; unpooling,
``linear`` and ``reshape`` are vectorised NumPy (one BLAS call for ``linear``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust import convshape
from nbclust.kernels.cpu.pointwise import run
from nbclust.reference import conv as reference_conv


@njit(cache=True, parallel=True)
def _im2col(xt, kh, kw, sh, sw, ph, pw, cols):
    """cols[(c,i,j), a, b, n] = xt[c, a*sh+i-ph, b*sw+j-pw, n], zero in the padding.

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
def _col2im(cols, kh, kw, sh, sw, ph, pw, out):
    """Adjoint of :func:`_im2col`, gathered per output pixel:
    out[c,h,v,n] = sum cols[(c,i,j), a, b, n] over a*sh+i = h+ph, b*sw+j = v+pw,
    in a fixed order (i, j ascending), each term a contiguous run of N values.
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
            dst[:] = 0
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


@njit(cache=True, parallel=True)
def _transpose(a, out):
    """out = a.T for 2-D ``a``, in 32 x 32 tiles (cache-friendly both ways).  Parallel over row tiles of ``a``."""
    rows, cols = a.shape
    for tr in prange((rows + 31) // 32):
        r0 = tr * 32
        r1 = min(r0 + 32, rows)
        for c0 in range(0, cols, 32):
            c1 = min(c0 + 32, cols)
            for c in range(c0, c1):
                for r in range(r0, r1):
                    out[c, r] = a[r, c]


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


@njit(cache=True, parallel=True, fastmath={"contract"})
def _direct(xt, w, yt):
    """yt[o,a,b,:] += sum_{c,i,j} w[o,c,i,j] xt[c,a+i,b+j,:], stride 1, batch innermost.

    ``xt`` is the padded input (C, Hp, Wp, N), ``yt`` (O, Ho, Wo, N) holds zeros
    or the bias.  The innermost loop runs over the batch (contiguous and long,
    so it vectorises however small the image) and adds four kernel columns at
    once: one load and store of the accumulator per four multiply-adds.
    Parallel over (o, output row).
    """
    n_out, ho_size, wo_size, nb = yt.shape
    n_ch, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    kw4 = kw - kw % 4
    for t in prange(n_out * ho_size):
        o, a = t // ho_size, t % ho_size
        for b in range(wo_size):
            acc = yt[o, a, b]
            for c in range(n_ch):
                for i in range(kh):
                    row = xt[c, a + i]
                    for j in range(0, kw4, 4):
                        w0, w1, w2, w3 = w[o, c, i, j], w[o, c, i, j + 1], w[o, c, i, j + 2], w[o, c, i, j + 3]
                        s0, s1, s2, s3 = row[b + j], row[b + j + 1], row[b + j + 2], row[b + j + 3]
                        for n in range(nb):
                            acc[n] += w0 * s0[n] + w1 * s1[n] + w2 * s2[n] + w3 * s3[n]
                    for j in range(kw4, kw):
                        wv = w[o, c, i, j]
                        src = row[b + j]
                        for n in range(nb):
                            acc[n] += wv * src[n]


@njit(cache=True, parallel=True, fastmath=True)
def _direct_w(xt, gt, gw):
    """gw[o,c,i,j] = sum_{a,b,n} gt[o,a,b,n] xt[c,a+i,b+j,n], stride 1, batch innermost:
    one dot product of Wo*N contiguous values per output row, rows summed in
    float64 in a fixed order.  Parallel over (o, c)."""
    n_out, ho_size, wo_size, nb = gt.shape
    n_ch, kh, kw = xt.shape[0], gw.shape[2], gw.shape[3]
    m = wo_size * nb
    for t in prange(n_out * n_ch):
        o, c = t // n_ch, t % n_ch
        for i in range(kh):
            for j in range(kw):
                total = 0.0
                for a in range(ho_size):
                    g = gt[o, a].reshape(m)
                    x = xt[c, a + i, j:j + wo_size].reshape(m)
                    s = g[0] * 0
                    for k in range(m):
                        s += g[k] * x[k]
                    total += s
                gw[o, c, i, j] = total


def _as(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _batch_last(a):
    """(N, C, H, W) -> (C, H, W, N), batch innermost."""
    out = np.empty((*a.shape[1:], a.shape[0]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(a.shape[0], -1), out.reshape(-1, a.shape[0]))
    return out


def _batch_first(a):
    """(C, H, W, N) -> (N, C, H, W)."""
    out = np.empty((a.shape[-1], *a.shape[:-1]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(-1, a.shape[-1]), out.reshape(a.shape[-1], -1))
    return out


def _patches(xt, kernel, geometry, out_hw):
    """im2col of a batch-last ``xt`` (C, H, W, N) as a (C*kh*kw, Ho*Wo*N) matrix."""
    (kh, kw), (ho, wo) = kernel, out_hw
    cols = np.empty((xt.shape[0] * kh * kw, ho, wo, xt.shape[3]), dtype=xt.dtype)
    run(_im2col, cols.size, xt, kh, kw, *geometry, cols)
    return cols.reshape(cols.shape[0], -1)


def _unpatch(mat, kernel, geometry, in_hw, out_shape):
    """col2im of a (C*kh*kw, Ho*Wo*N) matrix onto a new batch-last array of ``out_shape`` (C, H, W, N)."""
    out = np.empty(out_shape, dtype=mat.dtype)
    run(_col2im, mat.size, mat.reshape(mat.shape[0], *in_hw, out_shape[3]), *kernel, *geometry, out)
    return out


def _times_transposed(a, b):
    """``a @ b.T`` for a long inner dimension, computed as ``(b @ a.T).T``:
    OpenBLAS is several times faster with that layout."""
    return np.ascontiguousarray(np.matmul(b, a.T).T)


def _geometry(stride, padding):
    (sh, sw), (ph, pw) = convshape.normalize_pair(stride, "stride"), convshape.normalize_pair(padding, "padding")
    return sh, sw, ph, pw


def _use_direct(c_in, c_out, kernel, stride) -> bool:
    """Direct kernels for stride-1 layers with few channel pairs per kernel tap (DCTL's 9x9
    filters, DCAE's 9x9 convolutions and 17x17 transposed one, FCAE's 1->6 and 6->1 5x5), where
    the column matrix is kh*kw times the image for a GEMM of a few rows; batch-last im2col + one
    GEMM for everything else.  The threshold was measured per layer (benchmarks/)."""
    return tuple(stride) == (1, 1) and 5 * c_in * c_out <= 2 * kernel[0] * kernel[1]


def _placed(at, top, left, hw):
    """Batch-last ``at`` (C, H, W, N) shifted by (top, left) into zeros of spatial size ``hw``
    (zero padding where the shift is positive, cropping where it is negative)."""
    c, h, w, n = at.shape
    out = np.zeros((c, *hw, n), dtype=at.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, hw[0]), min(left + w, hw[1])
    out[:, r0:r1, c0:c1] = at[:, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def _filled(shape, b, dtype):
    """A new batch-last array of ``shape`` (C, H, W, N) holding the bias per channel, or zeros."""
    out = np.zeros(shape, dtype=dtype)
    if b is not None:
        out[...] = b.astype(dtype, copy=False)[:, None, None, None]
    return out


def _flipped(w):
    """(A, B, kh, kw) -> (B, A, kh, kw) rotated by 180 degrees: the kernel of the adjoint correlation."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _direct_adjoint(gt, w, padding, hw):
    """out[c,h,v] = sum_{o,i,j} w[o,c,i,j] gt[o,h+ph-i,v+pw-j] (the adjoint of a stride-1
    correlation in its input), as a correlation of gt, placed at (kh-1-ph, kw-1-pw), with
    the flipped kernel.  Batch last: returns (C, H, W, N)."""
    (kh, kw), (ph, pw) = w.shape[2:], padding
    gpad = _placed(gt, kh - 1 - ph, kw - 1 - pw, (hw[0] + kh - 1, hw[1] + kw - 1))
    out = np.zeros((w.shape[1], *hw, gt.shape[3]), dtype=gt.dtype)
    run(_direct, out.size * w[:, 0].size, gpad, _flipped(w), out)
    return out


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    n, o, ho, wo = convshape.check_conv_input(x, w, b, stride, padding)
    geometry = _geometry(stride, padding)
    x = _as(x, x.dtype)
    w = _as(w, x.dtype)
    if _use_direct(x.shape[1], o, w.shape[2:], geometry[:2]):
        ph, pw = geometry[2:]
        xt = _placed(_batch_last(x), ph, pw, (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw))
        yt = _filled((o, ho, wo, n), b, x.dtype)
        run(_direct, yt.size * w[0].size, xt, w, yt)
        return _batch_first(yt), (x.shape, w, xt, b is not None, geometry, True)
    cols = _patches(_batch_last(x), w.shape[2:], geometry, (ho, wo))
    y = _batch_first(np.matmul(w.reshape(o, -1), cols).reshape(o, ho, wo, n))
    if b is not None:
        y += b.astype(x.dtype, copy=False)[:, None, None]
    return y, (x.shape, w, cols, b is not None, geometry, False)


def conv2d_backward(grad_y, ctx):
    x_shape, w, saved, has_bias, geometry, direct = ctx
    g = _as(grad_y, w.dtype)
    grad_b = g.sum(axis=(0, 2, 3)) if has_bias else None
    if direct:
        gt = _batch_last(g)
        grad_w = np.empty(w.shape, dtype=w.dtype)
        run(_direct_w, gt.size * w[0].size, saved, gt, grad_w)
        grad_x = _batch_first(_direct_adjoint(gt, w, geometry[2:], x_shape[2:]))
        return grad_x, grad_w, grad_b
    g_mat = _batch_last(g).reshape(g.shape[1], -1)
    grad_w = _times_transposed(g_mat, saved).reshape(w.shape)
    grad_cols = np.matmul(w.reshape(w.shape[0], -1).T, g_mat)
    n, c, h, wd = x_shape
    grad_x = _batch_first(_unpatch(grad_cols, w.shape[2:], geometry, g.shape[2:], (c, h, wd, n)))
    return grad_x, grad_w, grad_b


def conv_transpose2d_forward(x, w, b, stride=(1, 1), padding=(0, 0), output_padding=(0, 0)):
    n, cout, hout, wout = convshape.check_conv_transpose_input(x, w, b, stride, padding, output_padding)
    geometry = _geometry(stride, padding)
    w = _as(w, x.dtype)
    if _use_direct(x.shape[1], cout, w.shape[2:], geometry[:2]):
        xt = _batch_last(_as(x, x.dtype))
        yt = _direct_adjoint(xt, w, geometry[2:], (hout, wout))
        if b is not None:
            yt += b.astype(x.dtype, copy=False)[:, None, None, None]
        return _batch_first(yt), (x.shape, xt, w, b is not None, geometry, True)
    x_mat = _batch_last(_as(x, x.dtype)).reshape(x.shape[1], -1)
    cols = np.matmul(w.reshape(w.shape[0], -1).T, x_mat)
    y = _batch_first(_unpatch(cols, w.shape[2:], geometry, x.shape[2:], (cout, hout, wout, n)))
    if b is not None:
        y += b.astype(x.dtype, copy=False)[:, None, None]
    return y, (x.shape, x_mat, w, b is not None, geometry, False)


def conv_transpose2d_backward(grad_y, ctx):
    x_shape, saved, w, has_bias, geometry, direct = ctx
    g = _as(grad_y, w.dtype)
    grad_b = g.sum(axis=(0, 2, 3)) if has_bias else None
    if direct:
        ph, pw = geometry[2:]
        gt = _batch_last(g)
        gpad = _placed(gt, ph, pw, (gt.shape[1] + 2 * ph, gt.shape[2] + 2 * pw))
        grad_xt = np.zeros((*x_shape[1:], x_shape[0]), dtype=w.dtype)
        run(_direct, grad_xt.size * w[0].size, gpad, w, grad_xt)
        grad_w = np.empty(w.shape, dtype=w.dtype)
        run(_direct_w, saved.size * w[0].size, gpad, saved, grad_w)
        return _batch_first(grad_xt), grad_w, grad_b
    cols = _patches(_batch_last(g), w.shape[2:], geometry, x_shape[2:])
    grad_x = _batch_first(np.matmul(w.reshape(w.shape[0], -1), cols).reshape(x_shape[1], *x_shape[2:], x_shape[0]))
    grad_w = _times_transposed(saved, cols).reshape(w.shape)
    return grad_x, grad_w, grad_b


def max_pool2d_forward(x, kernel=(2, 2), stride=(2, 2)):
    shape = convshape.check_pool_input(x, kernel, stride)
    (kh, kw), (sh, sw) = convshape.normalize_pair(kernel, "kernel"), convshape.normalize_pair(stride, "stride")
    x = _as(x, x.dtype)
    y = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=np.int64)
    run(_max_pool, x.size, x, kh, kw, sh, sw, y, indices)
    return (y, indices), (indices, x.shape)


def max_pool2d_backward(grad_y, ctx):
    indices, x_shape = ctx
    n, c, h, w = x_shape
    g = _as(grad_y, grad_y.dtype).reshape(n * c, -1)
    grad_x = np.zeros((n * c, h * w), dtype=g.dtype)
    run(_pool_grad, grad_x.size, g, indices.reshape(n * c, -1), grad_x)
    return (grad_x.reshape(x_shape),)


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


OPS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward),
    "max_pool2d": (max_pool2d_forward, max_pool2d_backward),
    "max_unpool2d": reference_conv.OPS["max_unpool2d"],  # NumPy put/take along an axis: already one pass
    "linear": (linear_forward, linear_backward),
    "reshape": reference_conv.OPS["reshape"],  # metadata only: the same on every backend
}
