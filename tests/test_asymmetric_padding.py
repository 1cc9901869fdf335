"""Asymmetric conv padding ``((top, bottom), (left, right))`` and TensorFlow's "same" (``"tf_same"``):
shape rules, the adjoint identity on every backend, torch parity, the layers and DCEC's Keras geometry.

The op table's asymmetric cases (nbclust/engine/optable/conv.py) are also run by the finite-difference and
backend-agreement tests of tests/test_ops.py and the simulated CuPy backend of tests/test_gpu.py.
"""


import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nbclust.engine import convshape, nn
from nbclust.engine.backend import Backend, get_backend
from nbclust.engine.optable import OPS

from conftest import AVAILABLE_BACKENDS, rel_err

# ------------------------------------------------------------------ shape rules


def test_tf_same_padding_matches_tensorflow():
    # total P = max((ceil(n/s) - 1) s + k - n, 0): P // 2 before, the rest after
    assert convshape.tf_same_padding((28, 28), 5, 2) == ((1, 2), (1, 2))
    assert convshape.tf_same_padding((14, 14), 5, 2) == ((1, 2), (1, 2))
    assert convshape.tf_same_padding((27, 14), 5, 2) == ((2, 2), (1, 2))
    assert convshape.tf_same_padding((8, 7), 3, 2) == ((0, 1), (1, 1))
    assert convshape.tf_same_padding((5, 6), (4, 1), (1, 3)) == ((1, 2), (0, 0))  # stride 1: k - 1
    assert convshape.tf_same_padding((2, 9), 1, (3, 4)) == ((0, 0), (0, 0))  # P clipped at 0
    for n in range(1, 30):
        for k in range(1, 6):
            for s in range(1, 4):
                assert convshape.conv_output_size((n, n), k, s, "tf_same") == (-(-n // s),) * 2


def test_padding_forms_and_their_normal_form():
    assert convshape.normalize_padding(2) == ((2, 2), (2, 2))
    assert convshape.normalize_padding((1, 0)) == ((1, 1), (0, 0))
    assert convshape.normalize_padding([[1, 2], (0, 3)]) == ((1, 2), (0, 3))
    assert convshape.normalize_conv_args(5, 2, ((1, 2), (1, 2))) == ((5, 5), (2, 2), ((1, 2), (1, 2)))
    assert convshape.normalize_conv_args(5, 2, ((2, 2), (1, 1))) == ((5, 5), (2, 2), (2, 1))  # symmetric: a pair
    assert convshape.normalize_conv_args(4, 2, "tf_same") == ((4, 4), (2, 2), "tf_same")
    assert convshape.conv_output_size((28, 28), 5, 2, ((1, 2), (1, 2))) == (14, 14)
    assert convshape.conv_output_size((7, 6), 3, 1, ((2, 0), (0, 1))) == (7, 5)


@pytest.mark.parametrize("padding, match", [
    (((1, 2), 3), "int or a pair"),
    ((1, 2, 3), "int or a pair"),
    (((1, 2, 3), (0, 0)), "int or a pair"),
    (((1.0, 2), (0, 0)), "int or a pair"),
    (((1, -1), (0, 0)), "padding must be non-negative"),
    ("valid", "'tf_same'"),
])
def test_bad_padding_raises_one_line(padding, match):
    with pytest.raises(ValueError, match=match) as info:
        convshape.conv_output_size((8, 8), 3, 1, padding)
    assert "\n" not in str(info.value)


def test_transposed_tf_same_is_keras_conv2d_transpose():
    # output n * s; crop max(k - s, 0) with the odd one at the end; k < s: zero rows appended
    assert convshape.resolve_transpose_padding("tf_same", 5, 2) == (((1, 2), (1, 2)), (0, 0))
    assert convshape.resolve_transpose_padding("tf_same", (3, 2), (2, 3)) == (((0, 1), (0, 0)), (0, 1))
    for n in range(1, 9):
        for k in range(1, 6):
            for s in range(1, 4):
                assert convshape.conv_transpose_output_size((n, n), k, s, "tf_same") == (n * s,) * 2
    assert convshape.conv_transpose_output_size((4, 3), 5, 2, ((1, 2), (0, 1)), (0, 1)) == (8, 9)
    with pytest.raises(ValueError, match="output_padding must be 0 with padding='tf_same'"):
        convshape.conv_transpose_output_size((4, 4), 5, 2, "tf_same", 1)
    with pytest.raises(ValueError, match="'tf_same', got 'same'"):
        convshape.conv_transpose_output_size((4, 4), 5, 2, "same")
    with pytest.raises(ValueError, match="empty"):
        convshape.conv_transpose_output_size((1, 1), 1, 1, ((1, 0), (0, 0)))


# ------------------------------------------------------------------ the adjoint identity, every backend


def _simulated_cuda() -> Backend:
    """The CuPy backend's own code on NumPy arrays (its conv ops use no ElementwiseKernel)."""
    from test_gpu import _import_gpu_with, _NumpyAsCupy, simulated_backend

    return simulated_backend(_import_gpu_with(_NumpyAsCupy(kernel=lambda *args, **kwargs: None)))


ADJOINT_BACKENDS = AVAILABLE_BACKENDS + ["cuda-simulated"]

# (x shape, conv weight shape, stride, padding): im2col, per-sample (one image channel), direct
# (narrow stride-1) and tiled (strided 5x5) paths of the cpu backend; valid leftovers that need
# output_padding
ADJOINT_CASES = [
    ((2, 1, 28, 28), (4, 1, 5, 5), (2, 2), ((1, 2), (1, 2))),  # Keras same, conv1 of DCEC
    ((3, 3, 14, 14), (5, 3, 5, 5), (2, 2), ((1, 2), (1, 2))),  # cpu tiled path
    ((2, 2, 9, 8), (3, 2, 3, 4), (3, 2), ((2, 0), (0, 3))),
    ((1, 3, 7, 6), (2, 3, 3, 3), (1, 1), ((0, 2), (2, 1))),
    ((2, 2, 6, 7), (1, 2, 5, 5), (1, 1), ((3, 0), (1, 2))),  # cpu direct path
    ((2, 2, 8, 7), (3, 2, 3, 3), (2, 2), "tf_same"),
]


def _backend(name):
    return _simulated_cuda() if name == "cuda-simulated" else get_backend(name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ADJOINT_BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", ADJOINT_CASES)
def test_conv_transpose_is_the_adjoint_of_conv(backend, x_shape, w_shape, stride, padding, dtype):
    """<conv2d(x), y> = <x, conv_transpose2d(y)> with the same (asymmetric) padding, and
    conv_transpose2d's input gradient is conv2d (and conv2d's is conv_transpose2d)."""
    b = _backend(backend)
    rng = np.random.default_rng(11)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    (_, _, ho, wo), _, pads = convshape.conv_geometry(x, w, None, stride, padding)
    y = rng.normal(size=(x_shape[0], w_shape[0], ho, wo))
    # output_padding: the rows of x the strided conv does not read (the adjoint gives them zero)
    q = tuple(n + a + c - ((m - 1) * s + k) for n, (a, c), m, s, k in zip(x_shape[2:], pads, (ho, wo), stride,
                                                                          w_shape[2:]))
    attrs_t = {"stride": stride, "padding": pads, "output_padding": q}
    cast = lambda a: b.asarray(a, dtype)
    conv = b.to_numpy(OPS.conv2d(b, cast(x), cast(w), None, stride=stride, padding=padding)[0])
    convt, ctx_t = OPS.conv_transpose2d(b, cast(y), cast(w), None, **attrs_t)
    convt = b.to_numpy(convt)
    assert conv.shape == y.shape and convt.shape == x.shape and convt.dtype == dtype
    lhs, rhs = np.vdot(conv.astype(np.float64), y), np.vdot(x, convt.astype(np.float64))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(lhs - rhs) <= tol * (np.abs(conv).sum() * np.abs(y).max())
    # the gradient of <conv_transpose2d(y), x> w.r.t. y is conv2d(x)
    gy = b.to_numpy(ctx_t.backward(cast(x))[0])
    assert rel_err(gy, conv.astype(np.float64)) <= tol


# ------------------------------------------------------------------ torch parity


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d"])
def test_table_cases_match_torch(backend, name):
    """Every conv case of the op table (asymmetric and "tf_same" included) against torch:
    F.pad + conv, or the full transposed conv then cropped."""
    from test_conv_ops import _check_vs_torch

    pytest.importorskip("torch")
    for case in OPS[name].cases(np.random.default_rng(3)):
        _check_vs_torch(name, case.inputs, case.attrs, backend)


@st.composite
def asymmetric_problems(draw, transposed):
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw, sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(tuple(draw(st.integers(0, 3)) for _ in range(2)) for _ in range(2))
    pads = draw(st.sampled_from([pads, "tf_same"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bias = rng.normal(size=o) if draw(st.booleans()) else None
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if transposed:
        q = (draw(st.integers(0, sh - 1)), draw(st.integers(0, sw - 1))) if pads != "tf_same" else (0, 0)
        try:
            convshape.conv_transpose_output_size((h, w), (kh, kw), (sh, sw), pads, q)
        except ValueError:
            assume(False)
        inputs = (rng.normal(size=(n, c, h, w)), rng.normal(size=(c, o, kh, kw)), bias)
        return inputs, {"stride": (sh, sw), "padding": pads, "output_padding": q}
    try:
        convshape.conv_output_size((h, w), (kh, kw), (sh, sw), pads)
    except ValueError:
        assume(False)
    return (rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, kh, kw)), bias), {"stride": (sh, sw),
                                                                                   "padding": pads}


@settings(max_examples=30, deadline=None)
@given(problem=asymmetric_problems(False))
def test_asymmetric_conv2d_cpu_matches_torch(problem):
    from test_conv_ops import _check_cpu_vs_reference, _check_vs_torch

    _check_cpu_vs_reference("conv2d", *problem)
    _check_vs_torch("conv2d", *problem, "cpu")


@settings(max_examples=30, deadline=None)
@given(problem=asymmetric_problems(True))
def test_asymmetric_conv_transpose2d_cpu_matches_torch(problem):
    from test_conv_ops import _check_cpu_vs_reference, _check_vs_torch

    _check_cpu_vs_reference("conv_transpose2d", *problem)
    _check_vs_torch("conv_transpose2d", *problem, "cpu")


# ------------------------------------------------------------------ layers


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_keras_same_conv_layer_matches_torch_pad_then_conv(backend):
    """Keras' Conv2D(32, 5, strides=2, padding='same') on 28x28 is torch F.pad(x, (1, 2, 1, 2)) + a
    stride-2 conv with no padding; nbclust's layer with ((1, 2), (1, 2)) or "tf_same" gives the same."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((3, 1, 28, 28))
    for padding in (((1, 2), (1, 2)), "tf_same"):
        layer = nn.Conv2d(1, 4, 5, stride=2, padding=padding, backend=backend, dtype=np.float64, rng=0)
        layer.bias.data[...] = np.arange(4) * 0.1
        got = layer(x)
        w, b = torch.tensor(layer.weight.data), torch.tensor(layer.bias.data)
        want = F.conv2d(F.pad(torch.tensor(x), (1, 2, 1, 2)), w, b, stride=2).numpy()
        assert got.shape == want.shape == (3, 4, 14, 14)
        assert rel_err(got, want) <= 1e-12
        # the symmetric padding 2 samples a grid shifted by one pixel
        shifted = F.conv2d(torch.tensor(x), w, b, stride=2, padding=2).numpy()
        assert shifted.shape == want.shape and rel_err(shifted, want) > 0.1


def test_layers_accept_the_padding_forms():
    kw = dict(backend="reference", dtype=np.float64, rng=0)
    x = np.random.default_rng(1).normal(size=(2, 2, 9, 8))
    assert nn.Conv2d(2, 3, 4, stride=2, padding="tf_same", **kw)(x).shape == (2, 3, 5, 4)
    assert nn.Conv2d(2, 3, 3, padding=((2, 0), (0, 1)), **kw)(x).shape == (2, 3, 9, 7)
    assert nn.Conv2d(2, 3, 3, padding=[1, 0], **kw).padding == (1, 0)
    t = nn.ConvTranspose2d(2, 3, 5, stride=2, padding="tf_same", **kw)
    assert t.padding == "tf_same" and t(x).shape == (2, 3, 18, 16)
    t = nn.ConvTranspose2d(2, 3, 5, stride=2, padding=((1, 2), (0, 3)), output_padding=(1, 0), **kw)
    assert t(x).shape == (2, 3, 19, 16)  # (9 - 1) 2 + 5 - 3 + 1, (8 - 1) 2 + 5 - 3
    assert "padding=((1, 2), (0, 3))" in repr(t)
    with pytest.raises(ValueError, match="output_padding must be 0 with padding='tf_same'"):
        nn.ConvTranspose2d(2, 3, 5, stride=2, padding="tf_same", output_padding=1, **kw)
    with pytest.raises(ValueError, match="int or a pair"):
        nn.Conv2d(2, 3, 3, padding=((1, 2), (0,)), **kw)


# ------------------------------------------------------------------ DCEC as the Keras reference


def _convs(seq, kind):
    return [layer for layer in seq.layers if type(layer).__name__ == kind]


def test_dcec_encoder_pads_like_keras_on_28x28():
    from nbclust.methods.architectures import dcec

    enc, dec = dcec((1, 28, 28), backend="reference", dtype=np.float64, rng=0)
    c1, c2, c3 = _convs(enc, "Conv2d")
    assert c1.padding == ((1, 2), (1, 2)) and c2.padding == ((1, 2), (1, 2)) and c3.padding == (0, 0)
    t3, t2, t1 = _convs(dec, "ConvTranspose2d")
    assert (t3.padding, t3.output_padding) == ((0, 0), (0, 0))  # Keras 'valid': 3 -> 7, no crop
    assert t2.padding == t1.padding == ((1, 2), (1, 2)) and t2.output_padding == t1.output_padding == (0, 0)
    sizes, x = [], np.zeros((1, 1, 28, 28))
    for layer in enc.layers + dec.layers:
        x = layer(x)
        if type(layer).__name__ in ("Conv2d", "ConvTranspose2d"):
            sizes.append(x.shape[2])
    assert sizes == [14, 7, 3, 7, 14, 28]


@pytest.mark.parametrize("side, sizes, p3", [
    (28, [14, 7, 3, 7, 14, 28], (0, 0)),
    (32, [16, 8, 4, 8, 16, 32], ((0, 1), (0, 1))),  # conv3 'same' on 8x8: TF pads 0 before, 1 after
    (27, [14, 7, 3, 7, 14, 27], (0, 0)),  # the reference's decoder would give 28; the mirror restores 27
])
def test_dcec_decoder_restores_the_image(side, sizes, p3):
    from nbclust.methods.architectures import dcec

    enc, dec = dcec((1, side, side), backend="cpu", dtype=np.float32, rng=0)
    assert _convs(enc, "Conv2d")[2].padding == p3
    x = np.random.default_rng(0).random((2, 1, side, side)).astype(np.float32)
    got = []
    for layer in enc.layers + dec.layers:
        x = layer(x)
        if type(layer).__name__ in ("Conv2d", "ConvTranspose2d"):
            got.append(x.shape[2])
    assert got == sizes and x.shape == (2, 1, side, side)


def _keras_same_transposed(torch, x, w, b, stride):
    """Keras Conv2DTranspose(padding="same"): the full output cropped by P = k - s, P // 2 at the start."""
    import torch.nn.functional as F

    full = F.conv_transpose2d(x, w, b, stride=stride)
    n, k = x.shape[2], w.shape[2]
    start = max(k - stride, 0) // 2
    return full[:, :, start:start + n * stride, start:start + n * stride]


@pytest.mark.parametrize("side", [28, 32])
def test_dcec_autoencoder_is_the_keras_cae(side):
    """The whole auto-encoder against a torch transcription of the Keras CAE (Keras padding rules,
    the same weights): Conv2D 'same' = F.pad(P // 2, P - P // 2) + conv, Conv2DTranspose 'same' =
    full output cropped from P // 2, 'valid' = no padding."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from nbclust.methods.architectures import dcec

    enc, dec = dcec((1, side, side), backend="cpu", dtype=np.float64, rng=3)
    rng = np.random.default_rng(4)
    for layer in enc.layers + dec.layers:  # non-zero biases, so that a shifted grid would show
        if getattr(layer, "bias", None) is not None:
            layer.bias.data[...] = rng.normal(size=layer.bias.data.shape) * 0.1
    x = rng.random((2, 1, side, side))
    want_z = want = torch.tensor(x)
    t = lambda a: torch.tensor(a.data)
    for layer in enc.layers:
        kind = type(layer).__name__
        if kind == "Conv2d":
            k = layer.kernel_size[0]
            n = want.shape[2]
            same = k == 5 or side % 8 == 0
            total = max((-(-n // 2) - 1) * 2 + k - n, 0) if same else 0
            want = F.conv2d(F.pad(want, (total // 2, total - total // 2) * 2), t(layer.weight), t(layer.bias),
                            stride=2)
        elif kind == "ReLU":
            want = F.relu(want)
        elif kind == "Flatten":
            want = want.reshape(want.shape[0], -1)
        elif kind == "Linear":
            want = F.linear(want, t(layer.weight), t(layer.bias))
    want_z = want
    for layer in dec.layers:
        kind = type(layer).__name__
        if kind == "ConvTranspose2d":
            if layer.kernel_size[0] == 3 and side % 8:
                want = F.conv_transpose2d(want, t(layer.weight), t(layer.bias), stride=2)  # Keras 'valid'
            else:
                want = _keras_same_transposed(torch, want, t(layer.weight), t(layer.bias), 2)
        elif kind == "ReLU":
            want = F.relu(want)
        elif kind == "Linear":
            want = F.linear(want, t(layer.weight), t(layer.bias))
        elif kind == "Reshape":
            want = want.reshape(want.shape[0], *layer.shape)
    z = enc(x)
    assert rel_err(z, want_z.numpy()) <= 1e-12
    y = dec(z)
    assert y.shape == x.shape == tuple(want.shape)
    assert rel_err(y, want.numpy()) <= 1e-12
