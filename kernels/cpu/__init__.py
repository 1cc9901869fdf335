"""Numba CPU kernels for every op of the table (``cache=True``; float32 and float64).

Threading: a kernel either runs a Numba ``prange`` region or makes one BLAS
call, never both at once; where a Numba region must call BLAS it runs under
``threadpoolctl.threadpool_limits(1)`` so the two thread pools do not nest.

Memory: see :mod:`nbclust.kernels.cpu.memory` (freed blocks are reused, not unmapped).
"""

from nbclust.kernels.cpu import conv as _conv
from nbclust.kernels.cpu import losses as _losses
from nbclust.kernels.cpu import memory as _memory
from nbclust.kernels.cpu import pointwise as _pointwise
from nbclust.kernels.cpu import pool as _pool

OPS = {}
for _module in (_conv, _pool, _pointwise, _losses):
    OPS.update(_module.OPS)

_memory.keep_freed_memory()
