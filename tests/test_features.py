"""nbclust.data.features: dense SIFT (VLFeat's vl_dsift), its geometry and invariances, agreement with
VLFeat's own libvl through ctypes (skipped when the library is absent), and the cached DSIFT -> PCA."""

import ctypes
import ctypes.util
import os

import numpy as np
import pytest

from nbclust.data import features as ft
from nbclust.data.features import DenseSIFT, as_estimator_input, dsift_pca, dsift_pca_pipeline, keypoint_grid
from nbclust.methods.baseline import KMeansPixels


def smooth_image(h, w, seed=0):
    """A smooth random image in [0, 1] (sum of a few random sinusoids plus a little noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for _ in range(5):
        fx, fy, ph = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0.5, 1) * np.sin(fx * xx + fy * yy + ph)
    img += 0.05 * rng.standard_normal((h, w))
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


# ------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("h, w, step, b", [(32, 32, 4, 4), (28, 28, 2, 3), (29, 40, 3, 5), (8, 8, 1, 2), (13, 13, 5, 4)])
def test_keypoint_grid_shapes_and_layout(h, w, step, b):
    X = np.random.default_rng(0).random((3, h, w)).astype(np.float32)
    s = DenseSIFT(step, b).fit(X)
    nx, ny = (w - 1 - 3 * b) // step + 1, (h - 1 - 3 * b) // step + 1
    assert s.n_keypoints_ == nx * ny and s.n_features_out_ == nx * ny * 128
    ys, xs = keypoint_grid(h, w, step, b)
    assert len(xs) == nx and len(ys) == ny and xs[-1] + 3 * b <= w - 1 and xs[-1] + step + 3 * b > w - 1
    # keypoints: descriptor centres, y outer / x inner
    np.testing.assert_array_equal(s.keypoints_[:, 0], np.tile(xs, ny) + 1.5 * b)
    np.testing.assert_array_equal(s.keypoints_[:, 1], np.repeat(ys, nx) + 1.5 * b)
    F = s.transform(X)
    assert F.shape == (3, nx * ny * 128) and F.dtype == np.float32
    D = F.reshape(3, nx * ny, 128)
    np.testing.assert_allclose(np.linalg.norm(D, axis=2), 1, atol=1e-5)  # unit L2 after clipping


def test_input_forms_and_errors():
    rng = np.random.default_rng(1)
    x8 = rng.integers(0, 256, (4, 16, 16)).astype(np.uint8)
    s = DenseSIFT(2, 3)
    a = s.fit_transform(x8)
    np.testing.assert_array_equal(a, DenseSIFT(2, 3).fit_transform(x8[:, None]))  # (N, 1, H, W)
    np.testing.assert_allclose(a, DenseSIFT(2, 3).fit_transform(x8 / 255.0), atol=1e-6)  # uint8 is /255
    assert DenseSIFT().fit(np.zeros((2, 8, 8))).transform(rng.random((2, 8, 8))).shape == (2, 512)  # digits default
    s32 = DenseSIFT().fit(np.zeros((1, 32, 32)))  # VLFeat's defaults: bin 3 (vl_dsift), step 2 (vl_phow)
    assert (s32.step_, s32.bin_size_, s32.n_keypoints_) == (2, 3, 144)
    assert DenseSIFT().fit(np.zeros((1, 28, 28))).n_features_out_ == 12800
    with pytest.raises(ValueError, match="too small"):
        DenseSIFT(1, 3).fit_transform(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="single-channel"):
        DenseSIFT(1, 2).fit_transform(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        DenseSIFT(1, 2).fit_transform(np.full((2, 8, 8), np.nan))
    with pytest.raises(ValueError, match="bin_size"):
        DenseSIFT(1, 0).fit(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="fitted on 16x16"):
        s.transform(np.zeros((1, 17, 17)))
    # the input is not modified (the kernels work on a copy)
    xf = rng.random((2, 16, 16)).astype(np.float32)
    keep = xf.copy()
    DenseSIFT(2, 3, magnif=3).fit_transform(xf)
    np.testing.assert_array_equal(xf, keep)


# ------------------------------------------------------------------------------ orientation
def _orientation_mass(desc):
    """(8,) total mass per orientation bin over all keypoints and spatial bins."""
    return desc.reshape(-1, 8).sum(0)


@pytest.mark.parametrize("k", range(8))
def test_ramp_orientation_bins(k):
    """A linear ramp whose gradient points at k * 45 degrees puts its whole mass in orientation bin k
    (angle 0 = +x, 90 degrees = +y = down the rows); adding 45 degrees moves it to bin k + 1."""
    theta = k * np.pi / 4
    yy, xx = np.mgrid[0:20, 0:20].astype(np.float64)
    img = (np.cos(theta) * xx + np.sin(theta) * yy) / 40.0
    m = _orientation_mass(DenseSIFT(2, 3).fit_transform(img[None].astype(np.float32)))
    assert np.argmax(m) == k and m[k] / m.sum() > 1 - 1e-4, m


def test_ramp_between_bins_interpolates_and_shifts():
    """Gradient at theta inside a bin: mass split between the two neighbouring bins by linear
    interpolation (VLFeat's atan2 is within 0.0061 rad); theta + 45 degrees shifts it by one bin.
    A very wide window makes every spatial bin equal, so nothing reaches the 0.2 clip and the
    split survives the normalisation."""
    yy, xx = np.mgrid[0:20, 0:20].astype(np.float64)
    masses = []
    for theta in np.deg2rad([20.0, 65.0, 110.0, 335.0]):
        img = (np.cos(theta) * xx + np.sin(theta) * yy) / 40.0
        d = DenseSIFT(2, 3, window_size=1e4).fit_transform(img[None].astype(np.float32))
        assert d.max() < 0.2
        m = _orientation_mass(d)
        masses.append(m / m.sum())
    m20 = masses[0]
    assert m20[0] > m20[1] > 0 and m20[2:].sum() < 1e-6
    np.testing.assert_allclose(m20[1], 20 / 45, atol=0.01)
    np.testing.assert_allclose(masses[1], np.roll(m20, 1), atol=0.02)
    np.testing.assert_allclose(masses[2], np.roll(m20, 2), atol=0.02)
    np.testing.assert_allclose(masses[3], np.roll(m20, 7), atol=0.02)


@pytest.mark.parametrize("fast", [False, True])
def test_rotation_by_90_degrees_permutes_bins(fast):
    """np.rot90 maps pixel (x, y) to (y, s-1-x): the gradient (gx, gy) becomes (gy, -gx), an angle
    90 degrees lower (orientation bin t -> t-2 mod 8), and spatial bin (bx, by) -> (by, 3-bx).
    The grid (s - 1 - 3 bin_size divisible by step) maps onto itself; VLFeat's atan2 is exactly
    90-degree equivariant, so descriptors agree to float rounding."""
    s_, step, b = 25, 4, 4
    img = smooth_image(s_, s_, seed=3)
    rot = np.ascontiguousarray(np.rot90(img))
    ds = DenseSIFT(step, b, fast=fast).fit(img[None])
    A = ds.transform(img[None])[0].reshape(-1, 4, 4, 8)  # [kp, by, bx, t]
    B = DenseSIFT(step, b, fast=fast).fit_transform(rot[None])[0].reshape(-1, 4, 4, 8)
    kp = ds.keypoints_
    index = {(x, y): i for i, (x, y) in enumerate(map(tuple, kp))}
    for i, (cx, cy) in enumerate(kp):
        j = index[(cy, s_ - 1 - cx)]
        expected = np.roll(A[i].transpose(1, 0, 2)[::-1], -2, axis=2)  # [3-bx, by, (t-2) % 8] = A[by, bx, t]
        np.testing.assert_allclose(B[j], expected, atol=2e-5)
    # and the same for the whole image turned by 180 degrees (two quarter turns: t -> t-4)
    C = DenseSIFT(step, b, fast=fast).fit_transform(np.ascontiguousarray(np.rot90(img, 2))[None])[0].reshape(-1, 4, 4, 8)
    np.testing.assert_allclose(C[::-1], np.roll(A[:, ::-1, ::-1], -4, axis=3), atol=2e-5)


# ------------------------------------------------------------------------------ invariances
@pytest.mark.parametrize("fast", [False, True])
def test_brightness_and_contrast_invariance(fast):
    rng = np.random.default_rng(5)
    X = np.stack([smooth_image(28, 28, seed=s) * 0.6 + 0.1 for s in range(3)]
                 + [rng.random((28, 28)).astype(np.float32) * 0.5]).astype(np.float32)
    s = DenseSIFT(2, 3, fast=fast)
    base = s.fit_transform(X)
    assert (base == np.float32(0.2)).mean() < 0.5  # not everything sits on the clipping edge
    for c in (0.25, -0.1):
        np.testing.assert_allclose(s.transform(X + np.float32(c)), base, atol=1e-5)
    for c in (0.5, 3.0, 40.0):
        np.testing.assert_allclose(s.transform(X * np.float32(c)), base, atol=1e-5)
    # a gradient-free image gives zero descriptors (0 / FLT_EPSILON), not NaN
    assert not DenseSIFT(2, 3).fit_transform(np.full((1, 16, 16), 0.5, np.float32)).any()


def test_contrast_threshold_and_smoothing():
    from scipy.ndimage import gaussian_filter

    img = smooth_image(24, 24, seed=7)
    img[:, :12] = 0.5 + 1e-3 * np.random.default_rng(0).standard_normal((24, 12))  # faint noise on the left
    s = DenseSIFT(2, 3)
    plain = s.fit_transform(img[None]).reshape(-1, 128)
    weak = s.norms_[0] < 0.005
    assert weak.any() and (~weak).any() and plain[weak].any()  # vl_dsift keeps noise descriptors
    cut = DenseSIFT(2, 3, contrast_threshold=0.005).fit_transform(img[None]).reshape(-1, 128)
    assert not cut[weak].any() and np.array_equal(cut[~weak], plain[~weak])
    # magnif: vl_phow's smoothing, sigma = bin_size / magnif, MATLAB vl_imsmooth (4 sigma, edges repeated)
    sm = gaussian_filter(img.astype(np.float64), 3 / 6, mode="nearest", truncate=4.0).astype(np.float32)
    np.testing.assert_allclose(DenseSIFT(2, 3, magnif=6).fit_transform(img[None]),
                               DenseSIFT(2, 3).fit_transform(sm[None]), atol=2e-5)


# ------------------------------------------------------------------------------ VLFeat
def _libvl():
    """VLFeat's libvl through ctypes (Debian: apt-get install libvlfeat1), or skip."""
    names = [ctypes.util.find_library("vl"), "libvl.so.1", "libvl.so"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.vl_get_version_string.restype = ctypes.c_char_p
        version = lib.vl_get_version_string().decode()
        if version != "0.9.21":  # the struct layout below is 0.9.21's (vl/dsift.h)
            pytest.skip(f"libvl is VLFeat {version}, the comparison is written for 0.9.21")
        return lib
    pytest.skip("VLFeat's libvl is not installed (Debian/Ubuntu: apt-get install libvlfeat1)")


class _Keypoint(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("s", ctypes.c_double), ("norm", ctypes.c_double)]


class _Geometry(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("numBinT", "numBinX", "numBinY", "binSizeX", "binSizeY")]


class _DsiftFilter(ctypes.Structure):
    """VlDsiftFilter of vl/dsift.h (0.9.21); the getters/setters are inline, so fields are read here."""
    _fields_ = [(n, ctypes.c_int) for n in ("imWidth", "imHeight", "stepX", "stepY", "boundMinX", "boundMinY",
                                            "boundMaxX", "boundMaxY")] + [
        ("geom", _Geometry), ("useFlatWindow", ctypes.c_int), ("windowSize", ctypes.c_double),
        ("numFrames", ctypes.c_int), ("descrSize", ctypes.c_int), ("frames", ctypes.POINTER(_Keypoint)),
        ("descrs", ctypes.POINTER(ctypes.c_float)), ("numBinAlloc", ctypes.c_int), ("numFrameAlloc", ctypes.c_int),
        ("numGradAlloc", ctypes.c_int), ("grads", ctypes.POINTER(ctypes.POINTER(ctypes.c_float))),
        ("convTmp1", ctypes.POINTER(ctypes.c_float)), ("convTmp2", ctypes.POINTER(ctypes.c_float))]


def vl_dsift(lib, img, step, bin_size, fast, window_size):
    """(keypoints (n, 3): x, y, norm; descriptors (n, 128)) from libvl's vl_dsift_process."""
    lib.vl_dsift_new_basic.restype = ctypes.POINTER(_DsiftFilter)
    lib.vl_dsift_new_basic.argtypes = [ctypes.c_int] * 4
    lib.vl_dsift_process.argtypes = [ctypes.POINTER(_DsiftFilter), ctypes.POINTER(ctypes.c_float)]
    lib.vl_dsift_delete.argtypes = [ctypes.POINTER(_DsiftFilter)]
    img = np.ascontiguousarray(img, dtype=np.float32)
    h, w = img.shape
    f = lib.vl_dsift_new_basic(w, h, step, bin_size)
    try:
        f.contents.useFlatWindow = int(fast)  # vl_dsift_set_flat_window
        f.contents.windowSize = window_size  # vl_dsift_set_window_size
        lib.vl_dsift_process(f, img.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        n, size = f.contents.numFrames, f.contents.descrSize
        assert size == 128 and n > 0
        D = np.ctypeslib.as_array(f.contents.descrs, shape=(n * size,)).reshape(n, size).copy()
        K = np.array([(f.contents.frames[i].x, f.contents.frames[i].y, f.contents.frames[i].norm) for i in range(n)])
    finally:
        lib.vl_dsift_delete(f)
    return K, D


def _natural_images():
    """A grey crop of scikit-learn's china.jpg (shipped with it), a digit, a smooth and a noise image."""
    from sklearn.datasets import load_digits

    out = {}
    try:
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image("china.jpg")[100:196:2, 200:328:2].astype(np.float32)  # 48 x 64
        out["china crop 48x64"] = (rgb @ np.array([0.299, 0.587, 0.114], np.float32)) / 255
    except Exception:  # PIL missing: the other images still run
        pass
    out["digit 8x8"] = (load_digits().images[0] / 16).astype(np.float32)
    out["smooth 32x40"] = smooth_image(32, 40, seed=11)
    out["uniform noise 29x31"] = np.random.default_rng(2).random((29, 31)).astype(np.float32)
    return out


@pytest.mark.parametrize("step, b, fast, window", [(1, 3, False, 2.0), (4, 4, False, 2.0), (2, 2, True, 1.5),
                                                  (3, 5, True, 2.0), (1, 2, False, 1.5)])
def test_matches_vlfeat_libvl(step, b, fast, window):
    lib = _libvl()
    worst = 0.0
    for name, img in _natural_images().items():
        if min(img.shape) < 3 * b + 1:
            continue
        K, D = vl_dsift(lib, img, step, b, fast, window)
        s = DenseSIFT(step, b, fast=fast, window_size=window).fit(img[None])
        F = s.transform(img[None])[0].reshape(-1, 128)
        np.testing.assert_array_equal(s.keypoints_, K[:, :2], err_msg=name)
        assert F.shape == D.shape, name
        diff = float(np.abs(F - D).max())
        worst = max(worst, diff)
        assert diff <= 1e-4, (name, diff)
        np.testing.assert_allclose(s.norms_[0], K[:, 2], rtol=1e-4, atol=1e-7, err_msg=name)
    assert worst > 0  # something was compared (float32 rounding makes it nonzero)


# ------------------------------------------------------------------------------ DSIFT -> PCA
def digits_uint8(n=200):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * (255 / 16)).astype(np.uint8), d.target[:n]


def test_dsift_pca_shapes_and_cache(tmp_path, monkeypatch):
    X, _ = digits_uint8(200)
    F, info = dsift_pca(X, cache_dir=tmp_path, return_info=True)
    assert F.shape == (200, 199) and F.dtype == np.float32 and not info["cached"]  # capped at N - 1
    assert info["n_dsift"] == 512 and len(list(tmp_path.iterdir())) == 1
    assert (info["n_components"], info["dim"]) == (300, 199) and "200 images" in info["dim_reason"]
    np.testing.assert_allclose(F.mean(0), 0, atol=1e-4)  # PCA scores are centred
    # the same call reads the file and does not compute
    monkeypatch.setattr(DenseSIFT, "transform", lambda *a, **k: pytest.fail("recomputed"))
    F2, info2 = dsift_pca(X, cache_dir=tmp_path, return_info=True)
    assert info2["cached"] and np.array_equal(F, F2) and info2["dim_reason"] == info["dim_reason"]
    monkeypatch.undo()
    # other parameters or other data: another file; n_components capped at n_features
    G = dsift_pca(X, n_components=50, cache_dir=tmp_path)
    assert G.shape == (200, 50)
    np.testing.assert_allclose(np.abs(G[:, :20]), np.abs(F[:, :20]), atol=1e-3)  # same leading components (up to sign)
    H = dsift_pca(X[:150], n_components=1000, cache_dir=tmp_path)
    assert H.shape == (150, 149) and len(list(tmp_path.iterdir())) == 3
    assert dsift_pca(X[:150], n_components=100, step=2, bin_size=2, cache_dir=False).shape == (150, 100)
    assert len(list(tmp_path.iterdir())) == 3  # cache_dir=False writes nothing
    # a corrupt file is recomputed and replaced (atomically: no temporary files left behind)
    (path,) = [p for p in tmp_path.iterdir() if p.name == os.path.basename(info["path"])]
    path.write_bytes(b"not an npz")
    np.testing.assert_array_equal(dsift_pca(X, cache_dir=tmp_path), F)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the default folder follows $NBCLUST_CACHE
    monkeypatch.setenv("NBCLUST_CACHE", str(tmp_path / "c"))
    assert ft.default_cache_dir() == tmp_path / "c" / "features"


def test_pca_dimension():
    """min(n_components, N - 1, n_features), with the reason whenever it is below n_components: the
    centred data of N images have no variance beyond N - 1 components (the N-th is rounding noise)."""
    assert ft.pca_dimension(300, 2414, 18432) == (300, None)
    k, why = ft.pca_dimension(300, 165, 18432)
    assert k == 164 and "165 images" in why and "164" in why
    k, why = ft.pca_dimension(300, 1797, 128)
    assert k == 128 and "128-d" in why
    with pytest.raises(ValueError, match="at least 2 images"):
        ft.pca_dimension(300, 1, 128)
    X, _ = digits_uint8(40)
    F = dsift_pca(X, cache_dir=False)
    full = dsift_pca_pipeline(40).fit_transform(X)  # sklearn's 40th component of 40 centred images
    assert F.shape == (40, 39) and np.std(F[:, -1]) > 1e3 * np.std(full[:, -1])


def test_dsift_pca_helps_kmeans_on_digits():
    """Not a benchmark: on 600 digits, k-means on DSIFT-PCA is at least as good as on pixels."""
    from sklearn.cluster import KMeans

    from nbclust.methods.metrics import cluster_acc

    X, y = digits_uint8(600)
    F = dsift_pca(X, n_components=60, cache_dir=False)
    acc_f = cluster_acc(y, KMeans(10, n_init=5, random_state=0).fit(F).labels_)
    acc_p = cluster_acc(y, KMeans(10, n_init=5, random_state=0).fit(X.reshape(600, -1) / 255).labels_)
    assert acc_f > 0.6 and acc_f > acc_p - 0.05, (acc_f, acc_p)


def test_dsift_grid_layout():
    """Keypoint (j, i) of the row-major grid at [:, :, j, i], its 128 values as channels."""
    X, _ = digits_uint8(5)
    sift = DenseSIFT()
    D = sift.fit_transform(X)
    G = ft.dsift_grid(X)
    ys, xs = keypoint_grid(8, 8, sift.step_, sift.bin_size_)
    assert G.shape == (5, 128, len(ys), len(xs)) and G.dtype == np.float32 and G.flags.c_contiguous
    for j in range(len(ys)):
        for i in range(len(xs)):
            k = j * len(xs) + i
            np.testing.assert_array_equal(G[:, :, j, i], D[:, k * 128:(k + 1) * 128])


def test_as_estimator_input():
    F = np.random.default_rng(0).random((7, 300))
    img = as_estimator_input(F, object())
    assert img.shape == (7, 1, 1, 300) and img.dtype == np.float32
    flat = as_estimator_input(F, KMeansPixels(3))
    assert flat.shape == (7, 300)
    assert KMeansPixels(3, n_init=1, random_state=0).fit(flat).transform(flat).shape == (7, 300)
