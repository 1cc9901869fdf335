"""The cpu backend's fast paths: float32 polynomial exp (sigmoid, SELU), branch-free pooling, Numba unpooling."""

import numba
import numpy as np
import pytest

from nbclust.engine.backend import get_backend
from nbclust.engine.gradcheck import run_op
from nbclust.engine.optable import OPS

CPU, REF = get_backend("cpu"), get_backend("reference")
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, -1e-7, 1e-7, -88.0, -100.0, -103.9, -104.0, -200.0]


def _grid(dtype):
    """-110..110 densely (not a multiple of the kernels' chunk), then special values."""
    return np.concatenate([np.linspace(-110, 110, 300_007), SPECIAL]).astype(dtype)


def _elementwise_rel(got, want):
    """|got - want| / |want| per element, over finite nonzero float32-normal ``want``."""
    keep = np.isfinite(want) & (np.abs(want) >= np.finfo(np.float32).tiny)
    return np.abs(got[keep].astype(np.float64) - want[keep]) / np.abs(want[keep])


@pytest.mark.parametrize("name", ["sigmoid", "selu"])
def test_float32_exp_paths_have_full_relative_precision(name):
    x = _grid(np.float32)
    got = OPS[name](CPU, x)[0]
    want = OPS[name](REF, x.astype(np.float64))[0]
    assert got.dtype == np.float32
    assert _elementwise_rel(got, want).max() <= 4e-7  # about 3 ulp, everywhere (BCE takes log of sigmoid)
    tiny = np.isfinite(want) & (np.abs(want) < np.finfo(np.float32).tiny)
    assert np.abs(got[tiny].astype(np.float64) - want[tiny]).max(initial=0.0) <= 1.5e-45  # subnormals: 1 unit
    ref32 = OPS[name](REF, x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref32))
    special = np.isin(x, [np.inf, -np.inf, 0.0])
    np.testing.assert_array_equal(got[special], ref32[special])


def test_float32_sigmoid_stays_positive_down_to_minus_103():
    x = np.linspace(-103.9, 0, 10_001, dtype=np.float32)
    assert (OPS.sigmoid(CPU, x)[0] > 0).all()


def test_float32_selu_is_accurate_near_zero():
    x = (np.random.default_rng(0).normal(size=100_000) * 1e-4).astype(np.float32)
    got = OPS.selu(CPU, x)[0]
    assert _elementwise_rel(got, OPS.selu(REF, x.astype(np.float64))[0]).max() <= 4e-7


@pytest.mark.parametrize("name", ["sigmoid", "selu"])
def test_float64_exp_paths_match_numpy(name):
    x = _grid(np.float64)
    got, want = OPS[name](CPU, x)[0], OPS[name](REF, x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert _elementwise_rel(got, want).max() <= 1e-15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sigmoid", "relu", "leaky_relu", "selu", "tanh"])
def test_activations_do_not_depend_on_thread_count(name, dtype):
    x = np.random.default_rng(1).normal(scale=5, size=(600_001,)).astype(dtype)  # parallel paths (ReLU: >= 2^19)
    g = np.random.default_rng(2).normal(size=x.shape).astype(dtype)
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            runs.append(run_op(CPU, OPS[name], (x,), {}, g))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (out1, grad1), (out2, grad2) = runs
    np.testing.assert_array_equal(out1[0], out2[0])
    np.testing.assert_array_equal(grad1[0], grad2[0])


def _pool_input(shape, rng, nan_fraction=0.1):
    """Few levels (many ties) and some NaNs, which count as maximal (the first one wins)."""
    x = rng.integers(0, 4, size=shape).astype(np.float64)
    x[rng.random(shape) < nan_fraction] = np.nan
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride", [
    ((3, 2, 8, 8), (2, 2), (2, 2)),   # the unrolled 2 x 2 path
    ((2, 3, 7, 9), (2, 2), (2, 2)),   # ... with a left-over row and column
    ((2, 2, 9, 9), (3, 3), (1, 1)),   # general, overlapping windows
    ((2, 2, 7, 8), (2, 3), (1, 2)),
])
def test_max_pool2d_ties_and_nans_match_reference(shape, kernel, stride, dtype):
    rng = np.random.default_rng(3)
    x = _pool_input(shape, rng).astype(dtype)
    attrs = {"kernel": kernel, "stride": stride}
    (y, idx), _ = run_op(CPU, OPS.max_pool2d, (x,), attrs)
    (y_ref, idx_ref), _ = run_op(REF, OPS.max_pool2d, (x,), attrs)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)  # equal_nan by default
    np.testing.assert_array_equal(idx, idx_ref)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_unpool2d_matches_reference_with_repeated_indices(dtype, index_dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 4, 5)).astype(dtype)
    idx = rng.integers(0, 30, size=x.shape).astype(index_dtype)  # repeats: the last write wins
    grad_out = rng.normal(size=(3, 2, 5, 6)).astype(dtype)
    attrs = {"output_size": (5, 6)}
    outs, grads = run_op(CPU, OPS["max_unpool2d"], (x, idx), attrs, grad_out)
    outs_ref, grads_ref = run_op(REF, OPS["max_unpool2d"], (x, idx), attrs, grad_out)
    assert outs[0].dtype == dtype and grads[0].dtype == dtype and grads[1] is None
    np.testing.assert_array_equal(outs[0], outs_ref[0])
    np.testing.assert_array_equal(grads[0], grads_ref[0])


@pytest.mark.parametrize("bad", [-1, 30])
def test_max_unpool2d_rejects_indices_outside_the_plane(bad):
    x = np.ones((2, 2, 2, 2))
    idx = np.zeros(x.shape, np.int64)
    idx[1, 1, 1, 0] = bad
    with pytest.raises(ValueError, match=r"\[0, 30\)"):
        OPS.max_unpool2d(CPU, x, idx, output_size=(5, 6))
