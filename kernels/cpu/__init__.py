"""Numba CPU kernels (``cache=True``; float32 and float64) for the ops of the table.

Every op has a Numba kernel here but those of :data:`RUNS_REFERENCE`, which run the reference's
code (:mod:`nbclust.reference`); ``neg_logdet`` is one small LAPACK SVD, computed in float64
for float32 filters (the reference stays in the input dtype).

Threading: a kernel either runs a Numba ``prange`` region or makes one BLAS
call, never both at once; where a Numba region must call BLAS it runs under
``threadpoolctl.threadpool_limits(1)`` so the two thread pools do not nest.

Memory: see :mod:`nbclust.kernels.cpu._runtime` (freed blocks are reused, not unmapped).
"""

from nbclust.kernels.cpu import _runtime, conv, losses, pointwise  # noqa: F401  (read by nbclust.engine.backend)

RUNS_REFERENCE = frozenset({
    "reshape",  # metadata only: x.reshape is the same on every backend
})
"""The ops this backend runs from the reference (tests/test_ops.py asserts it is exactly these)."""

_runtime.keep_freed_memory()
