"""The register-tiled conv kernels and their vector intrinsics against NumPy: the two kernels on
random offset tables (tile remainders, empty tap lists, both dtypes), the batch-last layouts,
thread-count independence of the parallel loops, and the routing rule.  The layers built on
them are checked against the reference and torch in test_conv_ops.py and the op table."""

import numba
import numpy as np
import pytest
from numba import njit

from nbclust.kernels.cpu import conv as tiled
from nbclust.kernels.cpu._runtime import VECTOR_BYTES, lanes, vfma, vload, vsplat, vstore, vsum, vzero

DTYPES = [np.float32, np.float64]


@njit
def _vector_ops(a, scalar, out):
    n = lanes(a)
    v = vfma(scalar, vload(a, 0), vsplat(a[n]))  # scalar * a[:n] + a[n]
    v = vfma(v, vload(a, n), v)                  # v * a[n:2n] + v
    vstore(out, 0, v)
    vstore(out, n, vzero(a))
    return vsum(v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_intrinsics(dtype):
    n = VECTOR_BYTES // np.dtype(dtype).itemsize
    a = np.random.default_rng(0).normal(size=2 * n + 1).astype(dtype)
    out = np.full(2 * n, np.nan, dtype)
    total = _vector_ops(a, dtype(1.5), out)
    a64 = a.astype(np.float64)
    want = (1.5 * a64[:n] + a64[n]) * (a64[n:2 * n] + 1)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out[:n], want, rtol=tol, atol=tol * np.abs(want).max())
    assert (out[n:] == 0).all()
    left_to_right = out[0]
    for v in out[1:n]:
        left_to_right = left_to_right + v
    assert total == left_to_right  # in the working precision, left to right


@njit
def _one_fma(a, b, c, out):
    vstore(out, 0, vfma(vload(a, 0), vload(b, 0), vload(c, 0)))


def test_vfma_rounds_once():
    n = VECTOR_BYTES // 4
    a = np.full(n, 1 + 2.0 ** -12, np.float32)  # a * a = 1 + 2^-11 + 2^-24: the last bit is lost
    c = -(a * a)                                 # when the product is rounded first
    out = np.empty(n, np.float32)
    _one_fma(a, a, c, out)
    assert (out == np.float32(2.0 ** -24)).all()


def _tables(rng, n, n_taps, n_vectors, pixel, room):
    """Tap offsets and source vectors reading inside a flat array of ``room`` elements, and
    distinct destinations (whole vectors) in rows of ``n_vectors * n`` elements."""
    taps = rng.integers(0, room // 2, size=n_taps)
    src = rng.integers(0, room // 2 - n, size=n_vectors)
    dst = rng.permutation(n_vectors) * n
    return taps, src, dst


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out, n_taps, n_vectors", [(4, 7, 3), (8, 30, 9), (4, 0, 6), (12, 1, 12)])
def test_correlate_matches_numpy(n_out, n_taps, n_vectors, dtype):
    rng = np.random.default_rng(n_taps)
    n = VECTOR_BYTES // np.dtype(dtype).itemsize
    x = rng.normal(size=400).astype(dtype)
    taps, src, dst = _tables(rng, n, n_taps, n_vectors, n, x.size)
    w = rng.normal(size=(n_out, n_taps)).astype(dtype)
    start = rng.normal(size=n_out).astype(dtype)
    y = np.full((n_out, n_vectors * n), np.nan, dtype)
    tiled._tiled_for_dtype(tiled._correlate, dtype)(x, taps, tiled._tiled_packed(w, dtype), start, src, dst, y)
    reads = x[taps[:, None, None] + src[None, :, None] + np.arange(n)[None, None, :]]  # (K, V, L)
    want = start[:, None, None] + np.einsum("ok,kvl->ovl", w.astype(np.float64), reads)
    got = np.stack([y[:, d:d + n] for d in dst], axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows, n_taps, n_pixels, runs", [(4, 6, 1, 1), (8, 12, 11, 3), (5, 18, 20, 2), (2, 6, 3, 1)])
def test_correlate_grad_matches_numpy(n_rows, n_taps, n_pixels, runs, dtype):
    rng = np.random.default_rng(n_pixels)
    n = VECTOR_BYTES // np.dtype(dtype).itemsize
    run = runs * n
    x = rng.normal(size=500).astype(dtype)
    g = rng.normal(size=(n_rows, 300)).astype(dtype)
    taps = rng.integers(0, 200, size=n_taps)
    xpix = rng.integers(0, 500 - 200 - run, size=n_pixels)
    gpix = rng.integers(0, 300 - run, size=n_pixels)
    acc = np.empty((-(-n_rows // 4) * 4, n_taps, n), dtype)  # rows padded to the register tile's 4
    gw = np.full(acc.shape[:2], np.nan, dtype)
    tiled._tiled_for_dtype(tiled._correlate_grad, dtype)(x, taps, xpix, g, gpix, run, acc, gw)
    gw = gw[:n_rows]
    m = np.arange(run)
    xs = x[taps[:, None, None] + xpix[None, :, None] + m].astype(np.float64)  # (K, P, run)
    gs = g[:, gpix[:, None] + m].astype(np.float64)                            # (O, P, run)
    want = np.einsum("opm,kpm->ok", gs, xs)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert np.abs(gw - want).max() <= tol * np.abs(want).max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_last_pads_crops_and_round_trips(dtype):
    x = np.random.default_rng(1).normal(size=(5, 3, 4, 6)).astype(dtype)
    n = VECTOR_BYTES // np.dtype(dtype).itemsize
    xt = tiled._tiled_batch_last(x, 2, -1, (5, 4))  # 2 rows on top, 1 column cropped on the left
    assert xt.shape == (3, 5, 4, -(-5 // n) * n)
    want = np.zeros(xt.shape, dtype)
    want[:, 2:5, :, :5] = x.transpose(1, 2, 3, 0)[:, :3, 1:5]
    np.testing.assert_array_equal(xt, want)
    padded = np.concatenate([tiled._tiled_batch_last(x, 0, 0, (4, 6)), np.ones((2, 4, 6, xt.shape[3]), dtype)])
    np.testing.assert_array_equal(tiled._tiled_batch_first(padded, x.shape), x)  # extra channels, lanes dropped


def test_kernels_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 8, 15, 13)).astype(np.float32)
    w = rng.normal(size=(10, 8, 5, 5)).astype(np.float32)
    geometry, out_hw = (2, 2, 2, 1), (7, 6)
    g = rng.normal(size=(12, 10, *out_hw)).astype(np.float32)
    assert 10 * 8 * 25 * 7 * 6 * 16 >= 1 << 18  # the kernels' work: their parallel loops run
    results, before = [], numba.get_num_threads()
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            y, xt = tiled._tiled_conv2d_forward(x, w, None, geometry, out_hw)
            results.append((y, *tiled._tiled_conv2d_backward(g, xt, w, geometry, x.shape, True)))
        finally:
            numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_use_tiled_takes_strided_large_kernels():
    assert tiled.use_tiled((5, 5), (2, 2)) and tiled.use_tiled((4, 4), (2, 2)) and tiled.use_tiled((1, 9), (2, 1))
    assert not tiled.use_tiled((3, 3), (2, 2)) and not tiled.use_tiled((5, 5), (1, 1))
