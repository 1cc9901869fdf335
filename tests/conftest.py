import numpy as np
import pytest

from nbclust.backend import BACKENDS, cuda_available

AVAILABLE_BACKENDS = [b for b in BACKENDS if b != "cuda" or cuda_available()]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
