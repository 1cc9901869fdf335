"""Activations, softmax, batch norm, dropout: torch parity, stability, running statistics, errors."""

import numpy as np
import pytest

from nbclust.engine.backend import get_backend
from nbclust.engine.gradcheck import run_op
from nbclust.engine.optable import OPS
from nbclust.engine.optable.pointwise import SELU_ALPHA, SELU_SCALE

from conftest import AVAILABLE_BACKENDS, rel_err

NAMES = ["sigmoid", "tanh", "relu", "leaky_relu", "selu", "softmax", "log_softmax", "batch_norm", "dropout"]


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_gradients_match_torch_float64(name, backend):
    torch = pytest.importorskip("torch")
    spec, b = OPS[name], get_backend(backend)
    rng = np.random.default_rng(7)
    for case in spec.cases(rng):
        tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=spec.is_differentiable(k))
                   for k, a in enumerate(case.inputs)]
        want = spec.torch(*tensors, **case.attrs)
        want = want if isinstance(want, tuple) else (want,)
        grad_out = rng.normal(size=tuple(want[0].shape))
        want[0].backward(torch.from_numpy(grad_out))
        outs, grads = run_op(b, spec, case.inputs, case.attrs, grad_out)
        assert len(outs) == len(want) == 1 + len(spec.aux)
        for got, ref in zip(outs, want):
            assert rel_err(got, ref.detach().numpy()) <= 1e-12, f"{name} [{case.label}] forward"
        for k, t in enumerate(tensors):
            if spec.is_differentiable(k):
                err = rel_err(grads[k], t.grad.numpy())
                assert err <= 1e-10, f"{name} [{case.label}] grad {spec.inputs[k]}: {err:.2e}"
            else:
                assert grads[k] is None


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (10, 6)])
def test_batch_norm_running_statistics_follow_torch(shape, backend):
    torch = pytest.importorskip("torch")
    b, c = get_backend(backend), shape[1]
    module = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c, momentum=0.2, eps=1e-4)
    module = module.double()
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(1.0, 0.3, size=c), rng.normal(size=c)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
    rm, rv = np.zeros(c), np.ones(c)
    attrs = {"training": True, "momentum": 0.2, "eps": 1e-4}
    for step in range(4):
        x = rng.normal(loc=step, scale=1.0 + step, size=shape)
        y, ctx = OPS.batch_norm(b, x, gamma, beta, rm, rv, **attrs)
        rm, rv = ctx.aux["running_mean"], ctx.aux["running_var"]
        y_torch = module.train()(torch.from_numpy(x)).detach().numpy()
        assert rel_err(y, y_torch) <= 1e-12
    assert rel_err(rm, module.running_mean.numpy()) <= 1e-12
    assert rel_err(rv, module.running_var.numpy()) <= 1e-12
    x = rng.normal(size=shape)
    y, ctx = OPS.batch_norm(b, x, gamma, beta, rm, rv, **{**attrs, "training": False})
    assert np.array_equal(ctx.aux["running_mean"], rm) and np.array_equal(ctx.aux["running_var"], rv)
    assert rel_err(y, module.eval()(torch.from_numpy(x)).detach().numpy()) <= 1e-12


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_batch_norm_does_not_modify_its_inputs(backend):
    rng = np.random.default_rng(0)
    x, gamma, beta = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=3), rng.normal(size=3)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 1.5, size=3)
    copies = [a.copy() for a in (x, gamma, beta, rm, rv)]
    _, ctx = OPS.batch_norm(get_backend(backend), x, gamma, beta, rm, rv, training=True)
    for a, a0 in zip((x, gamma, beta, rm, rv), copies):
        assert np.array_equal(a, a0)
    assert not np.shares_memory(ctx.aux["running_mean"], rm) and not np.shares_memory(ctx.aux["running_var"], rv)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_softmax_on_huge_logits_stays_finite(backend, dtype):
    b = get_backend(backend)
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 0.0]], dtype=dtype)
    g = np.ones_like(x)
    (p,), (dp,) = run_op(b, OPS["softmax"], (x,), {}, g)
    (lp,), (dlp,) = run_op(b, OPS["log_softmax"], (x,), {}, g)
    for a in (p, dp, lp, dlp):
        assert a.dtype == dtype and np.all(np.isfinite(a))
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3] * 3, [0.5, 0.5, 0]], atol=1e-7)
    np.testing.assert_allclose(lp, [[0, -1e4, -2e4], [-np.log(3)] * 3, [-np.log(2)] * 2 + [-1e4 - np.log(2)]],
                               rtol=1e-6)


def test_selu_constants_equal_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    one = torch.tensor(1.0, dtype=torch.float64)
    assert F.selu(one).item() == SELU_SCALE
    assert abs(-F.selu(-100 * one).item() - SELU_SCALE * SELU_ALPHA) <= 1e-15 * SELU_SCALE * SELU_ALPHA
    assert SELU_ALPHA == 1.6732632423543772848170429916717
    assert SELU_SCALE == 1.0507009873554804934193349852946


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_dropout_bool_mask_equals_float_mask(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    mask = rng.random((3, 5)) >= 0.3
    b = get_backend(backend)
    y_bool, ctx_bool = OPS.dropout(b, x, mask, p=0.3)
    y_float, ctx_float = OPS.dropout(b, x, mask.astype(np.float32), p=0.3)
    assert y_bool.dtype == np.float32
    np.testing.assert_array_equal(y_bool, y_float)
    np.testing.assert_array_equal(ctx_bool.backward(x)[0], ctx_float.backward(x)[0])
    np.testing.assert_allclose(y_bool, np.where(mask, x / 0.7, 0.0), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES[:7])
def test_cpu_activations_accept_non_contiguous_input(name):
    x = np.random.default_rng(0).normal(size=(6, 4)).T  # Fortran-ordered view
    x = np.sign(x) * (0.05 + np.abs(x))
    got, _ = OPS[name](get_backend("cpu"), x)
    want, _ = OPS[name](get_backend("reference"), x)
    assert rel_err(got, want) <= 1e-12


def test_cpu_batch_norm_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4, 9, 9)).astype(np.float32)
    args = (x, np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.ones(4, np.float32))
    runs = []
    for _ in range(2):
        y, ctx = OPS.batch_norm(get_backend("cpu"), *args, training=True)
        runs.append((y, *ctx.aux.values(), *ctx.backward(x)[:3]))
    for a, b in zip(*runs):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def _bn_args(shape, c=None):
    c = shape[1] if c is None else c
    return (np.ones(shape), np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))


BAD_ARGUMENTS = [
    ("softmax", (np.ones(4),), {}, "2-D"),
    ("log_softmax", (np.ones((2, 3, 4)),), {}, "2-D"),
    ("dropout", (np.ones((2, 3)), np.ones((2, 3))), {"p": 1.0}, r"\[0, 1\)"),
    ("dropout", (np.ones((2, 3)), np.ones((2, 3))), {"p": -0.1}, r"\[0, 1\)"),
    ("dropout", (np.ones((2, 3)), np.ones((3, 2))), {"p": 0.5}, "mask shape"),
    ("batch_norm", _bn_args((2, 3, 4)), {"training": True}, "2-D .* or 4-D"),
    ("batch_norm", _bn_args((2, 3), c=4), {"training": True}, "gamma has shape"),
    ("batch_norm", _bn_args((1, 3)), {"training": True}, "more than 1 value per channel"),
    ("batch_norm", _bn_args((4, 3)), {"training": False, "eps": 0.0}, "eps must be positive"),
]


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name, inputs, attrs, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error(name, inputs, attrs, message, backend):
    with pytest.raises(ValueError, match=message):
        OPS[name](get_backend(backend), *inputs, **attrs)


def test_batch_norm_eval_accepts_a_single_sample():
    y, _ = OPS.batch_norm(get_backend("cpu"), *_bn_args((1, 3)), training=False)
    assert np.all(np.isfinite(y))


