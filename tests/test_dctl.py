"""DCTL (issue 21): the structure-preserving start, vector pooling, the stopping rule, and the
k-means baseline on DCTL's own input.  The objective's gradients and the readings: test_methods_b.py."""

import numpy as np
import pytest

from nbclust import DCTL
from nbclust.methods.baseline import KMeansPixels
from nbclust.methods.dctl import DCTLTransform, dctl_layout, impulse_offsets, initial_filters
from nbclust.methods.scaling import minmax_apply, minmax_statistics
from test_methods_b import _check_batch_loss_gradient, _vectors


def _pairwise(a):
    a = a.reshape(len(a), -1).astype(np.float64)
    return ((a[:, None] - a[None]) ** 2).sum(-1)


# ------------------------------------------------------------ initial filters

def test_impulse_offsets_nearest_first():
    assert impulse_offsets(1, 9)[:3] == [(0, 0), (0, 1), (0, -1)]
    assert impulse_offsets(9, 9)[:5] == [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]
    assert sorted(impulse_offsets(3, 3)) == sorted((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1))


@pytest.mark.parametrize("shape", [(3, 1, 1, 9), (3, 3, 1, 9), (3, 1, 9, 9), (3, 3, 9, 9), (5, 2, 3, 3)])
def test_impulse_bank_singular_values_minimise_the_regulariser(shape):
    """M M^T = I / 2: every singular value is 1/sqrt(2), the minimiser of s^2 - log s, so the
    regulariser ||T||^2 - sum log s has zero gradient at the start."""
    w = initial_filters(shape, "impulse", np.random.default_rng(0))
    M = w.reshape(shape[0], -1)
    np.testing.assert_allclose(M @ M.T, np.eye(shape[0]) / 2, atol=1e-15)
    assert np.count_nonzero(M) == shape[0]  # one tap per filter
    covered = {int(np.flatnonzero(w[f].sum((1, 2)))[0]) for f in range(shape[0])}
    assert covered == set(range(shape[1]))  # every input channel is seen


def test_impulse_start_regulariser_gradient_is_zero():
    tr = DCTLTransform(1, n_layers=2, kernel_size=(1, 9), pool=(False, False), pool_size=(1, 2),
                       init="impulse", backend="reference", dtype=np.float64, rng=0)
    reg, grads = tr.regularizer()
    assert all(np.abs(g).max() < 1e-12 for g in grads)
    np.testing.assert_allclose(reg, 2 * 3 * (0.5 - np.log(2 ** -0.5)))  # 3 values of s^2 - log s per bank


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("reading,shape", [("1d", (1, 1, 40)), ("image", (1, 12, 12))])
def test_impulse_start_keeps_the_inputs_distances(reading, shape, n_layers):
    """T(x) = shifted copies of x: squared distances scale by 3/2 per layer-1 bank (times
    SELU's 1.0507^2 / 2 through T2) when the input is non-negative and zero where a shift reaches
    the zero padding, so k-means on the start's outputs is k-means on the input."""
    lay = dctl_layout(shape, n_layers=n_layers, pool="never")
    tr = DCTLTransform(1, n_layers=n_layers, kernel_size=lay["kernel"], pool=lay["pool"],
                       pool_size=lay["pool_size"], init="impulse", backend="reference", dtype=np.float64, rng=0)
    x = np.random.default_rng(1).random((7, *shape))
    x[..., 0], x[..., -1] = 0, 0
    if reading == "image":
        x[..., 0, :], x[..., -1, :] = 0, 0
    scale = 1.5 if n_layers == 1 else 1.5 * 1.0507009873554805**2 / 2
    np.testing.assert_allclose(_pairwise(tr.forward(x)), scale * _pairwise(x), rtol=1e-12, atol=1e-12)


def test_torch_start_draw():
    w = initial_filters((3, 3, 1, 9), "torch", np.random.default_rng(0))
    bound = 1 / np.sqrt(27)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound and len(np.unique(w)) == w.size
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.3)


def test_impulse_needs_a_filter_per_channel():
    with pytest.raises(ValueError, match="init='torch'"):
        initial_filters((3, 128, 9, 9), "impulse", np.random.default_rng(0))
    with pytest.raises(ValueError, match="init='torch'"):
        initial_filters((10, 1, 1, 9), "impulse", np.random.default_rng(0))
    with pytest.raises(ValueError, match="init"):
        DCTL(2, backend="reference", init="identity").fit(np.zeros((4, 1, 1, 20)))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_objective_gradient_at_the_impulse_start(n_layers):
    """The batch objective's gradients at the impulse start, float64.  With two layers the start
    puts the zeros that a shift brings in from the padding exactly on SELU's kink, where central
    differences straddle two slopes: T1 is moved off it by 1e-3 first."""
    rng = np.random.default_rng(0)
    tr = DCTLTransform(1, n_layers=n_layers, kernel_size=(1, 9), pool=(False, False), pool_size=(1, 2),
                       init="impulse", backend="reference", dtype=np.float64, rng=0)
    if n_layers == 2:
        tr.filters[0].data[...] += 1e-3 * rng.random(tr.filters[0].data.shape)
    x = 0.1 + rng.random((6, 1, 1, 20))
    _check_batch_loss_gradient(tr, x, tr.forward(x).shape[1], rng, reg_scale=1.0, mean=True)


def test_impulse_start_first_partition_is_kmeans_of_the_input():
    """init="impulse", epochs=0: the labels are k-means of the (min-max scaled) input itself."""
    from sklearn.cluster import KMeans

    from nbclust.methods.metrics import cluster_acc

    x, y = _vectors(n_per=30, d=60)
    est = DCTL(3, backend="reference", random_state=0, epochs=0, init="impulse").fit(x)
    lo, span = minmax_statistics(x.reshape(len(x), -1))
    km = KMeans(3, n_init=10, random_state=0).fit(minmax_apply(x.reshape(len(x), -1), lo, span))
    assert cluster_acc(km.labels_, est.labels_) == 1.0


# ------------------------------------------------------------ pooling of vectors

@pytest.mark.parametrize("reading", ["1d", "2d"])
@pytest.mark.parametrize("pool,flags", [("auto", (False, False)), ("always", (True, True)), ("never", (False, False))])
def test_pool_auto_never_pools_a_vector(reading, pool, flags):
    assert dctl_layout((1, 1, 300), reading=reading, pool=pool)["pool"] == flags


def test_pool_auto_pools_images():
    assert dctl_layout((1, 32, 32))["pool"] == (True, True)
    assert dctl_layout((1, 8, 8))["pool"] == (False, False)


# ------------------------------------------------------------ stopping rule

def _digits(n):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * (255 / 16)).astype("uint8"), d.target[:n]


@pytest.mark.parametrize("init", ["impulse", "torch"])
def test_stopping_rule_needs_training_on_fewer_images_than_a_batch(init):
    """165 images, batch 256: one step an epoch.  The rule (shift < tol * drift since the first
    partition) cannot fire at epoch 1 (shift = drift) nor while nothing has moved (both 0)."""
    x, _ = _digits(165)
    est = DCTL(10, random_state=0, epochs=8, batch_size=256, init=init).fit(x)
    hist = est.history_
    assert len(hist) > 1
    assert hist[0]["center_shift"] == pytest.approx(hist[0]["center_drift"])
    for h in hist[:-1]:
        assert not h["center_shift"] < est.tol * h["center_drift"]
    assert est.converged_ == (hist[-1]["center_shift"] < est.tol * hist[-1]["center_drift"])
    assert est.converged_ or len(hist) == 8


def test_stopping_rule_fires_when_the_centres_settle():
    """A tolerance close to 1 stops as soon as an epoch moves the centres less than all epochs so far."""
    x, _ = _vectors(n_per=20, d=40)
    est = DCTL(3, backend="reference", random_state=0, epochs=30, batch_size=16, tol=0.99, init="torch").fit(x)
    hist = est.history_
    assert est.converged_ and 2 <= len(hist) < 30
    assert hist[-1]["center_shift"] < 0.99 * hist[-1]["center_drift"]


def test_stopping_rule_state_resumes():
    """C_0 of the rule is training state: a resumed fit ends as the uninterrupted one."""
    x, _ = _vectors(n_per=20, d=40)
    kw = dict(backend="reference", random_state=0, epochs=6, batch_size=16, tol=0.9, init="torch")
    states = []
    full = DCTL(3, **kw).fit(x, callback=lambda e, r: states.append(e.training_state()))
    resumed = DCTL(3, **kw).fit(x, resume=states[0])
    assert len(resumed.history_) == len(full.history_)
    np.testing.assert_array_equal(resumed.labels_, full.labels_)


# ------------------------------------------------------------ k-means on DCTL's input

def test_kmeans_baseline_gets_dctls_scaled_input():
    """--method kmeans --param input_scale=minmax clusters exactly the vectors DCTL transforms."""
    x, _ = _vectors(n_per=10, d=30)
    x = x * np.linspace(0.5, 3, 30) - 1.0
    F = x.reshape(len(x), -1)
    km = KMeansPixels(3, n_init=2, input_scale="minmax", random_state=0).fit(F)
    dctl_input = DCTL(3, backend="reference")._check_X(x)
    np.testing.assert_allclose(km.transform(F), dctl_input.reshape(len(x), -1), atol=1e-6)  # DCTL: float32
    plain = KMeansPixels(3, n_init=2, random_state=0).fit(km.transform(F))
    np.testing.assert_array_equal(km.labels_, plain.labels_)
    np.testing.assert_array_equal(km.predict(F), km.labels_)
    assert KMeansPixels(3).fit(F).transform(F).min() < 0  # default: as given


def test_kmeans_baseline_scaling_saved_and_not_for_images(tmp_path):
    F = np.random.default_rng(0).normal(size=(20, 6)) * 5
    km = KMeansPixels(2, n_init=2, input_scale="minmax", random_state=0).fit(F)
    km.save(tmp_path / "k.npz")
    back = KMeansPixels.load(tmp_path / "k.npz")
    np.testing.assert_array_equal(back.transform(F), km.transform(F))
    np.testing.assert_array_equal(back.predict(F), km.labels_)
    imgs = (np.random.default_rng(1).random((10, 4, 4)) * 255).astype("uint8")
    a = KMeansPixels(2, n_init=2, input_scale="minmax", random_state=0).fit(imgs)
    np.testing.assert_allclose(a.transform(imgs), imgs.reshape(10, -1) / 255.0, rtol=1e-15)  # not min-max
    with pytest.raises(ValueError, match="input_scale"):
        KMeansPixels(2, input_scale="zscore").fit(F)
