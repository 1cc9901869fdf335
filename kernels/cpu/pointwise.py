"""Numba activations, softmax, batch norm and dropout.

Few jitted functions (cold compile time counts): for the activations, a serial
elementwise kernel and its gradient, selected by an integer ``kind`` (the
forward of tanh is NumPy's SIMD ``tanh``), and one parallel kernel running
either over chunks; one serial softmax kernel pair with a ``log``
flag (its (N, K) inputs are small, and a parallel kernel compiles 3x slower);
batch norm as a forward and a backward kernel parallel over channels, each
channel reduced by one thread in float64 (a fixed order, so results are
deterministic); one masked-scale kernel for dropout.

Sigmoid and SELU need ``exp`` of a non-positive argument.  Numba has no vector
math library here, so ``math.exp`` is a scalar libm call per element; for
float32 the kernels use :func:`_exp_f32` instead, a branch-free polynomial
that the compiler vectorises (about 1 ulp); float64 keeps libm (NumPy's
results within 1e-12).

Small problems run on one thread (:func:`._runtime.run`): waking a thread pool costs
microseconds on an idle machine and milliseconds on a busy one, more than the
work itself.  The activations call their serial chunk kernel directly instead
(no thread-count switch, no parallel launch: 4 us instead of 10 us on small
inputs).  No kernel's result depends on the thread count.

Thread-pool waiting policy: see :mod:`nbclust` (set at ``import nbclust``).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

from nbclust.engine.optable.pointwise import SELU_ALPHA, SELU_SCALE
from nbclust.kernels.cpu._runtime import SERIAL_BELOW, run

SIGMOID, TANH, RELU, LEAKY_RELU, SELU = range(5)


# --- vectorisable float32 exp ------------------------------------------------

@intrinsic
def _bits_f32(typingctx, f):
    """The IEEE-754 bits of a float32, as an int32."""
    if f != types.float32:
        return None
    return types.int32(f), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@intrinsic
def _f32_from_bits(typingctx, i):
    """The float32 whose IEEE-754 bits are the low 32 bits of the integer ``i``."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        bits = args[0] if i.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(i), codegen


_f = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _f(1.44269504088896341), _f(0.693359375), _f(-2.12194440e-4)
_ROUND = _f(1.5 * 2**23)  # t = v*log2(e) + _ROUND rounds to the integer k in t's low mantissa bits
_EXP_P = tuple(_f(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))  # Cephes expf
_ONE, _ZERO, _EXP_MIN, _EXPM1_MIN = _f(1), _f(0), _f(-104), _f(-30)
_SHIFT = _ROUND + _f(127)  # then 2^k comes out of the bits, normal for k >= -126
_SHIFT_32 = _ROUND + _f(127 + 32)  # then 2^(k + 32) does, normal for every k >= -150
_TWO_M32 = _f(2.0**-32)


@njit(cache=True)
def _exp_f32(v, shift):
    """(2^(k + shift - _SHIFT), e^r - 1) with v = k ln2 + r, |r| <= ln2/2, for float32 v <= 0.

    Cody-Waite reduction (ln2 = _LN2_HI + _LN2_LO, k * _LN2_HI exact), Cephes' degree-7
    polynomial for e^r - 1 on |r| <= ln2/2 (1 ulp), and the power of two built from the exponent
    bits: t = v log2(e) + shift rounds to an integer whose low bits are k + shift - _ROUND.
    NaN passes through r.  No branch, no call: the loops that inline it vectorise.
    """
    t = v * _LOG2E + shift
    k = t - shift
    r = (v - k * _LN2_HI) - k * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    q = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r
    return _f32_from_bits(_bits_f32(t) << 23), q


def _sigmoid(v):
    """1 / (1 + e^-v), with full relative precision for very negative v (whose log BCE takes)."""


@overload(_sigmoid)
def _sigmoid_impl(v):
    if v == types.float32:
        def sigmoid_f32(v):  # e = e^-|v| in [0, 1]: no overflow; tiny outputs keep their digits
            a = -abs(v)
            s, q = _exp_f32(a if not a < _EXP_MIN else _EXP_MIN, _SHIFT_32)
            e = (s * (q + _ONE)) * _TWO_M32
            return (_ONE if v >= _ZERO else e) / (_ONE + e)
        return sigmoid_f32

    def sigmoid_f64(v):
        e = math.exp(-abs(v))
        return 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
    return sigmoid_f64


def _expm1_neg(v):
    """e^v - 1 for v <= 0 (or NaN), with full relative precision near 0."""


@overload(_expm1_neg)
def _expm1_neg_impl(v):
    if v == types.float32:
        def expm1_f32(v):  # e^v - 1 = 2^k (e^r - 1) + (2^k - 1): exactly e^r - 1 when k = 0
            s, q = _exp_f32(v if not v < _EXPM1_MIN else _EXPM1_MIN, _SHIFT)
            return s * q + (s - _ONE)
        return expm1_f32
    return lambda v: math.expm1(v)


_CHUNK = 4096  # elements per parallel task of the elementwise kernels
_MEMORY_BOUND_SERIAL_BELOW = 1 << 19
"""Size below which ReLU and leaky ReLU run serially: they are memory-bound, a second thread gains
little and waking it costs more (measured against torch at 0.26M-0.3M elements)."""


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _activation_chunk(kind, x, slope, y):
    """y = act(x) for the activation ``kind`` (sigmoid, ReLU, leaky ReLU, SELU), serially.

    Branch-free loops that vectorise: the NumPy error model drops the ZeroDivisionError check
    of float division; contraction to fused multiply-adds halves the polynomials' cost.
    """
    if kind == SIGMOID:
        for i in range(x.size):
            y[i] = _sigmoid(x[i])
    elif kind == RELU:
        for i in range(x.size):
            v = x[i]
            y[i] = v if v > 0 else 0
    elif kind == LEAKY_RELU:
        for i in range(x.size):
            v = x[i]
            y[i] = v if v > 0 else slope * v
    else:
        for i in range(x.size):
            v = x[i]
            y[i] = SELU_SCALE * v if v > 0 else SELU_SCALE * SELU_ALPHA * _expm1_neg(v)


@njit(cache=True)
def _activation_grad_chunk(kind, g, x, y, slope, out):
    if kind == SIGMOID:
        for i in range(g.size):
            out[i] = g[i] * y[i] * (1 - y[i])
    elif kind == TANH:
        for i in range(g.size):
            out[i] = g[i] * (1 - y[i] * y[i])
    elif kind == RELU:
        for i in range(g.size):
            out[i] = g[i] if x[i] > 0 else 0
    elif kind == LEAKY_RELU:
        for i in range(g.size):
            out[i] = g[i] if x[i] > 0 else slope * g[i]
    else:  # SELU: for x <= 0, dy/dx = scale * alpha * exp(x) = y + scale * alpha
        for i in range(g.size):
            out[i] = g[i] * SELU_SCALE if x[i] > 0 else g[i] * (y[i] + SELU_SCALE * SELU_ALPHA)


@njit(cache=True, parallel=True)
def _activation(kind, grad, g, x, y, slope, out):
    """:func:`_activation_chunk` (``grad`` False: out = act(x); ``g``, ``y`` unused) or
    :func:`_activation_grad_chunk` (``grad`` True) over chunks of ``_CHUNK`` elements in parallel;
    one parallel kernel for both (cold compile time counts).  The chunks are slices (their loops
    start at 0: no negative-index checks, which stop vectorisation), and the parallel body is
    calls only (the parallel compiler is slow on large bodies)."""
    n = out.size
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = t * _CHUNK, min(n, (t + 1) * _CHUNK)
        if grad:
            _activation_grad_chunk(kind, g[lo:hi], x[lo:hi], y[lo:hi], slope, out[lo:hi])
        else:
            _activation_chunk(kind, x[lo:hi], slope, out[lo:hi])


def _activation_op(kind: int):
    def forward(x, slope=0.0):  # slope: leaky_relu's attribute (the other activations have none)
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        if kind == TANH:
            np.tanh(x, out=y)
        else:
            flat = x.reshape(-1)
            if x.size < (SERIAL_BELOW if kind in (SIGMOID, SELU) else _MEMORY_BOUND_SERIAL_BELOW):
                _activation_chunk(kind, flat, float(slope), y.reshape(-1))
            else:
                _activation(kind, False, flat, flat, flat, float(slope), y.reshape(-1))
        return y, (x, y, float(slope))

    def backward(grad_y, ctx):
        x, y, slope = ctx
        g = np.ascontiguousarray(grad_y, dtype=y.dtype)
        out = np.empty_like(y)
        args = (kind, g.reshape(-1), x.reshape(-1), y.reshape(-1), slope, out.reshape(-1))
        if g.size < SERIAL_BELOW:
            _activation_grad_chunk(*args)
        else:
            _activation(args[0], True, *args[1:])
        return (out,)

    return forward, backward


sigmoid_forward, sigmoid_backward = _activation_op(SIGMOID)
tanh_forward, tanh_backward = _activation_op(TANH)
relu_forward, relu_backward = _activation_op(RELU)
leaky_relu_forward, leaky_relu_backward = _activation_op(LEAKY_RELU)
selu_forward, selu_backward = _activation_op(SELU)


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


def _softmax_op(log: bool):
    def forward(x):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        _softmax(x, log, y)
        return y, y

    def backward(grad_y, y):
        out = np.empty_like(y)
        _softmax_grad(np.ascontiguousarray(grad_y, dtype=y.dtype), y, log, out)
        return (out,)

    return forward, backward


softmax_forward, softmax_backward = _softmax_op(False)
log_softmax_forward, log_softmax_backward = _softmax_op(True)


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _bn_forward(x, gamma, beta, mean, var, training, eps, y, invstd):
    """x, y: (N, C, L).  In training fills mean, var (biased) per channel; else reads them.

    One thread per channel, so the sums' order does not depend on the thread count; within a
    row of L values they are reassociated (several vector accumulators, a fixed order for the
    compiled kernel), 2-3x faster than one float64 accumulator's chain of dependent adds.
    """
    n, c, l = x.shape
    for ch in prange(c):
        if training:
            s = 0.0
            for i in range(n):
                row = x[i, ch]
                for j in range(l):
                    s += row[j]
            mu = s / (n * l)
            q = 0.0
            for i in range(n):
                row = x[i, ch]
                for j in range(l):
                    d = row[j] - mu
                    q += d * d
            mean[ch] = mu
            var[ch] = q / (n * l)
        inv = 1.0 / math.sqrt(var[ch] + eps)
        invstd[ch] = inv
        a = gamma[ch] * inv
        mu, b = mean[ch], beta[ch]
        for i in range(n):
            row, out = x[i, ch], y[i, ch]
            for j in range(l):
                out[j] = (row[j] - mu) * a + b


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _bn_backward(g, x, mean, invstd, gamma, training, dx, dgamma, dbeta):
    """dgamma = sum g * xhat, dbeta = sum g, dx = gamma * invstd * (g - mean(g) - xhat * mean(g xhat))
    (the means only in training), xhat = (x - mean) * invstd; summed as in :func:`_bn_forward`."""
    n, c, l = x.shape
    for ch in prange(c):
        mu, inv = mean[ch], invstd[ch]
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            grow, xrow = g[i, ch], x[i, ch]
            for j in range(l):
                sg += grow[j]
                sgx += grow[j] * (xrow[j] - mu)
        sgx *= inv
        dgamma[ch] = sgx
        dbeta[ch] = sg
        mg = sg / (n * l) if training else 0.0
        mgx = sgx / (n * l) if training else 0.0
        a = gamma[ch] * inv
        k, shift = a * mgx * inv, a * mg  # dx = a * g - k * (x - mean) - a * mg
        for i in range(n):
            grow, xrow, out = g[i, ch], x[i, ch], dx[i, ch]
            for j in range(l):
                out[j] = a * grow[j] - k * (xrow[j] - mu) - shift


def _as_ncl(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    x = np.ascontiguousarray(x)
    c = x.shape[1]
    n = x.size // c  # values per channel
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


def dropout_forward(x, mask, p):
    x = np.ascontiguousarray(x)
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

