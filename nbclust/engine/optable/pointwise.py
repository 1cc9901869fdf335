"""Table entries: activations, softmax, batch norm, dropout, and their argument checks
(run once per call by the op table, for every backend)."""

from __future__ import annotations

import numpy as np

from nbclust.engine.optable import Case, OpSpec

FAMILY = "pointwise"

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# --- checks -----------------------------------------------------------------

_REAL = (np.dtype(np.float32), np.dtype(np.float64))


def _check_real(op: str, x) -> None:
    if x.dtype not in _REAL:
        raise ValueError(f"{op} expects float32 or float64 input, got {x.dtype}")


def _real_input(op: str):
    """The check of an elementwise op: a float32 or float64 input (any attributes)."""
    def check(x, **attrs) -> None:
        _check_real(op, x)
    return check


def _softmax_input(op: str):
    def check(x) -> None:
        _check_real(op, x)
        if x.ndim != 2:
            raise ValueError(f"{op} expects a 2-D (N, K) input, got shape {tuple(x.shape)}")
    return check


def _check_dropout(x, mask, p) -> None:
    _check_real("dropout", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must lie in [0, 1), got {p}")
    if tuple(mask.shape) != tuple(x.shape):
        raise ValueError(f"dropout mask shape {tuple(mask.shape)} differs from input shape {tuple(x.shape)}")


def _check_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps) -> None:
    _check_real("batch_norm", x)
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm expects a 2-D (N, F) or 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if tuple(a.shape) != (c,):
            raise ValueError(f"batch_norm {name} has shape {tuple(a.shape)}, expected ({c},) for input shape {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive, got {eps}")
    if training and (x.size // c if c else 0) < 2:
        raise ValueError(f"batch_norm in training mode needs more than 1 value per channel, got input shape {tuple(x.shape)}")


# --- cases ------------------------------------------------------------------

def _away_from_zero(rng: np.random.Generator, shape, scale=1.0) -> np.ndarray:
    """Normal values pushed out of (-0.05, 0.05), clear of the kink at 0."""
    z = rng.normal(scale=scale, size=shape)
    return np.sign(z) * (0.05 + np.abs(z))


def _smooth_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((rng.normal(size=(3, 2, 5, 4)),), label="4-D"),
        Case((rng.normal(scale=3.0, size=(1, 7)),), label="batch 1, wide range"),
    ]


def _kinked_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((_away_from_zero(rng, (3, 2, 5, 4)),), label="4-D"),
        Case((_away_from_zero(rng, (1, 7), scale=3.0),), label="batch 1, wide range"),
    ]


def _leaky_relu_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((_away_from_zero(rng, (3, 2, 5, 4)),), {"slope": 0.01}, label="4-D, slope 0.01"),
        Case((_away_from_zero(rng, (2, 9), scale=3.0),), {"slope": 0.2}, label="2-D, slope 0.2"),
    ]


def _softmax_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((rng.normal(size=(5, 4)),), label="5x4"),
        Case((rng.normal(scale=3.0, size=(1, 7)),), label="batch 1, wide range"),
        Case((rng.normal(size=(3, 2)) + 50.0,), label="large offset"),
    ]


def _batch_norm_case(rng, shape, training, momentum, eps, label) -> Case:
    c = shape[1]
    gamma, beta = rng.normal(loc=1.0, scale=0.5, size=c), rng.normal(size=c)
    running_mean, running_var = rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)
    # x drawn last: gradcheck's projection for case 0 replays the case seed's stream, and a
    # projection affine in x per channel has a (near) zero training-mode gradient.
    x = rng.normal(loc=0.5, scale=2.0, size=shape)
    return Case((x, gamma, beta, running_mean, running_var),
                {"training": training, "momentum": momentum, "eps": eps}, label=label)


def _batch_norm_cases(rng: np.random.Generator) -> list[Case]:
    return [
        _batch_norm_case(rng, (3, 2, 4, 5), True, 0.1, 1e-5, "4-D training"),
        _batch_norm_case(rng, (2, 3, 3, 2), False, 0.1, 1e-5, "4-D eval"),
        _batch_norm_case(rng, (6, 3), True, 0.3, 1e-3, "2-D training"),
        # with 2 values per channel xh = +-1 whatever x is, so the x-gradient is O(eps):
        # a large eps keeps it measurable (in float32 too)
        _batch_norm_case(rng, (2, 4), True, 0.1, 0.5, "2-D training, batch 2, large eps"),
        _batch_norm_case(rng, (5, 3), False, 0.1, 1e-5, "2-D eval"),
    ]


def _dropout_cases(rng: np.random.Generator) -> list[Case]:
    def case(shape, p, label):
        mask = (rng.random(shape) >= p).astype(np.float64)
        return Case((rng.normal(size=shape), mask), {"p": p}, label=label)

    return [case((4, 6), 0.5, "2-D, p 0.5"), case((2, 3, 4, 4), 0.1, "4-D, p 0.1"), case((1, 5), 0.0, "p 0")]


# --- torch equivalents ------------------------------------------------------

def _torch_sigmoid(x):
    import torch

    return torch.sigmoid(x)


def _torch_tanh(x):
    import torch

    return torch.tanh(x)


def _torch_relu(x):
    import torch

    return torch.relu(x)


def _torch_leaky_relu(x, slope=0.01):
    import torch.nn.functional as F

    return F.leaky_relu(x, negative_slope=slope)


def _torch_selu(x):
    import torch.nn.functional as F

    return F.selu(x)


def _torch_softmax(x):
    import torch

    return torch.softmax(x, dim=-1)


def _torch_log_softmax(x):
    import torch

    return torch.log_softmax(x, dim=-1)


def _torch_batch_norm(x, gamma, beta, running_mean, running_var, training=False, momentum=0.1, eps=1e-5):
    import torch.nn.functional as F

    rm, rv = running_mean.clone(), running_var.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=training, momentum=momentum, eps=eps)
    return y, rm, rv


def _torch_dropout(x, mask, p=0.5):
    return x * mask / (1.0 - p)


SPECS = [
    OpSpec(
        "sigmoid", inputs=("x",), differentiable=("x",), cases=_smooth_cases, check=_real_input("sigmoid"),
        torch=_torch_sigmoid, doc="y = 1 / (1 + exp(-x)), computed without overflow",
    ),
    OpSpec(
        "tanh", inputs=("x",), differentiable=("x",), cases=_smooth_cases, check=_real_input("tanh"),
        torch=_torch_tanh, doc="y = tanh(x); dy/dx = 1 - y^2",
    ),
    OpSpec(
        "relu", inputs=("x",), differentiable=("x",), cases=_kinked_cases, check=_real_input("relu"),
        torch=_torch_relu, doc="y = max(x, 0); gradient 0 at x = 0 (as torch)",
    ),
    OpSpec(
        "leaky_relu", inputs=("x",), differentiable=("x",), cases=_leaky_relu_cases, attrs={"slope": 0.01},
        check=_real_input("leaky_relu"), torch=_torch_leaky_relu,
        doc="y = x for x > 0, slope * x otherwise (attr slope; the layer's default is 0.01)",
    ),
    OpSpec(
        "selu", inputs=("x",), differentiable=("x",), cases=_kinked_cases, check=_real_input("selu"),
        torch=_torch_selu,
        doc="y = scale * (x if x > 0 else alpha * (exp(x) - 1)) with torch's alpha, scale "
            "(SELU_ALPHA, SELU_SCALE); dy/dx = scale * alpha * exp(x) = y + scale * alpha for x <= 0",
    ),
    OpSpec(
        "softmax", inputs=("x",), differentiable=("x",), cases=_softmax_cases, check=_softmax_input("softmax"),
        torch=_torch_softmax,
        doc="row softmax of a 2-D (N, K) input, the row max subtracted first; "
            "dx = y * (g - sum_k g_k y_k)",
    ),
    OpSpec(
        "log_softmax", inputs=("x",), differentiable=("x",), cases=_softmax_cases,
        check=_softmax_input("log_softmax"), torch=_torch_log_softmax,
        doc="y = x - max - log sum exp(x - max) over the last axis of a 2-D (N, K) input; "
            "dx = g - softmax(x) * sum_k g_k",
    ),
    OpSpec(
        "batch_norm", inputs=("x", "gamma", "beta", "running_mean", "running_var"),
        differentiable=("x", "gamma", "beta"), aux=("running_mean", "running_var"),
        cases=_batch_norm_cases, attrs={"training": False, "momentum": 0.1, "eps": 1e-5}, check=_check_batch_norm,
        torch=_torch_batch_norm,
        doc="Per channel (axis 1) over (N, H, W) for 4-D x, per feature over N for 2-D x: "
            "y = gamma * (x - m) / sqrt(v + eps) + beta.  attrs training, momentum, eps.  "
            "Training: m, v are the batch mean and biased variance; returns the new running "
            "statistics (1 - momentum) * old + momentum * stat, with the UNBIASED batch variance "
            "(as torch).  Eval: m, v are the running statistics, returned unchanged (copies).  "
            "Backward in training, with xh = (x - m) / s, s = sqrt(v + eps), n values per channel: "
            "dx = gamma / s * (g - mean(g) - xh * mean(g * xh)); in eval dx = gamma / s * g; "
            "dgamma = sum(g * xh), dbeta = sum(g).",
    ),
    OpSpec(
        "dropout", inputs=("x", "mask"), differentiable=("x",), cases=_dropout_cases, attrs={"p": 0.5},
        check=_check_dropout, torch=_torch_dropout,
        doc="y = x * mask / (1 - p) with a 0/1 mask of x's shape drawn by the layer's seeded "
            "Generator (the layer skips the op in eval mode).  Torch's RNG cannot be matched, so "
            "the torch equivalent is the same formula x * mask / (1 - p), not F.dropout.",
    ),
]
