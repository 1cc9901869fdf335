"""Table entries: losses and the clustering terms of the seed papers."""

from __future__ import annotations

SPECS: list = []
