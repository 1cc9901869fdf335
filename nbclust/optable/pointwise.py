"""Table entries: activations, softmax, batch norm, dropout, reshapes."""

from __future__ import annotations

import numpy as np

from nbclust.optable import Case, OpSpec


def _sigmoid_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case((rng.normal(size=(3, 2, 5, 4)),), label="4-D"),
        Case((rng.normal(scale=3.0, size=(1, 7)),), label="batch 1, wide range"),
    ]


def _torch_sigmoid(x):
    import torch

    return torch.sigmoid(x)


SPECS = [
    OpSpec(
        "sigmoid", inputs=("x",), differentiable=("x",), cases=_sigmoid_cases,
        torch=_torch_sigmoid, doc="y = 1 / (1 + exp(-x)), computed without overflow",
    ),
]
