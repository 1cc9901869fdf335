"""Register-tiled convolution kernels (implicit GEMM, explicit vectors, batch last).

The strided layers with large kernels (DEPICT's and DCEC's 5x5 stride-2 layers, 32-64
channels; see :func:`use_tiled`) as two Numba kernels over batch-last arrays ``(C, H, W, Np)``,
the batch padded with zeros to ``Np``, a multiple of the vector length L
(:mod:`nbclust.kernels.cpu.simd`): no column matrix, no BLAS call, one parallel region per product.

- :func:`_correlate`, ``y[o, dst[v]:][:L] = start[o] + sum_k w[o, k] x[taps[k] + src[v]:][:L]``:
  every output vector v (L batch entries of one output pixel) is the sum over the taps k
  (input channel, kernel row, kernel column) of a weight times the input vector the tap
  reads; ``taps`` and ``src`` are element offsets, so strides and padding are only tables.
  Register tile: 4 output channels x 3 vectors, 12 accumulators, each loaded input vector
  feeding 4 fused multiply-adds and each broadcast weight 3.  The 3 vectors' taps are first
  copied to a contiguous buffer (while the next tile's are prefetched), which the groups of
  4 channels then stream.
- :func:`_correlate_grad`, ``gw[o, k] = sum_p dot(g[o, gpix[p]:][:Np], x[taps[k] + xpix[p]:][:Np])``:
  the weight gradient, 4 channels x 6 taps per register tile (24 accumulators), the Np batch
  values of each pixel contiguous in both operands; lane sums kept per (o, k) across pixels,
  added in a fixed order at the end.

With them (``A`` the weight's first axis):

- conv2d forward and conv_transpose2d's input gradient are :func:`forward` (a strided
  correlation of a padded input);
- conv2d's input gradient and conv_transpose2d forward are :func:`adjoint`, by phases: output
  row h + top = s*h' + r only meets kernel rows i = r + s*m, at input row h' - m, so each of
  the s_h * s_w phases is a stride-1 correlation of the zero-padded input with its sub-kernel
  w[:, :, r + s*m, q + s*m'], written to its own rows and columns (each output once: no
  scatter, no races);
- both weight gradients are :func:`weight_gradient`.

Every output value is summed in one fixed order whatever the thread count.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange, uint64

from nbclust.kernels.cpu.layout import batch_first, batch_last
from nbclust.kernels.cpu.pointwise import run
from nbclust.kernels.cpu.simd import VECTOR_BYTES, lanes, prefetch, vfma, vload, vsplat, vstore, vsum, vzero

ROWS, VECTORS, TAPS = 4, 3, 6
"""Register tiles: output channels and vectors of :func:`_correlate`; channels (``ROWS``) and
taps of :func:`_correlate_grad`."""

TAP_BLOCK, PIXEL_BLOCK = 8, 8
"""Tiles of taps per parallel task of :func:`_correlate_grad`, and pixels per pass of its register tile."""


@njit(cache=True)
def _splat3(b):
    v = vsplat(b)
    return v, v, v


@njit(cache=True)
def _fma3(w, x, acc):
    """acc[i] + w * x[i] for the three vectors of the tuples ``x`` and ``acc`` (``w`` a scalar)."""
    return vfma(w, x[0], acc[0]), vfma(w, x[1], acc[1]), vfma(w, x[2], acc[2])


@njit(cache=True)
def _store3(a, offsets, v):
    """The three vectors of the tuple ``v`` to ``a`` at the three ``offsets``."""
    vstore(a, offsets[0], v[0])
    vstore(a, offsets[1], v[1])
    vstore(a, offsets[2], v[2])


@njit(cache=True, parallel=True)
def _correlate(x, taps, w, start, src, dst, y):
    """y[o, dst[v]:][:L] = start[o] + sum_k w[o // 4, k, o % 4] x[taps[k] + src[v]:][:L], k in order.

    ``x`` flat; ``w`` (O/4, K, 4) packed weights; ``src``, ``dst`` a multiple of 3 long; ``y``
    (O, size) rows.  Parallel over tiles of 3 vectors; the accumulators are four 3-tuples.
    """
    groups, n_taps = w.shape[0], w.shape[1]
    n = lanes(x)
    last = src.size - VECTORS
    for t in prange(src.size // VECTORS):
        v = t * VECTORS
        s0, s1, s2 = src[v], src[v + 1], src[v + 2]
        p0, p2 = src[min(v + VECTORS, last)], src[min(v + VECTORS, last) + 2] + n - 1
        buf = np.empty(n_taps * VECTORS * n, x.dtype)
        for k in range(n_taps):
            b = taps[k]
            prefetch(x, b + p0)
            prefetch(x, b + p2)
            vstore(buf, VECTORS * n * k, vload(x, b + s0))
            vstore(buf, VECTORS * n * k + n, vload(x, b + s1))
            vstore(buf, VECTORS * n * k + 2 * n, vload(x, b + s2))
        d = (dst[v], dst[v + 1], dst[v + 2])
        for g in range(groups):
            o = ROWS * g
            a0, a1, a2, a3 = _splat3(start[o]), _splat3(start[o + 1]), _splat3(start[o + 2]), _splat3(start[o + 3])
            wg = w[g]
            for k in range(uint64(n_taps)):
                b = VECTORS * n * k
                xs = vload(buf, b), vload(buf, b + n), vload(buf, b + 2 * n)
                a0, a1 = _fma3(wg[k, 0], xs, a0), _fma3(wg[k, 1], xs, a1)
                a2, a3 = _fma3(wg[k, 2], xs, a2), _fma3(wg[k, 3], xs, a3)
            _store3(y[o], d, a0)
            _store3(y[o + 1], d, a1)
            _store3(y[o + 2], d, a2)
            _store3(y[o + 3], d, a3)


@njit(cache=True)
def _load6(a, i, n):
    """Six consecutive vectors of ``a`` from ``i``."""
    return (vload(a, i), vload(a, i + n), vload(a, i + 2 * n),
            vload(a, i + 3 * n), vload(a, i + 4 * n), vload(a, i + 5 * n))


@njit(cache=True)
def _store6(a, i, n, v):
    """The six vectors of the tuple ``v`` to ``a`` from ``i``."""
    vstore(a, i, v[0])
    vstore(a, i + n, v[1])
    vstore(a, i + 2 * n, v[2])
    vstore(a, i + 3 * n, v[3])
    vstore(a, i + 4 * n, v[4])
    vstore(a, i + 5 * n, v[5])


@njit(cache=True)
def _gather6(a, offsets, m):
    """The vectors of ``a`` at the six ``offsets`` plus ``m``."""
    o0, o1, o2, o3, o4, o5 = offsets
    return vload(a, o0 + m), vload(a, o1 + m), vload(a, o2 + m), vload(a, o3 + m), vload(a, o4 + m), vload(a, o5 + m)


@njit(cache=True)
def _fma6(v, y, acc):
    """acc[i] + v * y[i] for the six vectors of the tuples ``y`` and ``acc``."""
    return (vfma(v, y[0], acc[0]), vfma(v, y[1], acc[1]), vfma(v, y[2], acc[2]),
            vfma(v, y[3], acc[3]), vfma(v, y[4], acc[4]), vfma(v, y[5], acc[5]))


@njit(cache=True, parallel=True)
def _correlate_grad(x, taps, xpix, g, gpix, run_length, acc, gw):
    """gw[o, k] = sum_p sum_{m < run_length} g[o, gpix[p] + m] x[taps[k] + xpix[p] + m].

    ``x`` flat; ``g`` (O, size) rows; ``gw`` (O', K), O' >= O a multiple of 4 (rows o >= O are
    left undefined); ``taps`` a multiple of 6 long; ``run_length`` a multiple of L.  Register
    tile: 4 channels x 6 taps, 24 accumulators (AVX-512 has 32 vector registers; with AVX2's 16
    some would spill) as four 6-tuples, each loaded g vector feeding 6 of them, over
    ``PIXEL_BLOCK`` pixels at a time; ``acc`` (O', K, L) keeps the lane sums between pixel
    blocks, the pixels in order (the vectors of a pixel in order), then each gw[o, k] adds its
    lanes in order.  Parallel over blocks of ``TAP_BLOCK`` tiles of taps.
    """
    n_rows, n_taps, n = gw.shape[0], gw.shape[1], lanes(x)
    row, last = g.shape[1], g.shape[0] - 1  # rows of the tile past the last read the last one
    tiles, lane_rows = n_taps // TAPS, uint64(n_taps * n)
    gf, af, end = g.reshape(-1), acc.reshape(-1), uint64(run_length)
    for block in prange((tiles + TAP_BLOCK - 1) // TAP_BLOCK):
        t0, t1 = block * TAP_BLOCK, min(block * TAP_BLOCK + TAP_BLOCK, tiles)
        for p0 in range(0, xpix.size, PIXEL_BLOCK):
            for o in range(0, n_rows, ROWS):
                for t in range(t0, t1):
                    c0 = uint64((o * n_taps + TAPS * t) * n)
                    if p0 == 0:
                        z = vzero(x)
                        a0 = a1 = a2 = a3 = (z, z, z, z, z, z)
                    else:
                        a0, a1 = _load6(af, c0, n), _load6(af, c0 + lane_rows, n)
                        a2, a3 = _load6(af, c0 + 2 * lane_rows, n), _load6(af, c0 + 3 * lane_rows, n)
                    for p in range(p0, min(p0 + PIXEL_BLOCK, xpix.size)):
                        g0, g1 = uint64(o * row + gpix[p]), uint64(min(o + 1, last) * row + gpix[p])
                        g2, g3 = uint64(min(o + 2, last) * row + gpix[p]), uint64(min(o + 3, last) * row + gpix[p])
                        k, xp = TAPS * t, xpix[p]
                        offsets = (uint64(taps[k] + xp), uint64(taps[k + 1] + xp), uint64(taps[k + 2] + xp),
                                   uint64(taps[k + 3] + xp), uint64(taps[k + 4] + xp), uint64(taps[k + 5] + xp))
                        for m in range(uint64(0), end, uint64(n)):
                            y = _gather6(x, offsets, m)
                            a0 = _fma6(vload(gf, g0 + m), y, a0)
                            a1 = _fma6(vload(gf, g1 + m), y, a1)
                            a2 = _fma6(vload(gf, g2 + m), y, a2)
                            a3 = _fma6(vload(gf, g3 + m), y, a3)
                    _store6(af, c0, n, a0)
                    _store6(af, c0 + lane_rows, n, a1)
                    _store6(af, c0 + 2 * lane_rows, n, a2)
                    _store6(af, c0 + 3 * lane_rows, n, a3)
        for o in range(n_rows):
            for k in range(TAPS * t0, TAPS * t1):
                gw[o, k] = vsum(vload(af, (o * n_taps + k) * n))


_SERIAL = {kernel: njit(cache=True)(kernel.py_func) for kernel in (_correlate, _correlate_grad)}


def _for_dtype(kernel, dtype):
    """``kernel`` for float32, the dtype networks train in; for float64 (gradient checks, reference
    runs) a serial compilation of the same code: compiling the parallel form for both dtypes adds
    2 s to the cold compile of every kernel (benchmarks/startup.py), which has a 30 s budget."""
    return kernel if np.dtype(dtype) == np.float32 else _SERIAL[kernel]


def _lanes(dtype) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def to_batch_last(x, top, left, hw):
    """x (N, C, H, W) -> (C, *hw, Np), placed at (top, left) in zeros (cropped where it does not
    fit), Np = N rounded up to the vector length (the extra lanes zero)."""
    (n, c, h, w), lanes_n = x.shape, _ceil_to(x.shape[0], _lanes(x.dtype))
    xt = batch_last(x)
    if top == left == 0 and tuple(hw) == (h, w) and lanes_n == n:
        return xt
    out = np.empty((c, *hw, lanes_n), dtype=x.dtype)
    r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + h, hw[0]), min(left + w, hw[1])
    out[:, r0:r1, c0:c1, :n] = xt[:, r0 - top:r1 - top, c0 - left:c1 - left]
    out[:, :r0], out[:, r1:] = 0, 0  # the padding only: the copy above overwrites the rest
    out[:, r0:r1, :c0], out[:, r0:r1, c1:], out[:, r0:r1, c0:c1, n:] = 0, 0, 0
    return out


def to_batch_first(yt, shape):
    """The (N, C, H, W) ``shape`` of a batch-last (C', H, W, Np) ``yt`` (C' >= C, Np >= N) back in
    batch-first order."""
    return batch_first(yt[:shape[1]])[:shape[0]]


def _table(build):
    """``build`` memoised (its arguments are ints): the offset tables depend on shapes only, and
    building them costs more than a small layer's arithmetic.  The arrays are read-only."""
    @functools.lru_cache(maxsize=512)
    def cached(*args):
        out = build(*args)
        out.flags.writeable = False
        return out
    return cached


@_table
def _grid(rows, cols, pitch, run_length, n, multiple):
    """Offsets ((r * pitch + c) * run_length + j * n) for r, c in the ``(start, count, step)`` ranges
    ``rows`` and ``cols`` and j < run_length / n, in that order (the vectors, or with n = run_length
    the pixels, of a batch-last array of row pitch ``pitch``), the last repeated up to a multiple of
    ``multiple``."""
    r = rows[0] + rows[2] * np.arange(rows[1])
    c = cols[0] + cols[2] * np.arange(cols[1])
    pix = (r[:, None] * pitch + c[None, :]).reshape(-1, 1) * run_length
    return _padded((pix + np.arange(0, run_length, n)[None, :]).reshape(-1), multiple)


@_table
def _taps(channels, rows, cols, shape, multiple):
    """Offsets of the taps (c, i, j), row-major, into a batch-last array of ``shape`` (C, H, W, Np),
    i and j in the ``(start, count, step)`` ranges ``rows`` and ``cols`` (the kernel's row and
    column offsets), the last repeated up to a multiple of ``multiple``."""
    _, h, w, run_length = shape
    i = rows[0] + rows[2] * np.arange(rows[1])
    j = cols[0] + cols[2] * np.arange(cols[1])
    tap = (np.arange(channels)[:, None, None] * h + i[None, :, None]) * w + j[None, None, :]
    return _padded(tap.reshape(-1) * run_length, multiple)


def _padded(a, multiple):
    """``a`` with its last entry repeated up to a multiple of ``multiple``."""
    return np.concatenate([a, np.repeat(a[-1:], -a.size % multiple)]) if a.size else a


def _packed(w_mat, dtype):
    """(B, K) weights -> (ceil(B/4), K, 4): each group of 4 output channels' weights per tap together."""
    rows = _ceil_to(w_mat.shape[0], ROWS)
    wp = np.zeros((rows, w_mat.shape[1]), dtype)
    wp[:w_mat.shape[0]] = w_mat
    return np.ascontiguousarray(wp.reshape(rows // ROWS, ROWS, -1).transpose(0, 2, 1))


def _starts(b, rows, dtype):
    start = np.zeros(_ceil_to(rows, ROWS), dtype)
    if b is not None:
        start[:rows] = b
    return start


def _correlation(xt, taps, w_mat, b, src, dst, out):
    """``out`` (B', size) rows o < B: b[o] + sum_k w_mat[o, k] xt.flat[taps[k] + src[v]:][:L] at dst[v]."""
    run(_for_dtype(_correlate, xt.dtype), src.size * taps.size * out.shape[0] * _lanes(xt.dtype), xt.reshape(-1), taps,
        _packed(w_mat, xt.dtype), _starts(b, w_mat.shape[0], xt.dtype), src, dst, out)


def forward(xt, w_mat, b, stride, kernel, out_hw):
    """y (B', Ho, Wo, Np) = b + the correlation, at ``stride``, of the padded batch-last ``xt``
    (C, (Ho-1)*sh + kh, (Wo-1)*sw + kw, Np) with the (B, C*kh*kw) ``w_mat``; rows B' >= B padded."""
    (sh, sw), (ho, wo), (_, _, wp, run_length) = stride, out_hw, xt.shape
    n = _lanes(xt.dtype)
    taps = _taps(xt.shape[0], (0, kernel[0], 1), (0, kernel[1], 1), xt.shape, 1)
    src = _grid((0, ho, sh), (0, wo, sw), wp, run_length, n, VECTORS)
    dst = _grid((0, ho, 1), (0, wo, 1), wo, run_length, n, VECTORS)
    out = np.empty((_ceil_to(w_mat.shape[0], ROWS), ho, wo, run_length), dtype=xt.dtype)
    _correlation(xt, taps, w_mat, b, src, dst, out.reshape(out.shape[0], -1))
    return out


def adjoint_layout(x, kernel, stride, out_hw, top_left):
    """(batch-last x zero-padded for :func:`adjoint`, its (top, left) padding): ceil(k/s) - 1 rows
    and columns before the image and enough after it for every phase's reads."""
    pads = tuple(-(-k // s) - 1 for k, s in zip(kernel, stride))
    size = tuple(p + max(n, (m - 1 + c) // s + 1)
                 for p, n, m, c, s in zip(pads, x.shape[2:], out_hw, top_left, stride))
    return to_batch_last(x, *pads, size), pads


def adjoint(xa, w, b, stride, top_left, out_hw, pads):
    """out (B', H, W, Np): out[c, h, v] = b[c] + sum_{a,i,j} w[a, c, i, j] x[a, (h+top-i)/sh, (v+left-j)/sw]
    over the i, j where both divide (the adjoint of a strided correlation), phase by phase;
    ``xa``, ``pads`` from :func:`adjoint_layout`, ``w`` (A, B, kh, kw)."""
    (sh, sw), (top, left), (height, width) = stride, top_left, out_hw
    (pt, pl), (_, _, wg, run_length), n = pads, xa.shape, _lanes(xa.dtype)
    out = np.empty((_ceil_to(w.shape[1], ROWS), height, width, run_length), dtype=xa.dtype)
    for rh in range(sh):
        r0, r1 = -((rh - top) // sh), (height - 1 + top - rh) // sh + 1  # x rows h' of this phase
        for rw in range(sw):
            c0, c1 = -((rw - left) // sw), (width - 1 + left - rw) // sw + 1
            if r1 <= r0 or c1 <= c0:
                continue
            sub = w[:, :, rh::sh, rw::sw]  # kernel rows rh + sh*m meet x row h' - m
            taps = _taps(w.shape[0], (pt, sub.shape[2], -1), (pl, sub.shape[3], -1), xa.shape, 1)
            src = _grid((r0, r1 - r0, 1), (c0, c1 - c0, 1), wg, run_length, n, VECTORS)
            dst = _grid((r0 * sh + rh - top, r1 - r0, sh), (c0 * sw + rw - left, c1 - c0, sw), width, run_length, n,
                        VECTORS)
            w_mat = sub.transpose(1, 0, 2, 3).reshape(w.shape[1], -1)
            _correlation(xa, taps, w_mat, b, src, dst, out.reshape(out.shape[0], -1))
    return out


def weight_gradient(xt, kernel, stride, ga, pads, small_hw):
    """gw (A, C*kh*kw): gw[a, (c, i, j)] = sum_{p, q, n} g[a, p, q, n] xt[c, p*sh + i, q*sw + j, n]
    for the :func:`forward` layout ``xt`` and the :func:`adjoint_layout` ``ga`` (``pads``) of the
    small image g (``small_hw``)."""
    (sh, sw), (_, _, wp, run_length), (pt, pl), (ho, wo) = stride, xt.shape, pads, small_hw
    taps = _taps(xt.shape[0], (0, kernel[0], 1), (0, kernel[1], 1), xt.shape, TAPS)
    xpix = _grid((0, ho, sh), (0, wo, sw), wp, run_length, run_length, 1)
    gpix = _grid((pt, ho, 1), (pl, wo, 1), ga.shape[2], run_length, run_length, 1)
    acc = np.empty((_ceil_to(ga.shape[0], ROWS), taps.size, _lanes(xt.dtype)), dtype=xt.dtype)
    gw = np.empty(acc.shape[:2], dtype=xt.dtype)
    run(_for_dtype(_correlate_grad, xt.dtype), gw.size * xpix.size * run_length, xt.reshape(-1), taps, xpix,
        ga.reshape(ga.shape[0], -1), gpix, run_length, acc, gw)
    return gw[:ga.shape[0], :xt.shape[0] * kernel[0] * kernel[1]]


def conv2d_forward(x, w, b, geometry, out_hw):
    """(y, xt saved for the backward pass) of a conv2d (``geometry`` (sh, sw, top, left))."""
    (sh, sw, top, left), (kh, kw), (ho, wo) = geometry, w.shape[2:], out_hw
    xt = to_batch_last(x, top, left, ((ho - 1) * sh + kh, (wo - 1) * sw + kw))
    yt = forward(xt, w.reshape(w.shape[0], -1), b, (sh, sw), (kh, kw), out_hw)
    return to_batch_first(yt, (x.shape[0], w.shape[0], ho, wo)), xt


def conv2d_backward(g, xt, w, geometry, x_shape, input_grad):
    """(grad_x or None, grad_w) of :func:`conv2d_forward`."""
    stride, top_left, kernel = geometry[:2], geometry[2:], w.shape[2:]
    ga, pads = adjoint_layout(g, kernel, stride, x_shape[2:], top_left)
    grad_w = weight_gradient(xt, kernel, stride, ga, pads, g.shape[2:]).reshape(w.shape)
    if not input_grad:
        return None, grad_w
    return to_batch_first(adjoint(ga, w, None, stride, top_left, x_shape[2:], pads), x_shape), grad_w


def conv_transpose2d_forward(x, w, b, geometry, out_hw):
    """(y, (x in the adjoint layout, its padding) saved) of a conv_transpose2d (w (Cin, Cout, kh, kw))."""
    stride, top_left, kernel = geometry[:2], geometry[2:], w.shape[2:]
    xa, pads = adjoint_layout(x, kernel, stride, out_hw, top_left)
    yt = adjoint(xa, w, b, stride, top_left, out_hw, pads)
    return to_batch_first(yt, (x.shape[0], w.shape[1], *out_hw)), (xa, pads)


def conv_transpose2d_backward(g, saved, w, geometry, x_shape, input_grad):
    """(grad_x or None, grad_w) of :func:`conv_transpose2d_forward`."""
    (xa, pads), (sh, sw, top, left), (kh, kw) = saved, geometry, w.shape[2:]
    gt = to_batch_last(g, top, left, ((x_shape[2] - 1) * sh + kh, (x_shape[3] - 1) * sw + kw))
    grad_w = weight_gradient(gt, (kh, kw), (sh, sw), xa, pads, x_shape[2:]).reshape(w.shape)
    if not input_grad:
        return None, grad_w
    yt = forward(gt, w.reshape(w.shape[0], -1), None, (sh, sw), (kh, kw), x_shape[2:])
    return to_batch_first(yt, x_shape), grad_w


def use_tiled(kernel, stride) -> bool:
    """These kernels for strided layers with at least 4 kernel taps per phase on average (DEPICT's
    and DCEC's 5x5 stride-2 layers; 4x4 stride 2): faster there than im2col + GEMM at every channel
    count measured (4 to 64, benchmarks/); im2col + GEMM for 3x3 stride 2, where a phase has 1-4
    taps and the per-tile overheads dominate."""
    return max(stride) > 1 and kernel[0] * kernel[1] >= 4 * stride[0] * stride[1]
