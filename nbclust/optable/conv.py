"""Table entries: convolution, transposed convolution, pooling, dense."""

from __future__ import annotations

SPECS: list = []
