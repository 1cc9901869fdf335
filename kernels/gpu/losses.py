"""CuPy losses and clustering terms; formulas and derivations in :mod:`nbclust.reference.losses`.

Array expressions only: every reduction is a CuPy sum over a fixed axis
(deterministic), and the per-cluster segment sums of ``kmeans_compactness``
and ``kmeans_subspace`` are one-hot ``(K, N)`` matmuls (cuBLAS GEMM,
deterministic) instead of scatter-adds.  ``grad_out`` stays on the device
(no host round trip); values are 0-d device arrays of the inputs' dtype.
"""

from __future__ import annotations

from nbclust.kernels.gpu._xp import xp
from nbclust.optable import losses as spec


def _go(grad_out, like):
    """The scalar upstream gradient as a 0-d device array of ``like``'s dtype."""
    return xp.asarray(grad_out).reshape(()).astype(like.dtype, copy=False)


def _loss(value, like):
    return xp.asarray(value).astype(like.dtype, copy=False)


def _xlogy(x, y):
    """x log y with 0 log y = 0."""
    nz = x != 0
    return xp.where(nz, x * xp.log(xp.where(nz, y, 1)), 0)


def _one_hot(labels, k, dtype):
    """``(K, N)`` indicator H with ``H[k, n] = labels[n] == k``."""
    return (xp.arange(k)[:, None] == labels[None, :]).astype(dtype)


def mse_forward(pred, target):
    spec.check_same_shape("mse", pred, target, "pred,target")
    if pred.size == 0:
        raise ValueError("mse: pred is empty")
    diff = pred - target
    return _loss(xp.mean(diff * diff), pred), diff


def mse_backward(grad_out, diff):
    g = diff * (2.0 / diff.size * _go(grad_out, diff))
    return g, -g


def bce_forward(pred, target, eps=1e-7):
    spec.check_same_shape("bce", pred, target, "pred,target")
    spec.check_eps("bce", eps)
    if pred.size == 0:
        raise ValueError("bce: pred is empty")
    p = xp.clip(pred, eps, 1 - eps)
    value = -xp.mean(target * xp.log(p) + (1 - target) * xp.log1p(-p))
    return _loss(value, pred), (pred, target, eps)


def bce_backward(grad_out, ctx):
    pred, target, eps = ctx
    inside = (pred >= eps) & (pred <= 1 - eps)
    p = xp.clip(pred, eps, 1 - eps)
    g = xp.where(inside, (p - target) / (p * (1 - p)), 0) * (_go(grad_out, pred) / pred.size)
    return g.astype(pred.dtype, copy=False), None


def kl_div_forward(target, pred):
    spec.check_same_shape("kl_div", target, pred, "target,pred")
    spec.check_nonempty("kl_div", target, "target")
    value = (xp.sum(_xlogy(target, target)) - xp.sum(_xlogy(target, pred))) / target.shape[0]
    return _loss(value, pred), (target, pred)


def kl_div_backward(grad_out, ctx):
    target, pred = ctx
    return None, target / pred * (-_go(grad_out, pred) / target.shape[0])


def soft_cross_entropy_forward(logits, target):
    spec.check_matrix("soft_cross_entropy", logits, "logits")
    spec.check_same_shape("soft_cross_entropy", logits, target, "logits,target")
    m = logits - logits.max(axis=1, keepdims=True)
    logp = m - xp.log(xp.exp(m).sum(axis=1, keepdims=True))
    value = -xp.sum(target * logp) / logits.shape[0]
    return _loss(value, logits), (xp.exp(logp), target)


def soft_cross_entropy_backward(grad_out, ctx):
    softmax, q = ctx
    g = softmax * q.sum(axis=1, keepdims=True) - q
    return g * (_go(grad_out, g) / q.shape[0]), None


def _student_log(z, mu, v):
    """u_ij = 1 + ||z_i - mu_j||^2 / v and log s_ij (DBC eq 1, normalised in the log domain)."""
    u = 1 + xp.sum((z[:, None, :] - mu[None, :, :]) ** 2, axis=2) / v
    logq = -(v + 1) / 2 * xp.log(u)
    m = logq.max(axis=1, keepdims=True)
    return u, logq - m - xp.log(xp.exp(logq - m).sum(axis=1, keepdims=True))


def _student_grads(z, mu, v, u, w):
    """dL/dz_i = (1+v)/v sum_j w_ij (z_i - mu_j) / u_ij, dL/dmu_j = (1+v)/v sum_i w_ij (mu_j - z_i) / u_ij."""
    c = ((1 + v) / v * w / u)[:, :, None]
    diff = z[:, None, :] - mu[None, :, :]
    return xp.sum(c * diff, axis=1).astype(z.dtype, copy=False), xp.sum(-c * diff, axis=0).astype(mu.dtype, copy=False)


def student_t_forward(z, mu, v=1.0):
    spec.check_points_centers("student_t", z, mu)
    spec.check_dof("student_t", v)
    u, logs = _student_log(z, mu, v)
    s = xp.exp(logs)
    return s.astype(z.dtype, copy=False), (z, mu, v, u, s)


def student_t_backward(grad_s, ctx):
    z, mu, v, u, s = ctx
    a = s * (grad_s - xp.sum(grad_s * s, axis=1, keepdims=True))
    return _student_grads(z, mu, v, u, -a)


def dbc_kl_forward(z, mu, r, v=1.0):
    """KL(R||S) summed over the batch; backward is DBC eqs (4)-(5) with w = r - s."""
    spec.check_points_centers("dbc_kl", z, mu)
    spec.check_dof("dbc_kl", v)
    if r.shape != (z.shape[0], mu.shape[0]):
        raise ValueError(f"dbc_kl: r must have shape {(z.shape[0], mu.shape[0])}, got {r.shape}")
    spec.check_rows_sum_to_one("dbc_kl", r, "r")
    u, logs = _student_log(z, mu, v)
    value = xp.sum(_xlogy(r, r)) - xp.sum(r * logs)
    return _loss(value, z), (z, mu, v, u, r - xp.exp(logs))


def dbc_kl_backward(grad_out, ctx):
    z, mu, v, u, r_minus_s = ctx
    return (*_student_grads(z, mu, v, u, r_minus_s * _go(grad_out, r_minus_s)), None)


def kmeans_compactness_forward(h, centers, assign, lam):
    spec.check_points_centers("kmeans_compactness", h, centers, "h,centers")
    spec.check_labels("kmeans_compactness", assign, h.shape[0], centers.shape[0], "assign")
    resid = h - centers[assign]
    return _loss(lam / (2 * h.shape[0]) * xp.sum(resid * resid), h), (resid, assign, centers.shape[0], lam)


def kmeans_compactness_backward(grad_out, ctx):
    resid, assign, k, lam = ctx
    gh = resid * (_go(grad_out, resid) * (lam / resid.shape[0]))
    return gh, -xp.matmul(_one_hot(assign, k, gh.dtype), gh), None


def fidelity_forward(a, z):
    spec.check_same_shape("fidelity", a, z, "a,z")
    diff = a - z
    return _loss(xp.sum(diff * diff), a), diff


def fidelity_backward(grad_out, diff):
    g = diff * (2.0 * _go(grad_out, diff))
    return g, -g


def frobenius_forward(t):
    return _loss(xp.sum(t * t), t), t


def frobenius_backward(grad_out, t):
    return (t * (2.0 * _go(grad_out, t)),)


def neg_logdet_forward(t):
    """-sum log sigma_i(M), M = t.reshape(F, -1); gradient -(M^+)^T = -U diag(1/sigma) V^T."""
    f, _ = spec.filter_matrix_shape("neg_logdet", t)
    u, sigma, vt = xp.linalg.svd(t.reshape(f, -1), full_matrices=False)
    spec.check_rank("neg_logdet", sigma)
    return _loss(-xp.sum(xp.log(sigma)), t), (u, sigma, vt, t.shape)


def neg_logdet_backward(grad_out, ctx):
    u, sigma, vt, shape = ctx
    return (xp.matmul(u / sigma, vt).reshape(shape) * -_go(grad_out, sigma),)


def kmeans_subspace_forward(z, labels, n_clusters):
    """sum_n ||z_n - mean of z over cluster(n)||^2 via one-hot segment sums (no N x N matrix)."""
    spec.check_matrix("kmeans_subspace", z, "z")
    spec.check_n_clusters("kmeans_subspace", n_clusters)
    spec.check_labels("kmeans_subspace", labels, z.shape[0], n_clusters, "labels")
    onehot = _one_hot(labels, n_clusters, z.dtype)
    means = xp.matmul(onehot, z) / xp.maximum(onehot.sum(axis=1), 1)[:, None]
    resid = z - means[labels]
    return _loss(xp.sum(resid * resid), z), resid


def kmeans_subspace_backward(grad_out, resid):
    return resid * (2.0 * _go(grad_out, resid)), None


def balance_kl_forward(p):
    spec.check_matrix("balance_kl", p, "p")
    f = p.mean(axis=0)
    return _loss(xp.sum(_xlogy(f, p.shape[1] * f)), p), (f, p.shape)


def balance_kl_backward(grad_out, ctx):
    f, shape = ctx
    row = (xp.log(shape[1] * f) + 1) * (_go(grad_out, f) / shape[0])
    return (xp.ascontiguousarray(xp.broadcast_to(row, shape)),)


OPS = {
    "mse": (mse_forward, mse_backward),
    "bce": (bce_forward, bce_backward),
    "kl_div": (kl_div_forward, kl_div_backward),
    "soft_cross_entropy": (soft_cross_entropy_forward, soft_cross_entropy_backward),
    "student_t": (student_t_forward, student_t_backward),
    "dbc_kl": (dbc_kl_forward, dbc_kl_backward),
    "kmeans_compactness": (kmeans_compactness_forward, kmeans_compactness_backward),
    "fidelity": (fidelity_forward, fidelity_backward),
    "frobenius": (frobenius_forward, frobenius_backward),
    "neg_logdet": (neg_logdet_forward, neg_logdet_backward),
    "kmeans_subspace": (kmeans_subspace_forward, kmeans_subspace_backward),
    "balance_kl": (balance_kl_forward, balance_kl_backward),
}
