"""Shape arithmetic and argument validation of the convolution-family ops.

Shared by every backend's forward and by the layers, so that a bad argument
raises the same one-line ``ValueError`` everywhere.  Spatial arguments are
pairs ``(height, width)``; :func:`normalize_pair` turns an int into a pair.
The ``check_*`` functions look only at ``.shape``/``.ndim``/``.dtype``, so they
accept NumPy and CuPy arrays alike, and return the op's output shape.
"""

from __future__ import annotations

import numpy as np


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


def normalize_conv_args(kernel_size, stride=1, padding=0):
    """``(kernel, stride, padding)`` as validated pairs.

    ``padding="same"`` keeps the spatial size: it needs odd kernels and stride 1
    and pads ``k // 2`` on each side.
    """
    kernel = _positive(kernel_size, "kernel_size")
    stride = _positive(stride, "stride")
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair of ints or 'same', got {padding!r}")
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"padding='same' needs an odd kernel_size, got {kernel}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got {stride}")
        return kernel, stride, (kernel[0] // 2, kernel[1] // 2)
    return kernel, stride, _non_negative(padding, "padding")


def conv_output_size(size, kernel, stride=1, padding=0) -> tuple[int, int]:
    """Spatial output size of a convolution: ``(n + 2p - k) // s + 1`` per axis."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride, padding = _positive(stride, "stride"), _non_negative(padding, "padding")
    padded = tuple(n + 2 * p for n, p in zip(size, padding))
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise ValueError(f"kernel {kernel} is larger than the padded input {padded}")
    return tuple((n - k) // s + 1 for n, k, s in zip(padded, kernel, stride))


def conv_transpose_output_size(size, kernel, stride=1, padding=0, output_padding=0) -> tuple[int, int]:
    """Spatial output size of a transposed convolution: ``(n - 1) s - 2p + k + output_padding``."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride, padding = _positive(stride, "stride"), _non_negative(padding, "padding")
    output_padding = _non_negative(output_padding, "output_padding")
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride}")
    out = tuple((n - 1) * s - 2 * p + k + q
                for n, k, s, p, q in zip(size, kernel, stride, padding, output_padding))
    if min(out) <= 0:
        raise ValueError(f"padding {padding} leaves an empty transposed-convolution output {out}")
    return out


def pool_output_size(size, kernel, stride=None) -> tuple[int, int]:
    """Spatial output size of a pooling without padding (floor mode); stride defaults to the kernel."""
    size, kernel = _positive(size, "input size"), _positive(kernel, "kernel_size")
    stride = kernel if stride is None else _positive(stride, "stride")
    if kernel[0] > size[0] or kernel[1] > size[1]:
        raise ValueError(f"pooling kernel {kernel} is larger than the input {size}")
    return tuple((n - k) // s + 1 for n, k, s in zip(size, kernel, stride))


def _check_ndim(a, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_bias(b, n: int, op: str) -> None:
    if b is not None and tuple(b.shape) != (n,):
        raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(b.shape)}")


def check_conv_input(x, w, b=None, stride=1, padding=0) -> tuple[int, int, int, int]:
    """Validate ``conv2d(x (N,C,H,W), w (O,C,kh,kw), b (O,))``; return the output shape."""
    _check_ndim(x, 4, "conv2d input x (N, C, H, W)")
    _check_ndim(w, 4, "conv2d weight w (O, C, kh, kw)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]}")
    _check_bias(b, w.shape[0], "conv2d")
    ho, wo = conv_output_size(x.shape[2:], w.shape[2:], stride, padding)
    return x.shape[0], w.shape[0], ho, wo


def check_conv_transpose_input(x, w, b=None, stride=1, padding=0, output_padding=0) -> tuple[int, int, int, int]:
    """Validate ``conv_transpose2d(x (N,Cin,H,W), w (Cin,Cout,kh,kw), b (Cout,))``; return the output shape."""
    _check_ndim(x, 4, "conv_transpose2d input x (N, Cin, H, W)")
    _check_ndim(w, 4, "conv_transpose2d weight w (Cin, Cout, kh, kw)")
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"conv_transpose2d: input has {x.shape[1]} channels but the weight expects {w.shape[0]}")
    _check_bias(b, w.shape[1], "conv_transpose2d")
    ho, wo = conv_transpose_output_size(x.shape[2:], w.shape[2:], stride, padding, output_padding)
    return x.shape[0], w.shape[1], ho, wo


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
