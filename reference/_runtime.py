"""The reference's runtime: ``array_module``, the array module (NumPy or CuPy) of some arrays,
without importing CuPy."""

from __future__ import annotations

import sys

import numpy as np


def array_module(*arrays):
    """CuPy if any of ``arrays`` is a CuPy array, else NumPy.

    CuPy is looked up in ``sys.modules``, never imported: no CuPy array can
    exist before CuPy is imported, so NumPy users never load it.
    """
    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(*arrays)
