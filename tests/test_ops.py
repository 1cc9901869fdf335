"""The op table x backends: finite differences, backend agreement, coverage, the one op boundary."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nbclust import reference
from nbclust.engine import gradcheck
from nbclust.engine.backend import Backend, get_backend
from nbclust.engine.gradcheck import TOLERANCE, cast_inputs, check_op, run_op
from nbclust.engine.optable import FAMILIES, OPS, Case, OpSpec

from conftest import (
    AVAILABLE_BACKENDS, assert_declared_backend, assert_matches_reference, assert_no_stray_implementations,
)

FAST_BACKENDS = [b for b in AVAILABLE_BACKENDS if b != "reference"]


def test_reference_implements_the_whole_table():
    ref = get_backend("reference")
    assert ref.fallbacks == frozenset()
    for spec in OPS.values():
        assert ref.own(spec) is not None, f"no reference implementation of {spec.name}"
    assert_no_stray_implementations(ref.package)


@pytest.mark.parametrize("package", ["nbclust.reference", "nbclust.kernels.cpu", "nbclust.kernels.gpu"])
def test_every_backend_has_the_same_file_map(package):
    """The op families (conv, pointwise, losses) and one private runtime module, nothing else."""
    folder = Path(importlib.util.find_spec(package).submodule_search_locations[0])  # gpu: without CuPy
    assert sorted(f.stem for f in folder.glob("*.py")) == sorted(["__init__", "_runtime", *FAMILIES])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_declared_reference_fallbacks_are_the_ones_run(backend):
    """Each fast backend declares the ops it runs from the reference (RUNS_REFERENCE in its package);
    every other op of the table is its own code."""
    assert_declared_backend(get_backend(backend))


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_gradient_matches_finite_differences(name, backend):
    assert check_op(get_backend(backend), OPS[name], np.float64) <= TOLERANCE["float64"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_fast_backend_matches_reference(name, backend, dtype):
    assert_matches_reference(get_backend(backend), name, dtype)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_without_input_grad_skips_only_the_first_gradient(name, backend):
    spec, b = OPS[name], get_backend(backend)
    rng = np.random.default_rng(2)
    for case in spec.cases(rng):
        inputs = cast_inputs(case, np.float64)
        (out, *_), _ = run_op(b, spec, inputs, case.attrs)
        grad_out = rng.normal(size=out.shape)
        _, full = run_op(b, spec, inputs, case.attrs, grad_out)
        _, partial = run_op(b, spec, inputs, case.attrs, grad_out, input_grad=False)
        assert partial[0] is None and (full[0] is not None) == spec.is_differentiable(0)
        for got, want in zip(partial[1:], full[1:]):
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(got, want)


def test_auxiliary_outputs_come_in_the_context():
    x = np.random.default_rng(0).permutation(16).reshape(1, 1, 4, 4).astype(np.float64)
    y, ctx = OPS.max_pool2d(get_backend("reference"), x, kernel=2, stride=2)
    assert y.shape == (1, 1, 2, 2) and list(ctx.aux) == ["indices"]
    assert np.array_equal(x.reshape(-1)[ctx.aux["indices"].reshape(-1)], y.reshape(-1))
    value, ctx = OPS.mse(get_backend("cpu"), x, np.zeros_like(x))
    assert value.shape == () and ctx.aux == {}
    np.testing.assert_array_equal(ctx.backward()[0], 2 * x / x.size)  # a loss: grad_out defaults to 1
    with pytest.raises(ValueError, match="needs grad_out"):
        OPS.relu(get_backend("cpu"), x)[1].backward()


BAD_CALLS = [
    ("mse", (np.ones(3),), {}, "takes 2 inputs"),
    ("leaky_relu", (np.ones(3),), {"slop": 0.1}, "no attribute 'slop'"),
    ("kmeans_subspace", (np.ones((3, 2)), np.zeros(3, np.int64)), {}, "needs the attribute 'n_clusters'"),
    ("relu", (np.arange(4),), {}, "float32 or float64"),
]


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name, inputs, attrs, message", BAD_CALLS)
def test_the_spec_rejects_bad_calls_on_every_backend(name, inputs, attrs, message, backend):
    with pytest.raises(ValueError, match=message):
        OPS[name](get_backend(backend), *inputs, **attrs)


# ------------------------------------------------------------------ adding an op

def _cube_cases(rng):
    return [Case((rng.normal(size=(3, 4)),), {"scale": 0.5}, "3x4")]


TOY = OpSpec("toy_cube", inputs=("x",), differentiable=("x",), cases=_cube_cases, attrs={"scale": 1.0},
             family="pointwise", doc="y = scale * x^3")


def _toy_forward(x, scale):
    return scale * x**3, (x, scale)


def _toy_backward(grad_y, ctx):
    x, scale = ctx
    return (3 * scale * x**2 * grad_y,)


@pytest.fixture
def toy_op(monkeypatch):
    """A new op as a contributor adds one: its spec in the table and its reference implementation
    (``toy_cube_forward`` / ``_backward`` in ``nbclust.reference.pointwise``), nothing else."""
    monkeypatch.setitem(OPS, TOY.name, TOY)
    monkeypatch.setattr(reference.pointwise, "toy_cube_forward", _toy_forward, raising=False)
    monkeypatch.setattr(reference.pointwise, "toy_cube_backward", _toy_backward, raising=False)
    return TOY


def test_a_new_op_is_enumerated_checked_and_a_declared_fallback_elsewhere(toy_op, capsys):
    ref = Backend("reference", np, reference)  # fresh backends: nothing resolved before the op existed
    cpu = Backend("cpu", np, get_backend("cpu").package, ref)
    assert "toy_cube" in sorted(OPS)
    assert cpu.fallbacks == get_backend("cpu").package.RUNS_REFERENCE | {"toy_cube"}  # undeclared: test above fails
    for backend in (ref, cpu):
        assert check_op(backend, toy_op, np.float64) <= TOLERANCE["float64"]
        y, ctx = toy_op(backend, np.full((2, 2), 2.0), scale=0.5)
        np.testing.assert_array_equal(y, 4.0)
        np.testing.assert_array_equal(ctx.backward(np.ones((2, 2)))[0], 6.0)
    assert gradcheck.main(["--backend", "cpu", "--op", "toy_cube"]) == 0
    assert "toy_cube" in capsys.readouterr().out


def test_a_new_op_is_a_fallback_on_cuda_too(toy_op):
    from test_gpu import _import_gpu_with, _NumpyAsCupy

    gpu = _import_gpu_with(_NumpyAsCupy(kernel=lambda *args, **kwargs: None))
    sim = Backend("cuda-simulated", np, gpu, Backend("reference", np, reference))
    assert sim.fallbacks == gpu.RUNS_REFERENCE | {"toy_cube"}
    assert check_op(sim, toy_op, np.float64) <= TOLERANCE["float64"]
