"""CuPy activations (fused ElementwiseKernels); softmax, batch norm and dropout from the reference.

Each activation is one ElementwiseKernel forward and one backward (templated
on ``T``: float32 stays float32, float64 stays float64).  Softmax, log_softmax,
batch norm and dropout are the array-module generic functions of
:mod:`nbclust.reference.pointwise` run on CuPy arrays: their reductions
(CuPy/CUB sums over fixed axes) have a fixed order, so every op here is deterministic.
"""

from __future__ import annotations

from nbclust.engine.optable.pointwise import SELU_ALPHA, SELU_SCALE
from nbclust.kernels.gpu._runtime import xp


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


def leaky_relu_forward(x, slope):
    return _K["leaky_relu"](x, x.dtype.type(slope)), (x, slope)


def leaky_relu_backward(grad_y, ctx):
    x, slope = ctx
    return (_K["leaky_relu_grad"](grad_y, x, x.dtype.type(slope)),)


def selu_forward(x):
    return _K["selu"](x), x


def selu_backward(grad_y, x):
    return (_K["selu_grad"](grad_y, x),)

