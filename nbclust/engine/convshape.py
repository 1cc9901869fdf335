"""Shape arithmetic and argument validation of the convolution-family ops.

Used by the op table's checks (:mod:`nbclust.engine.optable.conv`, which validate every call once,
for every backend) and by the layers, so that a bad argument raises the same one-line
``ValueError`` everywhere; the backends only compute output shapes (``*_output_shape``).
Spatial arguments are pairs ``(height, width)``; :func:`normalize_pair` turns an int into a
pair.  The ``check_*`` functions look only at ``.shape``/``.ndim``/``.dtype`` (but
:func:`check_unpool_range`, which reads the indices), so they accept NumPy and CuPy arrays
alike, and return the op's output shape.

Padding
-------
``padding`` of ``conv2d`` and ``conv_transpose2d`` (ops and layers) is one of

- an int ``p`` or a pair ``(ph, pw)``: symmetric, ``p`` rows/columns on each side;
- a pair of pairs ``((top, bottom), (left, right))``: asymmetric;
- ``"tf_same"``: TensorFlow/Keras ``padding="same"``, for any kernel and stride,
  resolved for the input size at hand (:func:`tf_same_padding`): a conv2d over
  ``n`` gives ``ceil(n / s)`` outputs, the total padding
  ``P = max((ceil(n / s) - 1) s + k - n, 0)`` is split ``P // 2`` before and
  ``P - P // 2`` after (28x28, k 5, s 2: 1 before, 2 after).  A conv_transpose2d
  gives ``n s`` outputs, as Keras' ``Conv2DTranspose(padding="same")``: the full
  transposed output ``(n - 1) s + k`` is cropped by ``max(k - s, 0)`` split the
  same way (``k < s``: zero rows appended, as ``output_padding = s - k``).
  Source: ``tf.nn`` "Notes on padding",
  https://www.tensorflow.org/api_docs/python/tf/nn#notes_on_padding_2, and Keras'
  ``Conv2DTranspose``, which calls ``tf.nn.conv2d_transpose`` (the input gradient of that
  conv2d) with output ``n s``;
- ``"same"`` (conv2d only): torch's, odd kernels and stride 1, ``k // 2`` per side.

Internally every backend works on the normal form ``((top, bottom), (left, right))``
(:func:`normalize_padding`).  For conv_transpose2d the padding is the crop of the
full transposed output, so conv_transpose2d with a padding is exactly the adjoint
(the input gradient) of conv2d with the same padding; ``output_padding`` then
extends the end of each axis (the bottom/right crop becomes ``bottom - output_padding``).
"""

from __future__ import annotations

import numpy as np

TF_SAME = "tf_same"
"""The ``padding`` string of TensorFlow/Keras ``"same"`` semantics (any stride, asymmetric)."""


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def normalize_pair(v, name: str) -> tuple[int, int]:
    """``v`` (an int or a pair of ints) as a pair of Python ints."""
    if _is_int(v):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) for e in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def _positive(v, name: str) -> tuple[int, int]:
    pair = normalize_pair(v, name)
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {pair}")
    return pair


def _non_negative(v, name: str) -> tuple[int, int]:
    pair = normalize_pair(v, name)
    if min(pair) < 0:
        raise ValueError(f"{name} must be non-negative, got {pair}")
    return pair


def _is_pair_of_ints(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) for e in v)


_PADDING_FORMS = "an int or a pair (of ints, or of (before, after) pairs of ints)"


def normalize_padding(padding, name: str = "padding") -> tuple[tuple[int, int], tuple[int, int]]:
    """``padding`` (an int, a pair ``(h, w)`` or ``((top, bottom), (left, right))``) as
    ``((top, bottom), (left, right))`` of non-negative Python ints (strings: see :func:`resolve_padding`)."""
    if _is_int(padding):
        p = int(padding)
        pads = ((p, p), (p, p))
    elif _is_pair_of_ints(padding):
        pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_pair_of_ints(e) for e in padding):
        pads = tuple((int(a), int(b)) for a, b in padding)
    else:
        raise ValueError(f"{name} must be {_PADDING_FORMS}, got {padding!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{name} must be non-negative, got {padding!r}")
    return pads


def compact_padding(pads):
    """A normal-form padding as a pair ``(ph, pw)`` where it is symmetric, else as it is."""
    (t, b), (l, r) = pads
    return (t, l) if t == b and l == r else ((t, b), (l, r))


def is_symmetric(pads) -> bool:
    return pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]


def tf_same_padding(size, kernel, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """TensorFlow's "SAME" padding of a conv2d over spatial ``size``: ``((top, bottom), (left, right))``.

    Per axis ``out = ceil(n / s)``, ``P = max((out - 1) s + k - n, 0)``, ``P // 2`` before and
    the rest after (``tf.nn.conv2d`` / Keras ``Conv2D(padding="same")``; 28, k 5, s 2: (1, 2)).
    """
    size, kernel, stride = _positive(size, "input size"), _positive(kernel, "kernel_size"), _positive(stride, "stride")
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _torch_same(kernel, stride):
    if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
        raise ValueError(f"padding='same' needs an odd kernel_size, got {kernel} (padding='{TF_SAME}' takes any)")
    if stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1, got {stride} (padding='{TF_SAME}' takes any)")
    return (kernel[0] // 2, kernel[1] // 2)


def resolve_padding(padding, size, kernel, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """The padding of a conv2d over spatial ``size`` as ``((top, bottom), (left, right))``:
    ``"tf_same"`` resolved for that size (:func:`tf_same_padding`), ``"same"`` torch's
    (odd kernel, stride 1), anything else through :func:`normalize_padding`."""
    if isinstance(padding, str):
        kernel, stride = _positive(kernel, "kernel_size"), _positive(stride, "stride")
        if padding == TF_SAME:
            return tf_same_padding(size, kernel, stride)
        if padding == "same":
            return normalize_padding(_torch_same(kernel, stride))
        raise ValueError(f"padding must be {_PADDING_FORMS}, 'same' or '{TF_SAME}', got {padding!r}")
    return normalize_padding(padding)


def resolve_transpose_padding(padding, kernel, stride, output_padding=0):
    """Padding (the crop of the full output) and output_padding of a conv_transpose2d, validated:
    ``(((top, bottom), (left, right)), (oh, ow))``.

    ``"tf_same"`` (Keras' ``Conv2DTranspose(padding="same")``, output ``n * s``): per axis the crop
    ``P = max(k - s, 0)`` split ``P // 2`` before and the rest after, and ``output_padding``
    ``max(s - k, 0)``; an explicit non-zero ``output_padding`` is refused with it.
    """
    kernel, stride = _positive(kernel, "kernel_size"), _positive(stride, "stride")
    output_padding = _non_negative(output_padding, "output_padding")
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride}")
    if isinstance(padding, str):
        if padding != TF_SAME:
            raise ValueError(f"conv_transpose2d padding must be {_PADDING_FORMS} or '{TF_SAME}', got {padding!r}")
        if output_padding != (0, 0):
            raise ValueError(f"output_padding must be 0 with padding='{TF_SAME}' (the output is input * stride), "
                             f"got {output_padding}")
        crops = tuple(max(k - s, 0) for k, s in zip(kernel, stride))
        return (tuple((p // 2, p - p // 2) for p in crops),
                tuple(max(s - k, 0) for k, s in zip(kernel, stride)))
    return normalize_padding(padding), output_padding


def normalize_conv_args(kernel_size, stride=1, padding=0):
    """``(kernel, stride, padding)`` validated, kernel and stride as pairs.

    ``padding`` comes back as a pair ``(ph, pw)`` when it is symmetric, as
    ``((top, bottom), (left, right))`` when not, and as the string ``"tf_same"``
    (resolved per input size by the ops, see the module docstring).
    ``padding="same"`` keeps the spatial size as torch's: it needs odd kernels
    and stride 1 and pads ``k // 2`` on each side.
    """
    kernel = _positive(kernel_size, "kernel_size")
    stride = _positive(stride, "stride")
    if isinstance(padding, str):
        if padding == TF_SAME:
            return kernel, stride, TF_SAME
        if padding != "same":
            raise ValueError(f"padding must be {_PADDING_FORMS}, 'same' or '{TF_SAME}', got {padding!r}")
        return kernel, stride, _torch_same(kernel, stride)
    return kernel, stride, compact_padding(normalize_padding(padding))


def conv_output_size(size, kernel, stride=1, padding=0) -> tuple[int, int]:
    """Spatial output size of a convolution: ``(n + top + bottom - k) // s + 1`` per axis
    (any padding form of the module docstring)."""
    return _conv_output(size, kernel, stride, padding)[0]


def _conv_output(size, kernel, stride, padding):
    """``(output size, normal-form padding)`` of a convolution, validated."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride = _positive(stride, "stride")
    pads = resolve_padding(padding, size, kernel, stride)
    padded = tuple(n + a + b for n, (a, b) in zip(size, pads))
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise ValueError(f"kernel {kernel} is larger than the padded input {padded}")
    return _conv_sizes(size, kernel, stride, pads), pads


def _conv_sizes(size, kernel, stride, pads) -> tuple[int, int]:
    return tuple((n + a + b - k) // s + 1 for n, k, s, (a, b) in zip(size, kernel, stride, pads))


def conv_transpose_output_size(size, kernel, stride=1, padding=0, output_padding=0) -> tuple[int, int]:
    """Spatial output size of a transposed convolution:
    ``(n - 1) s + k - top - bottom + output_padding`` (``n s`` for ``"tf_same"``)."""
    return _conv_transpose_output(size, kernel, stride, padding, output_padding)[0]


def _conv_transpose_output(size, kernel, stride, padding, output_padding):
    """``(output size, normal-form padding, output_padding)`` of a transposed convolution, validated."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride = _positive(stride, "stride")
    pads, output_padding = resolve_transpose_padding(padding, kernel, stride, output_padding)
    out = _conv_transpose_sizes(size, kernel, stride, pads, output_padding)
    if min(out) <= 0:
        raise ValueError(f"padding {padding} leaves an empty transposed-convolution output {out}")
    return out, pads, output_padding


def _conv_transpose_sizes(size, kernel, stride, pads, output_padding) -> tuple[int, int]:
    return tuple((n - 1) * s + k - a - b + q for n, k, s, (a, b), q in zip(size, kernel, stride, pads, output_padding))


def pool_output_size(size, kernel, stride=None) -> tuple[int, int]:
    """Spatial output size of a pooling without padding (floor mode); stride defaults to the kernel."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride = kernel if stride is None else _positive(stride, "stride")
    if kernel[0] > size[0] or kernel[1] > size[1]:
        raise ValueError(f"pooling kernel {kernel} is larger than the input {size}")
    return _conv_sizes(size, kernel, stride, ((0, 0), (0, 0)))


def _check_ndim(a, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_bias(b, n: int, op: str) -> None:
    if b is not None and tuple(b.shape) != (n,):
        raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(b.shape)}")


def conv_geometry(x, w, b=None, stride=1, padding=0):
    """Validate ``conv2d(x (N,C,H,W), w (O,C,kh,kw), b (O,))``; return
    ``(output shape, (sh, sw), ((top, bottom), (left, right)))``."""
    _check_ndim(x, 4, "conv2d input x (N, C, H, W)")
    _check_ndim(w, 4, "conv2d weight w (O, C, kh, kw)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]}")
    _check_bias(b, w.shape[0], "conv2d")
    (ho, wo), pads = _conv_output(x.shape[2:], w.shape[2:], stride, padding)
    return (x.shape[0], w.shape[0], ho, wo), normalize_pair(stride, "stride"), pads


def conv_transpose_geometry(x, w, b=None, stride=1, padding=0, output_padding=0):
    """Validate ``conv_transpose2d(x (N,Cin,H,W), w (Cin,Cout,kh,kw), b (Cout,))``; return
    ``(output shape, (sh, sw), ((top, bottom), (left, right)), (oh, ow))`` (``"tf_same"`` resolved)."""
    _check_ndim(x, 4, "conv_transpose2d input x (N, Cin, H, W)")
    _check_ndim(w, 4, "conv_transpose2d weight w (Cin, Cout, kh, kw)")
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"conv_transpose2d: input has {x.shape[1]} channels but the weight expects {w.shape[0]}")
    _check_bias(b, w.shape[1], "conv_transpose2d")
    (ho, wo), pads, output_padding = _conv_transpose_output(x.shape[2:], w.shape[2:], stride, padding, output_padding)
    return (x.shape[0], w.shape[1], ho, wo), normalize_pair(stride, "stride"), pads, output_padding


def check_pool_input(x, kernel, stride=None) -> tuple[int, int, int, int]:
    """Validate ``max_pool2d(x (N,C,H,W))``; return the output shape."""
    _check_ndim(x, 4, "max_pool2d input x (N, C, H, W)")
    ho, wo = pool_output_size(x.shape[2:], kernel, stride)
    return x.shape[0], x.shape[1], ho, wo


def check_unpool_input(x, indices, output_size) -> tuple[int, int, int, int]:
    """Validate ``max_unpool2d(x (N,C,h,w), indices (N,C,h,w) integer)``; return the output shape.

    The range of the indices (``0 <= i < H*W``) is checked by the backends, as it reads the data.
    """
    _check_ndim(x, 4, "max_unpool2d input x (N, C, h, w)")
    if tuple(indices.shape) != tuple(x.shape):
        raise ValueError(f"max_unpool2d: indices shape {tuple(indices.shape)} differs from input shape {tuple(x.shape)}")
    if np.dtype(indices.dtype).kind not in "iu":
        raise ValueError(f"max_unpool2d: indices must be integers, got {indices.dtype}")
    h, w = _positive(output_size, "output_size")
    return x.shape[0], x.shape[1], h, w


def check_unpool_range(indices, size: int) -> None:
    """ValueError unless every index lies in the output plane of ``size`` values (reads the data)."""
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise ValueError(f"max_unpool2d: indices must lie in [0, {size}) (the output plane)")


def check_linear_input(x, w, b=None) -> tuple[int, int]:
    """Validate ``linear(x (N,F), w (O,F), b (O,))``; return the output shape."""
    _check_ndim(x, 2, "linear input x (N, F)")
    _check_ndim(w, 2, "linear weight w (O, F)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: input has {x.shape[1]} features but the weight expects {w.shape[1]}")
    _check_bias(b, w.shape[0], "linear")
    return x.shape[0], w.shape[0]


def check_reshape(x, shape) -> tuple[int, ...]:
    """Validate ``reshape(x; shape)`` (at most one -1); return the concrete output shape."""
    if not isinstance(shape, (tuple, list)) or not all(_is_int(e) for e in shape):
        raise ValueError(f"reshape: shape must be a tuple of ints, got {shape!r}")
    shape = tuple(int(e) for e in shape)
    if sum(e == -1 for e in shape) > 1 or any(e < -1 for e in shape):
        raise ValueError(f"reshape: shape {shape} may contain one -1 and otherwise non-negative sizes")
    known = int(np.prod([e for e in shape if e != -1]))
    size = int(np.prod(x.shape))
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} into {shape}")
        shape = tuple(size // known if e == -1 else e for e in shape)
    elif known != size:
        raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} into {shape}")
    return shape


# ---------------------------------------------------------------- shapes of validated calls
# The op table validates every call once (nbclust.engine.optable) and hands the backends stride,
# kernel and padding in normal form: pairs and ((top, bottom), (left, right)).  These give the
# output shape of such a call, without validating again.


def conv_output_shape(x, w, stride, padding) -> tuple[int, int, int, int]:
    """``(N, O, Ho, Wo)`` of a validated ``conv2d(x, w)``."""
    return (x.shape[0], w.shape[0], *_conv_sizes(x.shape[2:], w.shape[2:], stride, padding))


def conv_transpose_output_shape(x, w, stride, padding, output_padding) -> tuple[int, int, int, int]:
    """``(N, Cout, Hout, Wout)`` of a validated ``conv_transpose2d(x, w)``."""
    return (x.shape[0], w.shape[1], *_conv_transpose_sizes(x.shape[2:], w.shape[2:], stride, padding, output_padding))


def pool_output_shape(x, kernel, stride) -> tuple[int, int, int, int]:
    """``(N, C, Ho, Wo)`` of a validated ``max_pool2d(x)``."""
    return (*x.shape[:2], *_conv_sizes(x.shape[2:], kernel, stride, ((0, 0), (0, 0))))
