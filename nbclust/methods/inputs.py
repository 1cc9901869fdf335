"""The input contract of every estimator: which arrays are accepted and on what scale they are read.

Images ((N, H, W) grey or (N, C, H, W)) are read as intensities in [0, 1]:

- ``uint8`` is divided by 255 and ``uint16`` by 65535 (their dtype's range), ``bool`` is 0 / 1;
- other integer dtypes (``int8`` ... ``int64``, ``uint32``, ``uint64``) are read as 8-bit values and
  must lie in 0..255 (then / 255); anything else is refused, since the range they were
  recorded on cannot be known (a 16-bit image belongs in ``uint16``);
- floats must lie in [0, 1] and are taken as they are; values outside are refused with the
  fix in the message (divide 8-bit data by 255, or rescale), never clipped or guessed.
  No estimator takes [-1, 1] input: DEPICT maps [0, 1] to [-1, 1] itself.

Feature vectors (a 2-D ``(N, D)`` matrix, for the estimators that cluster vectors: DCTL,
``KMeansPixels``, ``ACPICPixels``; DCTL also reads (N, 1, D) and (N, C, 1, D)) are numbers,
not intensities: any finite values, taken as given (DCTL min-max scales them itself,
``input_scale``).

Every array also passes scikit-learn's generic checks (:func:`numeric_array`): no sparse
matrices, no complex or string data, object arrays of numbers converted, NaN and Inf refused;
each refusal is one ``ValueError`` line saying what to do.
"""

from __future__ import annotations

import numpy as np

_DTYPE_RANGE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.bool_): 1.0}


def numeric_array(X) -> np.ndarray:
    """``X`` as a numeric ndarray of any shape (no copy where none is needed); ValueError (TypeError
    for non-numbers inside an object array), in scikit-learn's wording, for what it refuses."""
    from scipy import sparse
    from sklearn.utils.validation import check_array

    if sparse.issparse(X):
        raise ValueError("X is a sparse matrix: nbclust estimators need dense data (X.toarray())")
    return check_array(X, accept_sparse=False, dtype="numeric", ensure_2d=False, allow_nd=True,
                       ensure_all_finite=False, ensure_min_samples=0, ensure_min_features=0)


def checked(X, shapes: str, one_sample: str) -> np.ndarray:
    """:func:`numeric_array` plus what every estimator refuses: 1-D data (with how to reshape one sample,
    ``one_sample``), no samples, a matrix without features, NaN or Inf.  ``shapes``: the accepted
    shapes, for the message."""
    X = numeric_array(X)
    if X.ndim == 1:
        raise ValueError(f"X must have shape {shapes}, got 1-D data of shape {X.shape}; Reshape your data: "
                         f"{one_sample}")
    if X.shape[0] == 0:
        raise ValueError("X is empty (no images)")
    if X.ndim == 2 and X.shape[1] == 0:
        raise ValueError(f"X has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError("X contains NaN or Inf values")
    return X


def image_scale(X: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Images ``X`` (any numeric dtype, finite) as ``dtype`` intensities in [0, 1] (module docstring)."""
    span = _DTYPE_RANGE.get(X.dtype)
    if span is None and X.dtype.kind in "iu":
        lo, hi = (int(X.min()), int(X.max())) if X.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"X holds {X.dtype} values in [{lo}, {hi}]: integer images must be uint8 (0..255), uint16 "
                f"(0..65535) or other integers within 0..255; pass 16-bit data as uint16, or floats in [0, 1]")
        span = 255.0
    if span is not None:
        return np.asarray(X, dtype=dtype) * dtype(1.0 / span)
    X = np.asarray(X, dtype=dtype)
    lo, hi = (float(X.min()), float(X.max())) if X.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        hint = "divide 8-bit data by 255 (or pass them as uint8)" if hi <= 255 and lo >= 0 else \
            "rescale it, e.g. (X - X.min()) / (X.max() - X.min())"
        raise ValueError(f"X holds float values in [{lo:.4g}, {hi:.4g}]: float images must lie in [0, 1]; {hint}")
    return X
