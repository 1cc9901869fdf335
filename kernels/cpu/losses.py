"""Numba losses and clustering terms (see nbclust.engine.optable for the calling convention).

Formulas and gradient derivations are in ``nbclust.reference.losses``.  All
accumulation is in float64 whatever the input dtype, and every reduction is
deterministic: loops write per-block or per-row partial results, which are then
added in a fixed order.  The kernels are serial: their inputs are batch-sized
(a few hundred thousand elements at most), and parallel Numba kernels cost
3-4x more compile time than they would save here.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nbclust.engine.optable.clustering import check_rank

_BLOCK = 4096
# kinds of _elementwise_sum / _elementwise_grad (a, b: flat arrays)
_SQDIFF = 0  # (a - b)^2
_SQ = 1  # a^2
_BCE = 2  # -(b log p + (1 - b) log(1 - p)), p = clamp(a, eps, 1 - eps)
_KL = 3  # a log(a / b), 0 log 0 = 0 (a: target, b: pred)
_KL_LOG = 4  # a log a - a b (b: log of the prediction)
_BCE_LOGITS = 5  # max(a, 0) - a b + log1p(exp(-|a|)) (a: logits, b: target), no clamp


@njit(cache=True)
def _elementwise_sum(kind, a, b, eps):
    n = a.size
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    partial = np.zeros(n_blocks)
    for blk in range(n_blocks):
        acc = 0.0
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            x = float(a[i])
            y = float(b[i])
            if kind == _SQDIFF:
                acc += (x - y) * (x - y)
            elif kind == _SQ:
                acc += x * x
            elif kind == _BCE:
                p = min(max(x, eps), 1.0 - eps)
                acc -= y * math.log(p) + (1.0 - y) * math.log1p(-p)
            elif kind == _BCE_LOGITS:
                acc += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            elif x != 0.0:  # 0 log 0 = 0
                acc += x * (math.log(x) - (math.log(y) if kind == _KL else y))
        partial[blk] = acc
    total = 0.0
    for blk in range(n_blocks):
        total += partial[blk]
    return total


@njit(cache=True)
def _elementwise_grad(kind, a, b, eps, scale, out):
    """out = scale * d(term)/da (for _KL: d/db, the prediction's gradient)."""
    for i in range(a.size):
        x = float(a[i])
        y = float(b[i])
        if kind == _SQDIFF:
            g = 2.0 * (x - y)
        elif kind == _SQ:
            g = 2.0 * x
        elif kind == _BCE:
            g = (x - y) / (x * (1.0 - x)) if eps <= x <= 1.0 - eps else 0.0
        elif kind == _BCE_LOGITS:
            e = math.exp(-abs(x))  # sigmoid(x) - y, stable for any |x|
            g = (1.0 if x >= 0.0 else e) / (1.0 + e) - y
        else:
            g = -x / y
        out[i] = scale * g


@njit(cache=True)
def _soft_ce(x, q, grad):
    """Per-row -sum_k q_ik log_softmax(x)_ik; grad (float64) <- softmax * sum_k q_ik - q."""
    n, k = x.shape
    rows = np.empty(n)
    for i in range(n):
        m = -np.inf
        for j in range(k):
            m = max(m, float(x[i, j]))
        s = 0.0
        for j in range(k):
            s += math.exp(float(x[i, j]) - m)
        log_s = math.log(s)
        acc = 0.0
        qs = 0.0
        for j in range(k):
            qs += float(q[i, j])
            acc -= float(q[i, j]) * ((float(x[i, j]) - m) - log_s)
        for j in range(k):
            grad[i, j] = math.exp((float(x[i, j]) - m) - log_s) * qs - float(q[i, j])
        rows[i] = acc
    return rows


@njit(cache=True)
def _student_log(z, mu, v, u, logs):
    """u_ij = 1 + ||z_i - mu_j||^2 / v and log s_ij (DBC eq 1), both float64 (N, K)."""
    n, d = z.shape
    k = mu.shape[0]
    for i in range(n):
        m = -np.inf
        for j in range(k):
            d2 = 0.0
            for c in range(d):
                diff = float(z[i, c]) - float(mu[j, c])
                d2 += diff * diff
            u[i, j] = 1.0 + d2 / v
            logs[i, j] = -(v + 1.0) / 2.0 * math.log(u[i, j])
            m = max(m, logs[i, j])
        s = 0.0
        for j in range(k):
            s += math.exp(logs[i, j] - m)
        log_s = math.log(s)
        for j in range(k):
            logs[i, j] = (logs[i, j] - m) - log_s  # subtract m first: exact for large |log q|


@njit(cache=True)
def _student_grads(z, mu, c, gz, gmu):
    """gz_i = sum_j c_ij (z_i - mu_j), gmu_j = sum_i c_ij (mu_j - z_i) (gather form)."""
    n, d = z.shape
    k = mu.shape[0]
    for i in range(n):
        for col in range(d):
            acc = 0.0
            for j in range(k):
                acc += c[i, j] * (float(z[i, col]) - float(mu[j, col]))
            gz[i, col] = acc
    for j in range(k):
        for col in range(d):
            acc = 0.0
            for i in range(n):
                acc += c[i, j] * (float(mu[j, col]) - float(z[i, col]))
            gmu[j, col] = acc


@njit(cache=True)
def _residual(x, centers, labels, resid):
    """resid (float64) <- x_n - centers[labels_n]; returns the rows' squared norms."""
    n, d = x.shape
    rows = np.empty(n)
    for i in range(n):
        acc = 0.0
        for c in range(d):
            r = float(x[i, c]) - float(centers[labels[i], c])
            resid[i, c] = r
            acc += r * r
        rows[i] = acc
    return rows


@njit(cache=True)
def _segment_sum(x, labels, k):
    """Per-label sums of the rows of x (float64, serial so deterministic) and counts."""
    sums = np.zeros((k, x.shape[1]))
    counts = np.zeros(k, np.int64)
    for i in range(x.shape[0]):
        counts[labels[i]] += 1
        for c in range(x.shape[1]):
            sums[labels[i], c] += x[i, c]
    return sums, counts


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _loss(value, like):
    return np.asarray(value, dtype=like.dtype)


def _scalar(grad_out) -> float:
    return float(np.asarray(grad_out).reshape(-1)[0])


def _labels(labels):
    return np.ascontiguousarray(labels, dtype=np.int64)


# ---------------------------------------------------------------- mse, bce, kl, cross-entropy


def mse_forward(pred, target):
    a, b = _flat(pred), _flat(target)
    return _loss(_elementwise_sum(_SQDIFF, a, b, 0.0) / a.size, pred), (a, b, pred.shape)


def mse_backward(grad_out, ctx):
    a, b, shape = ctx
    g = np.empty_like(a)
    _elementwise_grad(_SQDIFF, a, b, 0.0, _scalar(grad_out) / a.size, g)
    return g.reshape(shape), -g.reshape(shape)


def bce_forward(pred, target, eps):
    a, b = _flat(pred), _flat(target)
    return _loss(_elementwise_sum(_BCE, a, b, eps) / a.size, pred), (a, b, eps, pred.shape)


def bce_backward(grad_out, ctx):
    a, b, eps, shape = ctx
    g = np.empty_like(a)
    _elementwise_grad(_BCE, a, b, eps, _scalar(grad_out) / a.size, g)
    return g.reshape(shape), None


def bce_with_logits_forward(logits, target):
    a, b = _flat(logits), _flat(target)
    return _loss(_elementwise_sum(_BCE_LOGITS, a, b, 0.0) / a.size, logits), (a, b, logits.shape)


def bce_with_logits_backward(grad_out, ctx):
    a, b, shape = ctx
    g = np.empty_like(a)
    _elementwise_grad(_BCE_LOGITS, a, b, 0.0, _scalar(grad_out) / a.size, g)
    return g.reshape(shape), None


def kl_div_forward(target, pred):
    t, p = _flat(target), _flat(pred)
    return _loss(_elementwise_sum(_KL, t, p, 0.0) / target.shape[0], pred), (t, p, target.shape)


def kl_div_backward(grad_out, ctx):
    t, p, shape = ctx
    g = np.empty_like(p)
    _elementwise_grad(_KL, t, p, 0.0, _scalar(grad_out) / shape[0], g)
    return None, g.reshape(shape)


def soft_cross_entropy_forward(logits, target):
    grad = np.empty(logits.shape)
    rows = _soft_ce(np.ascontiguousarray(logits), np.ascontiguousarray(target), grad)
    return _loss(rows.sum() / logits.shape[0], logits), (grad, logits.dtype)


def soft_cross_entropy_backward(grad_out, ctx):
    grad, dtype = ctx
    return (grad * (_scalar(grad_out) / grad.shape[0])).astype(dtype), None


# ---------------------------------------------------------------- DBC (seed 002)


def _student(z, mu, v):
    z, mu = np.ascontiguousarray(z), np.ascontiguousarray(mu)
    u = np.empty((z.shape[0], mu.shape[0]))
    logs = np.empty_like(u)
    _student_log(z, mu, float(v), u, logs)
    return z, mu, u, logs


def _student_backward(z, mu, v, u, w):
    """DBC eqs 4-5 with weights w (float64, N x K)."""
    gz, gmu = np.empty(z.shape), np.empty(mu.shape)
    _student_grads(z, mu, (1 + v) / v * w / u, gz, gmu)
    return gz.astype(z.dtype), gmu.astype(mu.dtype)


def student_t_forward(z, mu, v):
    z, mu, u, logs = _student(z, mu, v)
    s = np.exp(logs)
    return s.astype(z.dtype), (z, mu, v, u, s)


def student_t_backward(grad_s, ctx):
    z, mu, v, u, s = ctx
    g = np.asarray(grad_s, dtype=np.float64)
    a = s * (g - np.sum(g * s, axis=1, keepdims=True))
    return _student_backward(z, mu, v, u, -a)


def dbc_kl_forward(z, mu, r, v):
    z, mu, u, logs = _student(z, mu, v)
    value = _elementwise_sum(_KL_LOG, _flat(r), logs.reshape(-1), 0.0)
    return _loss(value, z), (z, mu, v, u, r - np.exp(logs))


def dbc_kl_backward(grad_out, ctx):
    z, mu, v, u, r_minus_s = ctx
    return (*_student_backward(z, mu, v, u, _scalar(grad_out) * r_minus_s), None)


# ---------------------------------------------------------------- DCAE (seed 000)


def kmeans_compactness_forward(h, centers, assign, lam):
    assign = _labels(assign)
    resid = np.empty(h.shape)
    rows = _residual(np.ascontiguousarray(h), np.ascontiguousarray(centers), assign, resid)
    value = lam / (2 * h.shape[0]) * rows.sum()
    return _loss(value, h), (resid, assign, centers.shape[0], lam, h.dtype)


def kmeans_compactness_backward(grad_out, ctx):
    resid, assign, k, lam, dtype = ctx
    scale = _scalar(grad_out) * lam / resid.shape[0]
    sums, _ = _segment_sum(resid, assign, k)
    return (scale * resid).astype(dtype), (-scale * sums).astype(dtype), None


# ---------------------------------------------------------------- DCTL (seed 003)


def fidelity_forward(a, z):
    fa, fz = _flat(a), _flat(z)
    return _loss(_elementwise_sum(_SQDIFF, fa, fz, 0.0), a), (fa, fz, a.shape)


def fidelity_backward(grad_out, ctx):
    fa, fz, shape = ctx
    g = np.empty_like(fa)
    _elementwise_grad(_SQDIFF, fa, fz, 0.0, _scalar(grad_out), g)
    return g.reshape(shape), -g.reshape(shape)


def frobenius_forward(t):
    ft = _flat(t)
    return _loss(_elementwise_sum(_SQ, ft, ft, 0.0), t), (ft, t.shape)


def frobenius_backward(grad_out, ctx):
    ft, shape = ctx
    g = np.empty_like(ft)
    _elementwise_grad(_SQ, ft, ft, 0.0, _scalar(grad_out), g)
    return (g.reshape(shape),)


def neg_logdet_forward(t):
    """One small float64 LAPACK SVD (outside any Numba region)."""
    u, sigma, vt = np.linalg.svd(np.asarray(t, dtype=np.float64).reshape(t.shape[0], -1), full_matrices=False)
    check_rank("neg_logdet", sigma)
    return _loss(-np.sum(np.log(sigma)), t), (u, sigma, vt, t.shape, t.dtype)


def neg_logdet_backward(grad_out, ctx):
    u, sigma, vt, shape, dtype = ctx
    return ((-_scalar(grad_out) * ((u / sigma) @ vt)).reshape(shape).astype(dtype),)


def kmeans_subspace_forward(z, labels, n_clusters):
    z, labels = np.ascontiguousarray(z), _labels(labels)
    sums, counts = _segment_sum(z, labels, n_clusters)
    means = sums / np.maximum(counts, 1)[:, None]
    resid = np.empty(z.shape)
    rows = _residual(z, means, labels, resid)
    return _loss(rows.sum(), z), (resid, z.dtype)


def kmeans_subspace_backward(grad_out, ctx):
    resid, dtype = ctx
    return (2.0 * _scalar(grad_out) * resid).astype(dtype), None

