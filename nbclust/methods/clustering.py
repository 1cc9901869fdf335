"""The clustering pieces several methods share: soft assignments, target distributions, k-means.

Soft assignment (DEC eq 1, DBC eq 1, DCEC): Student's t kernel between embeddings z_i and
centres mu_j, rows normalised::

    s_ij = (1 + ||z_i - mu_j||^2 / v)^(-(v+1)/2) / sum_j' (...)

Targets: a sharpened, frequency-normalised copy of a soft assignment S (N, K)::

    r_ij = (s_ij^a / n_j) / sum_j' (s_ij'^a / n_j')

- DEC / DCEC: a = 2, n_j = f_j = sum_i s_ij (``dec_target``);
- DBC eq 2: a = alpha, n_j = sum_i s_ij^alpha ("boosted"), sum_i s_ij ("soft", DEC's) or 1
  ("none") (``target(S, alpha, normalization)``);
- DEPICT: the released code's a = 2, n_k = f_k (DEC's); Algorithm 1 line 5's a = 1,
  n_k = f_k^(1/2) (``depict_target``).

k-means: :func:`kmeans` (scikit-learn's, seeded, on one thread), :func:`batch_kmeans`
(Lloyd's on a mini-batch, DCTL), :func:`update_centers` (means with empty clusters
re-seeded, DCAE eq 7).  The losses themselves are ops of the op table
(``nbclust.engine.optable``), called as ``OPS.<name>(backend, ...)``.
"""

from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("boosted", "soft", "sqrt", "none")


# ---------------------------------------------------------------- soft assignments and targets
def soft_assign(Z: np.ndarray, centers: np.ndarray, v: float = 1.0) -> np.ndarray:
    """S (N, K): Student's t soft assignment of the rows of ``Z`` to ``centers`` (DEC/DBC eq 1)."""
    d2 = ((Z[:, None, :] - centers[None]) ** 2).sum(-1)
    q = 1.0 / (1.0 + d2 / v)
    if v != 1:
        q = q ** ((v + 1) / 2)
    return q / q.sum(1, keepdims=True)


def target(S: np.ndarray, power: float = 2.0, normalization: str = "soft") -> np.ndarray:
    """R (N, K): r_ij proportional to s_ij^power / n_j, rows normalised (module docstring).

    ``normalization``: n_j = sum_i s_ij^power ("boosted"), sum_i s_ij ("soft"),
    (sum_i s_ij)^(1/2) ("sqrt") or 1 ("none").
    """
    sharp = S if power == 1 else S**power
    if normalization == "boosted":
        n = sharp.sum(0)
    elif normalization == "soft":
        n = S.sum(0)
    elif normalization == "sqrt":
        n = np.sqrt(S.sum(0))
    elif normalization == "none":
        n = np.ones(S.shape[1])
    else:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    R = sharp / n
    return R / R.sum(1, keepdims=True)


def dec_target(Q: np.ndarray) -> np.ndarray:
    """DEC's (and DCEC's) target: p_ij proportional to q_ij^2 / f_j, f_j = sum_i q_ij."""
    return target(Q, 2, "soft")


def depict_target(P: np.ndarray, kind: str) -> np.ndarray:
    """DEPICT's Q from the clean predictions P: the released code's p^2 / f (``"code"``)
    or Algorithm 1 line 5's p / f^(1/2) (``"paper"``)."""
    return target(P, 2, "soft") if kind == "code" else target(P, 1, "sqrt")


# ---------------------------------------------------------------- k-means
_CONTROLLER = None


def single_threaded():
    """A context limiting BLAS and OpenMP to one thread (OpenMP's spinning threads make small
    k-means 10-50x slower on a loaded machine).  The ``ThreadpoolController`` is built once:
    building one scans the loaded libraries (~10 ms, too slow for every batch)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        import sklearn.cluster  # noqa: F401  (loads its OpenMP runtime, so that it is controlled too)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def kmeans(Z: np.ndarray, n_clusters: int, seed: int, n_init: int = 20, init="k-means++"):
    """scikit-learn's ``KMeans`` fitted on the rows of ``Z`` (float64), on one thread."""
    from sklearn.cluster import KMeans

    with single_threaded():
        return KMeans(n_clusters, init=init, n_init=n_init, random_state=seed).fit(np.asarray(Z, dtype=np.float64))


def nearest(Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row of ``Z``."""
    d = (Z**2).sum(1)[:, None] - 2.0 * Z @ centers.T + (centers**2).sum(1)[None, :]
    return np.argmin(d, axis=1).astype(np.int64)


def update_centers(H: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Means of the assigned samples (DCAE eq 7); an empty cluster is re-seeded at a sample
    farthest from its own centre (largest first, one sample per empty cluster)."""
    K = centers.shape[0]
    counts = np.bincount(labels, minlength=K)
    sums = np.zeros_like(centers)
    np.add.at(sums, labels, H)
    new = sums / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        far = np.argsort(-((H - centers[labels]) ** 2).sum(1), kind="stable")
        new[empty] = H[far[: empty.size]]
    return new


def batch_kmeans(a: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100) -> np.ndarray:
    """Labels of Lloyd's k-means on the rows of ``a`` (min(k, n) clusters, k-means++ seeding from
    ``rng``, until no label changes or ``max_iter``); an empty cluster keeps its centre."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    k = min(k, n)
    sq = np.einsum("ij,ij->i", a, a)
    idx = [int(rng.integers(n))]
    d2 = np.maximum(sq - 2.0 * a @ a[idx[0]] + sq[idx[0]], 0.0)
    for _ in range(1, k):
        tot = d2.sum()
        i = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        idx.append(i)
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * a @ a[i] + sq[i], 0.0))
    c = a[idx].copy()
    labels = None
    for _ in range(max_iter):
        new = np.argmin((c * c).sum(1)[None, :] - 2.0 * a @ c.T, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        onehot = np.zeros((k, n))
        onehot[labels, np.arange(n)] = 1.0
        counts = onehot.sum(1)
        full = counts > 0
        c[full] = (onehot @ a)[full] / counts[full, None]
    return labels.astype(np.int64)
