"""Reference conv ops (see nbclust.optable for the calling convention)."""

from __future__ import annotations

import numpy as np

OPS: dict = {}
