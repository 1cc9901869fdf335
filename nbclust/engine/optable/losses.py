"""Table entries: the generic losses (mse, bce, bce_with_logits, kl_div, soft_cross_entropy,
frobenius), and the argument checks they share with the clustering terms (:mod:`.clustering`).

Every entry returns a 0-d array (the inputs' dtype).  The checks run once per call in the op
table, for every backend, so every backend rejects the same inputs with the same message.
"""

from __future__ import annotations

import numpy as np

from nbclust.engine.optable import Case, OpSpec

FAMILY = "losses"

# ---------------------------------------------------------------- argument checks


def check_same_shape(op: str, a, b, names: str) -> None:
    if a.shape != b.shape:
        first, second = names.split(",")
        raise ValueError(f"{op}: {first} has shape {a.shape} but {second} has shape {b.shape}")


def check_nonempty(op: str, a, name: str) -> None:
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"{op}: {name} must be a non-empty array with a batch axis, got shape {a.shape}")


def check_matrix(op: str, a, name: str) -> None:
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{op}: {name} must be a non-empty 2-D array, got shape {a.shape}")


def check_eps(op: str, eps) -> None:
    if not 0 < eps < 0.5:
        raise ValueError(f"{op}: eps must lie in (0, 0.5), got {eps}")



def check_pair(op: str, first: str, second: str, empty_ok: bool = False):
    """The check of a loss of two same-shape arrays (named ``first``, ``second``), non-empty unless ``empty_ok``."""
    names = f"{first},{second}"

    def check(a, b, **attrs) -> None:
        check_same_shape(op, a, b, names)
        if not empty_ok and a.size == 0:
            raise ValueError(f"{op}: {first} is empty")
    return check


_check_bce_pair = check_pair("bce", "pred", "target")


def _check_bce(pred, target, eps) -> None:
    _check_bce_pair(pred, target)
    check_eps("bce", eps)


def _check_kl_div(target, pred) -> None:
    check_same_shape("kl_div", target, pred, "target,pred")
    check_nonempty("kl_div", target, "target")


def _check_soft_cross_entropy(logits, target) -> None:
    check_matrix("soft_cross_entropy", logits, "logits")
    check_same_shape("soft_cross_entropy", logits, target, "logits,target")


# ---------------------------------------------------------------- cases


def random_rows(rng, n, k, power=1.0):
    """Random positive rows summing to 1."""
    p = rng.uniform(0.1, 1.0, size=(n, k)) ** power
    return p / p.sum(axis=1, keepdims=True)


def _mse_cases(rng):
    return [
        Case((rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4))), label="3-D"),
        Case((rng.normal(size=(1, 5)), rng.normal(size=(1, 5))), label="batch 1"),
    ]


def _bce_cases(rng):
    return [
        Case((rng.uniform(0.05, 0.95, size=(4, 6)), rng.uniform(0, 1, size=(4, 6))), label="soft targets"),
        Case((rng.uniform(0.05, 0.95, size=(2, 3, 3)), rng.integers(0, 2, size=(2, 3, 3)).astype(float)),
             label="binary targets"),
        Case((np.array([[0.01, 0.5, 0.99], [0.3, 0.02, 0.97]]), rng.uniform(0, 1, size=(2, 3))),
             attrs={"eps": 0.05}, label="clamp active"),
    ]


def _bce_logits_cases(rng):
    """Moderate logits, then saturated ones (|a| in [30, 50]): sigmoid(a) is within 1e-7 of 0
    or 1 there (from |a| ~ 16.1), so ``bce`` of sigmoid(a) is clamped and has a zero gradient,
    while d/da = sigmoid(a) - t stays ~1 wherever the target disagrees with the saturated side."""
    sign = np.where(rng.uniform(size=(3, 4)) < 0.5, -1.0, 1.0)
    saturated = sign * rng.uniform(30, 50, size=(3, 4))
    target = rng.uniform(0, 1, size=(3, 4))
    target[0, :2] = (saturated[0, :2] > 0).astype(float)  # agreeing hard targets: gradient ~e^-|a|
    target[1, :2] = (saturated[1, :2] < 0).astype(float)  # disagreeing hard targets: gradient +-1
    return [
        Case((rng.normal(scale=3.0, size=(4, 6)), rng.uniform(0, 1, size=(4, 6))), label="soft targets"),
        Case((rng.normal(scale=3.0, size=(2, 3, 3)), rng.integers(0, 2, size=(2, 3, 3)).astype(float)),
             label="binary targets"),
        Case((saturated, target), label="saturated logits"),
    ]


def _kl_cases(rng):
    t = random_rows(rng, 4, 5)
    t[1, 2] = 0.0
    t /= t.sum(axis=1, keepdims=True)
    return [
        Case((t, random_rows(rng, 4, 5, power=0.3)), label="with a zero target"),
        Case((random_rows(rng, 1, 3), random_rows(rng, 1, 3)), label="batch 1"),
    ]


def _soft_ce_cases(rng):
    return [
        Case((rng.normal(scale=2.0, size=(5, 4)), random_rows(rng, 5, 4)), label="5x4"),
        Case((rng.normal(size=(1, 3)), random_rows(rng, 1, 3, power=3)), label="batch 1"),
    ]


def _frobenius_cases(rng):
    return [Case((rng.normal(size=(4, 2, 3, 3)),), label="filter bank")]



# ---------------------------------------------------------------- torch equivalents


def _torch_mse(pred, target):
    import torch.nn.functional as F

    return F.mse_loss(pred, target)


def _torch_bce(pred, target, eps=1e-7):
    import torch.nn.functional as F

    return F.binary_cross_entropy(pred.clamp(eps, 1 - eps), target)


def _torch_bce_with_logits(logits, target):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, target)


def _torch_kl(target, pred):
    import torch.nn.functional as F

    return F.kl_div(pred.log(), target, reduction="batchmean")


def _torch_soft_ce(logits, target):
    import torch.nn.functional as F

    return F.cross_entropy(logits, target)


def _torch_frobenius(t):
    return (t**2).sum()



# ---------------------------------------------------------------- the table

SPECS = [
    OpSpec(
        "mse", inputs=("pred", "target"), differentiable=("pred", "target"), cases=_mse_cases,
        check=check_pair("mse", "pred", "target"), torch=_torch_mse,
        doc="mean over all elements of (pred - target)^2; DEPICT's per-layer reconstruction loss "
            "(1/N) sum_i |z_i|^-1 ||z_i - zhat_i||^2 normalised by the layer size is exactly this mean",
    ),
    OpSpec(
        "bce", inputs=("pred", "target"), differentiable=("pred",), cases=_bce_cases, attrs={"eps": 1e-7},
        check=_check_bce, torch=_torch_bce,
        doc="mean of -(t log p + (1-t) log(1-p)) with p clamped to [eps, 1-eps] (eps=1e-7); "
            "d/dp = (p - t) / (p (1 - p)) / n inside the clamp, 0 where the clamp is active",
    ),
    OpSpec(
        "bce_with_logits", inputs=("logits", "target"), differentiable=("logits",),
        cases=_bce_logits_cases, check=check_pair("bce_with_logits", "logits", "target"),
        torch=_torch_bce_with_logits,
        doc="bce of sigmoid(logits) fused and unclamped: mean of max(a,0) - a t + log1p(exp(-|a|)), "
            "a = logits; d/da = (sigmoid(a) - t) / n, nonzero where sigmoid(a) saturates (Caffe's "
            "SigmoidCrossEntropyLoss, torch's binary_cross_entropy_with_logits); target constant as in bce",
    ),
    OpSpec(
        "kl_div", inputs=("target", "pred"), differentiable=("pred",), cases=_kl_cases, check=_check_kl_div,
        torch=_torch_kl,
        doc="KL(target||pred) = (1/N) sum t log(t/p), N = first axis (batchmean), 0 log 0 = 0; "
            "d/dp = -t / (N p)",
    ),
    OpSpec(
        "soft_cross_entropy", inputs=("logits", "target"), differentiable=("logits",),
        cases=_soft_ce_cases, check=_check_soft_cross_entropy, torch=_torch_soft_ce,
        doc="-(1/N) sum_ik q_ik log_softmax(logits)_ik for (N, K) logits; "
            "d/dlogits_ik = (softmax_ik sum_k' q_ik' - q_ik) / N",
    ),
    OpSpec(
        "frobenius", inputs=("t",), differentiable=("t",), cases=_frobenius_cases,
        torch=_torch_frobenius, doc="DCTL eq 5 filter penalty: ||t||_F^2",
    ),
]
