"""nbclust: deep convolutional image clustering on a gradient-checked NumPy/Numba engine.

The estimators are imported lazily, so ``import nbclust`` (and the CLI's
``--help``) stays fast and does not compile or import Numba kernels.

Thread pools: Numba's OpenMP workers and OpenBLAS's workers take turns on the
same cores (a kernel runs either a Numba parallel region or one BLAS call).
Spinning idle workers of one pool steal the cores of the other (measured: up to
10x slower training steps on 2 cores), so unless the user set them,
``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` are set here.
They take effect only if nbclust is imported before NumPy loads OpenBLAS (the
CLI always is).
"""

import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from nbclust.methods import ESTIMATORS as _ESTIMATORS  # noqa: E402

__version__ = "0.1.0"

_OTHERS = {"ACPIC": "nbclust.methods.acpic", "DenseSIFT": "nbclust.data.features"}
_MODULES = {"nn": "nbclust.engine.nn", "optim": "nbclust.engine.optim",
            "datasets": "nbclust.data.datasets", "features": "nbclust.data.features"}
"""The modules offered by a short name (``from nbclust import nn, optim``, ``nbclust.datasets.load``):
each name is the module of its floor itself, imported when first used."""

__all__ = ["__version__", *_ESTIMATORS, *_OTHERS]


def __getattr__(name):
    if name in _ESTIMATORS:
        from nbclust import methods

        return getattr(methods, name)
    if name in _OTHERS:
        return getattr(importlib.import_module(_OTHERS[name]), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'nbclust' has no attribute {name!r}")
