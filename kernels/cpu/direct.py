"""Direct stride-1 convolution kernels, batch last, for narrow layers with large kernels.

DCTL's and DCAE's 9x9 filters, DCAE's 17x17 transposed filter and FCAE's
1->6 and 6->1 5x5 layers have a few channel pairs per kernel tap: there the
im2col matrix is kh*kw times the image for a GEMM of a few rows, and these
kernels (no column matrix) are faster.  :func:`use_direct` decides per layer.

Batch last, an image row ``xt[c, h]`` (W, N) is one contiguous vector and the
kernel column j shifts it by j*N: the output row ``yt[o, a]`` (Wo*N values)
is ``sum_{c,i,j} w[o,c,i,j] xt[c,a+i].flat[j*N:][:Wo*N]``, a sum of long
contiguous streams.  The inner loops run over (a block of) that whole row,
several taps per pass, so loop overhead, alias checks and accumulator traffic
are amortised over thousands of values (the former loops over N alone, per
output pixel, were dominated by them).  Their indices are unsigned: Numba's
negative-index wraparound otherwise keeps LLVM from vectorising them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from nbclust.kernels.cpu.layout import placed
from nbclust.kernels.cpu.pointwise import run

BLOCK = 4096
"""Output values (of one output row, Wo*N) per parallel task of :func:`_direct`."""


def _tap_offsets(shape, kh, kw, count):
    """Offsets into ``xt.reshape(-1)``, xt of ``shape`` (C, Hp, Wp, N), of the taps (c, i, j),
    row-major, for output row 0, ``count`` >= C*kh*kw of them (the extra ones repeat the last
    tap): tap k of output row a reads ``xt.flat[a*Wp*N + off[k]:]``, whose value m = b*N + n
    is xt[c, a+i, b+j, n]."""
    k = np.minimum(np.arange(count), shape[0] * kh * kw - 1)
    return ((k // (kh * kw) * shape[1] + k // kw % kh) * shape[2] + k % kw) * shape[3]


def _direct(xt, w, b, yt):
    """yt[o,a,b,:] = b[o] + sum_{c,i,j} w[o,c,i,j] xt[c,a+i,b+j,:], stride 1, batch innermost.

    ``xt`` is the padded input (C, Hp, Wp, N), ``yt`` (O, Ho, Wo, N) is overwritten
    (both C-contiguous); ``b`` is the bias or None.  The taps (c, i, j) go in
    row-major order four at a time (one load and store of the output per four
    multiply-adds), the last group completed with zero weights on a zero row.
    """
    n_out, taps = w.shape[0], w[0].size
    wk = np.zeros((n_out, -(-taps // 4) * 4), dtype=yt.dtype)
    wk[:, :taps] = w.reshape(n_out, taps)
    start = np.zeros(n_out, yt.dtype) if b is None else b.astype(yt.dtype)
    off = _tap_offsets(xt.shape, w.shape[2], w.shape[3], wk.shape[1])
    _tap_rows(xt.reshape(-1), off, wk, start, taps, xt.shape[2] * xt.shape[3], yt)


@njit(cache=True, parallel=True, fastmath={"contract"})
def _tap_rows(x, off, wk, start, taps, row, yt):
    """yt[o, a].flat[m] = start[o] + sum_k wk[o, k] x[a*row + off[k] + m], taps k < ``taps`` in
    order, four per pass.  Parallel over (o, output row a, block of ``BLOCK`` values of the row):
    every output value is summed in the same order whatever the thread count; the start value
    is written block by block, while the block is in cache (no separate pass to zero ``yt``)."""
    n_out, ho_size = yt.shape[0], yt.shape[1]
    size = yt.shape[2] * yt.shape[3]
    blocks = (size + BLOCK - 1) // BLOCK
    zero = np.zeros(size, yt.dtype)
    for t in prange(n_out * ho_size * blocks):
        o, a, m0 = t // (ho_size * blocks), (t // blocks) % ho_size, (t % blocks) * BLOCK
        m1 = min(m0 + BLOCK, size)
        y, base = yt[o, a].reshape(size), a * row
        y[m0:m1] = start[o]
        for k in range(0, taps, 4):
            s0 = x[base + off[k]:]
            s1 = x[base + off[k + 1]:] if k + 1 < taps else zero
            s2 = x[base + off[k + 2]:] if k + 2 < taps else zero
            s3 = x[base + off[k + 3]:] if k + 3 < taps else zero
            w0, w1, w2, w3 = wk[o, k], wk[o, k + 1], wk[o, k + 2], wk[o, k + 3]
            for m in range(uint64(m0), uint64(m1)):
                y[m] = y[m] + w0 * s0[m] + w1 * s1[m] + w2 * s2[m] + w3 * s3[m]


def _direct_w(xt, gt, gw):
    """gw[o,c,i,j] = sum_{a,b,n} gt[o,a,b,n] xt[c,a+i,b+j,n], stride 1, batch innermost
    (``xt`` and ``gt`` C-contiguous), eight taps (c, i, j) at a time: see :func:`_tap_dots`."""
    n_out, taps = gw.shape[0], gw[0].size
    out = np.empty((n_out, -(-taps // 8) * 8), dtype=gw.dtype)
    off = _tap_offsets(xt.shape, gw.shape[2], gw.shape[3], out.shape[1])
    _tap_dots(xt.reshape(-1), off, xt.shape[2] * xt.shape[3], gt, out)
    gw[...] = out[:, :taps].reshape(gw.shape)


@njit(cache=True, parallel=True, fastmath=True)
def _tap_dots(x, off, row, gt, out):
    """out[o, k] = sum_a dot(gt[o, a].flat, x[a*row + off[k]:][:Wo*N]).

    Per output row a, the dot products of the Wo*N contiguous values of
    ``gt[o, a]`` with eight taps' shifted input rows at once (each loaded
    gradient value feeds eight sums), in the working precision, the rows
    summed in float64 in a fixed order.  Parallel over (o, group of 8 taps).
    """
    n_out, ho_size = gt.shape[0], gt.shape[1]
    size, groups = gt.shape[2] * gt.shape[3], out.shape[1] // 8
    for t in prange(n_out * groups):
        o, k = t // groups, (t % groups) * 8
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
        for a in range(ho_size):
            g, base = gt[o, a].reshape(size), a * row
            s0, s1, s2, s3 = x[base + off[k]:], x[base + off[k + 1]:], x[base + off[k + 2]:], x[base + off[k + 3]:]
            s4, s5, s6, s7 = x[base + off[k + 4]:], x[base + off[k + 5]:], x[base + off[k + 6]:], x[base + off[k + 7]:]
            d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = g[0] * np.float32(0)  # float32 sums stay float32
            for m in range(size):
                v = g[m]
                d0 += v * s0[m]
                d1 += v * s1[m]
                d2 += v * s2[m]
                d3 += v * s3[m]
                d4 += v * s4[m]
                d5 += v * s5[m]
                d6 += v * s6[m]
                d7 += v * s7[m]
            t0, t1, t2, t3, t4, t5, t6, t7 = t0 + d0, t1 + d1, t2 + d2, t3 + d3, t4 + d4, t5 + d5, t6 + d6, t7 + d7
        out[o, k], out[o, k + 1], out[o, k + 2], out[o, k + 3] = t0, t1, t2, t3
        out[o, k + 4], out[o, k + 5], out[o, k + 6], out[o, k + 7] = t4, t5, t6, t7


def use_direct(c_in, c_out, kernel, stride) -> bool:
    """Direct kernels for stride-1 layers with few channel pairs per kernel tap (DCTL's 9x9
    filters, DCAE's 9x9 convolutions and 17x17 transposed one, FCAE's 1->6 and 6->1 5x5), where
    the column matrix is kh*kw times the image for a GEMM of a few rows; batch-last im2col + one
    GEMM for everything else.  The threshold was measured per layer (benchmarks/)."""
    return tuple(stride) == (1, 1) and 5 * c_in * c_out <= 2 * kernel[0] * kernel[1]


def _flipped(w):
    """(A, B, kh, kw) -> (B, A, kh, kw) rotated by 180 degrees: the kernel of the adjoint correlation."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def direct_adjoint(gt, w, padding, hw, b=None):
    """out[c,h,v] = b[c] + sum_{o,i,j} w[o,c,i,j] gt[o,h+ph-i,v+pw-j] (the adjoint of a stride-1
    correlation in its input, plus a bias or None), as a correlation of gt, placed at
    (kh-1-ph, kw-1-pw), with the flipped kernel.  Batch last: returns (C, H, W, N).

    ``padding`` is ``(ph, pw)``, the *top and left* padding of the correlation (the crop of a
    transposed one): the bottom and right padding need not be known, as ``hw`` fixes the output
    and :func:`placed` drops whatever of ``gt`` falls outside; so asymmetric paddings work as they are."""
    (kh, kw), (ph, pw) = w.shape[2:], padding
    gpad = placed(gt, kh - 1 - ph, kw - 1 - pw, (hw[0] + kh - 1, hw[1] + kw - 1))
    out = np.empty((w.shape[1], *hw, gt.shape[3]), dtype=gt.dtype)
    run(_direct, out.size * w[:, 0].size, gpad, _flipped(w), b, out)
    return out
