"""Hand-crafted image features: dense SIFT as VLFeat's ``vl_dsift`` defines it, and DSIFT -> PCA.

Goel et al. (DCTL, ICIP 2022, ``../shared/seeds/003``): "For all the datasets the dense shift
invariant feature transform (DSIFT) features were first extracted; then principal component
analysis (PCA) was used to further reduce the dimensions to 300.  This protocol was followed by
several prior clustering studies [16-19]" (Chen et al. 2018; Peng et al., PARTY, IJCAI 2016;
Maggu et al. 2020, 2021).  None of them is specific about the implementation in the text at hand;
VLFeat's ``vl_dsift`` is the usual one, and :class:`DenseSIFT` reproduces it.

- :class:`DenseSIFT`: scikit-learn transformer, images -> (N, n_keypoints * 128) float32.
- :func:`dsift_pca`: DenseSIFT -> ``sklearn.decomposition.PCA(300)``, cached on disk per data set
  and parameters, so a sweep over methods and seeds computes the features once.
- :func:`dsift_pca_pipeline`: the same as an unfitted sklearn ``Pipeline`` (no cache).
- :func:`dsift_grid`: the descriptors on their keypoint grid, a 128-channel image.
- :func:`as_estimator_input`: how ``python -m nbclust.fit --features`` hands the feature matrix to
  an estimator.

The numbers (which step and bin size, and what k-means reaches on them) are in the
:class:`DenseSIFT` docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from numba import njit, prange
from sklearn.base import BaseEstimator, TransformerMixin

from nbclust.registry import FEATURES  # the values of --features

CACHE_VERSION = 1
"""Bumped whenever the descriptor or the PCA changes, so stale cache files are not reused."""

_EPS_F = np.float32(1.19209290e-07)  # VL_EPSILON_F, FLT_EPSILON
_TWO_PI_F = np.float32(2 * np.pi)
_N_BINS = 4  # spatial bins per side (VLFeat geometry [4 4 8])
_N_ORI = 8  # orientation bins
DESCRIPTOR_SIZE = _N_BINS * _N_BINS * _N_ORI  # 128


# ------------------------------------------------------------------------------ geometry
def keypoint_grid(height, width, step, bin_size):
    """(ys, xs): 0-based frame origins (top-left bin centres) along each axis, VLFeat's grid.

    VLFeat (vl/dsift.c, ``_vl_dsift_update_buffers`` and the frame loops of ``vl_dsift_process``):
    with the default bounds [0, W-1] x [0, H-1], the upper-left spatial-bin centre of a frame runs
    over ``0, step, 2 step, ...`` while the whole frame (``3 bin_size + 1`` pixels from the first to
    the last bin centre) stays inside the image: ``x0 <= W - 1 - 3 bin_size``.  The keypoint (the
    descriptor centre) is at ``x0 + 1.5 bin_size``.
    """
    span = (_N_BINS - 1) * bin_size
    ys = np.arange(0, height - span, step) if height - 1 - span >= 0 else np.zeros(0, np.int64)
    xs = np.arange(0, width - span, step) if width - 1 - span >= 0 else np.zeros(0, np.int64)
    return ys.astype(np.int64), xs.astype(np.int64)


def _bin_kernels(bin_size, window_size, fast):
    """(4, 2 bin_size - 1) float32: the spatial weight k_b(x), x = -bin_size+1 .. bin_size-1, of bin b.

    VLFeat ``_vl_dsift_new_kernel``: the triangular (bilinear) weight ``1 - |x| / bin_size`` times
    the Gaussian window ``exp(-((x - delta_b) / sigma)^2 / 2)``, ``delta_b = bin_size (b - 1.5)``
    (offset of bin b from the descriptor centre), ``sigma = bin_size * window_size``.  The fast
    (flat window) variant, ``_vl_dsift_with_flat_window``: the triangle alone, times the mean of
    the Gaussian window over the bin's support (``_vl_dsift_get_bin_window_mean``).
    """
    x = np.arange(-bin_size + 1, bin_size, dtype=np.float32)
    tri = np.float32(1) - np.abs(x) / np.float32(bin_size)
    sigma = np.float32(bin_size) * np.float32(window_size)
    out = np.empty((_N_BINS, len(x)), np.float32)
    for b in range(_N_BINS):
        delta = np.float32(bin_size) * np.float32(b - 0.5 * (_N_BINS - 1))
        gauss = np.exp(np.float32(-0.5) * ((x - delta) / sigma) ** 2).astype(np.float32)
        out[b] = tri * (np.float32(gauss.mean(dtype=np.float64)) if fast else gauss)
    return out


def _smoothing_kernel(sigma):
    """MATLAB ``vl_imsmooth`` (toolbox/imop/vl_imsmooth.c): Gaussian, half-width ceil(4 sigma), sum 1."""
    half = int(np.ceil(4.0 * sigma))
    z = (np.arange(2 * half + 1, dtype=np.float64) - half) / (sigma + float(_EPS_F))
    k = np.exp(-0.5 * z * z)
    return (k / k.sum()).astype(np.float32)


# ------------------------------------------------------------------------------ kernels
@njit(cache=True, inline="always")
def _fast_atan2(y, x):
    """VLFeat's ``vl_fast_atan2_f`` (vl/mathop.h): a cubic fit of atan((1-r)/(1+r)), float32.

    angle = pi/4 - (c1 - c3 r^2) r with r = (x - |y|) / (x + |y|) for x >= 0, and
    3 pi/4 - (c1 - c3 r^2) r with r = (x + |y|) / (|y| - x) otherwise (c1 = 0.9675, c3 = 0.1821),
    negated for y < 0; max error 0.0061 rad.  Exactly equivariant under 90-degree rotations.
    """
    c3 = np.float32(0.1821)
    c1 = np.float32(0.9675)
    abs_y = np.float32(abs(y)) + _EPS_F
    if x >= 0:
        r = (x - abs_y) / (x + abs_y)
        angle = np.float32(np.pi / 4)
    else:
        r = (x + abs_y) / (abs_y - x)
        angle = np.float32(3 * np.pi / 4)
    angle = angle + (c3 * r * r - c1) * r
    return -angle if y < 0 else angle


@njit(cache=True, parallel=True)
def _smooth_batch(imgs, kernel):
    """Separable convolution of every image by ``kernel`` with edge replication (in place)."""
    n, h, w = imgs.shape
    half = (len(kernel) - 1) // 2
    for i in prange(n):
        tmp = np.empty((h, w), np.float32)
        img = imgs[i]
        for y in range(h):
            for x in range(w):
                acc = np.float32(0)
                for k in range(len(kernel)):
                    yy = min(max(y + half - k, 0), h - 1)
                    acc += kernel[k] * img[yy, x]
                tmp[y, x] = acc
        for y in range(h):
            for x in range(w):
                acc = np.float32(0)
                for k in range(len(kernel)):
                    xx = min(max(x + half - k, 0), w - 1)
                    acc += kernel[k] * tmp[y, xx]
                img[y, x] = acc


@njit(cache=True, parallel=True)
def _dsift_batch(imgs, ys, xs, bin_size, kernels, out, norms):
    """Descriptors of every image: out[n, (j*len(xs) + i)*128 + t + 8*(bx + 4*by)].

    imgs (N, H, W) float32; ys, xs frame origins; kernels (4, 2*bin_size-1) from
    :func:`_bin_kernels`; out (N, len(ys)*len(xs)*128) float32; norms (N, n_keypoints) float32,
    VLFeat's keypoint ``norm`` (descriptor mass / frame area, before normalisation).
    """
    n_img, h, w = imgs.shape
    ny, nx = len(ys), len(xs)
    half = bin_size - 1
    ksize = 2 * bin_size - 1
    frame_area = np.float32((3 * bin_size + 1) * (3 * bin_size + 1))
    scale = np.float64(_N_ORI / (2 * np.pi))
    for n in prange(n_img):
        im = imgs[n]
        grads = np.zeros((_N_ORI, h, w), np.float32)
        # gradients (vl_dsift_process): central differences inside, one-sided at the border
        for y in range(h):
            for x in range(w):
                if h == 1:
                    gy = np.float32(0)
                elif y == 0:
                    gy = im[y + 1, x] - im[y, x]
                elif y == h - 1:
                    gy = im[y, x] - im[y - 1, x]
                else:
                    gy = np.float32(0.5) * (im[y + 1, x] - im[y - 1, x])
                if w == 1:
                    gx = np.float32(0)
                elif x == 0:
                    gx = im[y, x + 1] - im[y, x]
                elif x == w - 1:
                    gx = im[y, x] - im[y, x - 1]
                else:
                    gx = np.float32(0.5) * (im[y, x + 1] - im[y, x - 1])
                sq = gx * gx + gy * gy
                mod = np.float32(0) if sq < 1e-8 else np.float32(np.sqrt(sq))
                angle = _fast_atan2(gy, gx)
                while angle > _TWO_PI_F:
                    angle -= _TWO_PI_F
                while angle < 0:
                    angle += _TWO_PI_F
                nt = np.float32(angle * scale)
                bint = int(np.floor(nt))
                rbint = nt - np.float32(bint)
                grads[bint % _N_ORI, y, x] += (np.float32(1) - rbint) * mod
                grads[(bint + 1) % _N_ORI, y, x] += rbint * mod
        # spatial binning: separable convolution with edge replication, sampled at bin centres
        col = np.empty((_N_BINS, ny, w), np.float32)
        base = out[n]
        for t in range(_N_ORI):
            g = grads[t]
            for by in range(_N_BINS):
                ker = kernels[by]
                for j in range(ny):
                    cy = ys[j] + by * bin_size
                    for x in range(w):
                        acc = np.float32(0)
                        for k in range(ksize):  # offset d = k - half; pixel row cy - d
                            yy = min(max(cy + half - k, 0), h - 1)
                            acc += ker[k] * g[yy, x]
                        col[by, j, x] = acc
            for by in range(_N_BINS):
                for bx in range(_N_BINS):
                    ker = kernels[bx]
                    for j in range(ny):
                        row = col[by, j]
                        for i in range(nx):
                            cx = xs[i] + bx * bin_size
                            acc = np.float32(0)
                            for k in range(ksize):
                                xx = min(max(cx + half - k, 0), w - 1)
                                acc += ker[k] * row[xx]
                            base[(j * nx + i) * DESCRIPTOR_SIZE + t + _N_ORI * (bx + _N_BINS * by)] = acc
        # per keypoint: mass, L2 normalise, clip at 0.2, L2 normalise (VLFeat adds FLT_EPSILON to the norm)
        for f in range(ny * nx):
            d = base[f * DESCRIPTOR_SIZE:(f + 1) * DESCRIPTOR_SIZE]
            mass = np.float32(0)
            ss = np.float32(0)
            for q in range(DESCRIPTOR_SIZE):
                mass += d[q]
                ss += d[q] * d[q]
            norms[n, f] = mass / frame_area
            nrm = np.float32(np.sqrt(ss)) + _EPS_F
            ss = np.float32(0)
            for q in range(DESCRIPTOR_SIZE):
                v = d[q] / nrm
                if v > np.float32(0.2):
                    v = np.float32(0.2)
                d[q] = v
                ss += v * v
            nrm = np.float32(np.sqrt(ss)) + _EPS_F
            for q in range(DESCRIPTOR_SIZE):
                d[q] = d[q] / nrm


# ------------------------------------------------------------------------------ transformer
def _as_gray_float(X):
    """(N, H, W) float32 C-contiguous copy: uint8 scaled by 1/255, other dtypes as they are."""
    X = np.asarray(X)
    if X.ndim == 4:
        if X.shape[1] != 1:
            raise ValueError(f"dense SIFT needs single-channel images, got {X.shape[1]} channels (shape {X.shape})")
        X = X[:, 0]
    if X.ndim != 3 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (N, H, W) or (N, 1, H, W) with N > 0, got {X.shape}")
    if X.dtype.kind not in "uif":
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    out = X.astype(np.float32)  # always a fresh array: the kernels work in place
    if X.dtype == np.uint8:
        out /= np.float32(255.0)
    if not np.isfinite(out).all():
        raise ValueError("X contains NaN or Inf values")
    return np.ascontiguousarray(out)


def default_geometry(height, width):
    """(step, bin_size) used where DenseSIFT's are None: VLFeat's defaults, bin 3 (``vl_dsift``'s
    ``Size``) and step 2 (``vl_phow``'s ``Step``), on images of side >= 10; on smaller ones the
    largest bin that fits, ``(side - 1) // 3``, and step 1 (8x8 digits: bin 2, 2 x 2 keypoints)."""
    side = min(height, width)
    if side >= 3 * 3 + 1:
        return 2, 3
    return 1, max(1, (side - 1) // 3)


class DenseSIFT(TransformerMixin, BaseEstimator):
    """Dense SIFT descriptors exactly as VLFeat 0.9.21's ``vl_dsift`` computes them.

    ``DenseSIFT(step, bin_size).fit_transform(X)`` with X (N, H, W) or (N, 1, H, W) (uint8 is
    scaled by 1/255, floats are used as they are) returns (N, n_keypoints * 128) float32.

    Parameters (VLFeat's names; MATLAB ``vl_dsift`` / ``vl_phow`` options in brackets)
    ----------------------------------------------------------------------------------
    step : int or None
        Grid step in pixels [``Step``].  None: :func:`default_geometry`.
    bin_size : int or None
        Pixels per spatial bin [``Size``]; a descriptor spans 4 x 4 bins, ``3 bin_size + 1`` pixels
        between its outer bin centres.  None: :func:`default_geometry`.
    fast : bool, default False
        Flat window [``Fast``]: bilinear weights only, each bin then scaled by the mean of the
        Gaussian window over it (``vl_dsift_set_flat_window``); False: the Gaussian window per
        pixel, SIFT's own (vl_dsift's default).
    window_size : float, default 2.0
        Gaussian window sigma in bins [``WindowSize``] (vl_dsift's default 2, i.e. SIFT's half
        descriptor width; ``vl_phow`` uses 1.5).
    magnif : float or None, default None
        None: no smoothing, as ``vl_dsift`` (it "does NOT compute a Gaussian scale space").  A number:
        smooth first with sigma = bin_size / magnif, as ``vl_phow`` does (its default 6; 3 is SIFT's
        magnification) with MATLAB ``vl_imsmooth`` (half-width ceil(4 sigma), normalised, edge
        replication).
    contrast_threshold : float or None, default None
        ``vl_phow``'s [``ContrastThreshold``] (0.005 there): descriptors whose VLFeat ``norm`` (the
        descriptor mass before normalisation divided by the frame area, on [0, 1] images) is below
        it are set to zero.  None: off, as ``vl_dsift``.

    Conventions and their source (VLFeat 0.9.21, ``vl/dsift.c``, ``vl/mathop.h``, ``vl/imopv.c``,
    identical at the v0.9.21 tag and master)
    ------------------------------------------------------------------------------------------
    - Image: row-major (N, H, W); x is the column (width) index, y the row index, y points down.
      This is the C API's layout (``vl_dsift_process(im)`` with ``im[y * width + x]``).
    - Gradient: ``gx = (I[y, x+1] - I[y, x-1]) / 2``, likewise ``gy`` along rows; one-sided
      differences ``I[., 1] - I[., 0]`` and ``I[., W-1] - I[., W-2]`` on the border.  No smoothing.
    - Magnitude ``sqrt(gx^2 + gy^2)`` (0 when ``gx^2 + gy^2 < 1e-8``, as ``vl_fast_sqrt_f``);
      angle ``vl_fast_atan2_f(gy, gx)`` (the cubic approximation, see :func:`_fast_atan2`), reduced
      to [0, 2 pi).  Orientation bin t stands for the angle ``2 pi t / 8``; an angle at ``nt = 8
      angle / (2 pi)`` gives ``1 - frac(nt)`` of the magnitude to bin ``floor(nt)`` and ``frac(nt)``
      to the next one (mod 8): linear interpolation in orientation.  Angle 0 = gradient along +x
      (intensity growing to the right), pi/2 = along +y (growing downwards).
    - Spatial bins: bin (bx, by) of the frame with origin (x0, y0) is centred on the pixel
      ``(x0 + bx bin_size, y0 + by bin_size)``; a pixel at offset (dx, dy) from that centre
      contributes with weight ``(1 - |dx|/bin_size)(1 - |dy|/bin_size)`` (bilinear, |d| < bin_size)
      times the window (see ``fast``).  Pixels outside the image repeat the border of the
      orientation planes (``VL_PAD_BY_CONTINUITY``).
    - Keypoints (:func:`keypoint_grid`): origins ``x0 = 0, step, ...`` while ``x0 + 3 bin_size <=
      W - 1``, likewise y; keypoint centre ``(x0 + 1.5 bin_size, y0 + 1.5 bin_size)`` (0-based; MATLAB
      reports +1).  Order: y outer, x inner (row-major over the grid), as the C API; MATLAB's
      ``vl_dsift`` (column-major images) lists them x outer, y inner.  ``keypoints_`` after ``fit``.
    - Descriptor layout: element ``t + 8 bx + 32 by`` (orientation fastest, then the x bin, then
      the y bin), the C API's and, after its transpose, MATLAB ``vl_dsift``'s.  Feature vector:
      ``keypoint_index * 128 + that``.
    - Normalisation: ``d / (||d||_2 + FLT_EPSILON)``, clip at 0.2, again ``d / (||d||_2 +
      FLT_EPSILON)``; float output (MATLAB's default uint8 output is ``min(512 d, 255)``, not made
      here).  ``norms_`` of the last ``transform`` hold VLFeat's keypoint norm.

    Agreement with ``libvl.so`` 0.9.21 (Debian ``libvlfeat1``, through ctypes,
    ``tests/test_features.py``): same keypoints, max abs descriptor difference <= 3e-6 (float32
    rounding and VLFeat's approximate square roots) on natural, smooth and random images, both
    windows, bin sizes 1-5.

    Defaults for small images (step and bin_size None: :func:`default_geometry`)
    ------------------------------------------------------------------------------
    The studies the DCTL paper follows ([16-19]) say "DSIFT" and "PCA to 300" but, as far as could
    be found here, not the step or the bin size.  The defaults are therefore VLFeat's own: bin 3
    (``vl_dsift``'s ``Size``) and step 2 (``vl_phow``'s ``Step``; ``vl_dsift``'s own step 1 gives
    529 keypoints, a 67712-d vector on 32x32 images, 46208-d on 28x28: 13 GB of descriptors for
    MNIST-full before PCA).  With them a descriptor spans 10 pixels (a third of a 32-pixel face,
    a stroke-and-a-half of a digit), neighbours overlap by 80%, and the vectors are Yale B 32x32:
    12 x 12 keypoints, 18432-d; MNIST 28x28: 10 x 10, 12800-d.  8x8 digits fit bin 2 at most
    (a 7-pixel frame): step 1, 2 x 2 keypoints, 512-d.

    Measured (2-core machine under load, rough seconds; k-means = sklearn ``KMeans(K, n_init=20,
    random_state=0)``, ACC / NMI; PCA(300, random_state=0)):

    =====================  ===========  ==============  ===============  ============
    data, setting          dimensions   DSIFT, PCA (s)  k-means ACC      NMI
    =====================  ===========  ==============  ===============  ============
    Yale B 32x32, pixels   1024         -               0.092            0.127
    step 2, bin 3 (dflt)   18432        1.1, 30         0.114            0.145
    step 1, bin 3          67712        6.4, 122        0.112            0.139
    step 2, bin 4          12800        1.3, 59         0.073            0.073
    step 4, bin 4          3200         0.3, 18         0.093            0.121
    step 4, bin 6          2048         0.5, 19         0.067            0.065
    MNIST-test, pixels     784          -               0.542            0.500
    step 2, bin 3 (dflt)   12800        4.4, 86         0.666            0.676
    step 4, bin 4          2048         0.8, 23         0.681            0.675
    =====================  ===========  ==============  ===============  ============

    The DCTL paper's k-means on DSIFT-PCA300 of Extended Yale B (16128 images, 28 subjects, not
    this 2414-image, 38-subject set) is ACC 0.098 / NMI 0.131: the same level.
    """

    def __init__(self, step=None, bin_size=None, *, fast=False, window_size=2.0, magnif=None,
                 contrast_threshold=None):
        self.step = step
        self.bin_size = bin_size
        self.fast = fast
        self.window_size = window_size
        self.magnif = magnif
        self.contrast_threshold = contrast_threshold

    # -- geometry
    def geometry(self, height, width):
        """(step, bin_size) for images of this size, checked; a clear ValueError when they do not fit."""
        step, bin_size = default_geometry(height, width)
        step = step if self.step is None else self.step
        bin_size = bin_size if self.bin_size is None else self.bin_size
        for name, v in (("step", step), ("bin_size", bin_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.window_size, (int, float)) and self.window_size > 0):
            raise ValueError(f"window_size must be > 0, got {self.window_size!r}")
        if self.magnif is not None and not (isinstance(self.magnif, (int, float)) and self.magnif > 0):
            raise ValueError(f"magnif must be None or > 0, got {self.magnif!r}")
        if self.contrast_threshold is not None and not isinstance(self.contrast_threshold, (int, float)):
            raise ValueError(f"contrast_threshold must be None or a number, got {self.contrast_threshold!r}")
        span = (_N_BINS - 1) * bin_size + 1
        if min(height, width) < span:
            raise ValueError(f"images {height}x{width} are too small for dense SIFT with bin_size {bin_size} "
                             f"(a descriptor spans {span} pixels); use bin_size <= {(min(height, width) - 1) // 3}")
        return int(step), int(bin_size)

    def fit(self, X, y=None):
        shape = np.shape(X)
        if len(shape) not in (3, 4):
            raise ValueError(f"X must have shape (N, H, W) or (N, 1, H, W), got {shape}")
        h, w = shape[-2:]
        step, bin_size = self.geometry(h, w)
        ys, xs = keypoint_grid(h, w, step, bin_size)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        c = 1.5 * bin_size
        self.image_shape_ = (int(h), int(w))
        self.step_, self.bin_size_ = step, bin_size
        self.keypoints_ = np.stack([xx.ravel() + c, yy.ravel() + c], axis=1)  # (n, 2): x, y centres
        self.n_keypoints_ = len(self.keypoints_)
        self.n_features_out_ = self.n_keypoints_ * DESCRIPTOR_SIZE
        return self

    def transform(self, X):
        """(N, n_keypoints * 128) float32 descriptors (layout: class docstring)."""
        imgs = _as_gray_float(X)
        n, h, w = imgs.shape
        if getattr(self, "image_shape_", None) not in (None, (h, w)):
            raise ValueError(f"DenseSIFT was fitted on {self.image_shape_[0]}x{self.image_shape_[1]} images, "
                             f"got {h}x{w}")
        if getattr(self, "image_shape_", None) is None:
            self.fit(imgs[:1])
        step, bin_size = self.step_, self.bin_size_
        if self.magnif is not None:
            sigma = bin_size / float(self.magnif)
            if sigma >= 0.01:  # vl_imsmooth returns the image unchanged below
                _smooth_batch(imgs, _smoothing_kernel(sigma))
        ys, xs = keypoint_grid(h, w, step, bin_size)
        kernels = _bin_kernels(bin_size, self.window_size, bool(self.fast))
        out = np.empty((n, len(ys) * len(xs) * DESCRIPTOR_SIZE), np.float32)
        norms = np.empty((n, len(ys) * len(xs)), np.float32)
        _dsift_batch(imgs, ys, xs, bin_size, kernels, out, norms)
        if self.contrast_threshold is not None:
            low = norms < np.float32(self.contrast_threshold)
            out.reshape(n, -1, DESCRIPTOR_SIZE)[low] = 0
        self.norms_ = norms
        return out

    def get_feature_names_out(self, input_features=None):
        return np.array([f"dsift{i}" for i in range(self.n_features_out_)], dtype=object)


# ------------------------------------------------------------------------------ DSIFT -> PCA
def dsift_pca_pipeline(n_components=300, *, random_state=0, **dsift_params):
    """Unfitted ``Pipeline([("dsift", DenseSIFT(**dsift_params)), ("pca", PCA(n_components))])``.

    ``n_components`` must fit the data (<= min(N, n_features)); :func:`dsift_pca` caps it.
    """
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    return Pipeline([("dsift", DenseSIFT(**dsift_params)),
                     ("pca", PCA(n_components, random_state=random_state))])


def default_cache_dir() -> Path:
    """``$NBCLUST_CACHE/features`` if set, else ``~/.cache/nbclust/features``."""
    root = os.environ.get("NBCLUST_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "nbclust") / "features"


def cache_key(X, params) -> str:
    """sha256 (first 24 hex digits) of the images' dtype, shape and bytes and of ``params``."""
    X = np.ascontiguousarray(X)
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "dtype": X.dtype.str, "shape": list(X.shape),
                         "params": params}, sort_keys=True).encode())
    h.update(memoryview(X).cast("B"))
    return h.hexdigest()[:24]


def pca_dimension(n_components: int, n_samples: int, n_features: int) -> tuple[int, str | None]:
    """(k, why): the PCA dimension ``k = min(n_components, n_samples - 1, n_features)`` and, when
    ``k < n_components``, one sentence saying why (else None).

    Centred data of N samples span at most N - 1 dimensions, so a component beyond that has no
    variance: sklearn would return it (as rounding noise), and a per-feature scaling would blow that
    noise up to the range of the leading components.
    """
    if n_samples < 2:
        raise ValueError(f"PCA needs at least 2 images, got {n_samples}")
    k = int(min(n_components, n_samples - 1, n_features))
    if k == n_components:
        return k, None
    if k == n_features:
        return k, f"PCA({n_components}) of {n_features}-d descriptors keeps all {k} dimensions"
    return k, (f"PCA({n_components}) of {n_samples} images keeps {k} components: centred, {n_samples} images "
               f"span at most {n_samples - 1} dimensions")


def dsift_pca(X, n_components=300, *, random_state=0, cache_dir=None, return_info=False, **dsift_params):
    """DSIFT -> PCA features of the images X: (N, k) float32, k from :func:`pca_dimension`
    (min(n_components, N - 1, n_features)).

    sklearn ``PCA(k, random_state=random_state)`` (centred, not whitened) fitted on the
    :class:`DenseSIFT` descriptors of all of X (clustering is transductive: the set is the
    training set).  ``random_state`` is the PCA's own (its randomized solver), fixed at 0 by
    default and not the clustering seed, so every seed of a sweep shares one feature file.

    Cache: ``cache_dir`` (default :func:`default_cache_dir`; ``False``: no cache) holds one
    ``dsift-pca-<key>.npz`` per (images, parameters), key = :func:`cache_key`; written atomically
    (temporary file, then ``os.replace``), so concurrent runs never read a torn file.  A file that
    cannot be read is recomputed and replaced.  ``return_info=True`` also returns a dict
    (``cached``, ``seconds`` of the extraction and PCA, ``n_dsift`` descriptor length, ``path``,
    ``n_components`` asked for, ``dim`` the dimension given and ``dim_reason``, the sentence of
    :func:`pca_dimension` or None).
    """
    import time

    from nbclust.data.io import load_state, save_state

    sift = DenseSIFT(**dsift_params)
    shape = np.shape(X)
    if len(shape) not in (3, 4):
        raise ValueError(f"X must have shape (N, H, W) or (N, 1, H, W), got {shape}")
    step, bin_size = sift.geometry(*shape[-2:])
    ys, xs = keypoint_grid(*shape[-2:], step, bin_size)
    n_dsift = len(ys) * len(xs) * DESCRIPTOR_SIZE
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    k, why = pca_dimension(n_components, shape[0], n_dsift)
    dim_info = {"n_components": int(n_components), "dim": k, "dim_reason": why}
    params = {**sift.get_params(), "step": step, "bin_size": bin_size, "n_components": k,
              "random_state": random_state}
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = folder / f"dsift-pca-{cache_key(X, params)}.npz"
        if path.exists():
            try:
                arrays, meta = load_state(path)
                F = arrays["features"]
                if F.shape == (shape[0], k) and meta.get("params") == json.loads(json.dumps(params)):
                    info = {"cached": True, "seconds": meta.get("seconds"), "n_dsift": n_dsift, "path": str(path),
                            **dim_info}
                    return (F, info) if return_info else F
            except (ValueError, KeyError, OSError):
                pass  # unreadable or foreign: recompute and replace
    t0 = time.perf_counter()
    from sklearn.decomposition import PCA

    D = sift.fit_transform(X)
    t_sift = time.perf_counter() - t0
    F = PCA(k, random_state=random_state).fit_transform(D).astype(np.float32)
    seconds = {"dsift": round(t_sift, 3), "pca": round(time.perf_counter() - t0 - t_sift, 3)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(path, {"features": F}, {"params": params, "seconds": seconds, "n_dsift": n_dsift,
                                           "shape": list(shape)})
    info = {"cached": False, "seconds": seconds, "n_dsift": n_dsift, "path": None if path is None else str(path),
            **dim_info}
    return (F, info) if return_info else F


def dsift_grid(X, **dsift_params):
    """The :class:`DenseSIFT` descriptors of the images X kept on their keypoint grid:
    (N, 128, ny, nx) float32, channel t + 8 bx + 32 by of keypoint (j, i) at [:, :, j, i].

    A 128-channel image for an image estimator: the DCTL paper's "3 filters of sizes 9x9" and 2x2
    max-pooling read literally on DSIFT (a 2-D transform over the grid; no PCA, which would
    flatten the grid away).
    """
    sift = DenseSIFT(**dsift_params)
    D = sift.fit_transform(X)
    ny, nx = (len(v) for v in keypoint_grid(*sift.image_shape_, sift.step_, sift.bin_size_))
    return np.ascontiguousarray(D.reshape(len(D), ny, nx, DESCRIPTOR_SIZE).transpose(0, 3, 1, 2))


def as_estimator_input(F, estimator):
    """The array an estimator receives for the feature matrix F (N, D) under ``--features``.

    ``estimator.features_input(F)`` when the estimator defines it (the k-means baseline: the flat
    matrix; a vector-reading DCTL can return (N, 1, 1, D) or (N, 1, 15, 20)); otherwise the
    default for image estimators, an (N, 1, 1, D) float32 "image" of one row.
    """
    F = np.asarray(F, dtype=np.float32)
    hook = getattr(estimator, "features_input", None)
    if callable(hook):
        return hook(F)
    return F.reshape(len(F), 1, 1, -1)


def features_for(name, X, **kwargs):
    """The feature matrix of ``--features name`` for images X ((N, D) float32), or None for ``none``."""
    if name == "none":
        return None
    if name == "dsift-pca":
        return dsift_pca(X, **kwargs)
    raise ValueError(f"unknown features {name!r}; expected one of {', '.join(FEATURES)}")
