"""Weight initialisers with torch's fan definitions.

For a weight of shape ``(d0, d1, *k)`` (linear ``(out, in)``, conv
``(out, in, kh, kw)``, transposed conv ``(in, out, kh, kw)``) torch defines
``receptive = prod(k)``, ``fan_in = d1 * receptive`` and ``fan_out = d0 * receptive``
(so a transposed conv's fan_in counts its *output* channels, as in torch).

- ``xavier_uniform``: U(-a, a), a = sqrt(6 / (fan_in + fan_out))   (Glorot & Bengio 2010)
- ``xavier_normal``:  N(0, 2 / (fan_in + fan_out))
- ``he_normal``:      N(0, 2 / fan_in)   (torch ``kaiming_normal_``, mode fan_in, relu)
- ``lecun_normal``:   N(0, 1 / fan_in)   (plain normal, not Keras' truncated one)
- ``zeros``
"""

from __future__ import annotations

import math

import numpy as np


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """torch's ``_calculate_fan_in_and_fan_out`` for a weight of ``shape``."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def xavier_uniform(shape, rng: np.random.Generator) -> np.ndarray:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape, rng: np.random.Generator) -> np.ndarray:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_normal(shape, rng: np.random.Generator) -> np.ndarray:
    fan_in, _ = fan_in_and_fan_out(shape)
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def lecun_normal(shape, rng: np.random.Generator) -> np.ndarray:
    fan_in, _ = fan_in_and_fan_out(shape)
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), size=shape)


def zeros(shape, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(shape)


INITIALIZERS = {
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "zeros": zeros,
}


def check_init_name(name) -> str:
    if name not in INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; expected one of {', '.join(INITIALIZERS)}")
    return name


def initialize(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float64 array of ``shape`` drawn by the initialiser called ``name``."""
    return INITIALIZERS[check_init_name(name)](tuple(shape), rng)
