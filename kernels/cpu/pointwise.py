"""Numba activations, softmax, batch norm, dropout and reshapes."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _sigmoid(x, y):
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            y[i] = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)
            y[i] = e / (1.0 + e)


@njit(cache=True, parallel=True)
def _sigmoid_grad(g, y, out):
    for i in prange(g.size):
        out[i] = g[i] * y[i] * (1.0 - y[i])


def sigmoid_forward(x):
    y = np.empty_like(x)
    _sigmoid(x.reshape(-1), y.reshape(-1))
    return y, y


def sigmoid_backward(grad_y, y):
    out = np.empty_like(y)
    _sigmoid_grad(np.ascontiguousarray(grad_y).reshape(-1), y.reshape(-1), out.reshape(-1))
    return (out,)


OPS = {
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}
