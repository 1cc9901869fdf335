"""The op table x backends: finite differences, backend agreement, coverage."""

import numpy as np
import pytest

from nbclust.backend import get_backend
from nbclust.gradcheck import TOLERANCE, cast_inputs, check_op, run_op
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


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", sorted(n for n, s in OPS.items() if s.skips_input_grad))
def test_backward_without_input_grad_skips_only_the_first_gradient(name, backend):
    spec, b = OPS[name], get_backend(backend)
    rng = np.random.default_rng(2)
    for case in spec.cases(rng):
        inputs = cast_inputs(case, np.float64)
        (out, *_), _ = run_op(b, spec, inputs, case.attrs)
        grad_out = rng.normal(size=out.shape)
        _, full = run_op(b, spec, inputs, case.attrs, grad_out)
        _, partial = run_op(b, spec, inputs, case.attrs, grad_out, input_grad=False)
        assert partial[0] is None and full[0] is not None
        for got, want in zip(partial[1:], full[1:]):
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(got, want)
