"""Direct stride-1 convolution kernels, batch last, for narrow layers with large kernels.

DCTL's and DCAE's 9x9 filters, DCAE's 17x17 transposed filter and FCAE's
1->6 and 6->1 5x5 layers have a few channel pairs per kernel tap: there the
im2col matrix is kh*kw times the image for a GEMM of a few rows, and these
kernels (no column matrix) are faster.  :func:`use_direct` decides per layer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nbclust.kernels.cpu.layout import placed
from nbclust.kernels.cpu.pointwise import run


@njit(cache=True, parallel=True, fastmath={"contract"})
def _direct(xt, w, yt):
    """yt[o,a,b,:] += sum_{c,i,j} w[o,c,i,j] xt[c,a+i,b+j,:], stride 1, batch innermost.

    ``xt`` is the padded input (C, Hp, Wp, N), ``yt`` (O, Ho, Wo, N) holds zeros
    or the bias.  The innermost loop runs over the batch (contiguous and long,
    so it vectorises however small the image) and adds four kernel columns at
    once: one load and store of the accumulator per four multiply-adds.
    Parallel over (o, output row).
    """
    n_out, ho_size, wo_size, nb = yt.shape
    n_ch, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    kw4 = kw - kw % 4
    for t in prange(n_out * ho_size):
        o, a = t // ho_size, t % ho_size
        for b in range(wo_size):
            acc = yt[o, a, b]
            for c in range(n_ch):
                for i in range(kh):
                    row = xt[c, a + i]
                    for j in range(0, kw4, 4):
                        w0, w1, w2, w3 = w[o, c, i, j], w[o, c, i, j + 1], w[o, c, i, j + 2], w[o, c, i, j + 3]
                        s0, s1, s2, s3 = row[b + j], row[b + j + 1], row[b + j + 2], row[b + j + 3]
                        for n in range(nb):
                            acc[n] += w0 * s0[n] + w1 * s1[n] + w2 * s2[n] + w3 * s3[n]
                    for j in range(kw4, kw):
                        wv = w[o, c, i, j]
                        src = row[b + j]
                        for n in range(nb):
                            acc[n] += wv * src[n]


@njit(cache=True, parallel=True, fastmath=True)
def _direct_w(xt, gt, gw):
    """gw[o,c,i,j] = sum_{a,b,n} gt[o,a,b,n] xt[c,a+i,b+j,n], stride 1, batch innermost:
    one dot product of Wo*N contiguous values per output row, rows summed in
    float64 in a fixed order.  Parallel over (o, c)."""
    n_out, ho_size, wo_size, nb = gt.shape
    n_ch, kh, kw = xt.shape[0], gw.shape[2], gw.shape[3]
    m = wo_size * nb
    for t in prange(n_out * n_ch):
        o, c = t // n_ch, t % n_ch
        for i in range(kh):
            for j in range(kw):
                total = 0.0
                for a in range(ho_size):
                    g = gt[o, a].reshape(m)
                    x = xt[c, a + i, j:j + wo_size].reshape(m)
                    s = g[0] * 0
                    for k in range(m):
                        s += g[k] * x[k]
                    total += s
                gw[o, c, i, j] = total


def use_direct(c_in, c_out, kernel, stride) -> bool:
    """Direct kernels for stride-1 layers with few channel pairs per kernel tap (DCTL's 9x9
    filters, DCAE's 9x9 convolutions and 17x17 transposed one, FCAE's 1->6 and 6->1 5x5), where
    the column matrix is kh*kw times the image for a GEMM of a few rows; batch-last im2col + one
    GEMM for everything else.  The threshold was measured per layer (benchmarks/)."""
    return tuple(stride) == (1, 1) and 5 * c_in * c_out <= 2 * kernel[0] * kernel[1]


def _flipped(w):
    """(A, B, kh, kw) -> (B, A, kh, kw) rotated by 180 degrees: the kernel of the adjoint correlation."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def direct_adjoint(gt, w, padding, hw):
    """out[c,h,v] = sum_{o,i,j} w[o,c,i,j] gt[o,h+ph-i,v+pw-j] (the adjoint of a stride-1
    correlation in its input), as a correlation of gt, placed at (kh-1-ph, kw-1-pw), with
    the flipped kernel.  Batch last: returns (C, H, W, N)."""
    (kh, kw), (ph, pw) = w.shape[2:], padding
    gpad = placed(gt, kh - 1 - ph, kw - 1 - pw, (hw[0] + kh - 1, hw[1] + kw - 1))
    out = np.zeros((w.shape[1], *hw, gt.shape[3]), dtype=gt.dtype)
    run(_direct, out.size * w[:, 0].size, gpad, _flipped(w), out)
    return out


