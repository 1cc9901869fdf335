"""The thin boundary between the engine and its three array backends.

Every backend module (``nbclust.reference``, ``nbclust.kernels.cpu``,
``nbclust.kernels.gpu``) exports ``OPS``: a dict from op name to a
``(forward, backward)`` pair with the calling convention documented in
:mod:`nbclust.optable`.  Nothing outside this module imports a backend module
directly; layers, losses and methods ask :func:`get_backend` for one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import numpy as np

BACKENDS = ("reference", "cpu", "cuda")


class Op(NamedTuple):
    forward: Callable[..., Any]
    backward: Callable[..., Any]


class Backend:
    """One backend: its array module ``xp`` and its op implementations."""

    def __init__(self, name: str, xp, ops: dict[str, tuple[Callable, Callable]]):
        self.name = name
        self.xp = xp
        self._ops = {k: Op(*v) for k, v in ops.items()}

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def __reduce__(self):  # pickled by name: the array module and the kernels are looked up again on load
        return get_backend, (self.name,)

    @property
    def op_names(self) -> frozenset[str]:
        return frozenset(self._ops)

    def op(self, name: str) -> Op:
        try:
            return self._ops[name]
        except KeyError:
            raise ValueError(f"op {name!r} is not implemented by backend {self.name!r}") from None

    def loss(self, name: str, *inputs, **attrs):
        """``(value, grads)`` of the loss op ``name``: its value as a float and d value / d input
        (one entry per input, ``None`` for the constant ones)."""
        op = self.op(name)
        value, ctx = op.forward(*inputs, **attrs)
        return float(value), op.backward(self.xp.ones((), dtype=value.dtype), ctx)

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
        from nbclust import reference as impl

        return Backend(name, np, impl.OPS)
    if name == "cpu":
        from nbclust.kernels import cpu as impl

        return Backend(name, np, impl.OPS)
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
    from nbclust.kernels import gpu as impl

    return Backend("cuda", cupy, impl.OPS)


def cuda_available() -> bool:
    try:
        get_backend("cuda")
    except ValueError:
        return False
    return True
