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
take the direct kernels of :mod:`nbclust.kernels.cpu.direct` instead, layers
with a single-channel image side a per-sample variant, and strided layers with
large kernels the register-tiled kernels of :mod:`nbclust.kernels.cpu.tiled` (:func:`_path`).
``linear`` is one BLAS call per product and ``reshape`` the reference's.

Padding may be asymmetric (``((top, bottom), (left, right))``, or ``"tf_same"``, see
:mod:`nbclust.convshape`) on every path: the kernels index from the top/left padding, and
the bottom/right padding only sets the output size (conv2d) or the size of the full
transposed output that is cropped (conv_transpose2d).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust import convshape
from nbclust.kernels.cpu import tiled
from nbclust.kernels.cpu.direct import direct_adjoint, use_direct, _direct, _direct_w
from nbclust.kernels.cpu.layout import batch_first, batch_last, contiguous, placed
from nbclust.kernels.cpu.pointwise import run
from nbclust.reference import conv as reference_conv


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
    register-tiled kernels of :mod:`nbclust.kernels.cpu.tiled`, see its ``use_tiled``), else ``"im2col"``.

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
    return "tiled" if tiled.use_tiled(kernel, stride) else "im2col"


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


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    (n, o, ho, wo), stride, padding = convshape.conv_geometry(x, w, b, stride, padding)
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
        y, xt = tiled.conv2d_forward(x, w, b, geometry, (ho, wo))
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
        return (*tiled.conv2d_backward(g, saved, w, geometry, x_shape, input_grad), grad_b)
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


def conv_transpose2d_forward(x, w, b, stride=(1, 1), padding=(0, 0), output_padding=(0, 0)):
    (n, cout, hout, wout), stride, padding, _ = convshape.conv_transpose_geometry(
        x, w, b, stride, padding, output_padding)
    geometry = _geometry(stride, padding)
    x = contiguous(x, x.dtype)
    w = contiguous(w, x.dtype)
    path = _path(cout, x.shape[1], cout, w.shape[2:], geometry[:2])
    if path == "direct":
        xt = batch_last(x)
        yt = direct_adjoint(xt, w, geometry[2:], (hout, wout), b)
        return batch_first(yt), (x.shape, xt, w, b is not None, geometry, path)
    if path == "tiled":
        y, saved = tiled.conv_transpose2d_forward(x, w, b, geometry, (hout, wout))
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
        return (*tiled.conv_transpose2d_backward(g, saved, w, geometry, x_shape, input_grad), grad_b)
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
    convshape.check_linear_input(x, w, b)
    w = contiguous(w, x.dtype)
    y = np.matmul(x, w.T)
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    return y, (x, w, b is not None)


def linear_backward(grad_y, ctx, input_grad=True):
    x, w, has_bias = ctx
    g = contiguous(grad_y, x.dtype)
    return (np.matmul(g, w) if input_grad else None), np.matmul(g.T, x), (g.sum(axis=0) if has_bias else None)


OPS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward),
    "linear": (linear_forward, linear_backward),
    "reshape": reference_conv.OPS["reshape"],  # metadata only: the same on every backend
}
