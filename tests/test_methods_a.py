"""DCAE, DBC, FCAEKMeans and DCEC: objectives gradient-checked end to end, clustering quality, digits."""

import numpy as np
import pytest

from nbclust.engine.optable import OPS
from nbclust.methods.clustering import dec_target, target, update_centers
from nbclust.methods.dbc import DBC, FCAEKMeans
from nbclust.methods.dcae import DCAE
from nbclust.methods.dcec import DCEC
from nbclust.methods.metrics import cluster_acc


def toy_images(n_per=30, size=8, k=4, seed=0, noise=0.1):
    """k obvious stroke patterns (bars, diagonal, square outline) + Gaussian noise, uint8."""
    rng = np.random.default_rng(seed)
    protos = np.zeros((k, size, size))
    m = size // 2
    protos[0, m - 1 : m + 1, :] = 1
    protos[1, :, m - 1 : m + 1] = 1
    protos[2][np.eye(size, dtype=bool)] = 1
    if k > 3:
        protos[3, 1:-1, 1:-1] = 1
        protos[3, 2:-2, 2:-2] = 0
    y = np.repeat(np.arange(k), n_per)
    X = np.clip(protos[y] + noise * rng.normal(size=(len(y), size, size)), 0, 1)
    perm = rng.permutation(len(y))
    return (X[perm] * 255).astype(np.uint8), y[perm]


# ------------------------------------------------------------ gradient checks


def _prepare(est, X, phase):
    """An estimator set up for one batch step of ``phase`` on reference/float64."""
    est._dtype = np.float64
    est._validate()
    Xn = est._check_X(X)
    est.image_shape_ = Xn.shape[1:]
    est._init_fit_state()
    est.modules_ = est._build(est.image_shape_)
    rng = np.random.default_rng(1)
    # away from ReLU kinks: no exactly-zero pixels, no zero biases (zero patches -> pre-activation 0)
    Xd = est._backend.asarray(Xn + rng.uniform(0.01, 0.05, size=Xn.shape), np.float64)
    for m in est.modules_.values():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.data[...] = rng.normal(scale=0.1, size=p.data.shape)
    if phase == "cluster":
        Z = est._embed_all(Xd)
        est.cluster_centers_ = Z[rng.choice(len(Z), est.n_clusters, replace=False)] + 0.1 * rng.normal(
            size=(est.n_clusters, Z.shape[1]))
        est._after_load()
    return Xd, rng


def _objective_check(est, X, phase, total, trainable, n_coords=12, step=1e-6):
    """Max relative error of the analytic gradient vs central differences over sampled coordinates.

    The error of a parameter is max |analytic - numeric| / max |gradient| over its
    sampled coordinates (at least 1% of the largest gradient of any parameter);
    ``step`` is relative to max(1, |value|).
    """
    idx = np.arange(X.shape[0])

    def value():
        for p in trainable():
            p.grad[...] = 0
        return total(est._phase(phase).step(est, X, idx))

    value()
    grads = [p.grad.copy() for p in trainable()]
    top = max(np.abs(g).max() for g in grads)
    rng = np.random.default_rng(2)
    worst = 0.0
    for p, g in zip(trainable(), grads):
        flat, gflat = p.data.reshape(-1), g.reshape(-1)
        coords = rng.choice(flat.size, min(n_coords, flat.size), replace=False)
        num = np.empty(len(coords))
        for n, c in enumerate(coords):
            old = flat[c]
            h = step * max(1.0, abs(old))
            flat[c] = old + h
            up = value()
            flat[c] = old - h
            down = value()
            flat[c] = old
            num[n] = (up - down) / (2 * h)
        # a parameter with an identically zero gradient (a conv bias before batch norm)
        # is measured against the largest gradient of all parameters instead
        scale = max(np.abs(num).max(), np.abs(gflat).max(), 1e-2 * top)
        worst = max(worst, np.abs(gflat[coords] - num).max() / scale)
    return worst


def _net_params(est, *names):
    return lambda: [p for n in names for p in est.modules_[n].parameters()]


def test_dcae_objective_gradient():
    X, _ = toy_images(n_per=2)
    est = DCAE(3, backend="reference", random_state=0, activation="sigmoid")
    Xd, _ = _prepare(est, X, "cluster")
    # A stack of sigmoids makes the first layers' gradients ~1e-5 of the loss, so
    # rounding noise (~1e-16 * loss / step) needs a larger step; sigmoids are smooth.
    err = _objective_check(est, Xd, "cluster", lambda t: t["loss"], _net_params(est, "encoder", "decoder"),
                           step=1e-3)
    assert err < 1e-6


def test_dcae_relu_objective_gradient():
    X, _ = toy_images(n_per=2)
    est = DCAE(3, backend="reference", random_state=0, activation="relu")
    Xd, _ = _prepare(est, X, "cluster")
    err = _objective_check(est, Xd, "cluster", lambda t: t["loss"], _net_params(est, "encoder", "decoder"))
    assert err < 1e-6


@pytest.mark.parametrize("bad", [{"activation": "tanh"}, {"lr_pixels": 0}, {"lr_pixels": 64.0}])
def test_dcae_rejects_bad_options(bad):
    X, _ = toy_images(n_per=2)
    with pytest.raises(ValueError, match=next(iter(bad))):
        DCAE(3, **bad).fit(X)


def test_dcae_step_size_scales_with_pixels():
    est = DCAE(3, lr=0.006)
    est.image_shape_ = (1, 28, 28)
    assert est.step_size() == pytest.approx(0.006 * 64 / 784)
    est.lr_pixels = None
    assert est.step_size() == 0.006


def test_dcae_decoder_outputs_logits_and_reconstruct_applies_the_sigmoid():
    """E1 is bce_with_logits on the decoder's logits, on the old scale (P x the per-pixel mean)."""
    from nbclust.engine import nn

    X, _ = toy_images(n_per=3)
    est = DCAE(4, backend="reference", random_state=0, epochs=1, batch_size=12).fit(X)
    assert not isinstance(est.modules_["decoder"].layers[-1], nn.Sigmoid)
    Xd = np.asarray(est._check_X(X, fitted=True), dtype=est._dtype)
    logits = est.modules_["decoder"](est._embed(Xd)).astype(np.float64)
    s = 1 / (1 + np.exp(-logits))
    rec = est.reconstruct(X)
    assert rec.min() >= 0 and rec.max() <= 1
    np.testing.assert_allclose(rec, s, rtol=1e-6)
    terms = est._phase("cluster").step(est, Xd, np.arange(len(Xd)))
    x = Xd.astype(np.float64)
    bce = -np.mean(x * np.log(s) + (1 - x) * np.log1p(-s))
    np.testing.assert_allclose(terms["E1"], x[0].size * bce, rtol=1e-5)


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8), y


def test_dcae_paper_sigmoid_network_collapses_and_default_does_not():
    """The cause of the paper reading's poor ACC: its embedding barely spreads (see dcae.py)."""
    from nbclust.engine import nn

    X, y = _digits()
    X, y = X[:600], y[:600]
    paper = DCAE(10, random_state=0, **{**DCAE.PAPER, "epochs": 4}).fit(X)
    assert any(isinstance(m, nn.Sigmoid) for m in paper.modules_["encoder"].layers[-1:])
    assert paper.step_size() == 0.006
    default = DCAE(10, random_state=0, epochs=4).fit(X)
    assert paper.transform(X).std(0).max() < 1e-2 < default.transform(X).std(0).min()


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_dcae_embedding_is_bounded_so_e2_cannot_grow_with_its_scale(activation):
    """The embedding keeps the paper's sigmoid under either activation (see dcae.py): however
    large the last dense layer's weights, h stays in (0, 1)^d and E2 <= lambda d / 2."""
    from nbclust.engine import nn
    from nbclust.methods.clustering import nearest

    X, _ = _digits()
    est = DCAE(10, random_state=0, epochs=1, activation=activation).fit(X[:200])
    enc = est.modules_["encoder"]
    assert isinstance(enc.layers[-1], nn.Sigmoid) and isinstance(enc.layers[-2], nn.Linear)
    enc.layers[-2].weight.data *= 1e3
    H = est.transform(X[:200])
    assert H.min() >= 0 and H.max() <= 1
    centres = H[:10]
    e2, _ = OPS.kmeans_compactness(est._backend, H, centres, nearest(H, centres), lam=est.lam)
    assert e2 <= est.lam * 10 / 2


def test_dcae_matconvnet_init_draws_each_layer_from_its_input_fan():
    """init="matconvnet": U(+-sqrt(3 / (kh kw in))) with ``in`` the input channels, for the
    transposed convs too (250 maps in, 12x12 at 28x28: bound 0.0091, not torch's 0.072)."""
    from nbclust.engine import nn
    from nbclust.methods.architectures import dcae

    enc, dec = dcae((1, 28, 28), init="matconvnet", rng=0)
    bounds = {}
    for layer in enc.layers + dec.layers:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels * np.prod(layer.kernel_size)
            w, bound = np.asarray(layer.weight.data), np.sqrt(3 / fan)
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and abs(w.mean()) < bound / 10
            bounds[type(layer).__name__, fan] = bound
    assert bounds["ConvTranspose2d", 250 * 144] == pytest.approx(0.00913, abs=1e-5)
    with pytest.raises(ValueError, match="init must be"):
        dcae((1, 28, 28), init="he")


def test_dcae_default_clusters_digits():
    """Measured 0.789 at 30 epochs (seeds 0-9: mean 0.754; the paper's sigmoid network: 0.43)."""
    X, y = _digits()
    est = DCAE(10, random_state=0, epochs=30).fit(X, y)
    assert cluster_acc(y, est.labels_) > 0.65


@pytest.mark.parametrize("seed", [0, 5, 6])
def test_dcae_relu_decoder_keeps_its_four_maps_alive(seed):
    """The 4-map transposed conv's ReLU is not 0 for every sample (see architectures.dcae).

    Seeds 0 and 6 lose all 4 maps with zero biases, 5 and 6 with bias 0.01 (E1 then stays
    at ~39.4, a constant reconstruction); with bias 0.1 at most 1 map of 4 dies (seeds 0-19).
    """
    from nbclust.engine import nn

    X, _ = _digits()
    est = DCAE(10, random_state=seed, epochs=2).fit(X)
    dec = est.modules_["decoder"]
    i = next(i for i, m in enumerate(dec.layers) if isinstance(m, nn.ConvTranspose2d))
    assert isinstance(dec.layers[i + 1], nn.ReLU) and dec.layers[i].out_channels == 4
    Xd = np.asarray(est._check_X(X, fitted=True), dtype=est._dtype)
    dec.eval()
    a = est._embed(Xd)
    for layer in dec.layers[: i + 2]:
        a = layer.forward(a)
    dead = int((np.asarray(a).max(axis=(0, 2, 3)) <= 0).sum())
    assert dead <= 1, f"{dead} of 4 maps dead"
    assert est.history_[-1]["E1"] < 35  # left the mean-image plateau (~39.4)


@pytest.mark.parametrize("solver, term", [("caffe", "euclidean"), ("adam", "mse")])
def test_fcae_objective_gradient(solver, term):
    X, _ = toy_images(n_per=2)
    est = FCAEKMeans(3, backend="reference", random_state=0, solver=solver)
    Xd, _ = _prepare(est, X, "pretrain")
    err = _objective_check(est, Xd, "pretrain", lambda t: t[term], _net_params(est, "encoder", "decoder"))
    assert err < 1e-6


@pytest.mark.parametrize("solver", ["caffe", "adam"])
def test_dbc_stage_two_gradient(solver):
    X, _ = toy_images(n_per=2)
    est = DBC(3, backend="reference", random_state=0, solver=solver)
    Xd, _ = _prepare(est, X, "cluster")
    est._phase("cluster").begin_epoch(est, Xd)  # R from S, encoder in eval mode
    n = Xd.shape[0] if solver == "adam" else 1  # Adam: eq 3's sum over the batch; Caffe's SGD: its mean
    err = _objective_check(est, Xd, "cluster", lambda t: t["kl"] * n,
                           lambda: est.modules_["encoder"].parameters() + [est._mu])
    assert err < 1e-6


@pytest.mark.parametrize("phase", ["pretrain", "cluster"])
def test_dcec_objective_gradient(phase):
    X, _ = toy_images(n_per=2)
    est = DCEC(3, backend="reference", random_state=0, update_interval=1000)
    Xd, rng = _prepare(est, X, phase)
    trainable = _net_params(est, "encoder", "decoder")
    if phase == "cluster":
        est.iter_ = 1
        est.target_ = dec_target(rng.dirichlet(np.ones(3), size=Xd.shape[0]))
        trainable = lambda: est.modules_["encoder"].parameters() + est.modules_["decoder"].parameters() + [est._mu]  # noqa: E731
    key = "mse" if phase == "pretrain" else "loss"
    assert _objective_check(est, Xd, phase, lambda t: t[key], trainable, n_coords=8) < 1e-6


# ------------------------------------------------------------ pieces


def test_update_centers_reseeds_empty_clusters():
    H = np.array([[0.0, 0], [0.1, 0], [5, 5], [9, 9]])
    C = np.array([[0.0, 0], [5, 5], [100, 100]])
    labels = np.array([0, 0, 1, 1])
    new = update_centers(H, labels, C)
    assert np.allclose(new[0], [0.05, 0]) and np.allclose(new[1], [7, 7])
    assert np.allclose(new[2], [9, 9])  # the sample farthest from its centre
    assert np.isfinite(new).all()


@pytest.mark.parametrize("normalization", ["boosted", "soft", "none"])
def test_dbc_target(normalization):
    S = np.random.default_rng(0).dirichlet(np.ones(3), size=7)
    R = target(S, 2.0, normalization)
    n = {"boosted": (S**2).sum(0), "soft": S.sum(0), "none": np.ones(3)}[normalization]
    expected = (S**2 / n) / (S**2 / n).sum(1, keepdims=True)
    assert np.allclose(R, expected) and np.allclose(R.sum(1), 1)


# ------------------------------------------------------------ clustering quality

TOY_SETTINGS = {
    DCAE: dict(epochs=20, batch_size=20),
    FCAEKMeans: dict(pretrain_epochs=10, batch_size=20),
    DBC: dict(pretrain_epochs=10, epochs=5, batch_size=20),
    DCEC: dict(pretrain_epochs=10, epochs=5, batch_size=20, update_interval=5),
}


@pytest.mark.parametrize("cls", list(TOY_SETTINGS), ids=lambda c: c.__name__)
def test_toy_clusters_are_found(cls):
    X, y = toy_images()
    est = cls(4, random_state=0, **TOY_SETTINGS[cls]).fit(X, y)
    assert cluster_acc(y, est.labels_) >= 0.95
    monitored = [r for r in est.history_ if "acc" in r]
    assert not monitored or monitored[-1]["acc"] >= 0.95


@pytest.mark.parametrize("normalization", ["soft", "none"])
def test_dbc_other_normalizations_run(normalization):
    X, y = toy_images()
    est = DBC(4, random_state=0, normalization=normalization, **TOY_SETTINGS[DBC]).fit(X)
    assert cluster_acc(y, est.labels_) >= 0.95


DIGITS_SETTINGS = {
    DCAE: (dict(epochs=3, batch_size=100), "loss"),
    FCAEKMeans: (dict(pretrain_epochs=3, batch_size=64), "mse"),
    # DBC's KL is taken against a target R re-sharpened every epoch, so it need not fall
    # from epoch to epoch; its stage I reconstruction loss must.
    DBC: (dict(pretrain_epochs=3, epochs=2, batch_size=64, tol=0.0), "mse"),
    DCEC: (dict(pretrain_epochs=3, epochs=2, batch_size=64, update_interval=10, tol=0.0), "mse"),
}


@pytest.mark.parametrize("cls", list(DIGITS_SETTINGS), ids=lambda c: c.__name__)
def test_digits_loss_decreases(cls):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    settings, key = DIGITS_SETTINGS[cls]
    est = cls(10, random_state=0, **settings).fit(X, y)
    losses = [r[key] for r in est.history_ if key in r]
    assert losses[-1] < losses[0]
    assert est.labels_.shape == (len(X),) and est.cluster_centers_.shape[0] == 10
    assert cluster_acc(y, est.labels_) > 0.15


# ------------------------------------------------------------ architectures


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (1, 32, 32), (1, 64, 64), (3, 12, 20)])
@pytest.mark.parametrize("builder", ["dcae", "fcae", "dcec"])
def test_architectures_restore_the_image_shape(builder, shape):
    from nbclust.engine.backend import get_backend
    from nbclust.methods import architectures

    enc, dec = getattr(architectures, builder)(shape, backend="cpu", dtype=np.float32, rng=0)
    x = get_backend("cpu").asarray(np.random.default_rng(0).random((2, *shape)), np.float32)
    z = enc(x)
    assert z.ndim == 2 and dec(z).shape == x.shape


def test_size_rules_match_the_papers():
    from nbclust.methods.architectures import FCAE_TABLE, dcae_kernels, dcec_sizes, fcae_plan

    assert dcae_kernels(28) == (9, 12, 17)  # seed 000: 9x9 convs, 12x12 and 17x17 transposed
    assert fcae_plan(28, 28) == FCAE_TABLE[28] and fcae_plan(16, 16) == FCAE_TABLE[16]
    assert fcae_plan(32, 32) == ([(3, 20, 1)] * 3, 160)
    assert dcec_sizes(28) == (14, 7, 3, False) and dcec_sizes(32) == (16, 8, 4, True)


# ------------------------------------------------------------ eq 7 and stage II options


@pytest.mark.parametrize("mode", ["previous", "current"])
def test_dcae_eq7_averages_the_new_embeddings_over_the_chosen_clusters(mode):
    """Seed 000 eq 7: c_m^t = mean of h^t(x_n) over the members of c_m at epoch t-1 ("previous");
    "current" is the Lloyd step over the members eq 6 just found."""
    from nbclust.methods.dcae import EmbeddedKMeans

    rng = np.random.default_rng(0)
    H = rng.normal(size=(40, 3))
    est = DCAE(4, center_update=mode)
    est.cluster_centers_ = H[:4].copy()
    est.assign_ = rng.integers(0, 4, size=40)
    previous = est.assign_.copy()
    est._embed_all = lambda X: H
    record = EmbeddedKMeans().end_epoch(est, None)
    new = np.argmin(((H[:, None] - H[None, :4]) ** 2).sum(-1), axis=1)  # eq 6 with c^{t-1}
    members = previous if mode == "previous" else new
    expected = np.stack([H[members == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(est.cluster_centers_, expected)
    np.testing.assert_array_equal(est.assign_, new)
    assert record["changed"] == pytest.approx(np.mean(new != previous))
    by_previous, by_new = (np.stack([H[m == k].mean(0) for k in range(4)]) for m in (previous, new))
    assert not np.allclose(by_previous, by_new)  # the two modes give different centres here


def test_dcae_centre_update_modes_both_cluster_toys_and_resume_exactly(tmp_path):
    X, y = toy_images()
    for mode in ("previous", "current"):
        est = DCAE(4, random_state=0, center_update=mode, **TOY_SETTINGS[DCAE]).fit(X)
        assert cluster_acc(y, est.labels_) >= 0.95, mode
    states = []
    full = DCAE(4, random_state=0, epochs=4, batch_size=20).fit(X, callback=lambda e, r: states.append(e.training_state()))
    resumed = DCAE(4, random_state=0, epochs=4, batch_size=20).fit(X, resume=states[1])
    np.testing.assert_array_equal(full.labels_, resumed.labels_)  # assign_ travels with the state


@pytest.mark.parametrize("mode", ["frozen", "batch"])
def test_dbc_stage_two_batch_norm_mode(mode):
    """"frozen": stage II leaves the stage I running statistics alone; "batch" trains on batch
    statistics (Caffe's TRAIN phase), so the running statistics move."""
    from nbclust.engine import nn

    X, y = toy_images()
    stats = {}

    def snapshot(est, record):
        bn = next(m for m in est.modules_["encoder"].layers if isinstance(m, nn.BatchNorm2d))
        stats[record["phase"]] = np.array(bn.running_mean)

    est = DBC(4, random_state=0, cluster_bn=mode, tol=0.0, **TOY_SETTINGS[DBC]).fit(X, callback=snapshot)
    moved = not np.allclose(stats["pretrain"], stats["cluster"])
    assert moved == (mode == "batch")
    assert cluster_acc(y, est.labels_) >= 0.95
