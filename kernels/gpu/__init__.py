"""CuPy CUDA kernels (float32 and float64, deterministic) for the ops of the table.

Imported only when ``backend="cuda"`` is asked for (see :mod:`nbclust.engine.backend`).
Determinism: no atomics whose order changes a result.  im2col, col2im and the
pooling gradients are gathers through cached index tables (each output element
sums its contributions in a fixed order), segment sums are one-hot GEMMs, and
the remaining reductions are CuPy sums over fixed axes.  The ops of
:data:`RUNS_REFERENCE` are the same array expression on both backends: they run the
reference's own array-generic functions on device arrays.
"""

from nbclust.kernels.gpu import conv, losses, pointwise  # noqa: F401  (read by nbclust.engine.backend)

RUNS_REFERENCE = frozenset({
    "linear", "reshape",  # one cuBLAS matmul; metadata only
    "softmax", "log_softmax", "batch_norm", "dropout",  # a few array expressions, CuPy reductions over fixed axes
    "mse", "bce", "kl_div", "soft_cross_entropy", "frobenius",  # the same, on batch-sized arrays
    "student_t", "dbc_kl", "fidelity", "neg_logdet",  # the same (neg_logdet: CuPy's SVD of a small matrix)
})
"""The ops this backend runs from the reference (tests/test_gpu.py asserts it is exactly these)."""
