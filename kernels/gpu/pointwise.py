"""CuPy activations (fused ElementwiseKernels), softmax, batch norm and dropout.

Each activation is one ElementwiseKernel forward and one backward (templated
on ``T``: float32 stays float32, float64 stays float64).  Softmax, batch norm
and dropout are array expressions whose reductions (CuPy/CUB sums over fixed
axes) have a fixed order, so every op here is deterministic.
"""

from __future__ import annotations

from nbclust.kernels.gpu._xp import xp
from nbclust.optable.pointwise import (
    SELU_ALPHA, SELU_SCALE, check_batch_norm, check_dropout, check_softmax,
)


def _kernel(name: str, params: str, expr: str):
    """``out = expr`` elementwise, ``T`` being the floating type of the inputs."""
    return xp.ElementwiseKernel(params, "T out", f"out = {expr};", f"nbclust_{name}")


_SCALE, _ALPHA = f"(T){SELU_SCALE!r}", f"(T){SELU_ALPHA!r}"
_K = {
    "sigmoid": _kernel("sigmoid", "T x", "x >= (T)0 ? (T)1 / ((T)1 + exp(-x)) : exp(x) / ((T)1 + exp(x))"),
    "sigmoid_grad": _kernel("sigmoid_grad", "T g, T y", "g * y * ((T)1 - y)"),
    "tanh": _kernel("tanh", "T x", "tanh(x)"),
    "tanh_grad": _kernel("tanh_grad", "T g, T y", "g * ((T)1 - y * y)"),
    "relu": _kernel("relu", "T x", "x > (T)0 ? x : (T)0"),
    "relu_grad": _kernel("relu_grad", "T g, T x", "x > (T)0 ? g : (T)0"),
    "leaky_relu": _kernel("leaky_relu", "T x, T slope", "x > (T)0 ? x : slope * x"),
    "leaky_relu_grad": _kernel("leaky_relu_grad", "T g, T x, T slope", "x > (T)0 ? g : slope * g"),
    "selu": _kernel("selu", "T x", f"{_SCALE} * (x > (T)0 ? x : {_ALPHA} * expm1(x))"),
    "selu_grad": _kernel("selu_grad", "T g, T x", f"g * (x > (T)0 ? {_SCALE} : {_SCALE} * {_ALPHA} * exp(x))"),
}
"""Kernel bodies, one C expression each (also checked by NVRTC in tests/test_gpu.py)."""


def sigmoid_forward(x):
    y = _K["sigmoid"](x)
    return y, y


def sigmoid_backward(grad_y, y):
    return (_K["sigmoid_grad"](grad_y, y),)


def tanh_forward(x):
    y = _K["tanh"](x)
    return y, y


def tanh_backward(grad_y, y):
    return (_K["tanh_grad"](grad_y, y),)


def relu_forward(x):
    return _K["relu"](x), x


def relu_backward(grad_y, x):
    return (_K["relu_grad"](grad_y, x),)


def leaky_relu_forward(x, slope=0.01):
    return _K["leaky_relu"](x, x.dtype.type(slope)), (x, slope)


def leaky_relu_backward(grad_y, ctx):
    x, slope = ctx
    return (_K["leaky_relu_grad"](grad_y, x, x.dtype.type(slope)),)


def selu_forward(x):
    return _K["selu"](x), x


def selu_backward(grad_y, x):
    return (_K["selu_grad"](grad_y, x),)


def softmax_forward(x):
    check_softmax(x, "softmax")
    e = xp.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    return y, y


def softmax_backward(grad_y, y):
    return (y * (grad_y - xp.sum(grad_y * y, axis=1, keepdims=True)),)


def log_softmax_forward(x):
    check_softmax(x, "log_softmax")
    shifted = x - x.max(axis=1, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    return y, y


def log_softmax_backward(grad_y, y):
    return (grad_y - xp.exp(y) * xp.sum(grad_y, axis=1, keepdims=True),)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training=False, momentum=0.1, eps=1e-5):
    """Per-channel normalisation over (N,) or (N, H, W); see the reference for the formulas.

    Training normalises with the batch mean and biased variance and updates
    the running variance with the unbiased one (torch's rule); eval mode uses
    the running statistics.  Returns ``(y, new_running_mean, new_running_var)``.
    """
    n = check_batch_norm(x, gamma, beta, running_mean, running_var, training, eps)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
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


def dropout_forward(x, mask, p=0.5):
    """``y = x * mask / (1 - p)``; the 0/1 mask is drawn by the layer, so every backend sees the same one."""
    check_dropout(x, mask, p)
    scaled = mask.astype(x.dtype, copy=False) * x.dtype.type(1.0 / (1.0 - p))
    return x * scaled, scaled


def dropout_backward(grad_y, scaled):
    return grad_y * scaled, None


OPS = {
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "selu": (selu_forward, selu_backward),
    "softmax": (softmax_forward, softmax_backward),
    "log_softmax": (log_softmax_forward, log_softmax_backward),
    "batch_norm": (batch_norm_forward, batch_norm_backward),
    "dropout": (dropout_forward, dropout_backward),
}
