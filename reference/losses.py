"""Reference losses and clustering terms (see nbclust.engine.optable for the calling convention).

Every loss returns a 0-d array of its inputs' dtype; ``grad_out`` is the
scalar gradient of the objective w.r.t. that value.  Array-module generic
(NumPy or CuPy, taken from the inputs): the CuPy backend reuses every op
here except the ``np.add.at`` segment sums (``kmeans_compactness`` backward,
``kmeans_subspace`` forward), which it does with one-hot matmuls.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine.optable.clustering import check_rank
from nbclust.reference._runtime import array_module


def scalar(grad_out, like):
    """The scalar ``grad_out`` of a loss (0-d, or a 1-element array after ``ascontiguousarray``).

    A Python float for NumPy; for CuPy a 0-d device array of ``like``'s dtype
    (``float()`` would copy it to the host and wait for the device).
    """
    xp = array_module(like)
    if xp is np:
        return float(np.asarray(grad_out).reshape(-1)[0])
    return xp.asarray(grad_out).reshape(()).astype(like.dtype, copy=False)


def loss_value(value, like):
    """``value`` as the 0-d array a loss returns: ``like``'s dtype and array module."""
    return array_module(like).asarray(value, dtype=like.dtype)


def _xlogy(x, y):
    """x log y with 0 log y = 0."""
    xp = array_module(x, y)
    nz = x != 0
    return xp.where(nz, x * xp.log(xp.where(nz, y, 1)), 0)


# ---------------------------------------------------------------- mse, bce, kl, cross-entropy


def mse_forward(pred, target):
    """mean((pred - target)^2); d/dpred = 2 (pred - target) / n = -d/dtarget.

    DEPICT's per-layer reconstruction term |z^l|^-1 ||z^l - zhat^l||^2 averaged
    over the batch is exactly this mean over all elements of the layer.
    """
    xp = array_module(pred)
    diff = pred - target
    return loss_value(xp.mean(diff * diff), pred), diff


def mse_backward(grad_out, diff):
    g = (2.0 * scalar(grad_out, diff) / diff.size) * diff
    return g, -g


def bce_forward(pred, target, eps):
    """mean(-(t log p + (1-t) log(1-p))) with p clamped to [eps, 1-eps].

    The clamp keeps the logs finite at p = 0 or 1 (eps = 1e-7 bounds each term
    by -log(eps) ~ 16).  d/dp = (p - t) / (p (1 - p)) / n inside [eps, 1-eps]
    and 0 where the clamp is active (the clamped value does not depend on p).
    """
    xp = array_module(pred)
    p = xp.clip(pred, eps, 1 - eps)
    value = -xp.mean(target * xp.log(p) + (1 - target) * xp.log1p(-p))
    return loss_value(value, pred), (pred, target, eps)


def bce_backward(grad_out, ctx):
    pred, target, eps = ctx
    xp = array_module(pred)
    inside = (pred >= eps) & (pred <= 1 - eps)
    p = xp.clip(pred, eps, 1 - eps)
    g = xp.where(inside, (p - target) / (p * (1 - p)), 0.0) * (scalar(grad_out, pred) / pred.size)
    return g.astype(pred.dtype, copy=False), None


def bce_with_logits_forward(logits, target):
    """mean(max(a, 0) - a t + log1p(exp(-|a|))), a = logits: ``bce`` of sigmoid(a), fused.

    The term is -(t log s + (1-t) log(1-s)) with s = sigmoid(a), written without
    s: log s = -softplus(-a), log(1-s) = -softplus(a), softplus(a) - softplus(-a) = a
    and softplus(a) = max(a, 0) + log1p(exp(-|a|)) (exp never overflows).  No clamp,
    so d/da = (sigmoid(a) - t) / n everywhere: a saturated sigmoid (|a| ~ 40, where
    ``bce`` clamps sigmoid(a) and its gradient is 0) still gets ~(1 - t) or ~-t.
    The target is constant, as in ``bce`` (torch would give d/dt = -a / n).
    """
    xp = array_module(logits)
    value = xp.mean(xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits))))
    return loss_value(value, logits), (logits, target)


def bce_with_logits_backward(grad_out, ctx):
    logits, target = ctx
    xp = array_module(logits)
    e = xp.exp(-xp.abs(logits))  # in (0, 1]: sigmoid(a) = 1/(1+e) for a >= 0, e/(1+e) below
    s = xp.where(logits >= 0, 1, e) / (1 + e)
    g = (s - target) * (scalar(grad_out, logits) / logits.size)
    return g.astype(logits.dtype, copy=False), None


def kl_div_forward(target, pred):
    """KL(target||pred) = (1/N) sum t log(t / p), N = target.shape[0] (batchmean), 0 log 0 = 0.

    d/dp = -t / (N p); target is constant.
    """
    xp = array_module(target)
    n = target.shape[0]
    value = (xp.sum(_xlogy(target, target)) - xp.sum(_xlogy(target, pred))) / n
    return loss_value(value, pred), (target, pred)


def kl_div_backward(grad_out, ctx):
    target, pred = ctx
    return None, (-scalar(grad_out, pred) / target.shape[0]) * target / pred


def _log_softmax(x):
    xp = array_module(x)
    m = x - x.max(axis=1, keepdims=True)
    return m - xp.log(xp.exp(m).sum(axis=1, keepdims=True))


def soft_cross_entropy_forward(logits, target):
    """-(1/N) sum_ik q_ik log softmax(logits)_ik for (N, K) logits and probability targets q.

    With l_ik = x_ik - log sum_k' exp x_ik': dl_ik'/dx_ik = delta_kk' - softmax_ik, so
    d/dx_ik = (softmax_ik sum_k' q_ik' - q_ik) / N (rows of q need not sum to 1).
    """
    xp = array_module(logits)
    logp = _log_softmax(logits)
    value = -xp.sum(target * logp) / logits.shape[0]
    return loss_value(value, logits), (xp.exp(logp), target)


def soft_cross_entropy_backward(grad_out, ctx):
    softmax, q = ctx
    g = softmax * q.sum(axis=1, keepdims=True) - q
    return g * (scalar(grad_out, g) / q.shape[0]), None


# ---------------------------------------------------------------- DBC (seed 002)


def _student_log(z, mu, v):
    """u_ij = 1 + ||z_i - mu_j||^2 / v and log s_ij (eq 1, normalised in the log domain)."""
    xp = array_module(z)
    u = 1 + xp.sum((z[:, None, :] - mu[None, :, :]) ** 2, axis=2) / v
    logq = -(v + 1) / 2 * xp.log(u)
    m = logq.max(axis=1, keepdims=True)
    return u, logq - m - xp.log(xp.exp(logq - m).sum(axis=1, keepdims=True))


def _student_grads(z, mu, v, u, w):
    """(dL/dz, dL/dmu) for dL/dz_i = (1+v)/v sum_j w_ij (z_i - mu_j) / u_ij and
    dL/dmu_j = (1+v)/v sum_i w_ij (mu_j - z_i) / u_ij (DBC eqs 4-5 with w = r - s)."""
    xp = array_module(z)
    c = ((1 + v) / v * w / u)[:, :, None]
    diff = z[:, None, :] - mu[None, :, :]
    return xp.sum(c * diff, axis=1).astype(z.dtype, copy=False), xp.sum(-c * diff, axis=0).astype(mu.dtype, copy=False)


def student_t_forward(z, mu, v):
    """DBC eq 1: s_ij = q_ij / sum_j' q_ij', q_ij = u_ij^(-(v+1)/2), u_ij = 1 + ||z_i - mu_j||^2 / v.

    Backward (appendix A, for a general upstream G = dL/dS): through the row
    normalisation dL/dlog q_ij = s_ij (G_ij - sum_j' G_ij' s_ij') =: a_ij, and
    dlog q_ij/dz_i = -(1+v)/v (z_i - mu_j) / u_ij = -dlog q_ij/dmu_j, so
    dL/dz_i = (1+v)/v sum_j w_ij (z_i - mu_j) / u_ij and
    dL/dmu_j = (1+v)/v sum_i w_ij (mu_j - z_i) / u_ij with w = -a.
    """
    xp = array_module(z)
    u, logs = _student_log(z, mu, v)
    s = xp.exp(logs)
    return s.astype(z.dtype, copy=False), (z, mu, v, u, s)


def student_t_backward(grad_s, ctx):
    xp = array_module(grad_s)
    z, mu, v, u, s = ctx
    a = s * (grad_s - xp.sum(grad_s * s, axis=1, keepdims=True))
    return _student_grads(z, mu, v, u, -a)


def dbc_kl_forward(z, mu, r, v):
    """DBC eq 3: L = KL(R||S) = sum_ij r_ij log(r_ij / s_ij), a SUM over the batch (as in the
    paper, not a mean), s from eq 1, 0 log 0 = 0.  r is constant and its rows must sum to 1.

    Backward is eqs 4-5 (appendix A): with u, q, s as in ``student_t``,
    ds_ij'/dz_i = -(1+v)/v s_ij' (u_ij'^-1 (z_i - mu_j') - sum_j s_ij u_ij^-1 (z_i - mu_j))  (A.6)
    and dL/dz_i = -sum_j' r_ij'/s_ij' ds_ij'/dz_i (A.7); since sum_j' r_ij' = 1 this collapses to
    dL/dz_i = (1+v)/v sum_j (r_ij - s_ij) (z_i - mu_j) / (1 + ||z_i - mu_j||^2 / v)   (4)
    and, exchanging the roles of z and mu,
    dL/dmu_j = (1+v)/v sum_i (r_ij - s_ij) (mu_j - z_i) / (1 + ||mu_j - z_i||^2 / v)   (5).
    """
    xp = array_module(z)
    u, logs = _student_log(z, mu, v)
    value = xp.sum(_xlogy(r, r)) - xp.sum(r * logs)
    return loss_value(value, z), (z, mu, v, u, r - xp.exp(logs))


def dbc_kl_backward(grad_out, ctx):
    z, mu, v, u, r_minus_s = ctx
    return (*_student_grads(z, mu, v, u, scalar(grad_out, r_minus_s) * r_minus_s), None)


# ---------------------------------------------------------------- DCAE (seed 000)


def kmeans_compactness_forward(h, centers, assign, lam):
    """DCAE eq 4: E_2 = lam / (2N) sum_n ||h_n - c_assign(n)||^2.

    d/dh_n = lam/N (h_n - c_assign(n)); d/dc_k = -lam/N sum_{n: assign(n)=k} (h_n - c_k).
    """
    xp = array_module(h)
    resid = h - centers[assign]
    return loss_value(lam / (2 * h.shape[0]) * xp.sum(resid * resid), h), (resid, assign, centers.shape[0], lam)


def kmeans_compactness_backward(grad_out, ctx):
    resid, assign, k, lam = ctx
    gh = (scalar(grad_out, resid) * lam / resid.shape[0]) * resid
    gc = np.zeros((k, resid.shape[1]), dtype=resid.dtype)
    np.add.at(gc, assign, -gh)
    return gh, gc, None


# ---------------------------------------------------------------- DCTL (seed 003)


def fidelity_forward(a, z):
    """DCTL eq 5 data term ||a - z||_F^2 (a sum); d/da = 2 (a - z) = -d/dz."""
    xp = array_module(a)
    diff = a - z
    return loss_value(xp.sum(diff * diff), a), diff


def fidelity_backward(grad_out, diff):
    g = 2.0 * scalar(grad_out, diff) * diff
    return g, -g


def frobenius_forward(t):
    """||t||_F^2; d/dt = 2 t."""
    xp = array_module(t)
    return loss_value(xp.sum(t * t), t), t


def frobenius_backward(grad_out, t):
    return (2.0 * scalar(grad_out, t) * t,)


def neg_logdet_forward(t):
    """DCTL eq 5 log-det filter penalty: -sum_i log sigma_i(M) = -1/2 log det(M M^T).

    M = t.reshape(F, -1) holds one filter per row (F <= taps).  Gradient: with
    A = M M^T, d(-1/2 log det A) = -1/2 tr(A^-1 (dM M^T + M dM^T)) = -tr(M^T A^-1 dM),
    so dL/dM = -A^-1 M = -(M^+)^T, since M^+ = M^T (M M^T)^-1 for full row rank;
    from the thin SVD M = U diag(sigma) V^T, (M^+)^T = U diag(1/sigma) V^T.
    A rank-deficient M (sigma_min <= 1e-12 sigma_max) raises ValueError.
    """
    xp = array_module(t)
    u, sigma, vt = xp.linalg.svd(t.reshape(t.shape[0], -1), full_matrices=False)
    check_rank("neg_logdet", sigma)
    return loss_value(-xp.sum(xp.log(sigma)), t), (u, sigma, vt, t.shape)


def neg_logdet_backward(grad_out, ctx):
    u, sigma, vt, shape = ctx
    return ((-scalar(grad_out, sigma)) * ((u / sigma) @ vt).reshape(shape),)


def kmeans_subspace_forward(z, labels, n_clusters):
    """DCTL eq 5 K-means term ||Z - Z H^T (H H^T)^-1 H||_F^2, Z = z^T (samples as columns),
    H the (K, N) one-hot indicator of ``labels``.

    P = H^T (H H^T)^-1 H replaces each sample by the mean of its cluster, so the
    value is sum_n ||z_n - m_cluster(n)||^2, computed per cluster (no N x N matrix).
    P is symmetric and idempotent, hence so is I - P and L = tr(Z (I-P) Z^T), whose
    gradient is 2 Z (I - P): dL/dz_n = 2 (z_n - m_cluster(n)).  Empty clusters
    (a zero row of H, taken with the pseudo-inverse) contribute nothing.
    """
    sums = np.zeros((n_clusters, z.shape[1]), dtype=z.dtype)
    np.add.at(sums, labels, z)
    counts = np.bincount(labels, minlength=n_clusters)
    means = sums / np.maximum(counts, 1)[:, None]
    resid = z - means[labels]
    return loss_value(np.sum(resid * resid), z), resid


def kmeans_subspace_backward(grad_out, resid):
    return 2.0 * scalar(grad_out, resid) * resid, None

