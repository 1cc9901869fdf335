"""Every bad argument to an nbclust.engine.nn layer raises a one-line ValueError naming the problem."""

import numpy as np
import pytest

from nbclust.engine import nn

KW = dict(backend="reference", dtype=np.float64)


def x(*shape, dtype=np.float64):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


CONSTRUCTION = [
    (lambda: nn.Conv2d(1, 2, 3, backend="gpu"), "unknown backend 'gpu'"),
    (lambda: nn.Conv2d(1, 2, 3, dtype=np.int32), "dtype must be float32 or float64"),
    (lambda: nn.Conv2d(1, 2, 3, rng="seed"), "rng must be"),
    (lambda: nn.Conv2d(0, 2, 3), "in_channels must be a positive int"),
    (lambda: nn.Conv2d(1, 2, 3, padding=-1), "padding must be non-negative"),
    (lambda: nn.Conv2d(1, 2, 3, stride=0), "stride must be positive"),
    (lambda: nn.Conv2d(1, 2, 4, padding="same"), "'same' needs an odd kernel_size"),
    (lambda: nn.Conv2d(1, 2, 3, stride=2, padding="same"), "'same' needs stride 1"),
    (lambda: nn.Conv2d(1, 2, 3, padding="valid"), "padding must be"),
    (lambda: nn.Conv2d(1, 2, 3, init="glorot"), "unknown init 'glorot'"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, padding=-2), "padding must be non-negative"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, stride=-1), "stride must be positive"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, stride=2, output_padding=2), "smaller than stride"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, padding="same"), "int or a pair"),
    (lambda: nn.Linear(3, 0), "out_features must be a positive int"),
    (lambda: nn.MaxPool2d(2, stride=0), "stride must be positive"),
    (lambda: nn.MaxPool2d(0), "kernel_size must be positive"),
    (lambda: nn.MaxUnpool2d(nn.ReLU()), "needs a MaxPool2d"),
    (lambda: nn.BatchNorm2d(3, momentum=1.5), r"momentum must be in \[0, 1\]"),
    (lambda: nn.BatchNorm2d(3, eps=0), "eps must be a positive number"),
    (lambda: nn.Dropout(-0.1), r"p must be in \[0, 1\)"),
    (lambda: nn.Dropout(1.0), r"p must be in \[0, 1\)"),
    (lambda: nn.Dropout(1.5), r"p must be in \[0, 1\)"),
    (lambda: nn.LeakyReLU(float("nan")), "negative_slope must be a finite number"),
    (lambda: nn.Reshape((2, -1, -1)), "at most one -1"),
    (lambda: nn.Reshape((2, 0)), "positive ints"),
    (lambda: nn.Sequential(), "at least one layer"),
    (lambda: nn.Sequential(nn.ReLU(), "tanh"), "layer 1 is a str"),
    (lambda: nn.Sequential(nn.ReLU(dtype=np.float32), nn.Tanh(dtype=np.float64)), "layer 1 has backend"),
]


@pytest.mark.parametrize("make,match", CONSTRUCTION)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


FORWARD = [
    (lambda: nn.Conv2d(1, 2, 3, **KW), x(1, 5, 5), "expected a 4-D input"),
    (lambda: nn.Conv2d(1, 2, 3, **KW), x(1, 2, 5, 5), "input has 2 channels, the layer expects 1"),
    (lambda: nn.Conv2d(1, 2, 5, **KW), x(1, 1, 3, 3), "larger than the padded input"),
    (lambda: nn.Conv2d(1, 2, 5, padding=1, **KW), x(1, 1, 2, 6), "larger than the padded input"),
    (lambda: nn.Conv2d(1, 2, 3, **KW), x(1, 1, 5, 5, dtype=np.float32),
     "input dtype float32 differs from the layer dtype float64"),
    (lambda: nn.Conv2d(1, 2, 3, **KW), [[[[1.0]]]], "expected an array of backend 'reference'"),
    (lambda: nn.ConvTranspose2d(2, 1, 3, **KW), x(1, 3, 4, 4), "input has 3 channels, the layer expects 2"),
    (lambda: nn.ConvTranspose2d(2, 1, 3, **KW), x(3, 4, 4), "expected a 4-D input"),
    (lambda: nn.ConvTranspose2d(2, 1, 1, padding=2, **KW), x(1, 2, 2, 2), "empty transposed-convolution output"),
    (lambda: nn.Linear(4, 2, **KW), x(3, 5), "input has 5 features, the layer expects 4"),
    (lambda: nn.Linear(4, 2, **KW), x(3, 4, 1), "expected a 2-D input"),
    (lambda: nn.MaxPool2d(4, **KW), x(1, 1, 3, 5), "larger than the input"),
    (lambda: nn.MaxPool2d(2, **KW), x(1, 4, 4), "expected a 4-D input"),
    (lambda: nn.BatchNorm2d(3, **KW), x(2, 3), "expected a 4-D input"),
    (lambda: nn.BatchNorm2d(3, **KW), x(2, 4, 2, 2), "input has 4 channels, the layer expects 3"),
    (lambda: nn.BatchNorm1d(3, **KW), x(2, 3, 1, 1), "expected a 2-D input"),
    (lambda: nn.BatchNorm1d(3, **KW), x(1, 3), "more than one value per channel"),
    (lambda: nn.Softmax(**KW), x(2, 3, 4), "expected a 2-D input"),
    (lambda: nn.Sigmoid(**KW), x(2, 3, dtype=np.float32), "input dtype float32 differs"),
    (lambda: nn.Flatten(**KW), x(3), "at least 2 dimensions"),
    (lambda: nn.Reshape((4, 4), **KW), x(2, 3, 5), "cannot reshape"),
    (lambda: nn.Dropout(0.5, **KW), x(2, 3, dtype=np.float32), "input dtype float32 differs"),
]


@pytest.mark.parametrize("make,inp,match", FORWARD)
def test_bad_inputs(make, inp, match):
    layer = make()
    with pytest.raises(ValueError, match=match) as info:
        layer(inp)
    assert "\n" not in str(info.value)


def test_unpool_checks_its_pool():
    pool = nn.MaxPool2d(2, **KW)
    unpool = nn.MaxUnpool2d(pool)
    assert unpool.backend == "reference" and unpool.dtype == np.float64
    with pytest.raises(RuntimeError, match="no forward yet"):
        unpool(x(1, 1, 2, 2))
    pool(x(1, 1, 4, 4))
    with pytest.raises(ValueError, match="differs from the pool's output shape"):
        unpool(x(1, 1, 3, 2))


def test_backward_misuse():
    lin = nn.Linear(3, 2, **KW)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        lin.backward(x(4, 2))
    lin(x(4, 3))
    with pytest.raises(ValueError, match=r"grad_out shape \(4, 3\) differs from the output shape \(4, 2\)"):
        lin.backward(x(4, 3))
    with pytest.raises(ValueError, match="grad_out dtype float32 differs from the layer dtype float64"):
        lin.backward(x(4, 2, dtype=np.float32))


def test_unknown_backend_on_to():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        nn.ReLU(**KW).to("tpu")
