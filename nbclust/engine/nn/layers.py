"""Layers over the op table, with torch's constructor signatures and weight layouts.

Weights are stored like torch: conv ``(out, in, kh, kw)``, transposed conv
``(in, out, kh, kw)``, linear ``(out, in)``; biases start at zero.  Every
layer takes the keyword-only ``backend``, ``dtype`` and ``rng`` of
:class:`~nbclust.engine.nn.module.Module`; conv and linear layers also ``init=``
(a name from :mod:`nbclust.engine.nn.init`, default ``"xavier_uniform"``).
"""

from __future__ import annotations

import math

import numpy as np

from nbclust.engine import convshape
from nbclust.engine.nn.init import check_init_name, initialize
from nbclust.engine.nn.module import Module, as_generator
from nbclust.engine.optable import OPS


def _positive_int(v, name: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _check_channels(layer: Module, got: int, expected: int, what: str = "channels") -> None:
    if got != expected:
        raise ValueError(f"{type(layer).__name__}: input has {got} {what}, the layer expects {expected}")


class _Affine(Module):
    """Shared parts of Conv2d, ConvTranspose2d and Linear: weight, optional bias, one op."""

    op_name = ""

    def _init_params(self, shape, bias: bool, n_bias: int, init: str) -> None:
        check_init_name(init)
        if self._seed is not None:  # an int seed: this layer's own stream (kind and shape)
            self.rng = as_generator(self._seed, type(self).__name__, *shape)
        self.weight = self._add_param("weight", initialize(init, shape, self.rng))
        self.bias = self._add_param("bias", np.zeros(n_bias)) if bias else None

    def _run(self, x, **attrs):
        b = None if self.bias is None else self.bias.data
        out, ctx = OPS[self.op_name](self._backend, x, self.weight.data, b, **attrs)
        self._save(ctx, out)
        return out

    def backward(self, grad_out, input_grad=True):
        gx, gw, gb = self._saved(grad_out).backward(grad_out, input_grad=input_grad)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx


class Conv2d(_Affine):
    """2-D convolution (cross-correlation, zero padding).

    ``padding``: an int or a pair ``(ph, pw)`` (symmetric), a pair of pairs
    ``((top, bottom), (left, right))`` (asymmetric), ``"same"`` (torch's: odd kernel,
    stride 1) or ``"tf_same"`` (TensorFlow/Keras ``padding="same"`` for any kernel and
    stride, resolved per input size: ``ceil(n / s)`` outputs, the extra padding after;
    28x28, k 5, s 2 pads ``((1, 2), (1, 2))``).  See :mod:`nbclust.engine.convshape`.
    ``self.padding`` holds a pair when symmetric, else the pair of pairs, or ``"tf_same"``.
    """

    op_name = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 *, init="xavier_uniform", **kwargs):
        super().__init__(**kwargs)
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size, self.stride, self.padding = convshape.normalize_conv_args(kernel_size, stride, padding)
        self._init_params((self.out_channels, self.in_channels, *self.kernel_size), bias, self.out_channels, init)

    def forward(self, x):
        self._check_input(x, 4)
        _check_channels(self, x.shape[1], self.in_channels)
        return self._run(x, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class ConvTranspose2d(_Affine):
    """2-D transposed convolution, the adjoint of :class:`Conv2d` with the same padding in its input.

    Output size ``(n - 1) s + k - top - bottom + output_padding``: ``padding`` (an int, a
    pair ``(ph, pw)``, or ``((top, bottom), (left, right))``) is the crop of the full
    transposed output.  ``"tf_same"``: Keras' ``Conv2DTranspose(padding="same")``, output
    ``n s``, crop ``max(k - s, 0)`` with the extra row/column at the end (k 5, s 2:
    ``((1, 2), (1, 2))``); ``output_padding`` must then be 0.
    """

    op_name = "conv_transpose2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 bias=True, *, init="xavier_uniform", **kwargs):
        super().__init__(**kwargs)
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        # the op's own checks: padding forms ("same" refused), output_padding < stride, 0 with "tf_same"
        convshape.resolve_transpose_padding(padding, kernel_size, stride, output_padding)
        self.kernel_size, self.stride, self.padding = convshape.normalize_conv_args(kernel_size, stride, padding)
        self.output_padding = convshape.normalize_pair(output_padding, "output_padding")
        self._init_params((self.in_channels, self.out_channels, *self.kernel_size), bias, self.out_channels, init)

    def forward(self, x):
        self._check_input(x, 4)
        _check_channels(self, x.shape[1], self.in_channels)
        return self._run(x, stride=self.stride, padding=self.padding, output_padding=self.output_padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
                f"bias={self.bias is not None}")


class Linear(_Affine):
    """``y = x w^T + b`` for ``x`` of shape ``(N, in_features)``."""

    op_name = "linear"

    def __init__(self, in_features, out_features, bias=True, *, init="xavier_uniform", **kwargs):
        super().__init__(**kwargs)
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self._init_params((self.out_features, self.in_features), bias, self.out_features, init)

    def forward(self, x):
        self._check_input(x, 2)
        _check_channels(self, x.shape[1], self.in_features, "features")
        return self._run(x)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class MaxPool2d(Module):
    """Max pooling without padding (floor mode); ``stride`` defaults to ``kernel_size``.

    Keeps the argmax indices and input size of its last forward for a paired :class:`MaxUnpool2d`.
    """

    def __init__(self, kernel_size, stride=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.stride, _ = convshape.normalize_conv_args(
            kernel_size, kernel_size if stride is None else stride, 0)

    def forward(self, x):
        self._check_input(x, 4)
        y, ctx = OPS.max_pool2d(self._backend, x, kernel=self.kernel_size, stride=self.stride)
        self._save((ctx, tuple(x.shape[2:])), y)
        return y

    def backward(self, grad_out, input_grad=True):
        ctx, _ = self._saved(grad_out)
        return ctx.backward(grad_out, input_grad=input_grad)[0]

    def last_indices(self):
        """``(indices, (H, W))`` of the last forward, for unpooling."""
        if self._ctx is None:
            raise RuntimeError("MaxPool2d: no forward yet, so no indices to unpool with")
        ctx, size = self._ctx[0]
        return ctx.aux["indices"], size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxUnpool2d(Module):
    """Inverse of its paired :class:`MaxPool2d`: scatters ``x`` to the pool's last argmax positions.

    Backend and dtype default to the pool's.
    """

    def __init__(self, pool: MaxPool2d, **kwargs):
        if not isinstance(pool, MaxPool2d):
            raise ValueError(f"MaxUnpool2d needs a MaxPool2d to pair with, got {type(pool).__name__}")
        kwargs.setdefault("backend", pool.backend)
        kwargs.setdefault("dtype", pool.dtype)
        super().__init__(**kwargs)
        self.pool = pool

    def forward(self, x):
        self._check_input(x, 4)
        indices, size = self.pool.last_indices()
        if tuple(x.shape) != tuple(indices.shape):
            raise ValueError(
                f"MaxUnpool2d: input shape {tuple(x.shape)} differs from the pool's output shape "
                f"{tuple(indices.shape)}")
        y, ctx = OPS.max_unpool2d(self._backend, x, indices, output_size=size)
        self._save(ctx, y)
        return y

    def backward(self, grad_out, input_grad=True):
        return self._saved(grad_out).backward(grad_out, input_grad=input_grad)[0]

    def children(self) -> dict[str, Module]:
        return {}  # the pool is a reference to a layer owned elsewhere, not a part

    def _clone(self, memo: dict) -> Module:
        new = super()._clone(memo)
        new.pool = memo.get(id(self.pool), self.pool)
        return new


class _BatchNorm(Module):
    """Batch normalisation over all axes but the channel axis 1 (torch semantics).

    Training normalises with the batch mean and biased variance and updates
    ``running = (1 - momentum) running + momentum batch`` with the unbiased
    variance; eval mode normalises with the running statistics.
    """

    ndim = 0

    def __init__(self, num_features, eps=1e-5, momentum=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_features = _positive_int(num_features, "num_features")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = self._add_param("weight", np.ones(self.num_features))
        self.bias = self._add_param("bias", np.zeros(self.num_features))
        self._add_buffer("running_mean", np.zeros(self.num_features))
        self._add_buffer("running_var", np.ones(self.num_features))

    def forward(self, x):
        self._check_input(x, self.ndim)
        _check_channels(self, x.shape[1], self.num_features, "channels" if self.ndim == 4 else "features")
        if self.training and x.size // x.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}: training needs more than one value per channel, "
                             f"got input shape {tuple(x.shape)}")
        y, ctx = OPS.batch_norm(
            self._backend, x, self.weight.data, self.bias.data, self._buffers["running_mean"],
            self._buffers["running_var"], training=self.training, momentum=self.momentum, eps=self.eps)
        if self.training:
            self._buffers.update(ctx.aux)  # the new running_mean and running_var
        self._save(ctx, y)
        return y

    def backward(self, grad_out, input_grad=True):
        gx, gg, gb, _, _ = self._saved(grad_out).backward(grad_out, input_grad=input_grad)
        self.weight.grad += gg
        self.bias.grad += gb
        return gx

    @property
    def running_mean(self):
        return self._buffers["running_mean"]

    @property
    def running_var(self):
        return self._buffers["running_var"]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    """Batch norm of ``(N, C, H, W)`` inputs, per channel over ``(N, H, W)``."""

    ndim = 4


class BatchNorm1d(_BatchNorm):
    """Batch norm of ``(N, F)`` inputs, per feature over ``N``."""

    ndim = 2


class _Pointwise(Module):
    """A one-input op without parameters; ``ndim`` restricts the input rank where set."""

    op_name = ""
    ndim: int | None = None

    def _attrs(self) -> dict:
        return {}

    def forward(self, x):
        self._check_input(x, self.ndim)
        y, ctx = OPS[self.op_name](self._backend, x, **self._attrs())
        self._save(ctx, y)
        return y

    def backward(self, grad_out, input_grad=True):
        return self._saved(grad_out).backward(grad_out, input_grad=input_grad)[0]


class Sigmoid(_Pointwise):
    op_name = "sigmoid"


class Tanh(_Pointwise):
    op_name = "tanh"


class ReLU(_Pointwise):
    op_name = "relu"


class SELU(_Pointwise):
    op_name = "selu"


class LeakyReLU(_Pointwise):
    """``max(x, 0) + negative_slope * min(x, 0)``."""

    op_name = "leaky_relu"

    def __init__(self, negative_slope=0.01, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(negative_slope, (int, float)) or not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def _attrs(self) -> dict:
        return {"slope": self.negative_slope}

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softmax(_Pointwise):
    """Softmax over the last axis of an ``(N, K)`` input."""

    op_name = "softmax"
    ndim = 2


class LogSoftmax(_Pointwise):
    """Log-softmax over the last axis of an ``(N, K)`` input."""

    op_name = "log_softmax"
    ndim = 2


class Dropout(Module):
    """Inverted dropout: in training ``y = x * mask / (1 - p)``, mask drawn from the layer's ``rng``.

    The mask is drawn in NumPy and moved to the backend, so every backend sees
    the same mask for the same seed.  Identity in eval mode and for ``p = 0``.
    """

    def __init__(self, p=0.5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x):
        self._check_input(x)
        if not self.training or self.p == 0:
            self._save(None, x)
            return x
        mask = self._backend.asarray(self.rng.random(x.shape) >= self.p, self.dtype)
        y, ctx = OPS.dropout(self._backend, x, mask, p=self.p)
        self._save(ctx, y)
        return y

    def backward(self, grad_out, input_grad=True):
        ctx = self._saved(grad_out)
        if ctx is None:
            return grad_out if input_grad else None
        return ctx.backward(grad_out, input_grad=input_grad)[0]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Reshape(Module):
    """Reshape each sample to ``shape`` (the batch axis excluded; one entry may be -1)."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        ok = isinstance(shape, (tuple, list)) and all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) and (e > 0 or e == -1) for e in shape)
        if not ok or list(shape).count(-1) > 1:
            raise ValueError(f"Reshape: shape must be a tuple of positive ints with at most one -1, got {shape!r}")
        self.shape = tuple(int(e) for e in shape)

    def forward(self, x):
        self._check_input(x)
        if x.ndim < 1:
            raise ValueError(f"{type(self).__name__}: input needs a batch axis, got a 0-D array")
        y, ctx = OPS.reshape(self._backend, x, shape=(x.shape[0], *self.shape))
        self._save(ctx, y)
        return y

    def backward(self, grad_out, input_grad=True):
        return self._saved(grad_out).backward(grad_out, input_grad=input_grad)[0]

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Flatten(Reshape):
    """``(N, ...)`` to ``(N, prod(...))``."""

    def __init__(self, **kwargs):
        super().__init__((-1,), **kwargs)

    def forward(self, x):
        self._check_input(x)
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected an input with at least 2 dimensions, got shape {tuple(x.shape)}")
        return super().forward(x)

    def extra_repr(self) -> str:
        return ""
