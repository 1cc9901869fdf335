"""The deep clustering estimators (imported lazily: ``from nbclust.methods import DCAE``).

``ESTIMATORS`` maps each estimator class name to its module; ``available()``
returns the classes whose module is present.
"""

from __future__ import annotations

import importlib

ESTIMATORS = {
    "DCAE": "nbclust.methods.dcae",
    "DBC": "nbclust.methods.dbc",
    "FCAEKMeans": "nbclust.methods.dbc",
    "DCEC": "nbclust.methods.dcec",
    "DCTL": "nbclust.methods.dctl",
    "DEPICT": "nbclust.methods.depict",
}

__all__ = ["ESTIMATORS", "available", *ESTIMATORS]


def available() -> dict[str, type]:
    """``{name: class}`` for the estimators whose module can be imported."""
    out = {}
    for name, module in ESTIMATORS.items():
        try:
            out[name] = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return out


def __getattr__(name):
    if name in ESTIMATORS:
        return getattr(importlib.import_module(ESTIMATORS[name]), name)
    raise AttributeError(f"module 'nbclust.methods' has no attribute {name!r}")
