"""The array module of the GPU backend (CuPy), in one place."""

import cupy as xp

__all__ = ["xp"]
