"""Numba CPU kernels (``cache=True``; float32 and float64) over the reference's op table.

``OPS`` is the reference's table (:mod:`nbclust.reference`) with the ops this backend
compiles put over it, as the cuda backend (:mod:`nbclust.kernels.gpu`) does: an op
without a reason to be compiled is not written twice.  Every op of the table has a
Numba kernel here except ``reshape`` (metadata only) and ``neg_logdet`` (one small
LAPACK SVD; the override computes it in float64 for float32 filters, where the
reference stays in the input dtype).

Threading: a kernel either runs a Numba ``prange`` region or makes one BLAS
call, never both at once; where a Numba region must call BLAS it runs under
``threadpoolctl.threadpool_limits(1)`` so the two thread pools do not nest.

Memory: see :mod:`nbclust.kernels.cpu.memory` (freed blocks are reused, not unmapped).
"""

from nbclust import reference as _reference
from nbclust.kernels.cpu import conv as _conv
from nbclust.kernels.cpu import losses as _losses
from nbclust.kernels.cpu import memory as _memory
from nbclust.kernels.cpu import pointwise as _pointwise
from nbclust.kernels.cpu import pool as _pool

OPS = {**_reference.OPS, **_conv.OPS, **_pool.OPS, **_pointwise.OPS, **_losses.OPS}

_memory.keep_freed_memory()
