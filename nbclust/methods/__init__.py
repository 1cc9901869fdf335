"""The clustering methods and their one registry (imported lazily: ``from nbclust.methods import DCAE``).

A module per deep method (``dcae``, ``dbc``, ``dctl``, ``depict``, ``dcec``), the pieces they share
(``base``, ``params``, ``phases``, ``inputs``, ``architectures``, ``clustering``, ``scaling``,
``metrics``), AC-PIC (``acpic``, DEPICT's initial clustering) and the baselines of ``--method kmeans``
and ``--method acpic`` (``baseline``).

``METHODS`` maps each ``--method`` name of ``python -m nbclust.fit`` to ``(module, class)``;
it lives in :mod:`nbclust.registry` (import-light); the package (``nbclust.DCAE`` ...), the
command line and the experiments runner (``python -m nbclust.experiments``) all read it.  Adding
a method is its module plus one line there.  ``ESTIMATORS`` (class name -> module) are the
deep estimators among them, the :class:`~nbclust.methods.base.DeepClusterer` subclasses: all but
the baselines (:mod:`nbclust.methods.baseline`).  ``available()`` returns the estimator classes
whose module is present.
"""

from __future__ import annotations

import importlib

from nbclust.registry import METHODS

ESTIMATORS = {cls: module for module, cls in METHODS.values() if module != __name__ + ".baseline"}

__all__ = ["METHODS", "ESTIMATORS", "available", "estimator_class", *ESTIMATORS]


def estimator_class(method: str) -> type:
    """The estimator class of the ``--method`` name ``method`` (imports its module)."""
    module, name = METHODS[method][:2]
    return getattr(importlib.import_module(module), name)


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
