"""nbclust.engine.optim against torch.optim over several steps of a small network; state round trip; validation."""

import numpy as np
import pytest

from nbclust.engine import nn
from nbclust.engine.backend import get_backend
from nbclust.engine.optim import SGD, Adam

from conftest import AVAILABLE_BACKENDS

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
]
OURS = {"SGD": SGD, "Adam": Adam}


def _net(backend, seed=0):
    kw = dict(backend=backend, dtype=np.float64, rng=seed)
    return nn.Sequential(nn.Linear(4, 6, **kw), nn.Tanh(**kw), nn.Linear(6, 3, **kw))


def _data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(8, 4)), rng.normal(size=(8, 3))


def _train(net, opt, x, t, steps):
    """``steps`` steps on 0.5 * ||net(x) - t||^2 (gradient ``y - t``)."""
    be = get_backend(net.backend)
    for _ in range(steps):
        opt.zero_grad()
        y = net(be.asarray(x))
        net.backward(y - be.asarray(t))
        opt.step()


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("kind,config", CONFIGS, ids=[f"{k}-{sorted(c)}" for k, c in CONFIGS])
def test_optimizer_matches_torch(kind, config, backend):
    torch = pytest.importorskip("torch")
    x, t = _data()
    net = _net(backend)
    tnet = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        for name, p in tnet.named_parameters():
            p.copy_(torch.from_numpy(net.state_dict()[name]))
    _train(net, OURS[kind](net.parameters(), **config), x, t, 5)
    topt = getattr(torch.optim, kind)(tnet.parameters(), **config)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    for _ in range(5):
        topt.zero_grad()
        (0.5 * ((tnet(xt) - tt) ** 2).sum()).backward()
        topt.step()
    for name, p in tnet.named_parameters():
        want = p.detach().numpy()
        got = net.state_dict()[name]
        assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want)), name


@pytest.mark.parametrize("kind,config", [CONFIGS[3], CONFIGS[5]], ids=["SGD", "Adam"])
def test_state_dict_round_trip_resumes_exactly(kind, config, tmp_path):
    from nbclust.data.io import load_state, save_state

    x, t = _data()
    straight = _net("reference")
    _train(straight, OURS[kind](straight.parameters(), **config), x, t, 5)

    net = _net("reference")
    opt = OURS[kind](net, **config)
    _train(net, opt, x, t, 2)
    save_state(tmp_path / "ckpt.npz", {**net.state_dict(), **{f"opt.{k}": v for k, v in opt.state_dict().items()}}, {})
    arrays, _ = load_state(tmp_path / "ckpt.npz")
    resumed = _net("reference", seed=9)
    resumed.load_state_dict({k: v for k, v in arrays.items() if not k.startswith("opt.")})
    opt2 = OURS[kind](resumed.parameters(), **config)
    opt2.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")})
    assert opt2.step_count == 2
    _train(resumed, opt2, x, t, 3)
    for k, v in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v)


def test_updates_in_place_and_zero_grad():
    net = _net("reference")
    arrays = [p.data for p in net.parameters()]
    opt = Adam(net.parameters())
    x, t = _data()
    _train(net, opt, x, t, 1)
    assert all(p.data is a for p, a in zip(net.parameters(), arrays))
    opt.zero_grad()
    assert not any(p.grad.any() for p in net.parameters())


def test_adam_state_needs_both_moments():
    net = _net("reference")
    opt = Adam(net.parameters())
    x, t = _data()
    _train(net, opt, x, t, 1)
    state = {k: v for k, v in opt.state_dict().items() if k != "0.exp_avg_sq"}
    with pytest.raises(ValueError, match="parameter 0 has"):
        Adam(net.parameters()).load_state_dict(state)


def test_load_state_dict_rejects_mismatch():
    net = _net("reference")
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, t = _data()
    _train(net, opt, x, t, 1)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        SGD(net.parameters(), lr=0.1).load_state_dict({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(ValueError, match="unexpected"):
        SGD(net.parameters(), lr=0.1).load_state_dict({**state, "9.momentum_buffer": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        SGD(net.parameters(), lr=0.1).load_state_dict({**state, "0.momentum_buffer": np.zeros(3)})


@pytest.mark.parametrize("make,match", [
    (lambda ps: SGD(ps, lr=0.0), "lr"),
    (lambda ps: SGD(ps, lr=-1.0), "lr"),
    (lambda ps: SGD(ps, lr=float("nan")), "lr"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: Adam(ps, lr=-1e-3), "lr"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda ps: Adam(ps, betas=0.9), "betas"),
    (lambda ps: Adam(ps, eps=-1.0), "eps"),
    (lambda ps: Adam(ps, weight_decay=-1.0), "weight_decay"),
    (lambda ps: Adam([]), "empty"),
    (lambda ps: Adam([np.zeros(3)]), "not an nbclust.nn.Parameter"),
])
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_net("reference").parameters())
