"""CuPy losses and clustering terms: the reference's, except its ``np.add.at`` segment sums.

Every loss of :mod:`nbclust.reference.losses` is array-module generic and runs
here on CuPy arrays (every reduction a CuPy sum over a fixed axis, hence
deterministic; ``grad_out`` stays on the device).  The per-cluster segment
sums of ``kmeans_compactness`` (backward) and ``kmeans_subspace`` (forward)
are scatter-adds there; here they are one-hot ``(K, N)`` matmuls (cuBLAS
GEMM, deterministic, no atomics).  ``bce_with_logits`` is one fused
ElementwiseKernel each way (the per-element term, then a CuPy mean; and the
gradient), instead of the reference's five temporaries per pass.
"""

from __future__ import annotations

from nbclust.kernels.gpu._runtime import xp
from nbclust.reference import losses as _ref


def _kernel(name: str, params: str, expr: str):
    """``out = expr`` elementwise, ``T`` being the floating type of the inputs."""
    return xp.ElementwiseKernel(params, "T out", f"out = {expr};", f"nbclust_{name}")


_NEG_ABS = "(a >= (T)0 ? -a : a)"
_K = {
    # max(a, 0) - a x + log1p(exp(-|a|)): -(x log s + (1-x) log(1-s)), s = sigmoid(a), no clamp
    "bce_with_logits": _kernel("bce_with_logits", "T a, T x",
                               f"(a > (T)0 ? a : (T)0) - a * x + log1p(exp({_NEG_ABS}))"),
    # scale (sigmoid(a) - x), sigmoid from e = exp(-|a|) so that nothing overflows
    "bce_with_logits_grad": _kernel("bce_with_logits_grad", "T a, T x, T scale",
                                    f"scale * ((a >= (T)0 ? (T)1 : exp({_NEG_ABS})) / ((T)1 + exp({_NEG_ABS})) - x)"),
}
"""Kernel bodies, one C expression each (also checked by NVRTC in tests/test_gpu.py)."""


def bce_with_logits_forward(logits, target):
    """The reference's formula (see ``nbclust.reference.losses``), fused: one kernel, one mean."""
    target = target.astype(logits.dtype, copy=False)
    return _ref.loss_value(xp.mean(_K["bce_with_logits"](logits, target)), logits), (logits, target)


def bce_with_logits_backward(grad_out, ctx):
    """d/dlogits = (sigmoid(a) - t) grad_out / n; the target is constant."""
    logits, target = ctx
    scale = (_ref.scalar(grad_out, logits) / logits.size).astype(logits.dtype, copy=False)
    return _K["bce_with_logits_grad"](logits, target, scale), None


def _one_hot(labels, k, dtype):
    """``(K, N)`` indicator H with ``H[k, n] = labels[n] == k``."""
    return (xp.arange(k)[:, None] == labels[None, :]).astype(dtype)


kmeans_compactness_forward = _ref.kmeans_compactness_forward  # array-generic (its backward is the segment sum)


def kmeans_compactness_backward(grad_out, ctx):
    """d/dh_n = lam/N resid_n; d/dc_k = -sum_{n: assign(n)=k} d/dh_n = -(H @ d/dh)_k."""
    resid, assign, k, lam = ctx
    gh = resid * (_ref.scalar(grad_out, resid) * (lam / resid.shape[0]))
    return gh, -xp.matmul(_one_hot(assign, k, gh.dtype), gh), None


def kmeans_subspace_forward(z, labels, n_clusters):
    """sum_n ||z_n - mean of z over cluster(n)||^2, cluster sums ``H @ z`` (no N x N matrix)."""
    onehot = _one_hot(labels, n_clusters, z.dtype)
    means = xp.matmul(onehot, z) / xp.maximum(onehot.sum(axis=1), 1)[:, None]
    resid = z - means[labels]
    return _ref.loss_value(xp.sum(resid * resid), z), resid


kmeans_subspace_backward = _ref.kmeans_subspace_backward  # array-generic
