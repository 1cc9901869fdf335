"""The op table: every op and loss of the engine, in one registry.

Calling convention, identical on every backend (``reference``, ``cpu``, ``cuda``)::

    out, ctx = forward(*inputs, **attrs)
    grads = backward(grad_out, ctx)

- ``inputs`` are arrays (or ``None`` for an absent optional input such as a
  bias), in the order of :attr:`OpSpec.inputs`.  ``attrs`` are plain Python
  values (ints, tuples, floats, strings, bools).
- ``out`` is the op's output array.  Ops with auxiliary outputs (the argmax
  indices of ``max_pool2d``, the new running statistics of ``batch_norm``)
  return the tuple ``(out, *aux)`` instead, named by :attr:`OpSpec.aux`; only
  the first element is differentiable.  Losses return a 0-d array.
- ``ctx`` is opaque: whatever the backend's backward needs.
- ``grads`` is a tuple with one entry per input: the gradient of the scalar
  objective w.r.t. that input, or ``None`` for inputs not in
  :attr:`OpSpec.differentiable` (and for absent optional inputs).
- Ops flagged :attr:`OpSpec.skips_input_grad` (the layers whose input is
  often the data: conv2d, conv_transpose2d, linear) also take
  ``backward(grad_out, ctx, input_grad=False)``, which returns ``None`` for
  the first input and skips computing it, as torch does for an input that
  does not require grad.  The other gradients are the same either way.

The gradient checker (:mod:`nbclust.gradcheck`), the test suite and the layers
enumerate :data:`OPS`, so an op in this table cannot escape testing, and an op
missing from a backend is a test failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Case:
    """One small problem for checking an op: inputs (NumPy, float64 where real) and attrs."""

    inputs: tuple
    attrs: dict = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class OpSpec:
    """An op's signature and how to check it.

    ``cases(rng)`` returns small random :class:`Case` s in float64 that exercise
    the op's hard corners (stride > 1, padding, odd sizes, batch 1, ...), kept
    away from kinks (ties in a max, zeros of a ReLU) so that central finite
    differences are exact to ~1e-9.  ``torch(*inputs, **attrs)`` computes the
    same output with torch tensors (``None`` where torch has no equivalent);
    inputs listed in ``differentiable`` arrive with ``requires_grad=True``.
    """

    name: str
    inputs: tuple[str, ...]
    differentiable: tuple[str, ...]
    cases: Callable[[np.random.Generator], list[Case]]
    aux: tuple[str, ...] = ()
    torch: Callable[..., Any] | None = None
    doc: str = ""
    skips_input_grad: bool = False

    def __post_init__(self):
        unknown = set(self.differentiable) - set(self.inputs)
        if unknown:
            raise ValueError(f"{self.name}: differentiable inputs {unknown} not among inputs")

    def is_differentiable(self, index: int) -> bool:
        return self.inputs[index] in self.differentiable


def _collect() -> dict[str, OpSpec]:
    from nbclust.optable import conv, losses, pointwise

    table: dict[str, OpSpec] = {}
    for module in (conv, pointwise, losses):
        for spec in module.SPECS:
            if spec.name in table:
                raise ValueError(f"op {spec.name!r} registered twice")
            table[spec.name] = spec
    return table


OPS: dict[str, OpSpec] = _collect()
