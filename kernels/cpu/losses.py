"""Numba losses kernels (see nbclust.optable for the calling convention)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

OPS: dict = {}
