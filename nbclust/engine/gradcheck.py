"""Central finite-difference gradient check of every op in the table.

For an op ``f`` and a fixed random projection ``R`` of its output, the scalar
``L(inputs) = sum(f(inputs) * R)`` has the gradient ``backward(R)``.  Each
differentiable input element is perturbed by ``+-h`` (``h = 1e-6`` scaled by
the element's magnitude) and ``(L(+h) - L(-h)) / 2h`` is compared with the
analytic gradient.  The error of one input is

    max_i |analytic_i - numeric_i| / max(max_i |numeric_i|, 1e-12)

(the largest deviation relative to the gradient's scale), and an op's error
is the largest over its inputs and cases.  Usage::

    python -m nbclust.gradcheck [--backend reference|cpu|cuda] [--dtype float64] [--seed N] [--op NAME]

prints one row per op and exits 1 if any error exceeds the tolerance (1e-6
in float64).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from nbclust.engine.backend import get_backend
from nbclust.engine.optable import OPS, Case, OpSpec
from nbclust.registry import BACKENDS

TOLERANCE = {"float64": 1e-6, "float32": 2e-2}


def cast_inputs(case: Case, dtype) -> tuple:
    """Real inputs of ``case`` in ``dtype``; integer inputs (indices, labels) untouched."""
    return tuple(
        a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
        for a in case.inputs
    )


def run_op(backend, spec: OpSpec, inputs: tuple, attrs: dict, grad_out=None, **backward_kw):
    """Forward (and backward with ``grad_out`` and ``backward_kw``) of ``spec`` on ``backend``:
    ``((out, *aux), grads)`` as NumPy (the auxiliary outputs in the order of ``spec.aux``)."""
    dev = tuple(None if a is None else backend.asarray(a) for a in inputs)
    out, ctx = spec(backend, *dev, **attrs)
    outs = tuple(backend.to_numpy(o) for o in (out, *ctx.aux.values()))
    if grad_out is None:
        return outs, None
    grads = ctx.backward(backend.asarray(grad_out), **backward_kw)
    return outs, tuple(None if g is None else backend.to_numpy(g) for g in grads)


def gradient_error(backend, spec: OpSpec, case: Case, dtype=np.float64, seed: int = 0) -> float:
    """Largest relative error between backward and central differences for one case.

    The projection is drawn from its own stream (``[seed, 1]``), independent of
    the stream that drew the case's inputs.
    """
    rng = np.random.default_rng([seed, 1])
    inputs = cast_inputs(case, dtype)
    (out, *_), _ = run_op(backend, spec, inputs, case.attrs)
    projection = rng.normal(size=out.shape).astype(dtype)
    _, grads = run_op(backend, spec, inputs, case.attrs, projection)

    def objective(values) -> float:
        (y, *_), _ = run_op(backend, spec, values, case.attrs)
        return float(np.sum(y.astype(np.float64) * projection))

    step = 1e-6 if np.dtype(dtype) == np.float64 else 1e-2
    worst = 0.0
    for k, name in enumerate(spec.inputs):
        if name not in spec.differentiable or inputs[k] is None:
            continue
        if grads[k] is None or grads[k].shape != inputs[k].shape:
            raise AssertionError(f"{spec.name}: gradient of {name!r} missing or misshapen")
        numeric = np.empty(inputs[k].shape)
        base = inputs[k].copy()
        for i in np.ndindex(base.shape):
            h = step * max(1.0, abs(float(base[i])))
            values = list(inputs)
            plus, minus = base.copy(), base.copy()
            plus[i] += h
            minus[i] -= h
            values[k] = plus
            f_plus = objective(values)
            values[k] = minus
            f_minus = objective(values)
            numeric[i] = (f_plus - f_minus) / (float(plus[i]) - float(minus[i]))
        scale = max(float(np.max(np.abs(numeric), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(grads[k] - numeric), initial=0.0)) / scale)
    return worst


def check_op(backend, spec: OpSpec, dtype=np.float64, seed: int = 0) -> float:
    """Worst gradient error of ``spec`` over all its cases."""
    cases = spec.cases(np.random.default_rng(seed))
    return max(gradient_error(backend, spec, case, dtype, seed + i) for i, case in enumerate(cases))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbclust.gradcheck",
        description="Check every op's backward against central finite differences.",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="reference", help="backend to check (default: reference)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="dtype (default: float64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases (default: 0)")
    parser.add_argument("--op", action="append", help="check only this op (repeatable)")
    args = parser.parse_args(argv)
    try:
        backend = get_backend(args.backend)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = args.op or sorted(OPS)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        print(f"error: unknown op {unknown[0]!r}; see the op table in nbclust.engine.optable", file=sys.stderr)
        return 2
    tol = TOLERANCE[args.dtype]
    failed = 0
    print(f"{'op':<24}{'backend':<11}{'max rel err':>13}  result")
    for name in names:
        try:
            err = check_op(backend, OPS[name], np.dtype(args.dtype), args.seed)
            ok = err <= tol
            shown = f"{err:13.2e}"
        except Exception as exc:  # report, keep checking the rest
            ok, shown = False, f"{type(exc).__name__}: {exc}"
        failed += not ok
        print(f"{name:<24}{args.backend:<11}{shown:>13}  {'ok' if ok else 'FAIL'}")
    print(f"{len(names) - failed} passed, {failed} failed (tolerance {tol:g}, {args.dtype})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
