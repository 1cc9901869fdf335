"""DEPICT as its released code runs it: the loss, the stages, their stopping rules, loading weights."""

import numpy as np
import pytest

from nbclust.methods.base import DeepClusterer
from nbclust.methods.depict import DEPICT, DEPICTNet, depict_target, lasagne_state
from nbclust.methods.metrics import cluster_acc
from test_methods_b import _blobs, _digits, _fd_check


@pytest.mark.parametrize("noise", ["per-term", "shared"])
@pytest.mark.parametrize("pretrain", [True, False])
def test_depict_objective_gradient(pretrain, noise):
    rng = np.random.default_rng(0)
    net = DEPICTNet((1, 8, 8), 3, noise=noise, backend="reference", dtype=np.float64, rng=2)
    x = rng.random((4, 1, 8, 8))
    q = None if pretrain else depict_target(rng.dirichlet(np.ones(3), size=4), "code")
    params = [p for m in net.modules.values() for p in m.parameters()]

    def loss():  # the same masks on every call
        return net.loss(x, np.random.default_rng(3), q)["loss"]

    for p in params:
        p.grad[...] = 0
    terms = net.loss(x, np.random.default_rng(3), q)
    assert ("cluster" in terms) is not pretrain
    err = _fd_check([(p.data, p.grad.copy()) for p in params], loss, rng)
    assert err <= 1e-6


def test_per_term_noise_draws_a_corruption_per_term():
    """Released code: each loss term sees its own dropout masks; 'shared' uses one pass."""
    x = np.random.default_rng(0).random((4, 1, 8, 8))
    q = np.full((4, 3), 1 / 3)
    per_term = DEPICTNet((1, 8, 8), 3, noise="per-term", backend="reference", dtype=np.float64, rng=2)
    shared = DEPICTNet((1, 8, 8), 3, noise="shared", backend="reference", dtype=np.float64, rng=2)
    assert len(per_term.passes) == 4 and len(shared.passes) == 1
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    per_term.loss(x, r1, q)
    shared.loss(x, r2, q)
    n_mask = 4 * 64 + 4 * 50 * 3 * 3  # uniforms drawn for one pass's two masks
    assert r1.bit_generator.state != r2.bit_generator.state
    r3 = np.random.default_rng(5)
    r3.random(4 * n_mask)
    assert r1.bit_generator.state == r3.bit_generator.state


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
    out, _ = net._noisy_forward(net.passes[0], 2 * x - 1, net._masks(x.shape, np.random.default_rng(0)),
                                {"rec_x"})
    assert out["rec_x"].shape == x.shape


def _small(**kw):
    return DEPICT(3, random_state=0, init="kmeans", **{"pretrain_epochs": 3, "warmup_epochs": 2, "epochs": 2,
                                                       "batch_size": 16, "lr": 1e-3, "tol": 0, **kw})


@pytest.mark.parametrize("target", ["paper", "code"])
def test_depict_clusters_easy_data(target):
    x, y = _blobs(n_per=40)
    est = DEPICT(3, random_state=0, target=target, init="kmeans", pretrain_epochs=20,
                 warmup_epochs=10, epochs=3, batch_size=20, lr=1e-3, tol=0).fit(x, y)
    assert cluster_acc(y, est.labels_) >= 0.95
    phases = [h["phase"] for h in est.history_]
    assert phases[-3:] == ["cluster"] * 3 and set(phases) == {"pretrain", "warmup", "cluster"}
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    assert est.cluster_centers_.shape == (3, 3)


def test_pretraining_stops_after_patience_and_keeps_the_best_weights():
    x, _ = _blobs()
    est = _small(pretrain_epochs=200, pretrain_patience=2, warmup_epochs=0, epochs=0, lr=0.05)
    records = []
    est.fit(x, callback=lambda e, r: records.append((r, e._snapshot() if r["phase"] == "pretrain" else None)))
    pre = [(r["val_rec"], w) for r, w in records if r["phase"] == "pretrain"]
    errs = [e for e, _ in pre]
    best = int(np.argmin(errs))
    assert len(pre) < 200 and len(pre) == best + 1 + 3  # patience 2: stops on the third epoch without a best
    est2 = _small(pretrain_epochs=200, pretrain_patience=2, warmup_epochs=0, epochs=0, lr=0.05)
    est2.fit(x)
    # the warm-up starts from the best pretraining weights (the clustering stage ran 0 epochs);
    # the head (last 3 x 3 + 3 entries) is set by the initial clustering
    np.testing.assert_array_equal(est2._snapshot()[:-12], pre[best][1][:-12])


def test_validation_split_is_held_out_of_pretraining_batches(monkeypatch):
    from nbclust.methods import depict

    x, _ = _blobs()
    est = _small()
    seen = []
    for phase in (depict.Pretraining, depict.Warmup, depict.Clustering):
        def spy(self, est_, X, idx, _step=phase.step):
            seen.append((self.name, np.array(idx)))
            return _step(self, est_, X, idx)

        monkeypatch.setattr(phase, "step", spy)
    est.fit(x)
    val = set(est.val_idx_.tolist())
    assert len(val) == 6  # 10% of 60
    assert {name for name, _ in seen} == {"pretrain", "warmup", "cluster"}
    for phase, idx in seen:
        overlap = val & set(idx.tolist())
        assert (phase == "cluster") or not overlap


def test_warmup_restores_the_best_validation_nmi_and_starts_from_given_labels():
    x, y = _blobs()
    est = DEPICT(3, random_state=0, init=y, pretrain_epochs=5, warmup_epochs=30, warmup_patience=1, epochs=0,
                 batch_size=16, lr=1e-3).fit(x)
    np.testing.assert_array_equal(est.init_labels_, y)
    warm = [h for h in est.history_ if h["phase"] == "warmup"]
    assert len(warm) < 30  # stopped by the patience rule (or immediately at the best)
    assert cluster_acc(y, est.labels_) >= 0.95


@pytest.mark.parametrize("stop,measure,tol", [("targets", "target_mse", 1e-3), ("labels", "changed", 0.02)])
def test_clustering_stops_when_targets_or_labels_settle(stop, measure, tol):
    """stop="targets" (released): the targets' mean squared change below tol; "labels" (default): the
    fraction of changed hard assignments below tol; never after the first epoch."""
    x, y = _blobs()
    est = DEPICT(3, random_state=0, init=y, pretrain_epochs=3, warmup_epochs=2, epochs=200, stop=stop, tol=tol,
                 batch_size=20, lr=1e-3).fit(x)
    cl = [h[measure] for h in est.history_ if h["phase"] == "cluster"]
    assert len(cl) < 200 and cl[-1] < tol
    assert all(c >= tol for c in cl[1:-1])  # stops at the first settled epoch after the first


def test_defaults_are_bounded():
    """At most 100 + 50 + 100 epochs; the released caps and rule are an option."""
    est = DEPICT()
    assert est.epoch_budget() == 250 and (est.stop, est.tol) == ("labels", 5e-3)


def test_head_init_unit_and_distance():
    x, y = _blobs()
    for head_init in ("unit", "distance"):
        est = DEPICT(3, random_state=0, init=y, head_init=head_init, pretrain_epochs=3, warmup_epochs=0,
                     epochs=0, batch_size=16).fit(x)
        theta = est.cluster_centers_
        if head_init == "unit":
            np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 1, rtol=1e-5)
            np.testing.assert_array_equal(est.net_.head.bias.data, 0)
        else:
            np.testing.assert_allclose(est.net_.head.bias.data, -0.5 * (theta**2).sum(1), rtol=1e-5)


def _lasagne_arrays(net):
    """A DEPICTNet's weights written in the authors' Lasagne layout (kernels flipped, dense W as (in, out))."""
    flip = lambda w: w[..., ::-1, ::-1]  # noqa: E731
    m = {n: mod.state_dict() for n, mod in net.modules.items()}
    return {
        "conv1_W": flip(m["enc1"]["0.weight"]), "conv1_b": m["enc1"]["0.bias"],
        "conv2_W": flip(m["enc2"]["0.weight"]), "conv2_b": m["enc2"]["0.bias"],
        "enc_dense_W": m["enc3"]["1.weight"].T, "enc_dense_b": m["enc3"]["1.bias"],
        "dec_dense_W": m["dec3"]["0.weight"].T, "dec_dense_b": m["dec3"]["0.bias"],
        "deconv2_W": flip(m["dec2"]["0.weight"]), "deconv2_b": m["dec2"]["0.bias"],
        "deconv1_W": flip(m["dec1"]["0.weight"]), "deconv1_b": m["dec1"]["0.bias"],
    }


def test_weights_load_the_authors_layout_and_skip_pretraining(tmp_path):
    x, y = _blobs()
    source = DEPICTNet((1, 8, 8), 3, rng=7)
    np.savez(tmp_path / "w.npz", **_lasagne_arrays(source))
    est = DEPICT(3, random_state=0, weights=str(tmp_path / "w.npz"), init=y, warmup_epochs=0, epochs=0).fit(x)
    assert not [h for h in est.history_ if h["phase"] == "pretrain"]
    xs = x[:5, None]
    np.testing.assert_allclose(est.transform(x[:5]), source.embed(xs).astype(np.float64), rtol=1e-6, atol=1e-6)
    state = lasagne_state(_lasagne_arrays(source))
    np.testing.assert_array_equal(state["enc1"]["0.weight"], source.enc1.state_dict()["0.weight"])
    with pytest.raises(ValueError, match="missing the Lasagne array"):
        lasagne_state({"conv1_W": np.zeros((50, 1, 4, 4))})


@pytest.mark.parametrize("bad,match", [
    (dict(target="foo"), "target"), (dict(dropout=1.0), "dropout"), (dict(hidden_weight=-1), "hidden_weight"),
    (dict(batch_size=0), "batch_size"), (dict(pretrain_epochs=-2), "pretrain_epochs"), (dict(init="dbscan"), "init"),
    (dict(init=np.zeros(5, dtype=int)), "init has 5 labels"), (dict(init=np.full(60, 7)), "init labels"),
    (dict(head_init="x"), "head_init"), (dict(noise="x"), "noise"), (dict(validation_fraction=1.0), "validation"),
    (dict(warmup_patience=-1), "warmup_patience"), (dict(weights=3), "weights"),
])
def test_invalid_hyperparameters(bad, match):
    x, _ = _blobs()
    with pytest.raises(ValueError, match=match):
        DEPICT(3, backend="reference", **bad).fit(x)


def test_deterministic_and_resumable_mid_warmup(tmp_path):
    x, _ = _blobs(n_per=10)
    a = _small(backend="reference").fit(x)
    b = _small(backend="reference").fit(x)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    states = {}
    _small(backend="reference").fit(x, callback=lambda est, rec: states.setdefault(rec["epoch"],
                                                                                  est.training_state()))
    for epoch in sorted(states)[:-1]:  # pretrain, warm-up and clustering boundaries
        resumed = _small(backend="reference").fit(x, resume=states[epoch])
        np.testing.assert_array_equal(resumed.labels_, a.labels_)
        assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in a.history_]
    a.save(tmp_path / "m.npz")
    loaded = DeepClusterer.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), a.predict(x))


def test_digits_loss_decreases():
    x, y = _digits()
    est = DEPICT(10, random_state=0, init="kmeans", pretrain_epochs=5, warmup_epochs=1, epochs=1,
                 batch_size=20, lr=1e-3).fit(x, y)
    pre = [h["loss"] for h in est.history_ if h["phase"] == "pretrain"]
    assert pre[-1] < pre[0]
    assert cluster_acc(y, est.labels_) > 0.3
