"""Per-feature min-max scaling of feature vectors, shared by DCTL and the k-means baseline.

Both estimators take ``input_scale="minmax"`` for a feature matrix (``--features``), so that
"DCTL against k-means" compares the two on the same input.  Each feature is mapped to [0, 1]
with the minimum and range of the training rows; a constant feature maps to 0.
"""

from __future__ import annotations

import numpy as np

def minmax_statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(minimum, range) over the rows (axis 0) of ``X``; the range is 1 where a feature is constant."""
    lo = X.min(axis=0)
    span = X.max(axis=0) - lo
    return lo, np.where(span > 0, span, 1).astype(X.dtype)


def minmax_apply(X: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    """``(X - lo) / span``: the training statistics applied to ``X`` (training or new rows)."""
    return (X - lo) / span
