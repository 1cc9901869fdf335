"""The options that read DCAE and DBC through the code their networks came from (issue 20).

DCAE: the base network's Caffe files (``network="caffe"``, ``init="caffe"``, ``bias_lr``) and the
SGD rule of Caffe and MatConvNet; DBC: the first author's Caffe conventions (``solver="caffe"``,
``batch_order="file"``, ``feature_bn="batch"``).
"""

import math

import numpy as np
import pytest

from nbclust.engine import nn, optim
from nbclust.methods import architectures
from nbclust.methods.dbc import CAFFE_BIAS_LR, DBC, FCAEKMeans
from nbclust.methods.dcae import DCAE
from tests.test_methods_a import _net_params, _objective_check, _prepare, toy_images


# ------------------------------------------------------------------ DCAE: the base network
def _kinds(seq):
    return [type(layer).__name__ for layer in seq.layers]


def test_caffe_network_is_the_base_networks_layer_list():
    """train-mnistCAE10sym0202.prototxt: conv1 9x9x8, conv2 9x9x4, ip1encode 250, ip2encode (linear code);
    ip1decode 250, deconv2 12x12x4, deconv1 17x17x4, deconv1neur 1x1x1 (the logits)."""
    enc, dec = architectures.dcae((1, 28, 28), network="caffe", rng=0)
    assert _kinds(enc) == ["Conv2d", "Sigmoid", "Conv2d", "Sigmoid", "Flatten", "Linear", "Sigmoid", "Linear"]
    assert _kinds(dec) == ["Linear", "Sigmoid", "Reshape", "ConvTranspose2d", "Sigmoid", "ConvTranspose2d",
                           "Sigmoid", "ConvTranspose2d"]
    convt = [layer for layer in dec.layers if isinstance(layer, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convt] == [
        (250, 4, (12, 12)), (4, 4, (17, 17)), (4, 1, (1, 1))]
    x = np.random.default_rng(0).random((3, 1, 28, 28))
    assert dec(enc(x)).shape == x.shape
    paper_enc, paper_dec = architectures.dcae((1, 28, 28), network="paper", rng=0)
    assert _kinds(paper_enc)[-1] == "Sigmoid" and _kinds(paper_dec)[-2:] == ["Sigmoid", "ConvTranspose2d"]


def test_caffe_fillers():
    """xavier: U(+-sqrt(3 / (count / shape[0]))), a deconvolution's fan on its output channels;
    gaussian std 1 sparse 25: each hidden dense weight kept with probability 25 / 250; the code
    layer dense; biases 0."""
    enc, dec = architectures.dcae((1, 28, 28), network="caffe", init="caffe", rng=0)
    layers = [layer for seq in (enc, dec) for layer in seq.layers if hasattr(layer, "weight")]
    for layer in layers:
        w = layer.weight.data
        assert not layer.bias.data.any()
        if isinstance(layer, nn.Linear):
            kept = np.mean(w != 0)
            if layer is enc.layers[-1]:
                assert kept == 1.0
            else:
                assert kept == pytest.approx(0.1, abs=0.02), layer
            assert np.std(w[w != 0]) == pytest.approx(1.0, rel=0.1)
        else:
            bound = math.sqrt(3.0 * w.shape[0] / w.size)
            assert np.abs(w).max() <= bound, layer
            if w.size >= 100:  # enough draws to come near the bound
                assert np.abs(w).max() > 0.95 * bound, layer
    deconv2 = dec.layers[3]
    assert math.sqrt(3.0 * deconv2.weight.shape[0] / deconv2.weight.data.size) == pytest.approx(math.sqrt(3 / (4 * 144)))


@pytest.mark.parametrize("init, step", [("matconvnet", 1e-6), ("caffe", 1e-5)])
def test_dcae_caffe_network_objective_gradient(init, step):
    """(Steps of 1e-4 and more move some embedding across to another nearest centre, where E2 has a
    kink; the N(0, 1) dense fillers make the sigmoids curve sharply.  Measured errors: 4e-8 and 1e-9.)"""
    X, _ = toy_images(n_per=2)
    est = DCAE(3, backend="reference", random_state=0, network="caffe", init=init)
    Xd, _ = _prepare(est, X, "cluster")
    err = _objective_check(est, Xd, "cluster", lambda t: t["loss"], _net_params(est, "encoder", "decoder"),
                           step=step)
    assert err < 1e-6


def test_dcae_bias_lr_scales_only_the_bias_step():
    X, _ = toy_images(n_per=5)
    moved = {}
    for bias_lr in (1.0, 3.0):
        est = DCAE(4, random_state=0, epochs=1, batch_size=20, momentum=0.0, weight_decay=0.0, bias_lr=bias_lr)
        est._validate()
        Xn = est._check_X(X)
        est.image_shape_ = Xn.shape[1:]
        est._init_fit_state()
        est.modules_ = est._build(est.image_shape_)
        before = {k + n: p.data.copy() for k, m in est.modules_.items() for n, p in m.named_parameters()}
        est.cluster_centers_ = est._embed_all(Xn)[:4]
        est.optimizers_ = est._phase("cluster").optimizers(est)
        est._phase("cluster").step(est, Xn, np.arange(20))
        for opt in est.optimizers_.values():
            opt.step()
        moved[bias_lr] = {k + n: p.data - before[k + n] for k, m in est.modules_.items()
                          for n, p in m.named_parameters()}
    for name, delta in moved[1.0].items():
        factor = 3.0 if name.endswith("bias") else 1.0
        np.testing.assert_allclose(moved[3.0][name], factor * delta, rtol=1e-4, atol=1e-7)  # float32


def test_sgd_is_the_caffe_and_matconvnet_rule_for_a_fixed_step():
    """Caffe (SGDSolver) and MatConvNet (cnn_train.m): v = m v - lr (g + wd w), w += v; torch: v = m v + g + wd w,
    w -= lr v.  The same iterates for a fixed lr, which DCAE's and DBC's solvers use."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=5)
    p = nn.Parameter(w0.copy(), np.zeros(5))
    opt = optim.SGD([p], 0.006, momentum=0.9, weight_decay=5e-4)
    w, v = w0.copy(), np.zeros(5)
    for _ in range(20):
        g = np.sin(3 * w)  # any gradient field, evaluated at the shared iterate
        p.grad[...] = np.sin(3 * p.data)
        opt.step()
        v = 0.9 * v - 0.006 * (g + 5e-4 * w)
        w = w + v
        np.testing.assert_allclose(p.data, w, rtol=0, atol=1e-13)


@pytest.mark.parametrize("bad", [{"network": "turchenko"}, {"init": "xavier"}, {"bias_lr": 0.0}])
def test_dcae_rejects_bad_base_network_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DCAE(3, **bad).fit(toy_images(n_per=2)[0])


# ------------------------------------------------------------------ DBC: Caffe conventions
def test_file_order_batches_are_the_datas_order_every_epoch():
    est = FCAEKMeans(2, batch_size=4, batch_order="file")
    est._rng = np.random.default_rng(0)
    assert [b.tolist() for b in est._ordered_batches(10)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    est.batch_order = "shuffle"
    assert sorted(np.concatenate(est._ordered_batches(10)).tolist()) == list(range(10))


def test_batch_statistics_features_normalise_each_batch_and_keep_the_running_statistics():
    X, _ = toy_images(n_per=10)
    est = FCAEKMeans(4, random_state=0, pretrain_epochs=1, batch_size=10, feature_bn="batch").fit(X)
    Xd = est._check_X(X, fitted=True)
    enc = est.modules_["encoder"]
    kept = {k: v.copy() for k, v in enc.state_dict().items()}
    Z = est._embed_all(Xd)
    assert all(np.array_equal(v, enc.state_dict()[k]) for k, v in kept.items())
    enc.train()
    first = enc(Xd[:10])
    enc.load_state_dict(kept)
    np.testing.assert_allclose(Z[:10], first, rtol=1e-5, atol=1e-6)
    est.feature_bn = "running"
    assert not np.allclose(est._embed_all(Xd)[:10], Z[:10], atol=1e-3)
    est.feature_bn = "batch"
    with pytest.raises(ValueError, match="at least 2 images"):
        est._embed_all(Xd[:1])


def test_caffe_solver_settings_and_euclidean_gradient():
    """caffe-twns lenet_tn: momentum 0.9, weight decay 1e-4, conv biases at twice the step; stage I's
    gradient is that of Caffe's EuclideanLoss, 1/(2N) sum ||x - x^||^2: P/2 times the mean's."""
    X, _ = toy_images(n_per=5)
    grads = {}
    for solver in ("adam", "caffe"):
        est = FCAEKMeans(4, random_state=0, solver=solver, lr=0.01)
        est._validate()
        Xn = est._check_X(X)
        est.image_shape_ = Xn.shape[1:]
        est.n_features_in_ = int(np.prod(est.image_shape_))
        est._init_fit_state()
        est.modules_ = est._build(est.image_shape_)
        est.optimizers_ = est._phase("pretrain").optimizers(est)
        est._phase("pretrain").step(est, Xn, np.arange(20))
        grads[solver] = [p.grad.copy() for p in est.modules_["encoder"].parameters()]
    for a, c in zip(grads["adam"], grads["caffe"]):
        np.testing.assert_allclose(c, a * 64 / 2, rtol=1e-4, atol=1e-7)
    opts = est.optimizers_
    assert set(opts) == {"sgd", "sgd_bias"}
    assert opts["sgd_bias"].lr == pytest.approx(0.01 * CAFFE_BIAS_LR) and opts["sgd"].lr == pytest.approx(0.01)
    assert all(o.momentum == 0.9 and o.weight_decay == 1e-4 for o in opts.values())
    assert all(p.shape == (p.shape[0],) for p in opts["sgd_bias"].params)


def test_fcae_caffe_init_is_xavier_on_fan_in():
    enc, dec = architectures.fcae((1, 28, 28), init="caffe", rng=0)
    convs = [layer for seq in (enc, dec) for layer in seq.layers if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 6
    for layer in convs:
        w = layer.weight.data
        bound = math.sqrt(3.0 * w.shape[0] / w.size)
        assert bound * 0.9 < np.abs(w).max() <= bound
    with pytest.raises(ValueError, match="init"):
        architectures.fcae((1, 28, 28), init="he")


def test_dbc_with_every_caffe_convention_clusters_and_resumes_exactly(tmp_path):
    X, y = toy_images(n_per=20)
    kw = dict(random_state=0, pretrain_epochs=3, epochs=3, batch_size=20, solver="caffe", lr=1e-3, init="caffe",
              batch_order="file", feature_bn="batch", cluster_bn="batch")
    states = []
    full = DBC(4, **kw).fit(X, callback=lambda e, r: states.append(e.training_state()))
    resumed = DBC(4, **kw).fit(X, resume=states[2])
    np.testing.assert_array_equal(full.labels_, resumed.labels_)
    assert np.isfinite(full.cluster_centers_).all()
    assert len(np.unique(full.labels_)) > 1
