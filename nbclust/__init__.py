"""nbclust: deep convolutional image clustering on a gradient-checked NumPy/Numba engine.

The estimators are imported lazily, so ``import nbclust`` (and the CLI's
``--help``) stays fast and does not compile or import Numba kernels.
"""

__version__ = "0.1.0"

_ESTIMATORS = {
    "DCAE": "nbclust.methods.dcae",
    "DBC": "nbclust.methods.dbc",
    "FCAEKMeans": "nbclust.methods.dbc",
    "DCTL": "nbclust.methods.dctl",
    "DEPICT": "nbclust.methods.depict",
    "DCEC": "nbclust.methods.dcec",
}

__all__ = ["__version__", *_ESTIMATORS]


def __getattr__(name):
    if name in _ESTIMATORS:
        import importlib

        return getattr(importlib.import_module(_ESTIMATORS[name]), name)
    raise AttributeError(f"module 'nbclust' has no attribute {name!r}")
