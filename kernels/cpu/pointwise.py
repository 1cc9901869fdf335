"""Numba activations, softmax, batch norm and dropout.

Few jitted functions (cold compile time counts): one elementwise kernel and its
gradient for the activations, selected by an integer ``kind`` (the forward of
sigmoid is scipy's ``expit`` and of tanh NumPy's SIMD ``tanh``, several times
faster than Numba's scalar libm calls); one serial
softmax kernel pair with a ``log`` flag (its (N, K) inputs are small, and a
parallel kernel compiles 3x slower); batch norm as a forward and a backward kernel
parallel over channels, each channel reduced sequentially in float64 (fixed
order, so results are deterministic); one masked-scale kernel for dropout.

Small problems run on one thread (:func:`run`): waking a thread pool costs
microseconds on an idle machine and milliseconds on a busy one, more than the
work itself.  No kernel's result depends on the thread count.

Thread-pool waiting policy: see :mod:`nbclust` (set at ``import nbclust``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from scipy.special import expit

from nbclust.optable.pointwise import (
    SELU_ALPHA, SELU_SCALE, check_batch_norm, check_dropout, check_softmax,
)

SIGMOID, TANH, RELU, LEAKY_RELU, SELU = range(5)

SERIAL_BELOW = 1 << 18
"""Work (elements, or multiply-adds for the conv kernels) below which a parallel kernel runs on one thread."""


def run(kernel, work: int, *args):
    """``kernel(*args)``, on one thread when ``work < SERIAL_BELOW``."""
    if work >= SERIAL_BELOW:
        return kernel(*args)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def _real(a, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} expects float32 or float64 input, got {a.dtype}")
    return a


_CHUNK = 4096  # elements per parallel task of the elementwise kernels


@njit(cache=True, parallel=True)
def _activation(kind, x, slope, y):
    """y = act(x) for the activation ``kind`` (ReLU, leaky ReLU, SELU); the kind is tested
    once per chunk of ``_CHUNK`` elements, so each inner loop is branch-light and vectorisable."""
    n = x.size
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = t * _CHUNK, min(n, (t + 1) * _CHUNK)
        if kind == RELU:
            for i in range(lo, hi):
                v = x[i]
                y[i] = v if v > 0 else 0
        elif kind == LEAKY_RELU:
            for i in range(lo, hi):
                v = x[i]
                y[i] = v if v > 0 else slope * v
        else:
            for i in range(lo, hi):
                v = x[i]
                y[i] = SELU_SCALE * v if v > 0 else SELU_SCALE * SELU_ALPHA * math.expm1(v)


@njit(cache=True, parallel=True)
def _activation_grad(kind, g, x, y, slope, out):
    n = g.size
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = t * _CHUNK, min(n, (t + 1) * _CHUNK)
        if kind == SIGMOID:
            for i in range(lo, hi):
                out[i] = g[i] * y[i] * (1 - y[i])
        elif kind == TANH:
            for i in range(lo, hi):
                out[i] = g[i] * (1 - y[i] * y[i])
        elif kind == RELU:
            for i in range(lo, hi):
                out[i] = g[i] if x[i] > 0 else 0
        elif kind == LEAKY_RELU:
            for i in range(lo, hi):
                out[i] = g[i] if x[i] > 0 else slope * g[i]
        else:  # SELU: for x <= 0, dy/dx = scale * alpha * exp(x) = y + scale * alpha
            for i in range(lo, hi):
                out[i] = g[i] * SELU_SCALE if x[i] > 0 else g[i] * (y[i] + SELU_SCALE * SELU_ALPHA)


def _activation_op(kind: int, name: str):
    def forward(x, slope=0.01):
        x = _real(x, name)
        y = np.empty_like(x)
        if kind == TANH:
            np.tanh(x, out=y)
        elif kind == SIGMOID:  # scipy's expit: overflow-free, full relative precision of tiny outputs
            expit(x, out=y)  # (BCE takes their log), and 2x faster than exp + where + divide here
        else:
            run(_activation, x.size, kind, x.reshape(-1), float(slope), y.reshape(-1))
        return y, (x, y, float(slope))

    def backward(grad_y, ctx):
        x, y, slope = ctx
        g = np.ascontiguousarray(grad_y, dtype=y.dtype)
        out = np.empty_like(y)
        run(_activation_grad, g.size, kind, g.reshape(-1), x.reshape(-1), y.reshape(-1), slope, out.reshape(-1))
        return (out,)

    return forward, backward


def _no_slope(op):
    """The op without the ``slope`` attr, which only leaky_relu has."""
    forward, backward = op
    return (lambda x: forward(x)), backward


@njit(cache=True)
def _softmax(x, log, y):
    n, k = x.shape
    for i in range(n):
        m = x[i, 0]
        for j in range(1, k):
            m = max(m, x[i, j])
        s = 0.0
        for j in range(k):
            s += math.exp(x[i, j] - m)
        if log:
            shift = m + math.log(s)
            for j in range(k):
                y[i, j] = x[i, j] - shift
        else:
            for j in range(k):
                y[i, j] = math.exp(x[i, j] - m) / s


@njit(cache=True)
def _softmax_grad(g, y, log, out):
    n, k = y.shape
    for i in range(n):
        s = 0.0
        for j in range(k):
            s += g[i, j] if log else g[i, j] * y[i, j]
        for j in range(k):
            if log:
                out[i, j] = g[i, j] - math.exp(y[i, j]) * s
            else:
                out[i, j] = y[i, j] * (g[i, j] - s)


def _softmax_op(log: bool, name: str):
    def forward(x):
        x = _real(x, name)
        check_softmax(x, name)
        y = np.empty_like(x)
        _softmax(x, log, y)
        return y, y

    def backward(grad_y, y):
        out = np.empty_like(y)
        _softmax_grad(np.ascontiguousarray(grad_y, dtype=y.dtype), y, log, out)
        return (out,)

    return forward, backward


@njit(cache=True, parallel=True)
def _bn_forward(x, gamma, beta, mean, var, training, eps, y, invstd):
    """x, y: (N, C, L).  In training fills mean, var (biased) per channel; else reads them."""
    n, c, l = x.shape
    for ch in prange(c):
        if training:
            s = 0.0
            for i in range(n):
                for j in range(l):
                    s += x[i, ch, j]
            mu = s / (n * l)
            q = 0.0
            for i in range(n):
                for j in range(l):
                    d = x[i, ch, j] - mu
                    q += d * d
            mean[ch] = mu
            var[ch] = q / (n * l)
        inv = 1.0 / math.sqrt(var[ch] + eps)
        invstd[ch] = inv
        a = gamma[ch] * inv
        for i in range(n):
            for j in range(l):
                y[i, ch, j] = (x[i, ch, j] - mean[ch]) * a + beta[ch]


@njit(cache=True, parallel=True)
def _bn_backward(g, x, mean, invstd, gamma, training, dx, dgamma, dbeta):
    n, c, l = x.shape
    for ch in prange(c):
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            for j in range(l):
                sg += g[i, ch, j]
                sgx += g[i, ch, j] * (x[i, ch, j] - mean[ch]) * invstd[ch]
        dgamma[ch] = sgx
        dbeta[ch] = sg
        mg = sg / (n * l) if training else 0.0
        mgx = sgx / (n * l) if training else 0.0
        a = gamma[ch] * invstd[ch]
        for i in range(n):
            for j in range(l):
                xh = (x[i, ch, j] - mean[ch]) * invstd[ch]
                dx[i, ch, j] = a * (g[i, ch, j] - mg - xh * mgx)


def _as_ncl(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training=False, momentum=0.1, eps=1e-5):
    x = _real(x, "batch_norm")
    n = check_batch_norm(x, gamma, beta, running_mean, running_var, training, eps)
    c = x.shape[1]
    if training:
        mean, var = np.empty(c), np.empty(c)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    g64, b64 = gamma.astype(np.float64), beta.astype(np.float64)
    y, invstd = np.empty_like(x), np.empty(c)
    run(_bn_forward, x.size, _as_ncl(x), g64, b64, mean, var, bool(training), float(eps), _as_ncl(y), invstd)
    if training:
        new_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_var = (1.0 - momentum) * running_var + momentum * var * (n / (n - 1))
    else:
        new_mean, new_var = running_mean, running_var
    aux = (new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype))  # copies
    return (y, *aux), (x, mean, invstd, g64, gamma.dtype, bool(training))


def batch_norm_backward(grad_y, ctx):
    x, mean, invstd, g64, param_dtype, training = ctx
    g = np.ascontiguousarray(grad_y, dtype=x.dtype)
    c = x.shape[1]
    dx, dgamma, dbeta = np.empty_like(x), np.empty(c), np.empty(c)
    run(_bn_backward, x.size, _as_ncl(g), _as_ncl(x), mean, invstd, g64, training, _as_ncl(dx), dgamma, dbeta)
    return dx, dgamma.astype(param_dtype), dbeta.astype(param_dtype), None, None


@njit(cache=True, parallel=True)
def _masked_scale(a, mask, scale, out):
    for i in prange(a.size):
        out[i] = a[i] * mask[i] * scale


def dropout_forward(x, mask, p=0.5):
    x = _real(x, "dropout")
    check_dropout(x, mask, p)
    mask = np.ascontiguousarray(mask)
    scale = 1.0 / (1.0 - p)
    y = np.empty_like(x)
    run(_masked_scale, x.size, x.reshape(-1), mask.reshape(-1), scale, y.reshape(-1))
    return y, (mask, scale)


def dropout_backward(grad_y, ctx):
    mask, scale = ctx
    g = np.ascontiguousarray(grad_y)
    out = np.empty_like(g)
    run(_masked_scale, g.size, g.reshape(-1), mask.reshape(-1), scale, out.reshape(-1))
    return out, None


OPS = {
    "sigmoid": _no_slope(_activation_op(SIGMOID, "sigmoid")),
    "tanh": _no_slope(_activation_op(TANH, "tanh")),
    "relu": _no_slope(_activation_op(RELU, "relu")),
    "leaky_relu": _activation_op(LEAKY_RELU, "leaky_relu"),
    "selu": _no_slope(_activation_op(SELU, "selu")),
    "softmax": _softmax_op(False, "softmax"),
    "log_softmax": _softmax_op(True, "log_softmax"),
    "batch_norm": (batch_norm_forward, batch_norm_backward),
    "dropout": (dropout_forward, dropout_backward),
}
