"""CuPy CUDA kernels for every op of the table (float32 and float64, deterministic).

Imported only when ``backend="cuda"`` is asked for (see :mod:`nbclust.backend`).
Determinism: no atomics whose order changes a result.  im2col, col2im and the
pooling gradients are gathers through cached index tables (each output element
sums its contributions in a fixed order), segment sums are one-hot GEMMs, and
the remaining reductions are CuPy sums over fixed axes.  Ops that are the
same array expression on both backends (softmax, batch norm, dropout, most
losses, linear, reshape) are the reference's own generic functions.
"""

from nbclust.kernels.gpu import conv as _conv
from nbclust.kernels.gpu import losses as _losses
from nbclust.kernels.gpu import pointwise as _pointwise

OPS = {}
for _module in (_conv, _pointwise, _losses):
    OPS.update(_module.OPS)
