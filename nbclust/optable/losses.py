"""Table entries: losses and the clustering terms of the seed papers.

Every entry returns a 0-d array (the inputs' dtype) except ``student_t``, which
returns the soft-assignment matrix.  The argument checks shared by all
backends live here (``check_*``) so that every backend rejects the same
inputs with the same message.
"""

from __future__ import annotations

import numpy as np

from nbclust.optable import Case, OpSpec

# ---------------------------------------------------------------- argument checks


def check_same_shape(op: str, a, b, names: str) -> None:
    if a.shape != b.shape:
        first, second = names.split(",")
        raise ValueError(f"{op}: {first} has shape {a.shape} but {second} has shape {b.shape}")


def check_nonempty(op: str, a, name: str) -> None:
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"{op}: {name} must be a non-empty array with a batch axis, got shape {a.shape}")


def check_matrix(op: str, a, name: str) -> None:
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{op}: {name} must be a non-empty 2-D array, got shape {a.shape}")


def check_points_centers(op: str, z, mu, names: str = "z,mu") -> None:
    first, second = names.split(",")
    check_matrix(op, z, first)
    check_matrix(op, mu, second)
    if z.shape[1] != mu.shape[1]:
        raise ValueError(f"{op}: {first} has {z.shape[1]} features but {second} has {mu.shape[1]}")


def check_dof(op: str, v) -> None:
    if not v > 0:
        raise ValueError(f"{op}: degrees of freedom v must be > 0, got {v}")


def check_labels(op: str, labels, n: int, k: int, name: str) -> None:
    """``labels`` is an integer vector of length ``n`` with values in [0, k)."""
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: {name} must be an integer array, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{op}: {name} must have shape ({n},), got {labels.shape}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"{op}: {name} must lie in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")


ROW_SUM_TOL = 1e-4
"""How far from 1 the row sums of a target distribution may be (float32 rounding included)."""


def check_rows_sum_to_one(op: str, r, name: str) -> None:
    if r.shape[0] and float(abs(r.sum(axis=1) - 1).max()) > ROW_SUM_TOL:
        raise ValueError(f"{op}: the rows of {name} must sum to 1 (the gradient formula relies on it)")


def check_n_clusters(op: str, k) -> None:
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"{op}: n_clusters must be a positive integer, got {k!r}")


def check_eps(op: str, eps) -> None:
    if not 0 < eps < 0.5:
        raise ValueError(f"{op}: eps must lie in (0, 0.5), got {eps}")


def filter_matrix_shape(op: str, t) -> tuple[int, int]:
    """(filters, taps) of a filter bank; filters <= taps is required for a log-det."""
    if t.ndim == 0 or t.size == 0:
        raise ValueError(f"{op}: t must be a non-empty array whose first axis indexes filters, got shape {t.shape}")
    f, taps = t.shape[0], t.size // t.shape[0]
    if f > taps:
        raise ValueError(f"{op}: {f} filters of {taps} taps each: the filter matrix must have filters <= taps")
    return f, taps


RANK_TOL = 1e-12
"""``neg_logdet`` rejects a filter matrix whose smallest singular value is <= RANK_TOL * largest."""


def check_rank(op: str, sigma) -> None:
    if not float(sigma[-1]) > RANK_TOL * float(sigma[0]):
        raise ValueError(
            f"{op}: the filter matrix is rank-deficient (singular values from {float(sigma[0]):.3g} "
            f"down to {float(sigma[-1]):.3g}); its log-determinant is -inf")


# ---------------------------------------------------------------- cases


def _rows(rng, n, k, power=1.0):
    """Random positive rows summing to 1."""
    p = rng.uniform(0.1, 1.0, size=(n, k)) ** power
    return p / p.sum(axis=1, keepdims=True)


def _mse_cases(rng):
    return [
        Case((rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4))), label="3-D"),
        Case((rng.normal(size=(1, 5)), rng.normal(size=(1, 5))), label="batch 1"),
    ]


def _bce_cases(rng):
    return [
        Case((rng.uniform(0.05, 0.95, size=(4, 6)), rng.uniform(0, 1, size=(4, 6))), label="soft targets"),
        Case((rng.uniform(0.05, 0.95, size=(2, 3, 3)), rng.integers(0, 2, size=(2, 3, 3)).astype(float)),
             label="binary targets"),
        Case((np.array([[0.01, 0.5, 0.99], [0.3, 0.02, 0.97]]), rng.uniform(0, 1, size=(2, 3))),
             attrs={"eps": 0.05}, label="clamp active"),
    ]


def _bce_logits_cases(rng):
    """Moderate logits, then saturated ones (|a| in [30, 50]): sigmoid(a) is within 1e-7 of 0
    or 1 there (from |a| ~ 16.1), so ``bce`` of sigmoid(a) is clamped and has a zero gradient,
    while d/da = sigmoid(a) - t stays ~1 wherever the target disagrees with the saturated side."""
    sign = np.where(rng.uniform(size=(3, 4)) < 0.5, -1.0, 1.0)
    saturated = sign * rng.uniform(30, 50, size=(3, 4))
    target = rng.uniform(0, 1, size=(3, 4))
    target[0, :2] = (saturated[0, :2] > 0).astype(float)  # agreeing hard targets: gradient ~e^-|a|
    target[1, :2] = (saturated[1, :2] < 0).astype(float)  # disagreeing hard targets: gradient +-1
    return [
        Case((rng.normal(scale=3.0, size=(4, 6)), rng.uniform(0, 1, size=(4, 6))), label="soft targets"),
        Case((rng.normal(scale=3.0, size=(2, 3, 3)), rng.integers(0, 2, size=(2, 3, 3)).astype(float)),
             label="binary targets"),
        Case((saturated, target), label="saturated logits"),
    ]


def _kl_cases(rng):
    t = _rows(rng, 4, 5)
    t[1, 2] = 0.0
    t /= t.sum(axis=1, keepdims=True)
    return [
        Case((t, _rows(rng, 4, 5, power=0.3)), label="with a zero target"),
        Case((_rows(rng, 1, 3), _rows(rng, 1, 3)), label="batch 1"),
    ]


def _soft_ce_cases(rng):
    return [
        Case((rng.normal(scale=2.0, size=(5, 4)), _rows(rng, 5, 4)), label="5x4"),
        Case((rng.normal(size=(1, 3)), _rows(rng, 1, 3, power=3)), label="batch 1"),
    ]


def _student_cases(rng):
    return [
        Case((rng.normal(size=(6, 3)), rng.normal(size=(4, 3))), attrs={"v": 1.0}, label="v=1"),
        Case((rng.normal(size=(5, 2)), rng.normal(size=(3, 2))), attrs={"v": 2.5}, label="v=2.5"),
        Case((rng.normal(size=(1, 4)), rng.normal(size=(2, 4))), label="batch 1, default v"),
    ]


def _dbc_cases(rng):
    cases = []
    for n, k, d, v in ((6, 3, 3, 1.0), (5, 4, 2, 2.5)):
        cases.append(Case((rng.normal(size=(n, d)), rng.normal(size=(k, d)), _rows(rng, n, k, power=2)),
                          attrs={"v": v}, label=f"v={v}"))
    return cases


def _compactness_cases(rng):
    return [
        Case((rng.normal(size=(7, 4)), rng.normal(size=(3, 4)), np.array([0, 1, 2, 1, 0, 2, 2])),
             attrs={"lam": 0.2}, label="lam 0.2"),
        Case((rng.normal(size=(5, 2)), rng.normal(size=(4, 2)), np.array([3, 0, 3, 0, 0])),
             attrs={"lam": 1.5}, label="empty centers"),
    ]


def _fidelity_cases(rng):
    return [Case((rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))), label="3-D")]


def _frobenius_cases(rng):
    return [Case((rng.normal(size=(4, 2, 3, 3)),), label="filter bank")]


def _logdet_cases(rng):
    return [
        Case((rng.normal(size=(4, 2, 3, 3)),), label="4 filters x 18 taps"),
        Case((rng.normal(size=(3, 5)),), label="2-D"),
        Case((np.eye(3).reshape(3, 1, 1, 3) + 0.3 * rng.normal(size=(3, 1, 1, 3)),), label="square"),
    ]


def _subspace_cases(rng):
    return [
        Case((rng.normal(size=(9, 3)), np.array([0, 2, 1, 0, 2, 2, 1, 0, 1])),
             attrs={"n_clusters": 3}, label="3 clusters"),
        Case((rng.normal(size=(6, 2)), np.array([0, 0, 2, 2, 2, 4])),
             attrs={"n_clusters": 5}, label="empty clusters, a singleton"),
    ]


# ---------------------------------------------------------------- torch equivalents


def _torch_mse(pred, target):
    import torch.nn.functional as F

    return F.mse_loss(pred, target)


def _torch_bce(pred, target, eps=1e-7):
    import torch.nn.functional as F

    return F.binary_cross_entropy(pred.clamp(eps, 1 - eps), target)


def _torch_bce_with_logits(logits, target):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, target)


def _torch_kl(target, pred):
    import torch.nn.functional as F

    return F.kl_div(pred.log(), target, reduction="batchmean")


def _torch_soft_ce(logits, target):
    import torch.nn.functional as F

    return F.cross_entropy(logits, target)


def _torch_student(z, mu, v=1.0):
    q = (1 + ((z[:, None, :] - mu[None, :, :]) ** 2).sum(-1) / v) ** (-(v + 1) / 2)
    return q / q.sum(1, keepdim=True)


def _torch_dbc(z, mu, r, v=1.0):
    import torch

    return (torch.special.xlogy(r, r) - r * _torch_student(z, mu, v).log()).sum()


def _torch_compactness(h, centers, assign, lam):
    return lam / (2 * h.shape[0]) * ((h - centers[assign]) ** 2).sum()


def _torch_fidelity(a, z):
    return ((a - z) ** 2).sum()


def _torch_frobenius(t):
    return (t**2).sum()


def _torch_neg_logdet(t):
    import torch

    return -torch.linalg.svdvals(t.reshape(t.shape[0], -1)).log().sum()


def _torch_subspace(z, labels, n_clusters):
    """The paper's dense formula with Z = z^T and one-hot H (pinv covers empty clusters)."""
    import torch

    h = torch.nn.functional.one_hot(labels, n_clusters).T.to(z.dtype)
    zt = z.T
    return ((zt - zt @ h.T @ torch.linalg.pinv(h @ h.T) @ h) ** 2).sum()


# ---------------------------------------------------------------- the table

SPECS = [
    OpSpec(
        "mse", inputs=("pred", "target"), differentiable=("pred", "target"), cases=_mse_cases,
        torch=_torch_mse,
        doc="mean over all elements of (pred - target)^2; DEPICT's per-layer reconstruction loss "
            "(1/N) sum_i |z_i|^-1 ||z_i - zhat_i||^2 normalised by the layer size is exactly this mean",
    ),
    OpSpec(
        "bce", inputs=("pred", "target"), differentiable=("pred",), cases=_bce_cases, torch=_torch_bce,
        doc="mean of -(t log p + (1-t) log(1-p)) with p clamped to [eps, 1-eps] (eps=1e-7); "
            "d/dp = (p - t) / (p (1 - p)) / n inside the clamp, 0 where the clamp is active",
    ),
    OpSpec(
        "bce_with_logits", inputs=("logits", "target"), differentiable=("logits",),
        cases=_bce_logits_cases, torch=_torch_bce_with_logits,
        doc="bce of sigmoid(logits) fused and unclamped: mean of max(a,0) - a t + log1p(exp(-|a|)), "
            "a = logits; d/da = (sigmoid(a) - t) / n, nonzero where sigmoid(a) saturates (Caffe's "
            "SigmoidCrossEntropyLoss, torch's binary_cross_entropy_with_logits); target constant as in bce",
    ),
    OpSpec(
        "kl_div", inputs=("target", "pred"), differentiable=("pred",), cases=_kl_cases, torch=_torch_kl,
        doc="KL(target||pred) = (1/N) sum t log(t/p), N = first axis (batchmean), 0 log 0 = 0; "
            "d/dp = -t / (N p)",
    ),
    OpSpec(
        "soft_cross_entropy", inputs=("logits", "target"), differentiable=("logits",),
        cases=_soft_ce_cases, torch=_torch_soft_ce,
        doc="-(1/N) sum_ik q_ik log_softmax(logits)_ik for (N, K) logits; "
            "d/dlogits_ik = (softmax_ik sum_k' q_ik' - q_ik) / N",
    ),
    OpSpec(
        "student_t", inputs=("z", "mu"), differentiable=("z", "mu"), cases=_student_cases,
        torch=_torch_student,
        doc="DBC eq 1: s_ij proportional to (1 + ||z_i - mu_j||^2 / v)^(-(v+1)/2), rows summing to 1",
    ),
    OpSpec(
        "dbc_kl", inputs=("z", "mu", "r"), differentiable=("z", "mu"), cases=_dbc_cases, torch=_torch_dbc,
        doc="DBC eq 3: sum_ij r_ij log(r_ij / s_ij) (a sum over the batch), s from eq 1, r constant "
            "with rows summing to 1; backward is eqs 4 and 5",
    ),
    OpSpec(
        "kmeans_compactness", inputs=("h", "centers", "assign"), differentiable=("h", "centers"),
        cases=_compactness_cases, torch=_torch_compactness,
        doc="DCAE eq 4: lam / (2N) sum_n ||h_n - c_assign_n||^2",
    ),
    OpSpec(
        "fidelity", inputs=("a", "z"), differentiable=("a", "z"), cases=_fidelity_cases,
        torch=_torch_fidelity, doc="DCTL eq 5 data term: ||a - z||_F^2 (a sum)",
    ),
    OpSpec(
        "frobenius", inputs=("t",), differentiable=("t",), cases=_frobenius_cases,
        torch=_torch_frobenius, doc="DCTL eq 5 filter penalty: ||t||_F^2",
    ),
    OpSpec(
        "neg_logdet", inputs=("t",), differentiable=("t",), cases=_logdet_cases,
        torch=_torch_neg_logdet,
        doc="DCTL eq 5: -sum_i log sigma_i(M) = -1/2 log det(M M^T), M = t.reshape(F, -1); "
            "gradient -(M^+)^T; rank-deficient M raises ValueError",
    ),
    OpSpec(
        "kmeans_subspace", inputs=("z", "labels"), differentiable=("z",), cases=_subspace_cases,
        torch=_torch_subspace,
        doc="DCTL eq 5: ||Z - Z H^T (H H^T)^-1 H||_F^2 = sum_n ||z_n - mean of z over cluster(n)||^2; "
            "gradient 2 (z_n - mean_cluster(n)); empty clusters contribute nothing",
    ),
]
