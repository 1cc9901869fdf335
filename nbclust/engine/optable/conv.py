"""Table entries: convolution, transposed convolution, pooling, dense, reshape.

Their checks validate through :mod:`nbclust.engine.convshape` and hand the backends kernel and stride
as pairs and padding as ``((top, bottom), (left, right))`` (``"tf_same"`` resolved for the input).
"""

from __future__ import annotations

import numpy as np

from nbclust.engine import convshape
from nbclust.engine.optable import REQUIRED, Case, OpSpec

FAMILY = "conv"


# --- checks -----------------------------------------------------------------

def _check_conv2d(x, w, b, stride, padding) -> dict:
    _, stride, padding = convshape.conv_geometry(x, w, b, stride, padding)
    return {"stride": stride, "padding": padding}


def _check_conv_transpose2d(x, w, b, stride, padding, output_padding) -> dict:
    _, stride, padding, output_padding = convshape.conv_transpose_geometry(x, w, b, stride, padding, output_padding)
    return {"stride": stride, "padding": padding, "output_padding": output_padding}


def _check_max_pool2d(x, kernel, stride) -> dict:
    convshape.check_pool_input(x, kernel, stride)
    return {"kernel": convshape.normalize_pair(kernel, "kernel"), "stride": convshape.normalize_pair(stride, "stride")}


def _check_max_unpool2d(x, indices, output_size) -> dict:
    _, _, h, w = convshape.check_unpool_input(x, indices, output_size)
    convshape.check_unpool_range(indices, h * w)
    return {"output_size": (h, w)}


def _check_linear(x, w, b) -> None:
    convshape.check_linear_input(x, w, b)


def _check_reshape(x, shape) -> dict:
    return {"shape": convshape.check_reshape(x, shape)}


# --- cases ------------------------------------------------------------------


def _conv2d_cases(rng: np.random.Generator) -> list[Case]:
    n = rng.normal
    return [
        Case((n(size=(2, 3, 7, 6)), n(size=(4, 3, 3, 2)), n(size=4)),
             {"stride": (2, 1), "padding": (1, 0)}, "stride 2x1, padding, non-square kernel"),
        Case((n(size=(1, 1, 5, 5)), n(size=(2, 1, 3, 3)), None),
             {"stride": (1, 1), "padding": (2, 2)}, "batch 1, one channel, bias None"),
        Case((n(size=(2, 2, 4, 3)), n(size=(3, 2, 6, 5)), n(size=3)),
             {"stride": (1, 1), "padding": (1, 1)}, "kernel equal to the padded input"),
        Case((n(size=(1, 2, 9, 8)), n(size=(2, 2, 2, 3)), n(size=2)),
             {"stride": (3, 2), "padding": (0, 1)}, "stride 3x2, odd sizes, leftover rows"),
        Case((n(size=(3, 1, 8, 7)), n(size=(5, 1, 3, 3)), n(size=5)),
             {"stride": (2, 2), "padding": (1, 0)}, "one input channel, stride 2 (a first layer)"),
        # asymmetric padding ((top, bottom), (left, right)) and TF's "same" (see nbclust.engine.convshape)
        Case((n(size=(2, 1, 8, 8)), n(size=(3, 1, 5, 5)), n(size=3)),
             {"stride": (2, 2), "padding": ((1, 2), (1, 2))}, "Keras same k5 s2 on 8x8: ((1, 2), (1, 2))"),
        Case((n(size=(1, 2, 9, 6)), n(size=(3, 2, 3, 4)), n(size=3)),
             {"stride": (2, 3), "padding": "tf_same"}, "'tf_same' resolving to ((1, 1), (0, 1)), stride 2x3"),
        Case((n(size=(1, 3, 5, 6)), n(size=(2, 3, 3, 3)), None),
             {"stride": (1, 1), "padding": ((2, 0), (0, 1))}, "asymmetric, more before than after"),
        Case((n(size=(2, 1, 6, 7)), n(size=(2, 1, 5, 5)), n(size=2)),
             {"stride": (1, 1), "padding": ((0, 3), (2, 1))}, "asymmetric, narrow 5x5 stride 1 (cpu direct path)"),
        # the cpu register-tiled path (strided, >= 4 kernel taps per phase): batch not a multiple
        # of the vector length, output channels not a multiple of the register tile's 4
        Case((n(size=(3, 2, 9, 8)), n(size=(5, 2, 5, 5)), n(size=5)),
             {"stride": (2, 2), "padding": ((1, 2), (2, 1))}, "5x5 stride 2, asymmetric padding (cpu tiled path)"),
        Case((n(size=(5, 3, 7, 8)), n(size=(2, 3, 4, 4)), None),
             {"stride": (2, 2), "padding": (1, 0)}, "4x4 stride 2, batch 5, bias None (cpu tiled path)"),
        Case((n(size=(1, 2, 7, 9)), n(size=(3, 2, 1, 9)), n(size=3)),
             {"stride": (2, 1), "padding": (0, 4)}, "1x9 stride 2x1: one row phase without taps (cpu tiled path)"),
    ]


def _conv_transpose2d_cases(rng: np.random.Generator) -> list[Case]:
    n = rng.normal
    return [
        Case((n(size=(2, 3, 4, 3)), n(size=(3, 2, 3, 2)), n(size=2)),
             {"stride": (2, 1), "padding": (1, 0), "output_padding": (1, 0)},
             "stride 2x1, padding, output_padding, non-square kernel"),
        Case((n(size=(1, 1, 5, 4)), n(size=(1, 3, 2, 3)), None),
             {"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)},
             "batch 1, one channel, bias None"),
        Case((n(size=(2, 2, 3, 3)), n(size=(2, 2, 3, 3)), n(size=2)),
             {"stride": (3, 2), "padding": (1, 1), "output_padding": (2, 1)},
             "stride larger than kernel, maximal output_padding"),
        Case((n(size=(1, 2, 2, 2)), n(size=(2, 1, 4, 4)), n(size=1)),
             {"stride": (1, 1), "padding": (1, 2), "output_padding": (0, 0)},
             "padding cropping to a 3x1 output"),
        Case((n(size=(3, 4, 3, 4)), n(size=(4, 1, 4, 3)), n(size=1)),
             {"stride": (2, 2), "padding": (1, 0), "output_padding": (1, 1)},
             "one output channel, stride 2 (a last layer)"),
        # asymmetric crops ((top, bottom), (left, right)): the adjoint of conv2d with that padding
        Case((n(size=(2, 3, 4, 4)), n(size=(3, 2, 5, 5)), n(size=2)),
             {"stride": (2, 2), "padding": ((1, 2), (1, 2)), "output_padding": (0, 0)},
             "Keras same k5 s2: crop ((1, 2), (1, 2)), 4x4 -> 8x8"),
        Case((n(size=(1, 2, 3, 2)), n(size=(2, 1, 3, 2)), None),
             {"stride": (2, 3), "padding": "tf_same", "output_padding": (0, 0)},
             "'tf_same': crop ((0, 1), (0, 0)), output_padding (0, 1), one output channel"),
        Case((n(size=(1, 2, 3, 3)), n(size=(2, 3, 3, 3)), n(size=3)),
             {"stride": (2, 2), "padding": ((2, 0), (1, 1)), "output_padding": (1, 0)},
             "asymmetric crop with output_padding"),
        Case((n(size=(2, 2, 4, 3)), n(size=(2, 1, 5, 5)), n(size=1)),
             {"stride": (1, 1), "padding": ((0, 3), (2, 1)), "output_padding": (0, 0)},
             "asymmetric, narrow 5x5 stride 1 (cpu direct path)"),
        # the cpu register-tiled path (see conv2d)
        Case((n(size=(3, 2, 4, 3)), n(size=(2, 3, 5, 5)), n(size=3)),
             {"stride": (2, 2), "padding": (2, 2), "output_padding": (1, 1)},
             "5x5 stride 2, output_padding, batch 3 (cpu tiled path)"),
        Case((n(size=(2, 3, 3, 4)), n(size=(3, 2, 5, 4)), None),
             {"stride": (2, 2), "padding": ((1, 2), (2, 1)), "output_padding": (0, 0)},
             "5x4 stride 2, asymmetric crop, bias None (cpu tiled path)"),
        Case((n(size=(1, 2, 3, 4)), n(size=(2, 5, 1, 9)), n(size=5)),
             {"stride": (2, 1), "padding": (0, 4), "output_padding": (1, 0)},
             "1x9 stride 2x1: odd output rows only get the bias (cpu tiled path)"),
    ]


def _distinct(rng: np.random.Generator, shape) -> np.ndarray:
    """Values 0.1 apart in random order: no ties in any window, so no argmax flips under FD."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2) * 0.1


def _max_pool2d_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((_distinct(rng, (2, 3, 6, 6)),), {"kernel": (2, 2), "stride": (2, 2)}, "non-overlapping 2x2"),
        Case((_distinct(rng, (1, 2, 7, 8)),), {"kernel": (3, 3), "stride": (2, 2)},
             "overlapping 3x3 stride 2, size not divisible"),
        Case((_distinct(rng, (2, 1, 5, 7)),), {"kernel": (2, 3), "stride": (1, 2)},
             "overlapping non-square kernel"),
        Case((_distinct(rng, (1, 2, 4, 3)),), {"kernel": (4, 3), "stride": (1, 1)}, "kernel equal to the input"),
    ]


def _pool_indices(x: np.ndarray, kernel) -> np.ndarray:
    """Argmax indices (flat in the H*W plane) of a non-overlapping max pool with stride = kernel."""
    (n, c, h, w), (kh, kw) = x.shape, kernel
    ho, wo = h // kh, w // kw
    windows = x[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw).transpose(0, 1, 2, 4, 3, 5)
    arg = windows.reshape(n, c, ho, wo, kh * kw).argmax(axis=-1)
    rows = np.arange(ho)[:, None] * kh + arg // kw
    cols = np.arange(wo)[None, :] * kw + arg % kw
    return (rows * w + cols).astype(np.int64)


def _max_unpool2d_cases(rng: np.random.Generator) -> list[Case]:
    a = _pool_indices(rng.normal(size=(2, 3, 6, 5)), (2, 2))
    b = _pool_indices(rng.normal(size=(1, 2, 7, 7)), (3, 2))
    return [
        Case((rng.normal(size=a.shape), a), {"output_size": (6, 5)}, "2x2 pool of 6x5, odd width"),
        Case((rng.normal(size=b.shape), b), {"output_size": (7, 7)}, "batch 1, 3x2 pool of 7x7"),
    ]


def _linear_cases(rng: np.random.Generator) -> list[Case]:
    n = rng.normal
    return [
        Case((n(size=(4, 7)), n(size=(3, 7)), n(size=3)), label="batch 4"),
        Case((n(size=(1, 5)), n(size=(2, 5)), None), label="batch 1, bias None"),
    ]


def _reshape_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((rng.normal(size=(2, 3, 4)),), {"shape": (2, -1)}, "flatten"),
        Case((rng.normal(size=(3, 4)),), {"shape": (-1, 2, 3)}, "unflatten with -1 first"),
    ]


def _torch_conv2d(x, w, b, stride, padding):
    """Symmetric padding: torch's own; asymmetric (or "tf_same"): ``F.pad`` then no padding."""
    import torch.nn.functional as F

    pads = convshape.resolve_padding(padding, tuple(x.shape[2:]), tuple(w.shape[2:]), stride)
    if convshape.is_symmetric(pads):
        return F.conv2d(x, w, b, stride=stride, padding=(pads[0][0], pads[1][0]))
    (top, bottom), (left, right) = pads
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=stride)


def _torch_conv_transpose2d(x, w, b, stride, padding, output_padding):
    """Symmetric padding: torch's own; asymmetric (or "tf_same"): the full transposed output, then
    cropped by ``(top, bottom - output_padding)`` (``F.pad`` with negative amounts; a negative crop
    pads), then the bias (on appended rows too, as torch's output_padding)."""
    import torch.nn.functional as F

    pads, (qh, qw) = convshape.resolve_transpose_padding(padding, tuple(w.shape[2:]), stride, output_padding)
    if convshape.is_symmetric(pads):
        return F.conv_transpose2d(x, w, b, stride=stride, padding=(pads[0][0], pads[1][0]),
                                  output_padding=(qh, qw))
    (top, bottom), (left, right) = pads
    y = F.pad(F.conv_transpose2d(x, w, stride=stride), (-left, qw - right, -top, qh - bottom))
    return y if b is None else y + b[:, None, None]


def _torch_max_pool2d(x, kernel, stride):
    import torch.nn.functional as F

    return F.max_pool2d(x, kernel, stride, return_indices=True)


def _torch_max_unpool2d(x, indices, output_size):
    import torch.nn.functional as F

    # F.max_unpool2d uses kernel and stride only to validate output_size; with
    # stride 1 and kernel H - h + 1 the default output size is exactly (H, W).
    (h, w), (oh, ow) = x.shape[-2:], output_size
    return F.max_unpool2d(x, indices, (oh - h + 1, ow - w + 1), stride=1, output_size=output_size)


def _torch_linear(x, w, b):
    import torch.nn.functional as F

    return F.linear(x, w, b)


def _torch_reshape(x, shape):
    return x.reshape(shape)


SPECS = [
    OpSpec(
        "conv2d", inputs=("x", "w", "b"), differentiable=("x", "w", "b"), skips_input_grad=True, cases=_conv2d_cases,
        attrs={"stride": (1, 1), "padding": (0, 0)}, check=_check_conv2d, torch=_torch_conv2d,
        doc="y[n,o] = b[o] + sum_c,i,j w[o,c,i,j] x_pad[n,c,h*sh+i,w*sw+j] (cross-correlation, zero padding); "
            "padding int, (h, w), ((top, bottom), (left, right)) or 'tf_same' (nbclust.engine.convshape)",
    ),
    OpSpec(
        "conv_transpose2d", inputs=("x", "w", "b"), differentiable=("x", "w", "b"), skips_input_grad=True,
        cases=_conv_transpose2d_cases, attrs={"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0)},
        check=_check_conv_transpose2d, torch=_torch_conv_transpose2d,
        doc="adjoint of conv2d in its input; w is (Cin, Cout, kh, kw); H_out = (H-1)s + k - top - bottom "
            "+ output_padding (padding: the crop of the full output, any form of nbclust.engine.convshape; "
            "'tf_same': H_out = H s, Keras' Conv2DTranspose)",
    ),
    OpSpec(
        "max_pool2d", inputs=("x",), differentiable=("x",), cases=_max_pool2d_cases, aux=("indices",),
        attrs={"kernel": (2, 2), "stride": (2, 2)}, check=_check_max_pool2d, torch=_torch_max_pool2d,
        doc="window maxima (floor mode, no padding) and int64 flat H*W-plane indices; first max wins",
    ),
    OpSpec(
        "max_unpool2d", inputs=("x", "indices"), differentiable=("x",), cases=_max_unpool2d_cases,
        attrs={"output_size": REQUIRED}, check=_check_max_unpool2d, torch=_torch_max_unpool2d,
        doc="zero (N, C, H, W) plane with y.plane[indices] = x",
    ),
    OpSpec(
        "linear", inputs=("x", "w", "b"), differentiable=("x", "w", "b"), skips_input_grad=True, cases=_linear_cases,
        check=_check_linear, torch=_torch_linear, doc="y = x @ w.T + b",
    ),
    OpSpec(
        "reshape", inputs=("x",), differentiable=("x",), cases=_reshape_cases, attrs={"shape": (-1,)},
        check=_check_reshape, torch=_torch_reshape,
        doc="y = x.reshape(shape); shape may contain one -1",
    ),
]
