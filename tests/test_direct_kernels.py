"""The direct stride-1 kernels against an einsum over the kernel taps: every tap-grouping path
(8, 4 and single kernel columns, 4-row groups of the last columns), batch sizes that split
unevenly into blocks, both dtypes, and independence of the thread count."""

import numba
import numpy as np
import pytest

from nbclust.kernels.cpu.conv import _direct, _direct_w

SHAPES = [  # (C, O, kh, kw, Ho, Wo, N)
    (1, 3, 9, 9, 4, 5, 7),
    (2, 1, 17, 17, 3, 2, 1),
    (3, 2, 5, 5, 6, 3, 100),
    (2, 2, 3, 12, 2, 5, 9),
    (1, 2, 6, 2, 3, 20, 300),  # Wo * N > BLOCK: several blocks per output row
]


def _expected(xt, w, ho, wo):
    kh, kw = w.shape[2:]
    y = np.zeros((w.shape[0], ho, wo, xt.shape[3]))
    gsum = lambda i, j: np.einsum("oc,cabn->oabn", w[:, :, i, j], xt[:, i:i + ho, j:j + wo])
    for i in range(kh):
        for j in range(kw):
            y += gsum(i, j)
    return y


def _expected_w(xt, gt, kh, kw):
    ho, wo = gt.shape[1:3]
    return np.stack([np.stack([np.einsum("oabn,cabn->oc", gt, xt[:, i:i + ho, j:j + wo]) for j in range(kw)], -1)
                     for i in range(kh)], -2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_direct_kernels_match_einsum(shape, dtype):
    c, o, kh, kw, ho, wo, n = shape
    rng = np.random.default_rng(3)
    xt = rng.normal(size=(c, ho + kh - 1, wo + kw - 1, n))
    w, gt, bias = rng.normal(size=(o, c, kh, kw)), rng.normal(size=(o, ho, wo, n)), rng.normal(size=(o, 1, 1, 1))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    yt = np.full((o, ho, wo, n), np.nan, dtype)  # overwritten, whatever it held
    _direct(xt.astype(dtype), w.astype(dtype), bias.reshape(-1), yt)
    want = _expected(xt, w, ho, wo) + bias
    assert np.abs(yt - want).max() <= tol * np.abs(want).max()
    gw = np.empty(w.shape, dtype)
    _direct_w(xt.astype(dtype), gt.astype(dtype), gw)
    want = _expected_w(xt, gt, kh, kw)
    assert np.abs(gw - want).max() <= tol * np.abs(want).max()


def test_direct_kernels_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    xt = rng.normal(size=(2, 14, 24, 300)).astype(np.float32)
    w, gt = rng.normal(size=(3, 2, 5, 9)).astype(np.float32), rng.normal(size=(3, 10, 16, 300)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            yt, gw = np.zeros((3, 10, 16, 300), np.float32), np.empty(w.shape, np.float32)
            _direct(xt, w, None, yt)
            _direct_w(xt, gt, gw)
            results.append((yt, gw))
        finally:
            numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
