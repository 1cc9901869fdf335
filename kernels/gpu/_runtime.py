"""The gpu backend's runtime: its array module (CuPy, as ``xp``) and the index tables that turn
im2col, col2im and pooling into deterministic gathers.

Every table is built once per geometry on the host with NumPy, cached, and
copied to the device.  A gather ``a[..., table]`` runs one thread per output
element, so no two threads ever write the same location and the results do
not depend on scheduling; a sum over a table's last axis adds a pixel's
contributions in a fixed order (increasing source index).
"""

from __future__ import annotations

import functools

import cupy as xp
import numpy as np


def _invert(table: np.ndarray, n_targets: int) -> np.ndarray:
    """``inv (n_targets, M)``: the positions ``i`` of ``table.ravel()`` with value ``t``, ascending.

    Rows are padded with the sentinel ``table.size`` (which the caller maps to
    a zero), so ``sum_m src[inv[t, m]]`` adds every source that lands on ``t``.
    """
    flat = table.ravel()
    counts = np.bincount(flat, minlength=n_targets)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot = np.arange(flat.size) - starts[flat[order]]
    inv = np.full((n_targets, width), flat.size, dtype=np.int64)
    inv[flat[order], slot] = order
    return inv


@functools.lru_cache(maxsize=64)
def _conv_host(c, h, w, kh, kw, sh, sw, top, bottom, left, right):
    hp, wp = h + top + bottom, w + left + right
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    ci, ii, jj = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    oh, ow = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    rows = ii.reshape(-1, 1) + sh * oh.reshape(1, -1)
    cols = jj.reshape(-1, 1) + sw * ow.reshape(1, -1)
    im2col = (ci.reshape(-1, 1) * hp + rows) * wp + cols  # (C*kh*kw, Ho*Wo) into the padded C*Hp*Wp
    inv = _invert(im2col, c * hp * wp).reshape(c, hp, wp, -1)[:, top:top + h, left:left + w]
    return im2col, np.ascontiguousarray(inv).reshape(c * h * w, -1), (ho, wo)


@functools.lru_cache(maxsize=64)
def conv_tables(c, h, w, kh, kw, sh, sw, top, bottom, left, right):
    """Device tables of a convolution over a ``(C, H, W)`` input zero-padded by
    ``top``/``bottom`` rows and ``left``/``right`` columns (asymmetric allowed).

    ``im2col (C*kh*kw, Ho*Wo)``: flat index into the zero-padded ``C*Hp*Wp``
    plane of each patch element, so ``cols = xpad.reshape(N, -1)[:, im2col]``.
    ``col2im (C*H*W, M)``: for each unpadded input pixel the flat indices into
    ``cols.reshape(N, -1)`` (sentinel ``C*kh*kw*Ho*Wo``) of the patch
    elements that read it, so the adjoint is a gather and a sum over ``M``.
    """
    im2col, col2im, out_hw = _conv_host(c, h, w, kh, kw, sh, sw, top, bottom, left, right)
    return xp.asarray(im2col), xp.asarray(col2im), out_hw


@functools.lru_cache(maxsize=64)
def pool_tables(h, w, kh, kw, sh, sw):
    """Device tables of a pooling over an ``(H, W)`` plane.

    ``windows (Ho*Wo, kh*kw)``: flat plane index of each window element, in
    row-major window order.  ``cover (H*W, M)``: the windows containing each
    pixel, ascending (sentinel ``Ho*Wo``).
    """
    im2col, _, (ho, wo) = _conv_host(1, h, w, kh, kw, sh, sw, 0, 0, 0, 0)
    windows = np.ascontiguousarray(im2col.T)
    cover = _invert(windows, h * w) // (kh * kw)  # window of each position; the sentinel becomes Ho*Wo
    return xp.asarray(windows), xp.asarray(cover), (ho, wo)
