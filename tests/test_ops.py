"""The op table x backends: finite differences, backend agreement, coverage."""

import numpy as np
import pytest

from nbclust.backend import get_backend
from nbclust.gradcheck import TOLERANCE, check_op
from nbclust.optable import OPS

from conftest import AVAILABLE_BACKENDS, assert_matches_reference

FAST_BACKENDS = [b for b in AVAILABLE_BACKENDS if b != "reference"]


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_backend_implements_exactly_the_table(backend):
    assert get_backend(backend).op_names == set(OPS)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_gradient_matches_finite_differences(name, backend):
    assert check_op(get_backend(backend), OPS[name], np.float64) <= TOLERANCE["float64"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_fast_backend_matches_reference(name, backend, dtype):
    assert_matches_reference(get_backend(backend), name, dtype)
