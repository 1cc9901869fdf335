"""Torch-like layers over the op table: ``Module``, layers, ``Sequential`` and initialisers."""

from nbclust.engine.nn import init
from nbclust.engine.nn.layers import (
    SELU,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    MaxUnpool2d,
    ReLU,
    Reshape,
    Sigmoid,
    Softmax,
    Tanh,
)
from nbclust.engine.nn.module import Module, Parameter, Sequential

__all__ = [
    "init", "Module", "Parameter", "Sequential",
    "Conv2d", "ConvTranspose2d", "Linear", "MaxPool2d", "MaxUnpool2d", "BatchNorm1d", "BatchNorm2d",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "SELU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Reshape",
]
