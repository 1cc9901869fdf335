"""Reference conv ops (see nbclust.engine.optable: arguments arrive validated, stride and kernel as
pairs, padding as ``((top, bottom), (left, right))``).

Convolutions go through im2col: ``cols[n, (c, i, j), (ho, wo)] =
xpad[n, c, ho*sh + i, wo*sw + j]``, so ``conv2d`` is one matmul with the
weight matrix ``w.reshape(O, C*kh*kw)``.  ``col2im`` is its adjoint (it sums
each column entry back onto the pixel it came from), which makes it the
input gradient of ``conv2d`` and the forward of ``conv_transpose2d``.

``linear`` and ``reshape`` use no array-module function, so the CuPy backend
runs them as they are; its convolutions and pooling are index-table gathers.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import convshape


def _im2col(xpad, kernel, stride, out_hw):
    """``(N, C*kh*kw, Ho*Wo)`` patches of the (already padded) ``xpad``."""
    (n, c, _, _), (kh, kw), (sh, sw), (ho, wo) = xpad.shape, kernel, stride, out_hw
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, ho * wo)


def _col2im(cols, padded_shape, kernel, stride, out_hw):
    """Adjoint of :func:`_im2col`: sum ``cols`` back onto a zero array of ``padded_shape``."""
    (n, c, _, _), (kh, kw), (sh, sw), (ho, wo) = padded_shape, kernel, stride, out_hw
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    xpad = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xpad[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return xpad


def _pad(x, padding):
    """Zero padding ``((top, bottom), (left, right))`` of the spatial axes."""
    return np.pad(x, ((0, 0), (0, 0), *padding))


def _crop(xpad, padding, hw):
    """The ``hw`` window of ``xpad`` below the top and right of the left padding."""
    ((top, _), (left, _)), (h, w) = padding, hw
    return xpad[:, :, top:top + h, left:left + w]


def conv2d_forward(x, w, b, stride, padding):
    n, o, ho, wo = convshape.conv_output_shape(x, w, stride, padding)
    kernel = w.shape[2:]
    cols = _im2col(_pad(x, padding), kernel, stride, (ho, wo))
    y = (w.reshape(o, -1) @ cols).reshape(n, o, ho, wo)
    if b is not None:
        y += b[:, None, None]
    return y, (cols, x.shape, w, b is not None, stride, padding)


def conv2d_backward(grad_y, ctx, input_grad=True):
    cols, x_shape, w, has_bias, stride, padding = ctx
    n, o, ho, wo = grad_y.shape
    g = grad_y.reshape(n, o, ho * wo)
    grad_w = np.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(w.shape)
    grad_b = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
    if not input_grad:
        return None, grad_w, grad_b
    padded = (x_shape[0], x_shape[1], x_shape[2] + sum(padding[0]), x_shape[3] + sum(padding[1]))
    grad_cols = w.reshape(o, -1).T @ g
    grad_x = _crop(_col2im(grad_cols, padded, w.shape[2:], stride, (ho, wo)), padding, x_shape[2:])
    return np.ascontiguousarray(grad_x), grad_w, grad_b


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding):
    """The adjoint of conv2d in its input: ``col2im(w_mat.T @ x)``, cropped by ``padding``
    (``output_padding`` lowers the bottom/right crop)."""
    n, cout, hout, wout = convshape.conv_transpose_output_shape(x, w, stride, padding, output_padding)
    _, cin, h, wd = x.shape
    kernel = w.shape[2:]
    cols = w.reshape(cin, -1).T @ x.reshape(n, cin, h * wd)
    padded = (n, cout, hout + sum(padding[0]), wout + sum(padding[1]))
    y = np.ascontiguousarray(_crop(_col2im(cols, padded, kernel, stride, (h, wd)), padding, (hout, wout)))
    if b is not None:
        y += b[:, None, None]
    return y, (x, w, b is not None, stride, padding)


def conv_transpose2d_backward(grad_y, ctx, input_grad=True):
    x, w, has_bias, stride, padding = ctx
    n, cin, h, wd = x.shape
    cols = _im2col(_pad(grad_y, padding), w.shape[2:], stride, (h, wd))  # rows past (h-1)s+k unread
    grad_x = (w.reshape(cin, -1) @ cols).reshape(x.shape) if input_grad else None
    grad_w = np.tensordot(x.reshape(n, cin, h * wd), cols, axes=([0, 2], [0, 2])).reshape(w.shape)
    grad_b = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
    return grad_x, grad_w, grad_b


def max_pool2d_forward(x, kernel, stride):
    """Window maxima and the flat plane index of each (first maximum in row-major window order)."""
    (n, c, ho, wo), (kh, kw), (sh, sw) = convshape.pool_output_shape(x, kernel, stride), kernel, stride
    h, w = x.shape[2:]
    windows = _im2col(x, (kh, kw), (sh, sw), (ho, wo)).reshape(n, c, kh * kw, ho, wo)
    arg = np.argmax(windows, axis=2)  # first occurrence of the maximum
    y = np.take_along_axis(windows, arg[:, :, None], axis=2)[:, :, 0]
    rows = np.arange(ho)[:, None] * sh + arg // kw
    cols = np.arange(wo)[None, :] * sw + arg % kw
    indices = (rows * w + cols).astype(np.int64)
    return (y, indices), (indices, x.shape)


def max_pool2d_backward(grad_y, ctx):
    indices, x_shape = ctx
    n, c, h, w = x_shape
    grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
    rows = np.repeat(np.arange(n * c), indices[0, 0].size)
    np.add.at(grad_x, (rows, indices.reshape(-1)), grad_y.reshape(-1))
    return (grad_x.reshape(x_shape),)


def max_unpool2d_forward(x, indices, output_size):
    (n, c), (h, w) = x.shape[:2], output_size
    flat = indices.reshape(n, c, -1)
    y = np.zeros((n, c, h * w), dtype=x.dtype)
    np.put_along_axis(y, flat, x.reshape(n, c, -1), axis=2)
    return y.reshape(n, c, h, w), (flat, x.shape)


def max_unpool2d_backward(grad_y, ctx):
    flat, x_shape = ctx
    g = grad_y.reshape(x_shape[0], x_shape[1], -1)
    return np.take_along_axis(g, flat, axis=2).reshape(x_shape), None


def linear_forward(x, w, b):
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(grad_y, ctx, input_grad=True):
    x, w, has_bias = ctx
    return (grad_y @ w if input_grad else None), grad_y.T @ x, (grad_y.sum(axis=0) if has_bias else None)


def reshape_forward(x, shape):
    return x.reshape(shape), x.shape


def reshape_backward(grad_y, x_shape):
    return (grad_y.reshape(x_shape),)

