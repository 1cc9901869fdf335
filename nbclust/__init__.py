"""nbclust: deep convolutional image clustering on a gradient-checked NumPy/Numba engine.

The estimators are imported lazily, so ``import nbclust`` (and the CLI's
``--help``) stays fast and does not compile or import Numba kernels.
"""

from nbclust.methods import ESTIMATORS as _ESTIMATORS

__version__ = "0.1.0"

__all__ = ["__version__", *_ESTIMATORS]


def __getattr__(name):
    if name in _ESTIMATORS:
        from nbclust import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'nbclust' has no attribute {name!r}")
