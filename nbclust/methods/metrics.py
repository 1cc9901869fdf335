"""Clustering metrics: accuracy under the best one-to-one matching, NMI, ARI.

Which NMI each paper reports: DCAE (seed 000/001) and DEPICT (seed 004) use the
arithmetic-mean normalisation of the reference code they compare with
(sklearn's default); DBC (seed 002) and DCTL (seed 003) do not say, and
``average_method="arithmetic"`` is used for all.  Pass ``"geometric"`` to get
the sqrt(H(Y) H(C)) normalisation of the older literature.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _check(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("empty label arrays")
    return y_true, y_pred


def cluster_acc(y_true, y_pred) -> float:
    """max over one-to-one maps m (clusters -> classes) of mean(y_true == m(y_pred)).

    Hungarian matching (scipy linear_sum_assignment) on the contingency matrix;
    rectangular when there are more clusters than classes (or fewer), so the
    unmatched clusters count as errors.
    """
    y_true, y_pred = _check(y_true, y_pred)
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    w = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(w, (p, t), 1)
    rows, cols = linear_sum_assignment(-w)
    return float(w[rows, cols].sum() / len(y_true))


def nmi(y_true, y_pred, average_method: str = "arithmetic") -> float:
    """Normalised mutual information (sklearn ``normalized_mutual_info_score``)."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(normalized_mutual_info_score(y_true, y_pred, average_method=average_method))


def ari(y_true, y_pred) -> float:
    """Adjusted Rand index (sklearn ``adjusted_rand_score``)."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(adjusted_rand_score(y_true, y_pred))
