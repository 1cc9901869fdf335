"""Table entries: the clustering terms of the seed papers' methods, apart from the layer ops and
the generic losses: DBC's (and DCEC's) Student's t soft assignment and KL(R||S), DCAE's k-means
compactness, DCTL's fidelity, log-det and k-means subspace terms.

Every entry returns a 0-d array (the inputs' dtype) except ``student_t``, which returns the
soft-assignment matrix.  The backends implement them in their ``losses`` module, in a section
of their own.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine.optable import REQUIRED, Case, OpSpec
from nbclust.engine.optable.losses import check_matrix, check_pair, random_rows

FAMILY = "losses"

# ---------------------------------------------------------------- argument checks


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


def _check_filter_bank(t) -> None:
    """A filter bank, one filter per index of the first axis, with filters <= taps (for a log-det)."""
    if t.ndim == 0 or t.size == 0:
        raise ValueError(f"neg_logdet: t must be a non-empty array whose first axis indexes filters, "
                         f"got shape {t.shape}")
    f, taps = t.shape[0], t.size // t.shape[0]
    if f > taps:
        raise ValueError(f"neg_logdet: {f} filters of {taps} taps each: the filter matrix must have filters <= taps")


RANK_TOL = 1e-12
"""``neg_logdet`` rejects a filter matrix whose smallest singular value is <= RANK_TOL * largest."""


def check_rank(op: str, sigma) -> None:
    """The one check on a result rather than an input: the backends call it on the singular values."""
    if not float(sigma[-1]) > RANK_TOL * float(sigma[0]):
        raise ValueError(
            f"{op}: the filter matrix is rank-deficient (singular values from {float(sigma[0]):.3g} "
            f"down to {float(sigma[-1]):.3g}); its log-determinant is -inf")


def _check_student_t(z, mu, v) -> None:
    check_points_centers("student_t", z, mu)
    check_dof("student_t", v)


def _check_dbc_kl(z, mu, r, v) -> None:
    check_points_centers("dbc_kl", z, mu)
    check_dof("dbc_kl", v)
    if r.shape != (z.shape[0], mu.shape[0]):
        raise ValueError(f"dbc_kl: r must have shape {(z.shape[0], mu.shape[0])}, got {r.shape}")
    check_rows_sum_to_one("dbc_kl", r, "r")


def _check_kmeans_compactness(h, centers, assign, lam) -> None:
    check_points_centers("kmeans_compactness", h, centers, "h,centers")
    check_labels("kmeans_compactness", assign, h.shape[0], centers.shape[0], "assign")


def _check_kmeans_subspace(z, labels, n_clusters) -> None:
    check_matrix("kmeans_subspace", z, "z")
    check_n_clusters("kmeans_subspace", n_clusters)
    check_labels("kmeans_subspace", labels, z.shape[0], n_clusters, "labels")


# ---------------------------------------------------------------- cases


def _student_cases(rng):
    return [
        Case((rng.normal(size=(6, 3)), rng.normal(size=(4, 3))), attrs={"v": 1.0}, label="v=1"),
        Case((rng.normal(size=(5, 2)), rng.normal(size=(3, 2))), attrs={"v": 2.5}, label="v=2.5"),
        Case((rng.normal(size=(1, 4)), rng.normal(size=(2, 4))), label="batch 1, default v"),
    ]


def _dbc_cases(rng):
    cases = []
    for n, k, d, v in ((6, 3, 3, 1.0), (5, 4, 2, 2.5)):
        cases.append(Case((rng.normal(size=(n, d)), rng.normal(size=(k, d)), random_rows(rng, n, k, power=2)),
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
        "student_t", inputs=("z", "mu"), differentiable=("z", "mu"), cases=_student_cases, attrs={"v": 1.0},
        check=_check_student_t, torch=_torch_student,
        doc="DBC eq 1: s_ij proportional to (1 + ||z_i - mu_j||^2 / v)^(-(v+1)/2), rows summing to 1",
    ),
    OpSpec(
        "dbc_kl", inputs=("z", "mu", "r"), differentiable=("z", "mu"), cases=_dbc_cases, attrs={"v": 1.0},
        check=_check_dbc_kl, torch=_torch_dbc,
        doc="DBC eq 3: sum_ij r_ij log(r_ij / s_ij) (a sum over the batch), s from eq 1, r constant "
            "with rows summing to 1; backward is eqs 4 and 5",
    ),
    OpSpec(
        "kmeans_compactness", inputs=("h", "centers", "assign"), differentiable=("h", "centers"),
        cases=_compactness_cases, attrs={"lam": REQUIRED}, check=_check_kmeans_compactness,
        torch=_torch_compactness,
        doc="DCAE eq 4: lam / (2N) sum_n ||h_n - c_assign_n||^2",
    ),
    OpSpec(
        "fidelity", inputs=("a", "z"), differentiable=("a", "z"), cases=_fidelity_cases,
        check=check_pair("fidelity", "a", "z", empty_ok=True), torch=_torch_fidelity,
        doc="DCTL eq 5 data term: ||a - z||_F^2 (a sum)",
    ),
    OpSpec(
        "neg_logdet", inputs=("t",), differentiable=("t",), cases=_logdet_cases, check=_check_filter_bank,
        torch=_torch_neg_logdet,
        doc="DCTL eq 5: -sum_i log sigma_i(M) = -1/2 log det(M M^T), M = t.reshape(F, -1); "
            "gradient -(M^+)^T; rank-deficient M raises ValueError",
    ),
    OpSpec(
        "kmeans_subspace", inputs=("z", "labels"), differentiable=("z",), cases=_subspace_cases,
        attrs={"n_clusters": REQUIRED}, check=_check_kmeans_subspace, torch=_torch_subspace,
        doc="DCTL eq 5: ||Z - Z H^T (H H^T)^-1 H||_F^2 = sum_n ||z_n - mean of z over cluster(n)||^2; "
            "gradient 2 (z_n - mean_cluster(n)); empty clusters contribute nothing",
    ),
]
