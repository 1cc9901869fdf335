"""DCTL and DEPICT: objective gradients, clustering of easy data, digits, API conventions."""

import numpy as np
import pytest

from nbclust.methods.base import DeepClusterer
from nbclust.methods.dctl import DCTL, DCTLTransform
from nbclust.methods.depict import DEPICT, DEPICTNet, depict_target
from nbclust.metrics import cluster_acc


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

@pytest.mark.parametrize("n_layers", [1, 2])
def test_dctl_objective_gradient(n_layers):
    rng = np.random.default_rng(0)
    tr = DCTLTransform(1, n_layers=n_layers, backend="reference", dtype=np.float64, rng=1)
    x = rng.random((6, 1, 8, 8))
    d = tr.forward(x).shape[1]
    z = np.abs(rng.normal(size=(6, d)))
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    kw = dict(lam=0.3, mu=0.7, n_clusters=3, reg_scale=0.5)  # lam large so that the log-det is felt

    def loss():
        return tr.batch_loss(x, z, labels, **kw)[0]["loss"]

    for p in tr.filters:
        p.grad[...] = 0
    terms, g_z = tr.batch_loss(x, z, labels, **kw)
    assert set(terms) == {"fidelity", "reg", "kmeans", "loss"}
    err = _fd_check([(p.data, p.grad.copy()) for p in tr.filters] + [(z, g_z)], loss, rng)
    assert err <= 1e-6


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


@pytest.mark.parametrize("pretrain", [True, False])
def test_depict_objective_gradient(pretrain):
    rng = np.random.default_rng(0)
    net = DEPICTNet((1, 8, 8), 3, backend="reference", dtype=np.float64, rng=2)
    x = rng.random((4, 1, 8, 8))
    masks = net.draw_masks(x.shape, np.random.default_rng(3))
    q = None if pretrain else depict_target(rng.dirichlet(np.ones(3), size=4), "paper")
    params = [p for m in net.modules.values() for p in m.parameters()]

    def loss():
        return net.loss(x, masks, q)["loss"]

    for p in params:
        p.grad[...] = 0
    terms = net.loss(x, masks, q)
    assert ("cluster" in terms) is not pretrain
    err = _fd_check([(p.data, p.grad.copy()) for p in params], loss, rng)
    assert err <= 1e-6


def test_depict_targets_match_formulas():
    p = np.random.default_rng(0).dirichlet(np.ones(4), size=7)
    paper = p / np.sqrt(p.sum(0))
    code = p**2 / p.sum(0)
    np.testing.assert_allclose(depict_target(p, "paper"), paper / paper.sum(1, keepdims=True))
    np.testing.assert_allclose(depict_target(p, "code"), code / code.sum(1, keepdims=True))


@pytest.mark.parametrize("size", [4, 8, 16, 28, 32, 64])
def test_depict_architecture_restores_every_size(size):
    net = DEPICTNet((1, size, size), 4, backend="reference", dtype=np.float64, rng=0)
    x = np.random.default_rng(0).random((2, 1, size, size))
    masks = net.draw_masks(x.shape, np.random.default_rng(0))
    assert np.isfinite(net.loss(x, masks)["rec_x"])  # mse would raise on a shape mismatch
    assert net.embed(x).shape == (2, 4)


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
    est = DCTL(3, backend="reference", random_state=0, epochs=2, batch_size=16).fit(x)
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
    """Full digits (8x8): the unpooled, standardised default clusters far better than the
    paper's pooled 12-feature transform did (ACC 0.50); raw-pixel k-means reaches 0.79."""
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


@pytest.mark.parametrize("target", ["paper", "code"])
def test_depict_clusters_easy_data(target):
    x, y = _blobs()
    est = DEPICT(3, backend="reference", random_state=0, target=target, pretrain_epochs=20,
                 epochs=3, batch_size=20, lr=1e-3, tol=0).fit(x, y)
    assert cluster_acc(y, est.labels_) >= 0.95
    phases = [h["phase"] for h in est.history_]
    assert phases == ["pretrain"] * 20 + ["cluster"] * 3
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    assert est.cluster_centers_.shape == (3, 3)


@pytest.mark.parametrize("make", [
    lambda: DCTL(10, backend="reference", random_state=0, epochs=4, batch_size=100),
    lambda: DEPICT(10, backend="reference", random_state=0, pretrain_epochs=5, epochs=1, batch_size=20,
                   lr=1e-3),
], ids=["DCTL", "DEPICT"])
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
    return DEPICT(3, random_state=0, **{"pretrain_epochs": 2, "epochs": 2, "batch_size": 16, "lr": 1e-3,
                                        "tol": 0, **kw})


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
        _small(cls, backend="reference", tol=0.5).fit(x, resume=states[2])


@pytest.mark.parametrize("cls,bad", [
    (DCTL, dict(n_layers=3)), (DCTL, dict(lam=-1.0)), (DCTL, dict(mu=-0.1)), (DCTL, dict(joint="yes")),
    (DCTL, dict(kernel_size=4)), (DCTL, dict(n_filters=0)), (DCTL, dict(lr=-1e-3)), (DCTL, dict(epochs=-1)),
    (DCTL, dict(pool="sometimes")), (DCTL, dict(standardize="yes")), (DCTL, dict(z_lr=0.0)),
    (DCTL, dict(pretrain_epochs=-1)),
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
