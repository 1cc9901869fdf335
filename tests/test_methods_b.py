"""DCTL: objective gradients, clustering of easy data, digits; DCTL and DEPICT: API conventions (DEPICT's own tests: test_depict.py)."""

import numpy as np
import pytest

from nbclust.methods.base import DeepClusterer
from nbclust.methods.dctl import DCTL, DCTLTransform, batch_kmeans, dctl_layout, vector_map_shape
from nbclust.methods.depict import DEPICT
from nbclust.methods.metrics import cluster_acc


def _blobs(n_per=20, size=8, seed=0):
    """Three obvious image clusters (horizontal bar, vertical bar, diagonal) plus noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    pats = np.zeros((3, size, size))
    pats[0, size // 2 - 1:size // 2 + 1, :] = 1
    pats[1, :, size // 2 - 1:size // 2 + 1] = 1
    pats[2][np.eye(size, dtype=bool)] = 1
    y = np.repeat(np.arange(3), n_per)
    x = np.clip(pats[y] + 0.1 * rng.normal(size=(len(y), size, size)), 0, 1)
    return x.astype(np.float32), y


def _digits(n=300):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32), d.target[:n]


def _fd_check(params, loss, rng, n_dirs=5, h=1e-6):
    """Worst error of the analytic gradients (already computed) against central differences.

    ``params``: list of (array, grad); ``loss()`` re-evaluates the objective (a float) and
    sees in-place changes of the arrays.  For each array, ``n_dirs`` random unit directions
    v (dense, or one coordinate for every second direction): numeric (L(p + h v) - L(p - h v)) / 2h
    against grad . v, the error relative to ||grad||.  Directions rather than single
    coordinates: the size-normalised losses give entries ~1e-4, where the ~1e-10 rounding
    error of a coordinate difference would be 1e-6 of the entry.
    """
    worst = 0.0
    for data, grad in params:
        flat, g = data.reshape(-1), np.array(grad).reshape(-1)
        base = flat.copy()
        for k in range(n_dirs):
            if k % 2:
                v = np.zeros(flat.size)
                v[rng.integers(flat.size)] = 1.0
            else:
                v = rng.normal(size=flat.size)
                v /= np.linalg.norm(v)
            flat[:] = base + h * v
            fp = loss()
            flat[:] = base - h * v
            fm = loss()
            flat[:] = base
            worst = max(worst, abs((fp - fm) / (2 * h) - g @ v) / max(np.linalg.norm(g), 1e-12))
    return worst


# ------------------------------------------------------------ objective gradients

def _check_batch_loss_gradient(tr, x, d, rng, *, reg_scale, mean):
    """Central differences of DCTL's batch objective w.r.t. the filters and the codes Z, float64."""
    z = np.abs(rng.normal(size=(6, d)))
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    kw = dict(lam=0.3, mu=0.7, n_clusters=3, reg_scale=reg_scale, mean=mean)  # lam large: the log-det is felt

    def loss():
        return tr.batch_loss(x, z, labels, **kw)[0]["loss"]

    for p in tr.filters:
        p.grad[...] = 0
    terms, g_z = tr.batch_loss(x, z, labels, **kw)
    assert set(terms) == {"fidelity", "reg", "kmeans", "loss"}
    err = _fd_check([(p.data, p.grad.copy()) for p in tr.filters] + [(z, g_z)], loss, rng)
    assert err <= 1e-6


@pytest.mark.parametrize("mean", [False, True], ids=["paper", "code"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_dctl_objective_gradient(n_layers, mean):
    rng = np.random.default_rng(0)
    tr = DCTLTransform(1, n_layers=n_layers, backend="reference", dtype=np.float64, rng=1)
    x = rng.random((6, 1, 8, 8))
    d = tr.forward(x).shape[1]
    _check_batch_loss_gradient(tr, x, d, rng, reg_scale=0.5, mean=mean)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_dctl_objective_gradient_standardized(n_layers):
    """Through the batch standardisation (batch statistics) and an unpooled first layer."""
    rng = np.random.default_rng(0)
    pool = (False, True)[:n_layers] if n_layers == 2 else (True,)
    d = 3 * 4 * 4
    tr = DCTLTransform(1, n_layers=n_layers, pool=pool, standardize=d, backend="reference",
                       dtype=np.float64, rng=1)
    x = rng.random((6, 1, 8, 8))
    z = np.abs(rng.normal(size=(6, d)))
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    kw = dict(lam=0.3, mu=0.7, n_clusters=3, reg_scale=0.5)

    def loss():
        return tr.batch_loss(x, z, labels, **kw)[0]["loss"]

    for p in tr.filters:
        p.grad[...] = 0
    terms, g_z = tr.batch_loss(x, z, labels, **kw)
    assert len(tr.filters) == n_layers  # the standardisation has no trained parameters
    err = _fd_check([(p.data, p.grad.copy()) for p in tr.filters] + [(z, g_z)], loss, rng)
    assert err <= 1e-6


@pytest.mark.parametrize("size,d", [(4, 3), (8, 12), (28, 147), (32, 192)])
def test_dctl_feature_size(size, d):
    tr = DCTLTransform(1, backend="reference", dtype=np.float64, rng=0)
    assert tr.forward(np.zeros((1, 1, size, size))).shape == (1, d)


@pytest.mark.parametrize("size,pool,n_layers,d", [
    (8, "auto", 2, 192), (8, "always", 2, 12), (8, "never", 2, 192), (8, "auto", 1, 192),
    (16, "auto", 2, 192), (28, "auto", 2, 147), (32, "auto", 2, 192), (32, "never", 1, 3072),
])
def test_dctl_pooling_rule(size, pool, n_layers, d):
    x = np.random.default_rng(0).random((4, size, size))
    est = DCTL(2, backend="reference", random_state=0, epochs=0, pool=pool, n_layers=n_layers).fit(x)
    assert est.transform(x).shape == (4, d)


def test_dctl_standardization_uses_full_data_statistics():
    x, _ = _blobs()
    est = DCTL(3, backend="reference", random_state=0, epochs=2, batch_size=16, standardize=True,
               final="codes").fit(x)
    est.modules_["transform"].eval()
    h = x[:, None]
    for layer in est.transform_.net.layers[:-1]:
        h = layer.forward(h)
    a = est.transform_.net.layers[-1].forward(h)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-4)
    v = h.astype(np.float64).var(0)
    np.testing.assert_allclose(a.var(0), v / (v + 1e-5), rtol=1e-3)  # batch norm's eps = 1e-5
    np.testing.assert_array_equal(est.transform(x), np.maximum(a, 0))


# ------------------------------------------------------------ clustering quality

@pytest.mark.parametrize("n_layers,joint", [(2, True), (1, False)])
def test_dctl_clusters_easy_data(n_layers, joint):
    x, y = _blobs()
    est = DCTL(3, backend="reference", random_state=0, n_layers=n_layers, joint=joint,
               epochs=5, batch_size=32).fit(x, y)
    assert cluster_acc(y, est.labels_) >= 0.95
    assert [h["phase"] for h in est.history_] == ["cluster" if joint else "pretrain"] * len(est.history_)
    assert est.codes_.min() >= 0  # psi: non-negative codes
    np.testing.assert_array_equal(est.predict(x), est.labels_)


def test_dctl_digits_default_architecture():
    """Full digits (8x8): the unpooled default (pool="auto" keeps the 8x8 maps) clusters far
    better than the paper's pooled 12-feature transform did (ACC 0.50); raw-pixel k-means
    reaches 0.79."""
    from sklearn.datasets import load_digits

    d = load_digits()
    est = DCTL(10, random_state=0, epochs=5).fit(d.images / 16.0)
    assert est.codes_.shape == (1797, 192)
    assert cluster_acc(d.target, est.labels_) >= 0.75


def test_dctl_pretrain_then_joint():
    x, y = _blobs()
    est = DCTL(3, backend="reference", random_state=0, pretrain_epochs=2, epochs=3, tol=0,
               batch_size=32).fit(x, y)
    assert [h["phase"] for h in est.history_] == ["pretrain"] * 2 + ["cluster"] * 3
    assert "kmeans" not in est.history_[0] and "kmeans" in est.history_[-1]
    assert cluster_acc(y, est.labels_) >= 0.95
    np.testing.assert_array_equal(est.predict(x), est.labels_)


# ------------------------------------------------------------ DCTL on feature vectors

def _vectors(n_per=20, d=60, seed=0):
    """Three clusters of d-vectors (a bump at three places along the vector) plus noise,
    as (N, 1, 1, d)."""
    rng = np.random.default_rng(seed)
    t = np.arange(d)
    pats = np.stack([np.exp(-0.5 * ((t - c) / 4.0) ** 2) for c in (d // 5, d // 2, 4 * d // 5)])
    y = np.repeat(np.arange(3), n_per)
    return (pats[y] + 0.1 * rng.normal(size=(len(y), d))).astype(np.float32).reshape(-1, 1, 1, d), y


def test_dctl_vector_map_shape():
    assert vector_map_shape(300) == (15, 20)
    assert vector_map_shape(48) == (6, 8)
    assert vector_map_shape(49) == (7, 7)
    assert vector_map_shape(97) == (1, 97)


@pytest.mark.parametrize("reading,pool,n_layers,d", [
    ("1d", "auto", 2, 3 * 300), ("1d", "auto", 1, 3 * 300), ("1d", "never", 2, 3 * 300),
    ("1d", "always", 2, 3 * 75), ("2d", "auto", 2, 3 * 300), ("2d", "always", 2, 3 * 3 * 5),
    ("2d", "never", 1, 3 * 300),
])
def test_dctl_vector_readings_shapes(reading, pool, n_layers, d):
    """A 300-d vector (the paper's DSIFT + PCA input) as (N, 1, 1, D) or (N, 1, D): "1d"
    convolves along it with 1 x 9 filters (1 x 2 pooling only for pool="always"), "2d" reshapes
    it to 15 x 20; pool="auto" never pools a vector, as the released code."""
    x = np.random.default_rng(0).normal(size=(4, 1, 1, 300))
    est = DCTL(2, backend="reference", random_state=0, epochs=0, reading=reading, pool=pool,
               n_layers=n_layers).fit(x)
    assert est.image_shape_ == (1, 1, 300)
    shapes = [(3, 1, 1, 9), (3, 1, 3, 9)] if reading == "1d" else [(3, 1, 9, 9), (3, 3, 9, 9)]
    assert [p.shape for p in est.transform_.filters] == shapes[:n_layers]  # 1d T2: stored folded
    e = est.transform(x)
    assert e.shape == (4, d)
    np.testing.assert_array_equal(est.transform(x.reshape(4, 1, 300)), e)
    np.testing.assert_array_equal(est.predict(x.reshape(4, 1, 300)), est.labels_)


def test_dctl_vector_input_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="too small"):  # two 2-wide max-pools need 4 features
        DCTL(2, backend="reference", pool="always").fit(np.zeros((4, 1, 1, 3)))
    flat = DCTL(2, backend="reference", random_state=0, epochs=0).fit(rng.random((4, 20)))  # a flat matrix
    assert flat.image_shape_ == (1, 1, 20)
    with pytest.raises(ValueError, match="reading='1d'"):  # a prime length has no 2-D map
        DCTL(2, backend="reference", reading="2d").fit(rng.random((4, 1, 1, 97)))
    est = DCTL(2, backend="reference", random_state=0, epochs=0).fit(rng.random((4, 1, 1, 20)))
    with pytest.raises(ValueError, match="X has 21 features, but DCTL is expecting 20 features as input"):
        est.predict(np.zeros((4, 1, 1, 21)))


@pytest.mark.parametrize("mean", [False, True], ids=["paper", "code"])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("reading", ["1d", "2d"])
def test_dctl_objective_gradient_vector_readings(reading, n_layers, mean):
    """End to end from the (N, 1, 1, D) input (through the reshape of "2d"), float64."""
    rng = np.random.default_rng(0)
    D = 48  # "2d": a 6 x 8 map
    lay = dctl_layout((1, 1, D), reading=reading, n_layers=n_layers, kernel_size=9, pool="always")
    assert lay["reshape"] == (None if reading == "1d" else (1, 6, 8))
    tr = DCTLTransform(1, n_layers=n_layers, kernel_size=lay["kernel"], pool=lay["pool"],
                       pool_size=lay["pool_size"], reshape=lay["reshape"], backend="reference",
                       dtype=np.float64, rng=1)
    x = rng.normal(size=(6, 1, 1, D))
    d = tr.forward(x).shape[1]
    assert d == 3 * lay["out"][0] * lay["out"][1]
    _check_batch_loss_gradient(tr, x, d, rng, reg_scale=1.0 if mean else 0.5, mean=mean)


def test_dctl_1d_reading_is_a_convolution_along_the_vector():
    """Reading "1d" = conv 1x9 "same" -> max-pool 1x2 -> SELU -> conv 1x9 over the 3 channels ->
    max-pool 1x2 (T2 stored folded as (3, 1, 3, 9): the same (3, 27) filter matrix)."""
    from nbclust.engine import nn

    rng = np.random.default_rng(0)
    kw = dict(backend="reference", dtype=np.float64)
    tr = DCTLTransform(1, kernel_size=(1, 9), pool=(True, True), pool_size=(1, 2), rng=3, **kw)
    c1 = nn.Conv2d(1, 3, (1, 9), padding="same", bias=False, **kw)
    c2 = nn.Conv2d(3, 3, (1, 9), padding="same", bias=False, **kw)
    c1.weight.data[...] = tr.filters[0].data
    c2.weight.data[...] = tr.filters[1].data.reshape(3, 3, 1, 9)
    plain = nn.Sequential(c1, nn.MaxPool2d((1, 2), **kw), nn.SELU(**kw), c2, nn.MaxPool2d((1, 2), **kw),
                          nn.Flatten(**kw))
    x = rng.normal(size=(4, 1, 1, 40))
    np.testing.assert_allclose(tr.forward(x), plain.forward(x), rtol=1e-12, atol=1e-12)
    assert tr.forward(x).shape == (4, 3 * 10)


def test_dctl_code_loss_scale_is_element_means():
    """loss_scale="code": mean data and k-means terms (the released code's ``.pow(2).mean()``),
    regulariser lam (||T||_F^2 - sum log sigma(T)) per layer, unscaled."""
    rng = np.random.default_rng(0)
    tr = DCTLTransform(1, n_layers=2, kernel_size=(1, 9), pool=(True, True), pool_size=(1, 2),
                       backend="reference", dtype=np.float64, rng=1)
    x = rng.normal(size=(5, 1, 1, 40))
    a = tr.forward(x)
    z = np.abs(rng.normal(size=a.shape))
    labels = np.array([0, 1, 0, 1, 1])
    terms, _ = tr.batch_loss(x, z, labels, lam=0.01, mu=0.5, n_clusters=2, mean=True)
    np.testing.assert_allclose(terms["fidelity"], ((a - z) ** 2).mean())
    means = np.stack([z[labels == k].mean(0) for k in (0, 1)])
    np.testing.assert_allclose(terms["kmeans"], 0.5 * ((z - means[labels]) ** 2).mean())
    reg = sum((p.data**2).sum() - np.log(np.linalg.svd(p.data.reshape(3, -1), compute_uv=False)).sum()
              for p in tr.filters)
    np.testing.assert_allclose(terms["reg"], 0.01 * reg)


@pytest.mark.parametrize("loss_scale,low,high", [("code", 1e-3, 1e3), ("paper", 0.0, 1e-3)])
def test_dctl_regularizer_share_at_init(loss_scale, low, high):
    """With the released code's scaling the log-det regulariser is felt at initialisation; with the
    paper's sums (and b/N) it is negligible on 300-d vectors."""
    x, _ = _vectors(n_per=40, d=300)
    est = DCTL(3, backend="reference", random_state=0, epochs=1, loss_scale=loss_scale).fit(x)
    h = est.history_[0]  # one batch (batch_size 256 >= N): the terms at the initial T and Z
    ratio = h["reg"] / (h["fidelity"] + h["kmeans"])
    assert low < ratio < high


def test_batch_kmeans():
    rng = np.random.default_rng(0)
    a = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 20, 0) + rng.normal(size=(60, 2))
    labels = batch_kmeans(a, 3, np.random.default_rng(1))
    assert labels.dtype == np.int64
    assert cluster_acc(np.repeat(np.arange(3), 20), labels) == 1.0
    assert sorted(np.unique(batch_kmeans(a[:2], 5, rng))) == [0, 1]  # k capped at the batch size


def test_dctl_batch_assignments_recomputed_every_step(monkeypatch):
    """assign="batch": a fresh k-means on the current batch features at every step (the released
    code's ``kmeans(X=self.tl_features)`` in forward); the full-data partition is tracked per epoch."""
    import nbclust.methods.dctl as dctl_module

    seen = []
    orig = dctl_module.batch_kmeans
    monkeypatch.setattr(dctl_module, "batch_kmeans",
                        lambda a, k, rng, **kw: seen.append(np.array(a)) or orig(a, k, rng, **kw))
    x, y = _vectors()
    est = DCTL(3, backend="reference", random_state=0, epochs=2, batch_size=16, tol=0).fit(x, y)
    assert len(seen) == 2 * 4  # 60 samples in batches of 16, 2 epochs
    assert {s.shape[1] for s in seen} == {est.transform(x).shape[1]}
    assert all({"moved", "center_shift", "kmeans"} <= set(h) for h in est.history_)


@pytest.mark.parametrize("joint", [True, False])
def test_dctl_final_labels_from_fresh_kmeans(joint, monkeypatch):
    """final="kmeans": after training, k-means (n_init restarts) on the final transform outputs
    (not the clipped codes), as the released code's last ``KMeans(...).fit_predict(Z_train)``."""
    calls = []
    orig = DCTL._kmeans
    monkeypatch.setattr(DCTL, "_kmeans", lambda self, Z, n_init=20: calls.append((np.array(Z), n_init))
                        or orig(self, Z, n_init))
    x, y = _vectors()
    est = DCTL(3, backend="reference", random_state=0, epochs=3, batch_size=16, joint=joint, n_init=7).fit(x)
    e = est.transform(x)
    assert e.min() < 0  # the transform output A itself
    Z, n_init = calls[-1]
    assert n_init == 7
    np.testing.assert_allclose(Z, e, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    for k in range(3):  # a k-means fixed point of the final embedding
        np.testing.assert_allclose(est.cluster_centers_[k], e[est.labels_ == k].mean(0), atol=1e-4)
    assert cluster_acc(y, est.labels_) >= 0.95


def test_dctl_legacy_codes_reading():
    """final="codes", assign="codes", loss_scale="paper", standardize=True: the previous reading
    (embedding max(T(x), 0), labels from the P2 centres of Z)."""
    x, y = _vectors()
    est = DCTL(3, backend="reference", random_state=0, epochs=3, batch_size=16, final="codes",
               assign="codes", loss_scale="paper", standardize=True).fit(x, y)
    assert est.transform(x).min() >= 0
    assert est.cluster_centers_.shape == (3, est.codes_.shape[1])
    assert cluster_acc(y, est.labels_) >= 0.95


@pytest.mark.parametrize("make", [
    lambda: DCTL(10, backend="reference", random_state=0, epochs=8, batch_size=100),
], ids=["DCTL"])
def test_digits_loss_decreases(make):
    x, y = _digits()
    est = make().fit(x, y)
    first = [h for h in est.history_ if h["phase"] == est.history_[0]["phase"]]
    assert first[-1]["loss"] < first[0]["loss"]
    assert cluster_acc(y, est.labels_) > 0.3


# ------------------------------------------------------------ API conventions

def _small(cls, **kw):
    if cls is DCTL:
        return DCTL(3, random_state=0, **{"epochs": 3, "batch_size": 16, **kw})
    return DEPICT(3, random_state=0, **{"pretrain_epochs": 2, "warmup_epochs": 2, "epochs": 2, "batch_size": 16,
                                        "lr": 1e-3, "tol": 0, **kw})


@pytest.mark.parametrize("cls", [DCTL, DEPICT])
def test_deterministic_on_cpu(cls):
    x, _ = _blobs(n_per=10)
    a, b = _small(cls).fit(x), _small(cls).fit(x)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]


@pytest.mark.parametrize("cls", [DCTL, DEPICT])
def test_save_load_and_resume(cls, tmp_path):
    x, _ = _blobs(n_per=10)
    a = _small(cls, backend="reference").fit(x)

    a.save(tmp_path / "m.npz")
    loaded = DeepClusterer.load(tmp_path / "m.npz")
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.predict(x), a.predict(x))
    np.testing.assert_allclose(loaded.transform(x), a.transform(x))

    states = {}
    _small(cls, backend="reference").fit(
        x, callback=lambda est, rec: states.setdefault(rec["epoch"], est.training_state()))
    for epoch in sorted(states)[:-1]:
        resumed = _small(cls, backend="reference").fit(x, resume=states[epoch])
        np.testing.assert_array_equal(resumed.labels_, a.labels_)
        assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in a.history_]
    with pytest.raises(ValueError, match="hyperparameters"):
        _small(cls, backend="reference", batch_size=7).fit(x, resume=states[2])


@pytest.mark.parametrize("cls,bad", [
    (DCTL, dict(n_layers=3)), (DCTL, dict(lam=-1.0)), (DCTL, dict(mu=-0.1)), (DCTL, dict(joint="yes")),
    (DCTL, dict(kernel_size=4)), (DCTL, dict(n_filters=0)), (DCTL, dict(lr=-1e-3)), (DCTL, dict(epochs=-1)),
    (DCTL, dict(pool="sometimes")), (DCTL, dict(standardize="yes")), (DCTL, dict(z_lr=0.0)),
    (DCTL, dict(pretrain_epochs=-1)), (DCTL, dict(reading="3d")), (DCTL, dict(loss_scale="sum")),
    (DCTL, dict(assign="never")), (DCTL, dict(final="labels")), (DCTL, dict(n_init=0)),
    (DEPICT, dict(target="foo")), (DEPICT, dict(dropout=1.0)), (DEPICT, dict(hidden_weight=-1)),
    (DEPICT, dict(batch_size=0)), (DEPICT, dict(pretrain_epochs=-2)),
])
def test_invalid_hyperparameters(cls, bad):
    x, _ = _blobs(n_per=4)
    with pytest.raises(ValueError, match=next(iter(bad))):
        cls(3, backend="reference", **bad).fit(x)


@pytest.mark.parametrize("cls", [DCTL, DEPICT])
def test_images_too_small(cls):
    with pytest.raises(ValueError, match="too small"):
        cls(2, backend="reference").fit(np.zeros((4, 3, 3)))


def test_dctl_too_many_filters_for_log_det():
    x, _ = _blobs(n_per=4)
    with pytest.raises(ValueError, match="n_filters"):
        DCTL(3, backend="reference", n_filters=10, kernel_size=3).fit(x)


def test_reference_and_cpu_backends_agree():
    """The cpu kernels follow the reference ops; a short float32 fit agrees in its first loss."""
    x, _ = _blobs(n_per=5)
    losses = [DCTL(3, backend=b, random_state=0, epochs=1).fit(x).history_[0]["loss"]
              for b in ("reference", "cpu")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


# ------------------------------------------------------------ DCTL input scaling (issue 15)



def _vecs(n=24, d=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 1, d)) * np.linspace(0.1, 5, d) + np.arange(d)  # features on other scales
    x[:, :, :, 3] = 7.0  # a constant feature
    return x.astype(np.float32)


def test_dctl_input_scale_minmax_is_prescaled_none():
    """Default "minmax" = "none" on the features mapped to [0, 1] with the training min and range
    (a constant feature maps to 0); predict/transform reuse the training statistics."""
    x = _vecs()
    lo, hi = x.min(0), x.max(0)
    span = np.where(hi > lo, hi - lo, 1)
    xs = (x - lo) / span
    a = DCTL(3, backend="reference", random_state=0, epochs=2).fit(x)
    b = DCTL(3, backend="reference", random_state=0, epochs=2, input_scale="none").fit(xs)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.transform(x), b.transform(xs), rtol=1e-6, atol=1e-6)
    new = _vecs(n=6, seed=1)
    np.testing.assert_allclose(a.transform(new), b.transform((new - lo) / span), rtol=1e-6, atol=1e-6)


def test_dctl_input_scale_not_applied_to_images():
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 12, 12)).astype(np.float32) * 0.5
    a = DCTL(2, backend="reference", random_state=0, epochs=1).fit(x)
    b = DCTL(2, backend="reference", random_state=0, epochs=1, input_scale="none").fit(x)
    np.testing.assert_array_equal(a.transform(x), b.transform(x))


def test_dctl_input_scale_save_load_and_resume(tmp_path):
    x = _vecs()
    est = DCTL(3, backend="reference", random_state=0, epochs=2).fit(x)
    est.save(tmp_path / "m.npz")
    back = DCTL.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.predict(x), est.labels_)
    np.testing.assert_allclose(back.transform(x), est.transform(x))
    states = []
    DCTL(3, backend="reference", random_state=0, epochs=2).fit(
        x, callback=lambda e, r: states.append(e.training_state()))
    resumed = DCTL(3, backend="reference", random_state=0, epochs=2).fit(x, resume=states[0])
    np.testing.assert_array_equal(resumed.labels_, est.labels_)


def test_dctl_input_scale_validated():
    with pytest.raises(ValueError, match="input_scale"):
        DCTL(2, backend="reference", input_scale="zscore").fit(_vecs())
