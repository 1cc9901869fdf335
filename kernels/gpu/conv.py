"""CuPy convolution-family ops: im2col gathers + one cuBLAS matmul each.

``cols[n, (c,i,j), (ho,wo)] = xpad[n, c, ho*sh + i, wo*sw + j]`` is a gather
through a cached index table (:mod:`._runtime`); its adjoint ``col2im`` is a
gather too (each input pixel sums the patch elements that read it, in a fixed
order), so every op here is deterministic: no atomics, no scatter-add.
``conv_transpose2d`` is the adjoint of ``conv2d`` in its input and reuses the
same tables.  Padding is ``((top, bottom), (left, right))`` inside (any form of
:mod:`nbclust.engine.convshape` outside, ``"tf_same"`` included); the tables index the
asymmetrically padded plane.  Arguments arrive validated (by the op table, for every backend);
``linear`` and ``reshape`` run the reference's own (array-module free) functions.
"""

from __future__ import annotations

from typing import NamedTuple

from nbclust.engine import convshape
from nbclust.kernels.gpu._runtime import conv_tables, pool_tables, xp


class _Geometry(NamedTuple):
    im2col: object  # (C*kh*kw, Ho*Wo) device index table, see _runtime.conv_tables
    col2im: object  # (C*H*W, M)
    padding: tuple  # ((top, bottom), (left, right))


def _geometry(c, hw, kernel, stride, padding) -> _Geometry:
    im2col, col2im, _ = conv_tables(c, hw[0], hw[1], *kernel, *stride, *padding[0], *padding[1])
    return _Geometry(im2col, col2im, padding)


def _im2col(x, geo: _Geometry):
    """``(N, C*kh*kw, Ho*Wo)`` patches of ``x (N, C, H, W)`` (zero padding)."""
    pads, n = geo.padding, x.shape[0]
    xpad = xp.pad(x, ((0, 0), (0, 0), *pads)) if any(pads[0] + pads[1]) else xp.ascontiguousarray(x)
    return xpad.reshape(n, -1)[:, geo.im2col]


def _col2im(cols, geo: _Geometry):
    """Adjoint of :func:`_im2col`: ``(N, C*kh*kw, P) -> (N, C*H*W)``, cropped to the unpadded input."""
    n = cols.shape[0]
    ext = xp.concatenate([cols.reshape(n, -1), xp.zeros((n, 1), dtype=cols.dtype)], axis=1)
    return ext[:, geo.col2im].sum(axis=-1)


def conv2d_forward(x, w, b, stride, padding):
    n, o, ho, wo = convshape.conv_output_shape(x, w, stride, padding)
    geo = _geometry(x.shape[1], x.shape[2:], w.shape[2:], stride, padding)
    cols = _im2col(x, geo)
    y = xp.matmul(w.reshape(o, -1), cols).reshape(n, o, ho, wo)
    if b is not None:
        y += b[:, None, None]
    return y, (cols, geo, x.shape, w, b is not None)


def conv2d_backward(grad_y, ctx, input_grad=True):
    cols, geo, x_shape, w, has_bias = ctx
    n, o = grad_y.shape[:2]
    g = xp.ascontiguousarray(grad_y).reshape(n, o, -1)
    # dW = sum_n g[n] @ cols[n]^T as one GEMM over the (n, p) axis.
    grad_w = xp.matmul(g.transpose(1, 0, 2).reshape(o, -1),
                       cols.transpose(0, 2, 1).reshape(-1, cols.shape[1])).reshape(w.shape)
    grad_x = _col2im(xp.matmul(w.reshape(o, -1).T, g), geo).reshape(x_shape) if input_grad else None
    grad_b = g.sum(axis=(0, 2)) if has_bias else None
    return grad_x, grad_w, grad_b


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding):
    """``col2im(w.reshape(Cin, -1).T @ x)``: the input gradient of a conv2d from ``(Cout, Ho, Wo)`` to ``(Cin, H, W)``."""
    n, cout, hout, wout = convshape.conv_transpose_output_shape(x, w, stride, padding, output_padding)
    cin = x.shape[1]
    geo = _geometry(cout, (hout, wout), w.shape[2:], stride, padding)
    cols = xp.matmul(w.reshape(cin, -1).T, xp.ascontiguousarray(x).reshape(n, cin, -1))
    y = _col2im(cols, geo).reshape(n, cout, hout, wout)
    if b is not None:
        y += b[:, None, None]
    return y, (x, w, geo, b is not None)


def conv_transpose2d_backward(grad_y, ctx, input_grad=True):
    x, w, geo, has_bias = ctx
    n, cin = x.shape[:2]
    cols = _im2col(xp.ascontiguousarray(grad_y), geo)  # (N, Cout*kh*kw, H*W)
    grad_x = xp.matmul(w.reshape(cin, -1), cols).reshape(x.shape) if input_grad else None
    xs = x.reshape(n, cin, -1)
    grad_w = xp.matmul(xs.transpose(1, 0, 2).reshape(cin, -1),
                       cols.transpose(0, 2, 1).reshape(-1, cols.shape[1])).reshape(w.shape)
    grad_b = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
    return grad_x, grad_w, grad_b


def max_pool2d_forward(x, kernel, stride):
    """Window maxima and their flat plane indices (torch layout; the first maximum wins)."""
    (n, c, ho, wo), (kh, kw), (sh, sw) = convshape.pool_output_shape(x, kernel, stride), kernel, stride
    h, w = x.shape[2:]
    windows, cover, _ = pool_tables(h, w, kh, kw, sh, sw)
    vals = xp.ascontiguousarray(x).reshape(n * c, h * w)[:, windows]  # (NC, P, kh*kw)
    arg = xp.argmax(vals, axis=2)
    y = xp.take_along_axis(vals, arg[:, :, None], axis=2).reshape(n, c, ho, wo)
    indices = windows[xp.arange(ho * wo)[None, :], arg].astype(xp.int64).reshape(n, c, ho, wo)
    return (y, indices), (indices, cover, x.shape)


def max_pool2d_backward(grad_y, ctx):
    """Gather form: pixel ``q`` sums ``grad_y`` over the windows containing it whose argmax is ``q``."""
    indices, cover, (n, c, h, w) = ctx
    nc = n * c
    g = xp.concatenate([xp.ascontiguousarray(grad_y).reshape(nc, -1), xp.zeros((nc, 1), grad_y.dtype)], axis=1)
    idx = xp.concatenate([indices.reshape(nc, -1), xp.full((nc, 1), -1, xp.int64)], axis=1)
    hit = idx[:, cover] == xp.arange(h * w)[:, None]  # (NC, H*W, M)
    grad_x = xp.where(hit, g[:, cover], xp.zeros((), grad_y.dtype)).sum(axis=2)
    return (grad_x.reshape(n, c, h, w),)


def max_unpool2d_forward(x, indices, output_size):
    """``y.plane[indices] = x`` (zeros elsewhere); where indices repeat, the last window wins, as in NumPy.

    Deterministic without atomics: the keys ``target * L + window`` are unique,
    so after sorting them the last entry of each run of equal targets is the
    winning window, and the final write has distinct indices.
    """
    (n, c), (h, w) = x.shape[:2], output_size
    nc, p = n * c, x.shape[2] * x.shape[3]
    idx = indices.reshape(nc, p).astype(xp.int64)
    flat = (idx + xp.arange(nc, dtype=xp.int64)[:, None] * (h * w)).ravel()
    window = xp.argsort(flat * flat.size + xp.arange(flat.size, dtype=xp.int64))
    target = flat[window]
    last = xp.concatenate([target[1:] != target[:-1], xp.ones(min(target.size, 1), dtype=bool)])
    y = xp.zeros(nc * h * w, dtype=x.dtype)
    y[target[last]] = xp.ascontiguousarray(x).reshape(-1)[window[last]]
    return y.reshape(n, c, h, w), (idx, x.shape)


def max_unpool2d_backward(grad_y, ctx):
    idx, x_shape = ctx
    g = xp.ascontiguousarray(grad_y).reshape(idx.shape[0], -1)
    return xp.take_along_axis(g, idx, axis=1).reshape(x_shape), None

