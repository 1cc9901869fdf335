import numpy as np
import pytest

from nbclust.engine.backend import BACKENDS, cuda_available, get_backend
from nbclust.engine.gradcheck import cast_inputs, run_op
from nbclust.engine.optable import FAMILIES, OPS

AVAILABLE_BACKENDS = [b for b in BACKENDS if b != "cuda" or cuda_available()]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


AGREEMENT = {np.float32: 1e-5, np.float64: 1e-12}
"""Largest relative error allowed between a fast backend and the reference, per dtype."""


def rel_err(got, want) -> float:
    """max |got - want| relative to max |want| (the scale of the result)."""
    return float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)) / max(
        float(np.max(np.abs(want), initial=0.0)), 1e-30)


def assert_matches_reference(backend, name, dtype):
    """Forward outputs and all gradients of op ``name`` on ``backend`` (in ``dtype``) equal the
    float64 reference within :data:`AGREEMENT`, on every case of the table; dtypes preserved.
    Skipped where ``backend`` runs the reference's own code for the op (nothing to compare)."""
    if name in backend.fallbacks:
        pytest.skip(f"backend {backend.name!r} runs the reference for {name}")
    spec, ref = OPS[name], get_backend("reference")
    rng = np.random.default_rng(1)
    for case in spec.cases(rng):
        inputs64 = cast_inputs(case, np.float64)
        outs_ref, _ = run_op(ref, spec, inputs64, case.attrs)
        grad_out = rng.normal(size=outs_ref[0].shape)
        outs_ref, grads_ref = run_op(ref, spec, inputs64, case.attrs, grad_out)
        outs, grads = run_op(backend, spec, cast_inputs(case, dtype), case.attrs, grad_out.astype(dtype))
        assert outs[0].dtype == dtype, f"{name}: output dtype {outs[0].dtype}, input {np.dtype(dtype)}"
        for got, want in zip(outs, outs_ref):
            if want.dtype.kind in "iu":
                np.testing.assert_array_equal(got, want)
            else:
                assert got.dtype == dtype
                assert rel_err(got, want) <= AGREEMENT[dtype], f"{name} [{case.label}] forward"
        for k, (got, want) in enumerate(zip(grads, grads_ref)):
            assert (got is None) == (want is None), f"{name}: grad {spec.inputs[k]} presence differs"
            if want is not None:
                assert got.dtype == dtype
                assert rel_err(got, want) <= AGREEMENT[dtype], f"{name} [{case.label}] grad {spec.inputs[k]}"



def assert_no_stray_implementations(package):
    """Each ``<op>_forward`` / ``<op>_backward`` of a backend package is an op of the family of its
    module: a misspelt or misplaced one would go unused, its op silently running the reference."""
    for family in FAMILIES:
        for name in vars(getattr(package, family)):
            if not name.startswith("_") and name.endswith(("_forward", "_backward")):
                op = name.rsplit("_", 1)[0]
                assert op in OPS and OPS[op].family == family, f"{family}.{name} implements no op of family {family!r}"


def assert_declared_backend(backend):
    """``backend`` runs its own code for every op of the table but those its package declares in
    ``RUNS_REFERENCE``, and has no stray implementations."""
    declared = backend.package.RUNS_REFERENCE
    assert backend.fallbacks == declared, (
        f"{backend.name} runs the reference for {sorted(backend.fallbacks - declared)} without declaring it, "
        f"or declares {sorted(declared - backend.fallbacks)}, which it implements")
    assert_no_stray_implementations(backend.package)
