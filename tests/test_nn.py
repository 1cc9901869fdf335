"""nbclust.engine.nn layers against torch.nn: forward, input and parameter gradients, buffers; module mechanics."""

import numpy as np
import pytest

from nbclust.engine import nn
from nbclust.engine.backend import get_backend

from conftest import AVAILABLE_BACKENDS

TOL = {np.float32: 1e-5, np.float64: 1e-10}
DTYPES = [np.float32, np.float64]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    return float(np.max(np.abs(got - want), initial=0.0)) / max(float(np.max(np.abs(want), initial=0.0)), 1e-30)


def tdtype(torch, dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def copy_into_torch(torch, ours, tmod):
    """Copy our parameters and buffers into the torch module (torch's state-dict names are ours)."""
    tstate = tmod.state_dict()
    for name, value in ours.state_dict().items():
        tstate[name].copy_(torch.from_numpy(value))


def compare(torch, ours, tmod, x64, dtype, forward_torch=None):
    """Run both modules on x and a random output gradient; assert output, input grad and param grads agree."""
    be = get_backend(ours.backend)
    tol = TOL[dtype]
    x = be.asarray(x64, dtype)
    y = ours.forward(x)
    xt = torch.tensor(x64, dtype=tdtype(torch, dtype), requires_grad=True)
    yt = (forward_torch or tmod)(xt)
    assert rel_err(be.to_numpy(y), yt.detach().numpy()) <= tol, "forward"
    g64 = np.random.default_rng(5).normal(size=y.shape)
    gx = ours.backward(be.asarray(g64, dtype))
    yt.backward(torch.tensor(g64, dtype=tdtype(torch, dtype)))
    assert be.to_numpy(gx).dtype == dtype
    assert rel_err(be.to_numpy(gx), xt.grad.numpy()) <= tol, "input gradient"
    tparams = dict(tmod.named_parameters())
    assert set(ours.grads) == set(tparams)
    for name, g in ours.grads.items():
        assert rel_err(be.to_numpy(g), tparams[name].grad.numpy()) <= tol, f"gradient of {name}"
    return y


def _layer_cases(torch):
    T = torch.nn
    return {
        "conv_stride_pad": (lambda **k: nn.Conv2d(3, 4, 3, stride=2, padding=1, **k),
                            lambda: T.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6)),
        "conv_same_nobias": (lambda **k: nn.Conv2d(2, 3, (3, 5), padding="same", bias=False, **k),
                             lambda: T.Conv2d(2, 3, (3, 5), padding="same", bias=False), (1, 2, 5, 6)),
        "conv_transpose": (lambda **k: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, **k),
                           lambda: T.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5)),
        "conv_transpose_nobias": (lambda **k: nn.ConvTranspose2d(2, 3, (2, 3), stride=(2, 1), bias=False, **k),
                                  lambda: T.ConvTranspose2d(2, 3, (2, 3), stride=(2, 1), bias=False), (2, 2, 3, 3)),
        "linear": (lambda **k: nn.Linear(5, 4, **k), lambda: T.Linear(5, 4), (3, 5)),
        "maxpool": (lambda **k: nn.MaxPool2d(2, **k), lambda: T.MaxPool2d(2), (2, 3, 6, 7)),
        "maxpool_overlap": (lambda **k: nn.MaxPool2d(3, stride=2, **k), lambda: T.MaxPool2d(3, stride=2), (2, 2, 7, 8)),
        "batchnorm2d": (lambda **k: nn.BatchNorm2d(3, **k), lambda: T.BatchNorm2d(3), (4, 3, 3, 3)),
        "batchnorm1d": (lambda **k: nn.BatchNorm1d(5, momentum=0.3, **k),
                        lambda: T.BatchNorm1d(5, momentum=0.3), (6, 5)),
        "sigmoid": (lambda **k: nn.Sigmoid(**k), T.Sigmoid, (2, 3, 4)),
        "tanh": (lambda **k: nn.Tanh(**k), T.Tanh, (2, 3, 4)),
        "relu": (lambda **k: nn.ReLU(**k), T.ReLU, (2, 3, 4)),
        "leaky_relu": (lambda **k: nn.LeakyReLU(0.2, **k), lambda: T.LeakyReLU(0.2), (2, 3, 4)),
        "selu": (lambda **k: nn.SELU(**k), T.SELU, (2, 3, 4)),
        "softmax": (lambda **k: nn.Softmax(**k), lambda: T.Softmax(dim=1), (3, 6)),
        "log_softmax": (lambda **k: nn.LogSoftmax(**k), lambda: T.LogSoftmax(dim=1), (3, 6)),
        "flatten": (lambda **k: nn.Flatten(**k), T.Flatten, (2, 3, 2, 2)),
        "reshape": (lambda **k: nn.Reshape((2, 3, -1), **k), lambda: T.Unflatten(1, (2, 3, 4)), (2, 24)),
    }


LAYER_NAMES = [
    "conv_stride_pad", "conv_same_nobias", "conv_transpose", "conv_transpose_nobias", "linear", "maxpool",
    "maxpool_overlap", "batchnorm2d", "batchnorm1d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
    "softmax", "log_softmax", "flatten", "reshape",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_matches_torch(name, backend, dtype):
    torch = pytest.importorskip("torch")
    make, make_torch, shape = _layer_cases(torch)[name]
    ours = make(backend=backend, dtype=dtype, rng=0)
    tmod = make_torch().to(tdtype(torch, dtype))
    copy_into_torch(torch, ours, tmod)
    x64 = np.random.default_rng(1).normal(size=shape)
    compare(torch, ours, tmod, x64, dtype)


def _net(backend, dtype, seed=0):
    kw = dict(backend=backend, dtype=dtype, rng=seed)
    pool = nn.MaxPool2d(2, **kw)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU(**kw), pool,
        nn.Conv2d(4, 6, 3, padding="same", **kw), nn.Tanh(**kw), nn.Flatten(**kw),
        nn.Linear(96, 10, init="he_normal", **kw), nn.LeakyReLU(0.1, **kw), nn.Linear(10, 96, **kw),
        nn.Reshape((6, 4, 4), **kw), nn.ConvTranspose2d(6, 4, 3, padding=1, **kw), nn.MaxUnpool2d(pool),
        nn.ConvTranspose2d(4, 1, 3, padding=1, **kw), nn.Sigmoid(**kw),
    )


def _torch_net(torch):
    T = torch.nn
    net = T.Sequential(
        T.Conv2d(1, 4, 3, padding=1, bias=False), T.BatchNorm2d(4), T.ReLU(), T.Identity(),
        T.Conv2d(4, 6, 3, padding="same"), T.Tanh(), T.Flatten(), T.Linear(96, 10), T.LeakyReLU(0.1),
        T.Linear(10, 96), T.Unflatten(1, (6, 4, 4)), T.ConvTranspose2d(6, 4, 3, padding=1), T.Identity(),
        T.ConvTranspose2d(4, 1, 3, padding=1), T.Sigmoid(),
    )

    def forward(x):
        for i, layer in enumerate(net):
            if i == 3:
                size = x.shape[2:]
                x, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
            elif i == 12:
                x = torch.nn.functional.max_unpool2d(x, indices, 2, output_size=size)
            else:
                x = layer(x)
        return x

    return net, forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_sequential_autoencoder_matches_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    ours = _net(backend, dtype)
    tnet, tforward = _torch_net(torch)
    tnet = tnet.to(tdtype(torch, dtype))
    assert set(ours.state_dict()) <= set(tnet.state_dict())
    copy_into_torch(torch, ours, tnet)
    x64 = np.random.default_rng(2).normal(size=(3, 1, 8, 8))
    compare(torch, ours, tnet, x64, dtype, forward_torch=tforward)
    for name in ("1.running_mean", "1.running_var"):
        assert rel_err(ours.state_dict()[name], tnet.state_dict()[name].numpy()) <= TOL[dtype]


@pytest.mark.parametrize("leading", [False, True])
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_backward_without_input_grad_gives_the_same_parameter_gradients(backend, leading):
    """``input_grad=False`` returns None and accumulates exactly the gradients of a full backward,
    also when parameter-free layers come before the first layer with parameters."""
    net = _net(backend, np.float64)
    if leading:
        kw = dict(backend=backend, dtype=np.float64)
        net = nn.Sequential(nn.Tanh(**kw), nn.Dropout(0.2, rng=0, **kw), *net.layers)
    b = get_backend(backend)
    x = b.asarray(np.random.default_rng(3).normal(size=(3, 1, 8, 8)))
    g = b.asarray(np.random.default_rng(4).normal(size=(3, 1, 8, 8)))
    grads = []
    for input_grad in (True, False):
        net.zero_grad()
        if leading:
            net.layers[1].rng = np.random.default_rng(0)  # the same dropout mask both times
        net.forward(x)
        gx = net.backward(g, input_grad=input_grad)
        assert (gx is None) == (not input_grad)
        grads.append({k: b.to_numpy(v).copy() for k, v in net.grads.items()})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[1][k], grads[0][k], err_msg=k)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_batchnorm_running_stats_and_eval_match_torch(backend):
    torch = pytest.importorskip("torch")
    dtype = np.float64
    be = get_backend(backend)
    ours = nn.BatchNorm2d(3, momentum=0.2, backend=backend, dtype=dtype)
    tmod = torch.nn.BatchNorm2d(3, momentum=0.2).double()
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = rng.normal(loc=2.0, scale=3.0, size=(5, 3, 2, 3))
        ours.forward(be.asarray(x))
        tmod(torch.from_numpy(x))
    for name in ("running_mean", "running_var"):
        assert rel_err(ours.state_dict()[name], tmod.state_dict()[name].numpy()) <= 1e-12
    ours.weight.data[...] = be.asarray(rng.normal(size=3))
    ours.bias.data[...] = be.asarray(rng.normal(size=3))
    copy_into_torch(torch, ours, tmod)
    ours.eval()
    tmod.eval()
    before = ours.state_dict()
    compare(torch, ours, tmod, rng.normal(size=(2, 3, 2, 2)), dtype)
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(ours.state_dict()[name], before[name])


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_dropout_mask_scaling_and_eval(backend):
    be = get_backend(backend)
    x = be.asarray(np.random.default_rng(0).normal(size=(40, 50)))
    drop = nn.Dropout(0.3, backend=backend, dtype=np.float64, rng=7)
    y = be.to_numpy(drop(x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], be.to_numpy(x)[kept] / 0.7, rtol=1e-14)
    assert 0.6 < kept.mean() < 0.8
    g = be.to_numpy(drop.backward(be.asarray(np.ones((40, 50)))))
    np.testing.assert_array_equal(g, kept / 0.7)
    again = nn.Dropout(0.3, backend=backend, dtype=np.float64, rng=7)
    np.testing.assert_array_equal(be.to_numpy(again(x)), y)
    drop.eval()
    assert drop(x) is x and drop.backward(x) is x


def test_initialisers_follow_torch_fans():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(20, 30, 5, backend="reference", dtype=np.float64, rng=rng)
    bound = np.sqrt(6 / (20 * 25 + 30 * 25))
    w = conv.params["weight"]
    assert w.shape == (30, 20, 5, 5) and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    np.testing.assert_array_equal(conv.params["bias"], 0)
    convt = nn.ConvTranspose2d(40, 10, 4, init="he_normal", backend="reference", dtype=np.float64, rng=rng)
    assert convt.params["weight"].shape == (40, 10, 4, 4)
    assert abs(convt.params["weight"].std() / np.sqrt(2 / (10 * 16)) - 1) < 0.05  # torch fan_in = dim 1
    lin = nn.Linear(400, 300, init="lecun_normal", backend="reference", dtype=np.float64, rng=rng)
    assert abs(lin.params["weight"].std() * np.sqrt(400) - 1) < 0.02
    lin = nn.Linear(400, 300, init="xavier_normal", backend="reference", dtype=np.float64, rng=rng)
    assert abs(lin.params["weight"].std() / np.sqrt(2 / 700) - 1) < 0.02
    assert not nn.Linear(3, 2, init="zeros", backend="reference").params["weight"].any()
    assert nn.init.fan_in_and_fan_out((30, 20, 5, 5)) == (500, 750)


def test_same_seed_same_weights_and_dtype():
    a = _net("reference", np.float32, seed=3).state_dict()
    b = _net("reference", np.float32, seed=3).state_dict()
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.float32 for k in a)


def test_parameter_names_order_and_accumulation():
    net = _net("reference", np.float64)
    names = list(net.params)
    assert names[:4] == ["0.weight", "1.weight", "1.bias", "4.weight"] and names == list(net.grads)
    assert [id(p) for p in net.parameters()] == [id(p) for p in net.parameters()]
    x = get_backend("reference").asarray(np.random.default_rng(0).normal(size=(2, 1, 8, 8)))
    g = np.ones((2, 1, 8, 8))
    net.forward(x)
    net.backward(g)
    once = {k: v.copy() for k, v in net.grads.items()}
    net.forward(x)
    net.backward(g)
    for k, v in net.grads.items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-12, atol=1e-15)
    net.zero_grad()
    assert not any(v.any() for v in net.grads.values())


def test_train_eval_flags():
    net = _net("reference", np.float64)
    assert net.training and all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_state_dict_round_trip(tmp_path):
    from nbclust.data.io import load_state, save_state

    be = get_backend("reference")
    a, b = _net("reference", np.float64, seed=1), _net("reference", np.float64, seed=2)
    x = be.asarray(np.random.default_rng(0).normal(size=(2, 1, 8, 8)))
    a.forward(x)  # moves the batch-norm running statistics
    state = a.state_dict()
    assert "1.running_mean" in state and "1.running_var" in state
    save_state(tmp_path / "net.npz", state, {})
    loaded, _ = load_state(tmp_path / "net.npz")
    b.load_state_dict(loaded)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    with pytest.raises(ValueError, match="missing keys"):
        b.load_state_dict({k: v for k, v in state.items() if k != "1.bias"})
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({**state, "1.bias": np.zeros(5)})


def test_shared_copy_accumulates_into_the_same_parameters():
    be = get_backend("reference")
    rng = np.random.default_rng(0)
    net = _net("reference", np.float64)
    twin = net.shared_copy()
    assert [id(p) for p in twin.parameters()] == [id(p) for p in net.parameters()]
    assert twin[12].pool is twin[3] and net[12].pool is net[3]
    x1, x2 = be.asarray(rng.normal(size=(2, 1, 8, 8))), be.asarray(rng.normal(size=(3, 1, 8, 8)))
    g1, g2 = rng.normal(size=(2, 1, 8, 8)), rng.normal(size=(3, 1, 8, 8))
    y1, y2 = net(x1), twin(x2)  # interleaved: each keeps its own context
    gx1, gx2 = net.backward(g1), twin.backward(g2)
    both = {k: v.copy() for k, v in net.grads.items()}

    ref = _net("reference", np.float64)  # the same initial weights, used twice in sequence
    np.testing.assert_allclose(ref(x1), y1, rtol=1e-12)
    np.testing.assert_allclose(ref.backward(g1), gx1, rtol=1e-12)
    np.testing.assert_allclose(ref(x2), y2, rtol=1e-12)
    np.testing.assert_allclose(ref.backward(g2), gx2, rtol=1e-12)
    for k, v in ref.grads.items():
        np.testing.assert_allclose(both[k], v, rtol=1e-12, atol=1e-14)


def test_to_moves_parameters_and_buffers():
    net = _net("reference", np.float64)
    state = net.state_dict()
    assert net.to("cpu") is net and all(m.backend == "cpu" for m in net.modules())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


class _AutoEncoder(nn.Module):
    """A composite module: parts are plain attributes; the decoder unpools with the encoder's pool."""

    def __init__(self, **kw):
        super().__init__(**kw)
        pool = nn.MaxPool2d(2, **kw)
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, **kw), nn.BatchNorm2d(2, **kw), pool)
        self.decoder = nn.Sequential(nn.MaxUnpool2d(pool), nn.ConvTranspose2d(2, 1, 3, padding=1, **kw))

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def backward(self, grad_out):
        return self.encoder.backward(self.decoder.backward(grad_out))


def test_composite_module_names_and_shared_copy():
    kw = dict(backend="reference", dtype=np.float64, rng=0)
    ae = _AutoEncoder(**kw)
    assert list(ae.params) == ["encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias",
                               "decoder.1.weight", "decoder.1.bias"]
    assert "encoder.1.running_var" in ae.state_dict()
    twin = ae.shared_copy()
    assert twin.decoder[0].pool is twin.encoder[2] and ae.decoder[0].pool is ae.encoder[2]
    assert twin.encoder is not ae.encoder and twin.parameters()[0] is ae.parameters()[0]
    assert ae.eval() is ae and not ae.encoder[1].training and twin.encoder[1].training
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 1, 4, 4)), rng.normal(size=(1, 1, 6, 6))
    code2 = twin.encoder(x2)
    ae(x1)  # the original's pool forward must not disturb the twin's unpool indices
    y2 = twin.decoder(code2)
    assert y2.shape == x2.shape and twin.backward(np.ones_like(y2)).shape == x2.shape
