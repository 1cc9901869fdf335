"""Conv-family ops: cpu vs reference vs torch on generated shapes, and argument validation."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nbclust.engine import convshape
from nbclust.engine.backend import get_backend
from nbclust.engine.gradcheck import run_op
from nbclust.engine.optable import OPS

from conftest import rel_err

BACKENDS = ("reference", "cpu")
small = st.integers


@st.composite
def conv2d_problems(draw):
    n, c, o = draw(small(1, 3)), draw(small(1, 3)), draw(small(1, 3))
    kh, kw, sh, sw = draw(small(1, 4)), draw(small(1, 4)), draw(small(1, 3)), draw(small(1, 3))
    ph, pw = draw(small(0, 2)), draw(small(0, 2))
    h, w = draw(small(max(1, kh - 2 * ph), 8)), draw(small(max(1, kw - 2 * pw), 8))
    rng = np.random.default_rng(draw(small(0, 2**32 - 1)))
    b = rng.normal(size=o) if draw(st.booleans()) else None
    inputs = (rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, kh, kw)), b)
    return inputs, {"stride": (sh, sw), "padding": (ph, pw)}


@st.composite
def conv_transpose2d_problems(draw):
    n, cin, cout = draw(small(1, 3)), draw(small(1, 3)), draw(small(1, 3))
    kh, kw, sh, sw = draw(small(1, 4)), draw(small(1, 4)), draw(small(1, 3)), draw(small(1, 3))
    ph, pw = draw(small(0, 2)), draw(small(0, 2))
    oh, ow = draw(small(0, sh - 1)), draw(small(0, sw - 1))
    h, w = draw(small(1, 6)), draw(small(1, 6))
    assume((h - 1) * sh - 2 * ph + kh + oh > 0 and (w - 1) * sw - 2 * pw + kw + ow > 0)
    rng = np.random.default_rng(draw(small(0, 2**32 - 1)))
    b = rng.normal(size=cout) if draw(st.booleans()) else None
    inputs = (rng.normal(size=(n, cin, h, w)), rng.normal(size=(cin, cout, kh, kw)), b)
    return inputs, {"stride": (sh, sw), "padding": (ph, pw), "output_padding": (oh, ow)}


@st.composite
def max_pool2d_problems(draw):
    """Integer values from a small range, so windows often hold ties (first maximum must win)."""
    n, c = draw(small(1, 3)), draw(small(1, 3))
    kh, kw, sh, sw = draw(small(1, 4)), draw(small(1, 4)), draw(small(1, 4)), draw(small(1, 4))
    h, w = draw(small(kh, 9)), draw(small(kw, 9))
    rng = np.random.default_rng(draw(small(0, 2**32 - 1)))
    levels = draw(small(2, 50))
    x = rng.integers(0, levels, size=(n, c, h, w)).astype(np.float64)
    return (x,), {"kernel": (kh, kw), "stride": (sh, sw)}


def _check_cpu_vs_reference(name, inputs, attrs):
    spec, ref, cpu = OPS[name], get_backend("reference"), get_backend("cpu")
    outs_ref, _ = run_op(ref, spec, inputs, attrs)
    grad_out = np.random.default_rng(0).normal(size=outs_ref[0].shape)
    outs_ref, grads_ref = run_op(ref, spec, inputs, attrs, grad_out)
    outs, grads = run_op(cpu, spec, inputs, attrs, grad_out)
    for got, want in zip(outs, outs_ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert rel_err(got, want) <= 1e-12
    for got, want in zip(grads, grads_ref):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.shape == want.shape and rel_err(got, want) <= 1e-12


def _check_vs_torch(name, inputs, attrs, backend):
    torch = pytest.importorskip("torch")
    spec = OPS[name]
    outs, _ = run_op(get_backend(backend), spec, inputs, attrs)
    grad_out = np.random.default_rng(0).normal(size=outs[0].shape)
    outs, grads = run_op(get_backend(backend), spec, inputs, attrs, grad_out)
    tin = [None if a is None else torch.tensor(a, requires_grad=spec.inputs[k] in spec.differentiable)
           for k, a in enumerate(inputs)]
    tout = spec.torch(*tin, **attrs)
    tout = tout if isinstance(tout, tuple) else (tout,)
    (tout[0] * torch.tensor(grad_out)).sum().backward()
    for got, want in zip(outs, tout):
        want = want.detach().numpy()
        assert got.shape == want.shape
        if want.dtype.kind in "iu":
            np.testing.assert_array_equal(got, want)
        else:
            assert rel_err(got, want) <= 1e-10
    for got, t in zip(grads, tin):
        if got is not None:
            assert rel_err(got, t.grad.numpy()) <= 1e-10


@settings(max_examples=25, deadline=None)
@given(conv2d_problems())
def test_conv2d_cpu_matches_reference(problem):
    _check_cpu_vs_reference("conv2d", *problem)


@settings(max_examples=25, deadline=None)
@given(conv_transpose2d_problems())
def test_conv_transpose2d_cpu_matches_reference(problem):
    _check_cpu_vs_reference("conv_transpose2d", *problem)


@settings(max_examples=25, deadline=None)
@given(max_pool2d_problems())
def test_max_pool2d_cpu_matches_reference(problem):
    _check_cpu_vs_reference("max_pool2d", *problem)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(problem=conv2d_problems())
def test_conv2d_matches_torch(backend, problem):
    _check_vs_torch("conv2d", *problem, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(problem=conv_transpose2d_problems())
def test_conv_transpose2d_matches_torch(backend, problem):
    _check_vs_torch("conv_transpose2d", *problem, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(problem=max_pool2d_problems())
def test_max_pool2d_matches_torch_with_ties(backend, problem):
    _check_vs_torch("max_pool2d", *problem, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["max_unpool2d", "linear", "reshape"])
def test_table_cases_match_torch(backend, name):
    for case in OPS[name].cases(np.random.default_rng(3)):
        _check_vs_torch(name, case.inputs, case.attrs, backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_backward_is_deterministic(dtype):
    rng = np.random.default_rng(5)
    cases = [
        ("conv2d", (rng.normal(size=(3, 4, 9, 9)), rng.normal(size=(5, 4, 3, 3)), rng.normal(size=5)),
         {"stride": (2, 2), "padding": (1, 1)}),
        ("conv_transpose2d", (rng.normal(size=(3, 4, 5, 5)), rng.normal(size=(4, 2, 3, 3)), None),
         {"stride": (2, 2), "padding": (1, 1), "output_padding": (1, 1)}),
        ("max_pool2d", (rng.normal(size=(3, 4, 9, 9)),), {"kernel": (3, 3), "stride": (1, 1)}),
    ]
    cpu = get_backend("cpu")
    for name, inputs, attrs in cases:
        inputs = tuple(None if a is None else a.astype(dtype) for a in inputs)
        out, _ = run_op(cpu, OPS[name], inputs, attrs)
        grad_out = rng.normal(size=out[0].shape).astype(dtype)
        first = run_op(cpu, OPS[name], inputs, attrs, grad_out)[1]
        for _ in range(3):
            again = run_op(cpu, OPS[name], inputs, attrs, grad_out)[1]
            for a, b in zip(first, again):
                assert (a is None and b is None) or np.array_equal(a, b)


# --- validation -------------------------------------------------------------

def _z(*shape):
    return np.zeros(shape)


VALIDATION = [
    ("conv2d", (_z(3, 5, 5), _z(2, 3, 3, 3), None), {"stride": (1, 1), "padding": (0, 0)}, "4-D"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 3), None), {"stride": (1, 1), "padding": (0, 0)}, "4-D"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 4, 3, 3), None), {"stride": (1, 1), "padding": (0, 0)}, "channels"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 8, 3), None), {"stride": (1, 1), "padding": (1, 1)}, "larger than the padded"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 3, 3), None), {"stride": (1, 1), "padding": (-1, 0)}, "padding must be non-negative"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 3, 3), None), {"stride": (0, 1), "padding": (0, 0)}, "stride must be positive"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 3, 3), _z(3)), {"stride": (1, 1), "padding": (0, 0)}, "bias must have shape"),
    ("conv2d", (_z(1, 3, 5, 5), _z(2, 3, 3, 3), None), {"stride": (1.5, 1), "padding": (0, 0)}, "stride must be an int"),
    ("conv_transpose2d", (_z(1, 3, 4), _z(3, 2, 3, 3), None),
     {"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)}, "4-D"),
    ("conv_transpose2d", (_z(1, 3, 4, 4), _z(2, 3, 3, 3), None),
     {"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)}, "channels"),
    ("conv_transpose2d", (_z(1, 3, 4, 4), _z(3, 2, 3, 3), None),
     {"stride": (2, 2), "padding": (0, 0), "output_padding": (2, 0)}, "output_padding .* smaller than stride"),
    ("conv_transpose2d", (_z(1, 3, 4, 4), _z(3, 2, 3, 3), None),
     {"stride": (1, -1), "padding": (0, 0), "output_padding": (0, 0)}, "stride must be positive"),
    ("conv_transpose2d", (_z(1, 3, 4, 4), _z(3, 2, 3, 3), None),
     {"stride": (1, 1), "padding": (0, -2), "output_padding": (0, 0)}, "padding must be non-negative"),
    ("conv_transpose2d", (_z(1, 3, 1, 1), _z(3, 2, 1, 1), None),
     {"stride": (1, 1), "padding": (1, 0), "output_padding": (0, 0)}, "empty"),
    ("max_pool2d", (_z(4, 4),), {"kernel": (2, 2), "stride": (2, 2)}, "4-D"),
    ("max_pool2d", (_z(1, 1, 4, 4),), {"kernel": (5, 2), "stride": (2, 2)}, "larger than the input"),
    ("max_pool2d", (_z(1, 1, 4, 4),), {"kernel": (2, 2), "stride": (0, 2)}, "stride must be positive"),
    ("max_unpool2d", (_z(1, 1, 2, 2), np.zeros((1, 1, 2, 1), np.int64)), {"output_size": (4, 4)}, "indices shape"),
    ("max_unpool2d", (_z(1, 1, 2, 2), np.zeros((1, 1, 2, 2))), {"output_size": (4, 4)}, "integers"),
    ("max_unpool2d", (_z(1, 1, 2, 2), np.full((1, 1, 2, 2), 16, np.int64)), {"output_size": (4, 4)}, r"\[0, 16\)"),
    ("linear", (_z(2, 3), _z(4, 5), None), {}, "features"),
    ("linear", (_z(2, 3, 1), _z(4, 3), None), {}, "2-D"),
    ("reshape", (_z(2, 3),), {"shape": (4, -1)}, "cannot reshape"),
    ("reshape", (_z(2, 3),), {"shape": (-1, -1)}, "one -1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,inputs,attrs,match", VALIDATION, ids=[f"{v[0]}-{v[3]}" for v in VALIDATION])
def test_bad_arguments_raise(backend, name, inputs, attrs, match):
    with pytest.raises(ValueError, match=match):
        OPS[name](get_backend(backend), *inputs, **attrs)


def test_normalize_conv_args():
    assert convshape.normalize_conv_args(3) == ((3, 3), (1, 1), (0, 0))
    assert convshape.normalize_conv_args((3, 5), 1, "same") == ((3, 5), (1, 1), (1, 2))
    assert convshape.normalize_conv_args((3, 2), (2, 1), [1, 0]) == ((3, 2), (2, 1), (1, 0))
    with pytest.raises(ValueError, match="odd kernel_size"):
        convshape.normalize_conv_args((3, 4), 1, "same")
    with pytest.raises(ValueError, match="stride 1"):
        convshape.normalize_conv_args(3, 2, "same")
    with pytest.raises(ValueError, match="'same'"):
        convshape.normalize_conv_args(3, 1, "valid")
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        convshape.normalize_conv_args(0)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        convshape.normalize_conv_args(3, 1, -1)
    with pytest.raises(ValueError, match="int or a pair"):
        convshape.normalize_pair((1, 2, 3), "stride")
    with pytest.raises(ValueError, match="int or a pair"):
        convshape.normalize_pair(True, "stride")


def test_output_sizes_match_formulas():
    assert convshape.conv_output_size((7, 6), (3, 2), (2, 1), (1, 0)) == (4, 5)
    assert convshape.conv_output_size(5, 5, 1, 0) == (1, 1)
    assert convshape.conv_transpose_output_size((4, 3), (3, 2), (2, 1), (1, 0), (1, 0)) == (8, 4)
    assert convshape.pool_output_size((7, 8), 3, 2) == (3, 3)
    assert convshape.pool_output_size((6, 6), 2) == (3, 3)


# --- the direct (no im2col) kernels: narrow stride-1 layers with kernels of 7x7 and more, the
# per-sample path (one image channel) and the register-tiled kernels (strided, large kernels) -----

PATH_CASES = [
    ("conv2d", (2, 1, 12, 11), (3, 1, 9, 9), {"stride": (1, 1), "padding": (4, 4)}, "direct", "DCTL-like, same padding"),
    ("conv2d", (3, 4, 10, 9), (2, 4, 7, 8), {"stride": (1, 1), "padding": (0, 1)}, "direct", "4->2, non-square"),
    ("conv2d", (1, 3, 9, 9), (3, 3, 9, 7), {"stride": (1, 1), "padding": (2, 0)}, "direct", "odd output count"),
    ("conv2d", (2, 2, 5, 4), (3, 2, 7, 7), {"stride": (1, 1), "padding": (7, 6)}, "direct",
     "padding beyond the kernel"),
    ("conv_transpose2d", (2, 4, 5, 6), (4, 1, 9, 8), {"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)},
     "direct", "DCAE-like 4->1"),
    ("conv_transpose2d", (1, 3, 4, 7), (3, 3, 7, 7), {"stride": (1, 1), "padding": (2, 3), "output_padding": (0, 0)},
     "direct", "padding cropping, odd channel count"),
    ("conv2d", (3, 1, 12, 12), (7, 1, 4, 4), {"stride": (2, 2), "padding": (0, 0)}, "per_sample",
     "DEPICT-like first layer 1->7 4x4 s2"),
    ("conv2d", (2, 1, 9, 10), (4, 1, 5, 3), {"stride": (2, 3), "padding": (2, 1)}, "per_sample",
     "one channel, uneven stride and padding"),
    ("conv_transpose2d", (3, 6, 5, 5), (6, 1, 5, 5), {"stride": (2, 2), "padding": (2, 2), "output_padding": (1, 1)},
     "per_sample", "DCEC-like last layer 6->1 5x5 s2"),
    # register-tiled kernels, large enough for their parallel loops
    ("conv2d", (20, 16, 14, 14), (24, 16, 5, 5), {"stride": (2, 2), "padding": (2, 2)}, "tiled",
     "DCEC-like 16->24 5x5 s2, batch 20"),
    ("conv_transpose2d", (19, 24, 7, 7), (24, 16, 5, 5), {"stride": (2, 2), "padding": (2, 2), "output_padding": (1, 1)},
     "tiled", "DCEC-like transposed 24->16 5x5 s2, output_padding, batch 19"),
    ("conv2d", (9, 6, 13, 12), (10, 6, 4, 4), {"stride": (2, 2), "padding": ((1, 2), (0, 1))}, "tiled",
     "4x4 s2, asymmetric padding, 10 output channels"),
]


def _layer_path(name, x_shape, w_shape, stride):
    from nbclust.kernels.cpu import conv as cpu_conv

    c_out = w_shape[0] if name == "conv2d" else w_shape[1]
    image = x_shape[1] if name == "conv2d" else c_out
    return cpu_conv._path(image, x_shape[1], c_out, w_shape[2:], stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("name, x_shape, w_shape, attrs, path, label", PATH_CASES)
def test_cpu_path_matches_reference(name, x_shape, w_shape, attrs, path, label, with_bias, dtype):
    assert _layer_path(name, x_shape, w_shape, attrs["stride"]) == path
    rng = np.random.default_rng(7)
    n_bias = w_shape[0] if name == "conv2d" else w_shape[1]
    inputs = (rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=n_bias) if with_bias else None)
    spec, ref, cpu = OPS[name], get_backend("reference"), get_backend("cpu")
    outs_ref, _ = run_op(ref, spec, inputs, attrs)
    grad_out = rng.normal(size=outs_ref[0].shape)
    outs_ref, grads_ref = run_op(ref, spec, inputs, attrs, grad_out)
    cast = tuple(None if a is None else a.astype(dtype) for a in inputs)
    outs, grads = run_op(cpu, spec, cast, attrs, grad_out.astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert outs[0].dtype == dtype and rel_err(outs[0], outs_ref[0]) <= tol, label
    for got, want in zip(grads, grads_ref):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == dtype and got.shape == want.shape and rel_err(got, want) <= tol, label


@pytest.mark.parametrize("name, x_shape, w_shape, attrs, path, label",
                         PATH_CASES[:1] + PATH_CASES[3:4] + PATH_CASES[6:7] + PATH_CASES[8:])
def test_cpu_path_matches_torch_and_is_thread_count_invariant(name, x_shape, w_shape, attrs, path, label):
    import numba

    rng = np.random.default_rng(8)
    n_bias = w_shape[0] if name == "conv2d" else w_shape[1]
    inputs = (rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=n_bias))
    _check_vs_torch(name, inputs, attrs, "cpu")
    spec, cpu = OPS[name], get_backend("cpu")
    cast = tuple(a.astype(np.float32) for a in inputs)
    out, _ = run_op(cpu, spec, cast, attrs)
    grad_out = rng.normal(size=out[0].shape).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            results.append(run_op(cpu, spec, cast, attrs, grad_out))
        finally:
            numba.set_num_threads(before)
    (outs_a, grads_a), (outs_b, grads_b) = results
    np.testing.assert_array_equal(outs_a[0], outs_b[0])
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_array_equal(a, b)
