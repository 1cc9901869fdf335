"""The thin boundary between the op table and its three array backends.

A backend is a package (``nbclust.reference``, ``nbclust.kernels.cpu``, ``nbclust.kernels.gpu``)
with the same file map: the modules ``conv``, ``pointwise`` and ``losses``
(:data:`nbclust.engine.optable.FAMILIES`) and one private runtime module.  It implements an op of the
table by defining ``<op>_forward`` and ``<op>_backward`` in the module of the op's family; an
op it does not implement runs the reference's implementation (a *fallback*).  Each fast
backend declares its fallbacks in one list, ``RUNS_REFERENCE`` in its package, and the tests
assert that the list is what :attr:`Backend.fallbacks` finds, so "compiled on cpu" is a
checked fact.  Calls go through the op table (``OPS.conv2d(backend, ...)``, see
:mod:`nbclust.engine.optable`); layers, losses and methods get a backend from :func:`get_backend`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np

from nbclust.engine.optable import OPS, OpSpec
from nbclust.registry import BACKENDS


class Implementation(NamedTuple):
    forward: Callable
    backward: Callable


class Backend:
    """One backend: its array module ``xp``, its package of implementations, and the backend
    whose implementations it falls back to (``reference``; None for the reference itself)."""

    def __init__(self, name: str, xp, package, reference: Backend | None = None):
        self.name = name
        self.xp = xp
        self.package = package
        self.reference = reference
        self._resolved: dict[OpSpec, Implementation] = {}

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def own(self, spec: OpSpec) -> Implementation | None:
        """This backend's own implementation of ``spec`` (None if it has none)."""
        module = getattr(self.package, spec.family)
        forward = getattr(module, f"{spec.name}_forward", None)
        backward = getattr(module, f"{spec.name}_backward", None)
        if (forward is None) != (backward is None):
            raise TypeError(f"{module.__name__} defines only one of {spec.name}_forward and {spec.name}_backward")
        return None if forward is None else Implementation(forward, backward)

    def __reduce__(self):  # pickled by name: the array module and the kernels are looked up again on load
        return get_backend, (self.name,)

    def implementation(self, spec: OpSpec) -> Implementation:
        """What runs ``spec`` here: the own implementation, else the reference's."""
        try:
            return self._resolved[spec]
        except KeyError:
            pass
        impl = self.own(spec)
        if impl is None:
            if self.reference is None:
                raise ValueError(f"op {spec.name!r} has no implementation in {self.package.__name__}.{spec.family}")
            impl = self.reference.implementation(spec)
        self._resolved[spec] = impl
        return impl

    @property
    def fallbacks(self) -> frozenset[str]:
        """The ops of the table this backend runs from the reference."""
        if self.reference is None:
            return frozenset()
        return frozenset(name for name, spec in OPS.items() if self.own(spec) is None)

    def asarray(self, a, dtype=None):
        """``a`` as a C-contiguous array of this backend, 0-d kept 0-d (a copy only where needed)."""
        if self.xp is np and hasattr(a, "get"):
            a = a.get()
        return self.xp.asarray(a, dtype=dtype, order="C")

    def to_numpy(self, a) -> np.ndarray:
        return a.get() if hasattr(a, "get") else np.asarray(a)


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


@functools.cache
def get_backend(name: str = "cpu") -> Backend:
    """The backend called ``name`` (``"reference"``, ``"cpu"`` or ``"cuda"``)."""
    check_backend_name(name)
    if name == "reference":
        from nbclust import reference

        return Backend(name, np, reference)
    if name == "cpu":
        from nbclust.kernels import cpu

        return Backend(name, np, cpu, get_backend("reference"))
    return _cuda_backend()


def _cuda_backend() -> Backend:
    try:
        import cupy
    except ImportError:
        raise ValueError(
            "backend 'cuda' needs CuPy: pip install 'nbclust[gpu]' (and an NVIDIA GPU)"
        ) from None
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise ValueError(f"backend 'cuda' found no usable GPU: {exc}") from None
    if n_devices == 0:
        raise ValueError("backend 'cuda' found no GPU on this machine")
    from nbclust.kernels import gpu

    return Backend("cuda", cupy, gpu, get_backend("reference"))


def cuda_available() -> bool:
    try:
        get_backend("cuda")
    except ValueError:
        return False
    return True
