"""The op table: every op and loss of the engine, and the one place through which each is called.

Calling form, the same for layers, methods and tests, on every backend::

    out, ctx = OPS.conv2d(backend, x, w, b, stride=2, padding="tf_same")
    gx, gw, gb = ctx.backward(grad_out, input_grad=False)
    loss, ctx = OPS.mse(backend, pred, target)   # a loss: a 0-d array ...
    g_pred, g_target = ctx.backward()            # ... whose grad_out defaults to 1

A call goes through its :class:`OpSpec`, which

- completes the attributes with the spec's defaults (:attr:`OpSpec.attrs`; an unknown or
  missing one is a ``ValueError``) and validates inputs and attributes *once*, for every
  backend (:attr:`OpSpec.check`, which may also return them in normal form, e.g. a
  convolution's padding as ``((top, bottom), (left, right))``);
- hands them to the backend's implementation, ``forward(*inputs, **attrs) -> (out, saved)``;
- returns the differentiable output ``out`` alone: auxiliary outputs (the argmax indices of
  ``max_pool2d``, the new running statistics of ``batch_norm``, named by :attr:`OpSpec.aux`)
  are in ``ctx.aux``; and
- ``ctx.backward(grad_out, input_grad=True)`` returns one gradient per input (``None`` for
  inputs not in :attr:`OpSpec.differentiable` and for absent optional inputs).  With
  ``input_grad=False`` the first input's gradient is ``None`` and, where the op allows it
  (:attr:`OpSpec.skips_input_grad`: conv2d, conv_transpose2d, linear) or it is the only
  gradient, is not computed, as torch does for an input that does not require grad.

Backends (:mod:`nbclust.engine.backend`) implement an op by defining ``<op>_forward`` and
``<op>_backward`` in their module of the op's family (``conv``, ``pointwise`` or ``losses``,
:attr:`OpSpec.family`); an op a backend does not implement runs the reference's.  The
table is collected from ``conv`` (convolution, pooling, dense, reshape), ``pointwise``
(activations, softmax, batch norm, dropout), ``losses`` (generic losses) and
``clustering`` (the seed papers' clustering terms).  The gradient checker
(:mod:`nbclust.engine.gradcheck`) and the tests enumerate :data:`OPS`, so an op in this table
cannot escape testing on any backend.  Adding an op is its spec in one of those modules
plus its reference implementation (``<op>_forward`` / ``<op>_backward`` in
``nbclust.reference.<family>``); compiled ones are optional.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

FAMILIES = ("conv", "pointwise", "losses")
"""The modules every backend has for its op implementations."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""The default of an attribute that every call must give."""


@dataclass(frozen=True)
class Case:
    """One small problem for checking an op: inputs (NumPy, float64 where real) and attrs."""

    inputs: tuple
    attrs: dict = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True, eq=False)
class OpSpec:
    """An op's signature, its validation, how to check it, and its dispatch (calling it runs it).

    ``attrs`` maps each attribute to its default (:data:`REQUIRED` if none).  ``check(*inputs,
    **attrs)`` raises ``ValueError`` for bad arguments and returns the attributes in the form
    the implementations take (or None: as given).  ``cases(rng)`` returns small random
    :class:`Case` s in float64 that exercise the op's hard corners (stride > 1, padding, odd
    sizes, batch 1, ...), kept away from kinks (ties in a max, zeros of a ReLU) so that
    central finite differences are exact to ~1e-9.  ``torch(*inputs, **attrs)`` computes the
    same output with torch tensors (``None`` where torch has no equivalent); inputs listed in
    ``differentiable`` arrive with ``requires_grad=True``.  ``family``: the backend module
    that implements it (set by the table from the module that declares the spec).
    """

    name: str
    inputs: tuple[str, ...]
    differentiable: tuple[str, ...]
    cases: Callable[[np.random.Generator], list[Case]]
    attrs: dict = field(default_factory=dict)
    check: Callable[..., dict | None] | None = None
    aux: tuple[str, ...] = ()
    torch: Callable[..., Any] | None = None
    doc: str = ""
    skips_input_grad: bool = False
    family: str = ""

    def __post_init__(self):
        unknown = set(self.differentiable) - set(self.inputs)
        if unknown:
            raise ValueError(f"{self.name}: differentiable inputs {unknown} not among inputs")

    def is_differentiable(self, index: int) -> bool:
        return self.inputs[index] in self.differentiable

    def __call__(self, backend, *inputs, **attrs):
        """``(out, ctx)`` of this op on ``backend`` (a :class:`nbclust.engine.backend.Backend`)."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                             f"got {len(inputs)}")
        if attrs.keys() != self.attrs.keys():
            attrs = self._completed(attrs)
        if self.check is not None:
            attrs = self.check(*inputs, **attrs) or attrs
        impl = backend.implementation(self)
        out, saved = impl.forward(*inputs, **attrs)
        aux = {}
        if self.aux:
            out, *rest = out
            aux = dict(zip(self.aux, rest, strict=True))
        return out, OpContext(self, impl.backward, saved, aux, backend.xp, out)

    def _completed(self, attrs: dict) -> dict:
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise ValueError(f"{self.name} has no attribute {unknown[0]!r} (its attributes: "
                             f"{', '.join(self.attrs) or 'none'})")
        out = {**self.attrs, **attrs}
        missing = [k for k, v in out.items() if v is REQUIRED]
        if missing:
            raise ValueError(f"{self.name} needs the attribute {missing[0]!r}")
        return out


class OpContext:
    """What one call of an op keeps for its backward; ``aux``: its auxiliary outputs by name."""

    __slots__ = ("spec", "aux", "_backward", "_saved", "_xp", "_shape", "_dtype")

    def __init__(self, spec: OpSpec, backward, saved, aux: dict, xp, out):
        self.spec, self.aux, self._backward, self._saved = spec, aux, backward, saved
        self._xp, self._shape, self._dtype = xp, tuple(out.shape), out.dtype

    def backward(self, grad_out=None, input_grad: bool = True) -> tuple:
        """One gradient per input of the op (see the module docstring); ``grad_out`` defaults
        to 1 for a 0-d output (a loss)."""
        spec = self.spec
        if grad_out is None:
            if self._shape:
                raise ValueError(f"{spec.name}: backward needs grad_out for an output of shape {self._shape}")
            grad_out = self._xp.ones((), dtype=self._dtype)
        if spec.skips_input_grad:
            grads = self._backward(grad_out, self._saved, input_grad=input_grad)
        elif input_grad:
            grads = self._backward(grad_out, self._saved)
        elif set(spec.differentiable) <= {spec.inputs[0]}:
            return (None,) * len(spec.inputs)
        else:
            grads = (None, *self._backward(grad_out, self._saved)[1:])
        if len(grads) != len(spec.inputs):
            raise RuntimeError(f"{spec.name}: backward returned {len(grads)} gradients for {len(spec.inputs)} inputs")
        return grads


class OpTable(dict):
    """Op name -> :class:`OpSpec`; also ``OPS.conv2d`` for ``OPS["conv2d"]``."""

    def __getattr__(self, name: str) -> OpSpec:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no op {name!r} in the table") from None


def _collect() -> OpTable:
    from nbclust.engine.optable import clustering, conv, losses, pointwise

    table = OpTable()
    for module in (conv, pointwise, losses, clustering):
        for spec in module.SPECS:
            if spec.name in table or hasattr(dict, spec.name):
                raise ValueError(f"op {spec.name!r} registered twice (or shadowing a dict method)")
            table[spec.name] = dataclasses.replace(spec, family=spec.family or module.FAMILY)
    return table


OPS: OpTable = _collect()
