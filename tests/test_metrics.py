import itertools

import numpy as np
import pytest

from nbclust.methods.metrics import ari, cluster_acc, nmi


def brute_acc(y, c):
    classes, clusters = np.unique(y), np.unique(c)
    best = 0
    k = max(len(classes), len(clusters))
    cl = list(clusters) + [None] * (k - len(clusters))
    for perm in itertools.permutations(list(classes) + [None] * (k - len(classes))):
        m = dict(zip(cl, perm))
        best = max(best, sum(m.get(ci) == yi for yi, ci in zip(y, c)))
    return best / len(y)


def test_perfect_up_to_permutation():
    y = np.array([0, 0, 1, 1, 2, 2])
    c = np.array([2, 2, 0, 0, 1, 1])
    assert cluster_acc(y, c) == 1.0
    assert nmi(y, c) == pytest.approx(1.0)
    assert ari(y, c) == pytest.approx(1.0)


@pytest.mark.parametrize("n_clusters", [2, 3, 5])
def test_acc_matches_brute_force(n_clusters):
    rng = np.random.default_rng(n_clusters)
    y = rng.integers(0, 3, size=30)
    c = rng.integers(0, n_clusters, size=30)
    assert cluster_acc(y, c) == pytest.approx(brute_acc(y, c))


def test_more_clusters_than_classes():
    y = np.array([0, 0, 0, 1, 1, 1])
    c = np.array([0, 0, 3, 1, 1, 2])  # 4 clusters, 2 classes: only 2 can be matched
    assert cluster_acc(y, c) == pytest.approx(4 / 6)


def test_labels_need_not_be_integers():
    assert cluster_acc(np.array(["a", "b", "b"]), np.array([7, 3, 3])) == 1.0


def test_nmi_averaging():
    y = np.array([0, 0, 1, 1, 1, 1])
    c = np.array([0, 1, 1, 1, 1, 1])
    assert nmi(y, c, "geometric") != nmi(y, c)


def test_bad_lengths():
    with pytest.raises(ValueError, match="labels"):
        cluster_acc([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        nmi([], [])
