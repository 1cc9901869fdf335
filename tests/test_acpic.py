"""ACPIC (nbclust.methods.acpic): AC-PIC against a dense, obvious re-implementation of the released
DEPICT/gactoolbox code, on data with known structure, determinism, validation, edge cases."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs, make_circles, make_moons

from nbclust.methods.acpic import ACPIC
from nbclust.methods.metrics import cluster_acc


# ------------------------------------------------------------------------------------------
# dense reference: gacBuildDigraph / gacNNMerge / gacMerging as released, N x N matrices
# ------------------------------------------------------------------------------------------
def dense_graph(X, K=20, a=1.0, sigma_neighbors=None, self_loops=True, doubling=True):
    N = len(X)
    D = cdist(X, X) ** 2  # predict_ac_mpi: squared distances
    # MATLAB's stable sort (ties: lower index first), except that the sample itself comes
    # first also when it has duplicates (ACPIC's documented rule)
    key = D.copy()
    np.fill_diagonal(key, -1.0)
    NNIndex = np.argsort(key, axis=1, kind="stable")
    sortedDist = np.take_along_axis(D, NNIndex, axis=1)
    NNIndex = NNIndex[:, :K + 1]
    ks = max(K + 1, 4) if sigma_neighbors is None else sigma_neighbors + 1  # the paper: N_i^3
    sig2 = np.mean(sortedDist[:, 1:ks]) * a
    tmpNNDist = np.min(sortedDist[:, 1:], axis=1)
    while doubling and any(np.exp(-tmpNNDist / sig2) < 1e-5):
        sig2 = 2 * sig2
    W = np.zeros((N, N))
    K = NNIndex.shape[1] - 1
    rows = np.repeat(np.arange(N), K)
    W[rows, NNIndex[:, 1:].ravel()] = np.exp(-sortedDist[:, 1:K + 1] * (1 / sig2)).ravel()
    if self_loops:
        W += np.eye(N)
    P = (1.0 / W.sum(axis=1))[:, None] * W
    return P, NNIndex, sig2


def dense_nn_merge(NNIndex, p=1):
    N = len(NNIndex)
    labels = np.zeros(N)
    counter = 1
    for i in range(N):
        idx = NNIndex[i, :p + 1]
        assigned = np.unique(labels[idx][labels[idx] > 0])
        if len(assigned) == 0:
            labels[idx] = counter
            counter += 1
        elif len(assigned) == 1:
            labels[idx] = assigned[0]
        else:
            labels[idx] = assigned[0]
            for lab in assigned[1:]:
                labels[labels == lab] = assigned[0]
    return [np.where(labels == u)[0] for u in np.unique(labels)]


def dense_merging(P, clusters, n_clusters, z=0.01):
    M = np.eye(len(P)) - z * P

    def S(c):
        return np.linalg.solve(M[np.ix_(c, c)], np.ones(len(c))).sum() / len(c) ** 2

    def affinity(ci, cj):
        # exactly 0 unless edges run both ways (the port's value is then +-rounding noise)
        if not (P[np.ix_(ci, cj)].any() and P[np.ix_(cj, ci)].any()):
            return 0.0
        ni, nj = len(ci), len(cj)
        y = np.zeros((ni + nj, 2))
        y[:ni, 0] = 1
        y[ni:, 1] = 1
        L = np.linalg.solve(M[np.ix_(np.r_[ci, cj], np.r_[ci, cj])], y)
        return L[:ni, 0].sum() / ni**2 + L[ni:, 1].sum() / nj**2 - S(ci) - S(cj)

    clusters = list(clusters)
    n0 = len(clusters)
    T = np.full((n0, n0), np.inf)  # upper triangle: -affinity
    for j in range(n0):
        for i in range(j):
            T[i, j] = -affinity(clusters[i], clusters[j])
    cur, merges, values = n0, [], []
    while cur > n_clusters:
        sub = T[:cur, :cur]
        col_min, col_arg = sub.min(axis=0), sub.argmin(axis=0)
        j = int(np.argmin(col_min))
        i = int(col_arg[j])
        i, j = min(i, j), max(i, j)
        merges.append((i, j))
        values.append(-T[i, j])
        new = np.union1d(clusters[i], clusters[j])
        if j != cur - 1:
            clusters[j] = clusters[cur - 1]
            T[:j, j] = T[:j, cur - 1]
            T[j, j + 1:cur - 1] = T[j + 1:cur - 1, cur - 1]
        clusters[i] = new
        clusters.pop()
        T[:, cur - 1] = np.inf
        T[cur - 1, :] = np.inf
        cur -= 1
        if cur <= n_clusters:
            break
        for g in range(i):
            T[g, i] = -affinity(clusters[g], new)
        for g in range(i + 1, cur):
            T[i, g] = -affinity(clusters[g], new)
    labels = np.empty(len(P), np.int64)
    for p, c in enumerate(clusters):
        labels[c] = p
    return labels, np.array(merges, np.int64).reshape(-1, 2), np.array(values)


def dense_acpic(X, n_clusters, K=20, a=1.0, z=0.01, p=1, **graph_options):
    P, NNIndex, sig2 = dense_graph(X, K, a, **graph_options)
    init = dense_nn_merge(NNIndex, p)
    labels, merges, values = dense_merging(P, init, n_clusters, z)
    init_labels = np.empty(len(X), np.int64)
    for p, c in enumerate(init):
        init_labels[c] = p
    return labels, merges, values, init_labels, sig2


# ------------------------------------------------------------------------------------------
# (b) exact agreement with the dense reference: graph, initial clusters, merge sequence
# ------------------------------------------------------------------------------------------
def _case(name):
    if name == "blobs":
        X, _ = make_blobs(n_samples=150, centers=4, cluster_std=1.5, random_state=1)
        return X, dict(n_clusters=4, n_neighbors=20)
    if name == "aniso":
        X, _ = make_blobs(n_samples=120, centers=3, cluster_std=1.0, random_state=2)
        return X @ np.array([[0.6, -0.6], [-0.4, 0.8]]), dict(n_clusters=2, n_neighbors=7)
    if name == "uniform5d":
        return np.random.default_rng(3).random((100, 5)), dict(n_clusters=3, n_neighbors=10)
    if name == "moons_paper_graph":  # the paper's reading of the graph, 2-NN initial clusters
        X, _ = make_moons(140, noise=0.06, random_state=4)
        return X, dict(n_clusters=2, n_neighbors=12, a=2.0, z=0.05, init_neighbors=2, sigma_neighbors=3,
                       self_loops=False, sigma_doubling=False)
    raise KeyError(name)


def _dense_args(params):
    return dict(n_clusters=params["n_clusters"], K=params.get("n_neighbors", 20), a=params.get("a", 1.0),
                z=params.get("z", 0.01), p=params.get("init_neighbors", 1),
                sigma_neighbors=params.get("sigma_neighbors"), self_loops=params.get("self_loops", True),
                doubling=params.get("sigma_doubling", True))


@pytest.mark.parametrize("name", ["blobs", "aniso", "uniform5d", "moons_paper_graph"])
def test_matches_dense_reference(name):
    X, params = _case(name)
    ref_labels, ref_merges, ref_values, ref_init, ref_sig2 = dense_acpic(X, **_dense_args(params))
    est = ACPIC(**params).fit(X)
    assert est.sigma2_ == pytest.approx(ref_sig2, rel=1e-12)
    np.testing.assert_array_equal(est.initial_labels_, ref_init)
    assert est.n_initial_clusters_ == ref_init.max() + 1
    np.testing.assert_array_equal(est.merges_, ref_merges)
    np.testing.assert_allclose(est.merge_affinities_, ref_values, rtol=1e-7, atol=0)
    assert (ref_values > 0).all()  # decided by the values, not by ties at zero
    np.testing.assert_array_equal(est.labels_, ref_labels)


def test_zero_affinity_merges_follow_the_position_rule():
    """Three far-apart groups and n_clusters=1: once every group is one cluster no pair has a
    positive affinity; the released code then merges positions (0, 1) (exact zeros)."""
    X, _ = make_blobs(n_samples=90, centers=[[0, 0], [100, 0], [0, 100]], cluster_std=1.0, random_state=5)
    ref_labels, ref_merges, ref_values, _, _ = dense_acpic(X, 1, K=8)
    est = ACPIC(n_clusters=1, n_neighbors=8).fit(X)
    np.testing.assert_array_equal(est.merges_, ref_merges)
    assert (est.merge_affinities_[-2:] == 0).all() and (ref_values[-2:] == 0).all()
    np.testing.assert_array_equal(est.merges_[-2:], [[0, 1], [0, 1]])
    np.testing.assert_allclose(est.merge_affinities_, ref_values, rtol=1e-7, atol=0)
    assert (est.labels_ == 0).all()


# ------------------------------------------------------------------------------------------
# (a) known structure
# ------------------------------------------------------------------------------------------
def test_separated_blobs_are_recovered():
    X, y = make_blobs(n_samples=600, centers=5, cluster_std=0.6, random_state=0)
    labels = ACPIC(n_clusters=5).fit_predict(X)
    assert cluster_acc(y, labels) >= 0.99


@pytest.mark.parametrize("data", ["moons", "circles"])
def test_manifolds_where_kmeans_fails(data):
    if data == "moons":
        X, y = make_moons(400, noise=0.05, random_state=0)
    else:
        X, y = make_circles(400, factor=0.5, noise=0.05, random_state=0)
    acc = cluster_acc(y, ACPIC(n_clusters=2).fit_predict(X))
    acc_km = cluster_acc(y, KMeans(2, n_init=10, random_state=0).fit_predict(X))
    assert acc >= 0.95
    assert acc_km < 0.9


# ------------------------------------------------------------------------------------------
# (c) determinism
# ------------------------------------------------------------------------------------------
def test_deterministic():
    X = np.random.default_rng(7).normal(size=(500, 6))
    a, b = ACPIC(n_clusters=7).fit(X), ACPIC(n_clusters=7).fit(X.copy())
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.merges_, b.merges_)
    np.testing.assert_array_equal(a.merge_affinities_, b.merge_affinities_)
    assert a.labels_.dtype == np.int64 and set(np.unique(a.labels_)) == set(range(7))


# ------------------------------------------------------------------------------------------
# (d) validation
# ------------------------------------------------------------------------------------------
_X = np.random.default_rng(0).random((30, 3))


@pytest.mark.parametrize("X, params, match", [
    (_X, dict(n_clusters=0), r"n_clusters must be an integer in \[1, 30\], got 0"),
    (_X, dict(n_clusters=31), r"n_clusters must be an integer in \[1, 30\], got 31"),
    (_X, dict(n_clusters=2.0), r"n_clusters must be an integer"),
    (_X, dict(n_clusters=True), r"n_clusters must be an integer"),
    (_X, dict(n_neighbors=0), r"n_neighbors must be an integer in \[1, 29\] \(below the 30 samples\), got 0"),
    (_X, dict(a=0.0), r"a must be a finite number > 0"),
    (_X, dict(a=float("inf")), r"a must be a finite number > 0"),
    (_X, dict(z=1.0), r"z must be a number with 0 < z < 1, got 1.0"),
    (_X, dict(z=0), r"z must be a number with 0 < z < 1"),
    (_X, dict(init_neighbors=0), r"init_neighbors must be an integer in \[1, n_neighbors=20\]"),
    (_X, dict(n_neighbors=3, init_neighbors=4), r"init_neighbors must be an integer in \[1, n_neighbors=3\]"),
    (_X, dict(sigma_neighbors=0), r"sigma_neighbors must be None or an integer >= 1"),
    (_X, dict(self_loops=1), r"self_loops must be a bool"),
    (np.where(np.arange(90).reshape(30, 3) == 4, np.nan, _X), {}, r"X contains NaN or Inf"),
    (np.where(np.arange(90).reshape(30, 3) == 4, np.inf, _X), {}, r"X contains NaN or Inf"),
    (_X.ravel(), {}, r"X must be 2-D \(n_samples, n_features\), got shape \(90,\)"),
    (_X[None], {}, r"X must be 2-D"),
    (_X[:1], dict(n_clusters=1), r"ACPIC needs at least 2 samples, got 1"),
    (_X[:, :0], {}, r"X has 0 feature\(s\) \(shape=\(30, 0\)\) while a minimum of 1 is required"),
    (_X.astype(complex), {}, r"real numbers"),
    (np.array([["a", "b"], ["c", "d"]]), dict(n_clusters=1), r"real numbers"),
    (np.array([[1e200, 0], [-1e200, 0], [0, 1], [0, 2]]), dict(n_clusters=1, n_neighbors=3), r"overflow"),
    (_X, dict(n_neighbors=30), r"n_neighbors must be an integer in \[1, 29\] \(below the 30 samples\), got 30"),
])
def test_validation(X, params, match):
    with pytest.raises(ValueError, match=match):
        ACPIC(**params).fit(X)


def test_validation_messages_are_one_line():
    for params in (dict(n_clusters=0), dict(z=2), dict(init_neighbors=99)):
        with pytest.raises(ValueError) as info:
            ACPIC(**params).fit(_X)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# (e) edge cases
# ------------------------------------------------------------------------------------------
def test_n_clusters_equal_to_initial_clusters_means_no_merge():
    X, _ = make_blobs(n_samples=80, centers=3, random_state=6)
    n0 = ACPIC(n_clusters=1).fit(X).n_initial_clusters_
    est = ACPIC(n_clusters=n0).fit(X)
    assert est.merges_.shape == (0, 2)
    np.testing.assert_array_equal(est.labels_, est.initial_labels_)
    assert est.labels_.max() == n0 - 1
    one_less = ACPIC(n_clusters=n0 - 1).fit(X)
    assert one_less.merges_.shape == (1, 2) and one_less.labels_.max() == n0 - 2


def test_more_clusters_than_initial_clusters_warns():
    X, _ = make_blobs(n_samples=40, centers=2, random_state=6)
    with pytest.warns(UserWarning, match="initial clusters"):
        est = ACPIC(n_clusters=40).fit(X)
    np.testing.assert_array_equal(est.labels_, est.initial_labels_)
    assert est.labels_.max() + 1 == est.n_initial_clusters_ < 40


def test_duplicates_and_zero_distances():
    """Every sample three times: zero distances, ties everywhere.  The sample itself comes
    first, then its copies (by index); the copies form the initial clusters and the result
    equals the dense reference (which breaks ties the same way)."""
    X, _ = make_blobs(n_samples=60, centers=3, cluster_std=0.5, random_state=8)
    Xd = np.repeat(X, 3, axis=0)
    ref_labels, ref_merges, ref_values, ref_init, ref_sig2 = dense_acpic(Xd, 3)
    est = ACPIC(n_clusters=3).fit(Xd)
    np.testing.assert_array_equal(est.initial_labels_, np.repeat(np.arange(60), 3))
    np.testing.assert_array_equal(est.initial_labels_, ref_init)
    assert est.sigma2_ == pytest.approx(ref_sig2, rel=1e-12)
    np.testing.assert_array_equal(est.merges_, ref_merges)
    np.testing.assert_allclose(est.merge_affinities_, ref_values, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(est.labels_, ref_labels)
    lab = est.labels_.reshape(-1, 3)
    assert (lab == lab[:, :1]).all()
    np.testing.assert_array_equal(ACPIC(n_clusters=3).fit(Xd).labels_, est.labels_)


def test_all_samples_identical():
    X = np.ones((12, 3))
    est = ACPIC(n_clusters=1, n_neighbors=5).fit(X)
    assert (est.labels_ == 0).all() and np.isfinite(est.sigma2_)
    with pytest.warns(UserWarning):
        est = ACPIC(n_clusters=2, n_neighbors=5).fit(X)  # one initial cluster (everyone's nearest is sample 0/1)
    assert (est.labels_ == 0).all()


@pytest.mark.filterwarnings("ignore:ACPIC. only")
@pytest.mark.parametrize("n, k", [(2, 1), (2, 2), (3, 1), (3, 2), (5, 2)])
def test_tiny_inputs(n, k):
    X = np.arange(n * 2, dtype=float).reshape(n, 2) ** 1.5
    est = ACPIC(n_clusters=k, n_neighbors=n - 1).fit(X)
    assert est.labels_.shape == (n,)
    assert len(np.unique(est.labels_)) == min(k, est.n_initial_clusters_)


def test_n_neighbors_must_be_below_n():
    """The port silently used the N - 1 other samples (the CLI ran 198 s for --n-neighbors 5000 on 1797
    images); the graph needs n_neighbors < N, so anything else is refused in one line."""
    X = np.random.default_rng(9).random((15, 2))
    assert ACPIC(n_clusters=2, n_neighbors=14).fit(X).labels_.shape == (15,)
    with pytest.raises(ValueError) as info:
        ACPIC(n_clusters=2, n_neighbors=100).fit(X)
    assert str(info.value) == "n_neighbors must be an integer in [1, 14] (below the 15 samples), got 100"


def test_int_and_float32_input():
    X, _ = make_blobs(n_samples=60, centers=3, random_state=10)
    Xi = np.round(X * 10).astype(np.int32)
    np.testing.assert_array_equal(ACPIC(3).fit(Xi).labels_, ACPIC(3).fit(Xi.astype(np.float64)).labels_)
    assert ACPIC(3).fit(X.astype(np.float32)).labels_.shape == (60,)


def test_sklearn_api():
    from sklearn.base import clone
    est = ACPIC(n_clusters=3, z=0.02)
    assert clone(est).get_params()["z"] == 0.02
    X, _ = make_blobs(n_samples=60, centers=3, random_state=11)
    np.testing.assert_array_equal(est.fit_predict(X), est.labels_)
