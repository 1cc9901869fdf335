"""The op table x backends: finite differences, backend agreement, coverage."""

import numpy as np
import pytest

from nbclust.backend import get_backend
from nbclust.gradcheck import TOLERANCE, cast_inputs, check_op, run_op
from nbclust.optable import OPS

from conftest import AVAILABLE_BACKENDS

FAST_BACKENDS = [b for b in AVAILABLE_BACKENDS if b != "reference"]
AGREEMENT = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_backend_implements_exactly_the_table(backend):
    assert get_backend(backend).op_names == set(OPS)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_gradient_matches_finite_differences(name, backend):
    assert check_op(get_backend(backend), OPS[name], np.float64) <= TOLERANCE["float64"]


def _rel_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0)) / max(
        float(np.max(np.abs(b), initial=0.0)), 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_fast_backend_matches_reference(name, backend, dtype):
    spec, ref, fast = OPS[name], get_backend("reference"), get_backend(backend)
    rng = np.random.default_rng(1)
    for case in spec.cases(rng):
        inputs64 = cast_inputs(case, np.float64)
        outs_ref, _ = run_op(ref, spec, inputs64, case.attrs)
        grad_out = rng.normal(size=outs_ref[0].shape)
        outs_ref, grads_ref = run_op(ref, spec, inputs64, case.attrs, grad_out)
        outs, grads = run_op(fast, spec, cast_inputs(case, dtype), case.attrs, grad_out.astype(dtype))
        assert outs[0].dtype == dtype, f"{name}: output dtype {outs[0].dtype}, input {np.dtype(dtype)}"
        for got, want in zip(outs, outs_ref):
            if want.dtype.kind in "iu":
                np.testing.assert_array_equal(got, want)
            else:
                assert _rel_err(got, want) <= AGREEMENT[dtype], f"{name} [{case.label}] forward"
        for k, (got, want) in enumerate(zip(grads, grads_ref)):
            assert (got is None) == (want is None), f"{name}: grad {spec.inputs[k]} presence differs"
            if want is not None:
                assert got.dtype == dtype
                assert _rel_err(got, want) <= AGREEMENT[dtype], f"{name} [{case.label}] grad {spec.inputs[k]}"
