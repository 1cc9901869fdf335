"""Reference activations, softmax, batch norm and dropout.

Array-module generic (NumPy or CuPy, taken from the inputs): the CuPy
backend reuses softmax, log_softmax, batch_norm and dropout from here.
"""

from __future__ import annotations

from nbclust.engine.optable.pointwise import SELU_ALPHA, SELU_SCALE
from nbclust.reference._runtime import array_module


def sigmoid_forward(x):
    xp = array_module(x)
    y = xp.empty_like(x)
    pos = x >= 0
    y[pos] = 1.0 / (1.0 + xp.exp(-x[pos]))
    ex = xp.exp(x[~pos])
    y[~pos] = ex / (1.0 + ex)
    return y, y


def sigmoid_backward(grad_y, y):
    return (grad_y * y * (1.0 - y),)


def tanh_forward(x):
    xp = array_module(x)
    y = xp.tanh(x)
    return y, y


def tanh_backward(grad_y, y):
    return (grad_y * (1.0 - y * y),)


def relu_forward(x):
    xp = array_module(x)
    pos = x > 0
    return xp.where(pos, x, 0.0).astype(x.dtype, copy=False), pos


def relu_backward(grad_y, pos):
    xp = array_module(grad_y)
    return (xp.where(pos, grad_y, 0.0).astype(grad_y.dtype, copy=False),)


def leaky_relu_forward(x, slope):
    xp = array_module(x)
    pos = x > 0
    return xp.where(pos, x, slope * x).astype(x.dtype, copy=False), (pos, slope)


def leaky_relu_backward(grad_y, ctx):
    xp = array_module(grad_y)
    pos, slope = ctx
    return (xp.where(pos, grad_y, slope * grad_y).astype(grad_y.dtype, copy=False),)


def selu_forward(x):
    xp = array_module(x)
    y = SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0.0)))
    return y.astype(x.dtype, copy=False), x


def selu_backward(grad_y, x):
    xp = array_module(grad_y)
    slope = xp.where(x > 0, SELU_SCALE, SELU_SCALE * SELU_ALPHA * xp.exp(xp.minimum(x, 0.0)))
    return ((grad_y * slope).astype(grad_y.dtype, copy=False),)


def softmax_forward(x):
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    return y, y


def softmax_backward(grad_y, y):
    xp = array_module(grad_y)
    return (y * (grad_y - xp.sum(grad_y * y, axis=1, keepdims=True)),)


def log_softmax_forward(x):
    xp = array_module(x)
    shifted = x - x.max(axis=1, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    return y, y


def log_softmax_backward(grad_y, y):
    xp = array_module(grad_y)
    return (grad_y - xp.exp(y) * xp.sum(grad_y, axis=1, keepdims=True),)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Per-channel normalisation over (N,) or (N, H, W).

    Training normalises with the batch mean and biased variance and updates
    the running variance with the unbiased one (torch's rule); eval mode uses
    the running statistics.  Returns ``(y, new_running_mean, new_running_var)``.
    """
    xp = array_module(x)
    n = x.size // x.shape[1]  # values per channel
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcast a per-channel vector against x
    if training:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
        new_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_var = (1.0 - momentum) * running_var + momentum * var * (n / (n - 1))
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean.copy(), running_var.copy()
    invstd = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    y = gamma.reshape(shape) * xhat + beta.reshape(shape)
    ctx = (xhat, gamma, invstd, axes, shape, training)
    return (y.astype(x.dtype, copy=False), new_mean.astype(running_mean.dtype, copy=False),
            new_var.astype(running_var.dtype, copy=False)), ctx


def batch_norm_backward(grad_y, ctx):
    """``dx = gamma invstd (g - mean(g) - xhat mean(g xhat))`` in training (batch statistics), ``gamma invstd g`` in eval."""
    xhat, gamma, invstd, axes, shape, training = ctx
    dbeta = grad_y.sum(axis=axes)
    dgamma = (grad_y * xhat).sum(axis=axes)
    g = grad_y
    if training:
        g = grad_y - grad_y.mean(axis=axes, keepdims=True) - xhat * (grad_y * xhat).mean(axis=axes, keepdims=True)
    dx = (gamma * invstd).reshape(shape) * g
    return (dx.astype(grad_y.dtype, copy=False), dgamma.astype(gamma.dtype, copy=False),
            dbeta.astype(gamma.dtype, copy=False), None, None)


def dropout_forward(x, mask, p):
    """``y = x * mask / (1 - p)``; the 0/1 mask is drawn by the layer, so every backend sees the same one."""
    return (x * mask / (1.0 - p)).astype(x.dtype, copy=False), (mask, p)


def dropout_backward(grad_y, ctx):
    mask, p = ctx
    return (grad_y * mask / (1.0 - p)).astype(grad_y.dtype, copy=False), None

