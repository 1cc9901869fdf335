"""``Parameter``, the ``Module`` base class and ``Sequential``.

A module computes ``forward(x)`` through the ops of its backend, keeps the
op contexts of its last forward, and ``backward(grad_out)`` returns the
gradient w.r.t. its input while *accumulating* the parameter gradients into
``Parameter.grad`` (like torch; call :meth:`Module.zero_grad` between steps).
``backward(grad_out, input_grad=False)`` is for a module whose input is data:
it accumulates the same parameter gradients, returns ``None`` and skips the
input gradient (for a conv layer on a 28x28 image, about a third of its
backward), as torch skips inputs that do not require grad.
One forward context is kept per module, so a module used twice in one graph
needs a :meth:`Module.shared_copy` for the second use.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np

from nbclust.engine.backend import check_backend_name, get_backend

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A trainable array ``data`` of the module's backend and its gradient ``grad`` (same shape)."""

    __slots__ = ("data", "grad")

    def __init__(self, data, grad):
        self.data = data
        self.grad = grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


def is_seed(rng) -> bool:
    """Whether ``rng`` is an int seed (not a bool)."""
    return isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)


def as_generator(rng, *key) -> np.random.Generator:
    """``rng`` as a numpy Generator (``None``: fresh entropy; a Generator: itself).

    An int seed is mixed with ``key`` (for a layer: its class name and weight
    shape) through ``SeedSequence(seed, spawn_key=...)``, so that two different
    layers built from one int seed draw independent streams instead of
    copies of one stream; without ``key`` an int gives ``default_rng(seed)``.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if is_seed(rng):
        if not key:
            return np.random.default_rng(int(rng))
        spawn_key = tuple(zlib.crc32(str(k).encode()) for k in key)
        return np.random.default_rng(np.random.SeedSequence(int(rng), spawn_key=spawn_key))
    raise ValueError(f"rng must be None, an int seed or a numpy Generator, got {type(rng).__name__}")


def check_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Module:
    """Base class of layers and containers.

    Keyword-only ``backend`` (``"reference"``, ``"cpu"`` or ``"cuda"``),
    ``dtype`` (float32 or float64: parameters and accepted inputs) and ``rng``
    (a numpy Generator or int seed, used for initialisation and dropout masks;
    an int seed is mixed with the layer's kind and weight shape, so two
    different layers never share a stream; pass one Generator to several
    layers to draw them in sequence from one stream).

    A composite module assigns its parts as attributes (found by
    :meth:`children`) and defines ``forward`` and ``backward`` (the parts'
    backward in reverse order).
    """

    def __init__(self, *, backend: str = "cpu", dtype=np.float32, rng=None):
        self._backend = get_backend(check_backend_name(backend))
        self.dtype = check_dtype(dtype)
        self._seed = int(rng) if is_seed(rng) else None
        self.rng = as_generator(rng, type(self).__name__)
        self.training = True
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, object] = {}
        self._ctx = None

    # -- construction helpers -------------------------------------------------

    def _add_param(self, name: str, value: np.ndarray) -> Parameter:
        data = self._backend.asarray(value, self.dtype)
        p = Parameter(data, self.xp.zeros_like(data))
        self._params[name] = p
        return p

    def _add_buffer(self, name: str, value: np.ndarray) -> None:
        self._buffers[name] = self._backend.asarray(value, self.dtype)

    # -- forward / backward ---------------------------------------------------

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out, input_grad: bool = True):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def _check_input(self, x, ndim: int | None = None) -> None:
        """ValueError unless ``x`` is an array of this backend, of the layer dtype (and ``ndim``)."""
        name = type(self).__name__
        if not isinstance(x, self.xp.ndarray):
            raise ValueError(
                f"{name}: input is a {type(x).__module__}.{type(x).__name__}, expected an array "
                f"of backend {self.backend!r} (move it with get_backend({self.backend!r}).asarray)"
            )
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D input, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"{name}: input dtype {x.dtype} differs from the layer dtype {self.dtype}")

    def _save(self, ctx, out) -> None:
        """Keep the forward context and output shape for :meth:`backward`."""
        self._ctx = (ctx, tuple(out.shape))

    def __getstate__(self) -> dict:
        """Pickled without the last forward's context (transient: a backward needs a new forward)."""
        return {**self.__dict__, "_ctx": None}

    def _saved(self, grad_out):
        """The context of the last forward; ValueError if ``grad_out``'s shape or dtype does not match."""
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        ctx, shape = self._ctx
        if tuple(getattr(grad_out, "shape", ())) != shape:
            raise ValueError(
                f"{type(self).__name__}: grad_out shape {tuple(getattr(grad_out, 'shape', ()))} "
                f"differs from the output shape {shape}"
            )
        if grad_out.dtype != self.dtype:
            raise ValueError(
                f"{type(self).__name__}: grad_out dtype {grad_out.dtype} differs from the layer dtype {self.dtype}")
        return ctx

    # -- parameters, buffers, state -------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def xp(self):
        return self._backend.xp

    def children(self) -> dict[str, Module]:
        """Direct sub-modules by name: the Module-valued attributes, in assignment order.

        So a composite module only assigns its parts (``self.encoder = Sequential(...)``)
        and its parameters are named ``"encoder.0.weight"``, ...
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, Module)}

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for child in self.children().values():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        out = [(prefix + k, p) for k, p in self._params.items()]
        for name, child in self.children().items():
            out += child.named_parameters(f"{prefix}{name}.")
        return out

    def _buffer_slots(self, prefix: str = "") -> list[tuple[str, Module, str]]:
        out = [(prefix + k, self, k) for k in self._buffers]
        for name, child in self.children().items():
            out += child._buffer_slots(f"{prefix}{name}.")
        return out

    def parameters(self) -> list[Parameter]:
        """The Parameter objects, in a stable order (the order of :attr:`params`)."""
        return [p for _, p in self.named_parameters()]

    @property
    def params(self) -> dict:
        return {k: p.data for k, p in self.named_parameters()}

    @property
    def grads(self) -> dict:
        return {k: p.grad for k, p in self.named_parameters()}

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, backend: str) -> Module:
        """Move parameters and buffers to ``backend`` (in place; returns self).

        Shared copies hold the same Parameter objects, so move a module before
        making shared copies of it (or move each copy too).
        """
        new = get_backend(check_backend_name(backend))
        for m in self.modules():
            for p in m._params.values():
                p.data = new.asarray(m._backend.to_numpy(p.data))
                p.grad = new.asarray(m._backend.to_numpy(p.grad))
            for k, b in m._buffers.items():
                m._buffers[k] = new.asarray(m._backend.to_numpy(b))
            m._backend = new
            m._ctx = None
        return self

    def shared_copy(self) -> Module:
        """A module with the SAME Parameter objects (and buffers) but its own forward context.

        Gradients from both copies accumulate into the shared ``Parameter.grad``;
        the training flag is per copy.  Used for weight sharing (e.g. DEPICT's
        clean and noisy encoder paths).
        """
        return self._clone({})

    def _clone(self, memo: dict) -> Module:
        """Shallow copy with a fresh context; sub-modules cloned once each (``memo``: id -> clone)."""
        new = copy.copy(self)
        new._ctx = None
        memo[id(self)] = new
        new._adopt({name: memo[id(c)] if id(c) in memo else c._clone(memo) for name, c in self.children().items()})
        return new

    def _adopt(self, children: dict[str, Module]) -> None:
        for name, child in children.items():
            setattr(self, name, child)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers (e.g. batch-norm running statistics) as NumPy copies."""
        out = {k: np.array(self._backend.to_numpy(p.data)) for k, p in self.named_parameters()}
        for name, owner, key in self._buffer_slots():
            out[name] = np.array(owner._backend.to_numpy(owner._buffers[key]))
        return out

    def load_state_dict(self, state: dict) -> None:
        """Copy the arrays of ``state`` (as :meth:`state_dict` returns) into the parameters and buffers."""
        params = dict(self.named_parameters())
        slots = {name: (owner, key) for name, owner, key in self._buffer_slots()}
        expected = set(params) | set(slots)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing keys {missing}, unexpected keys {unexpected}")
        for name in sorted(expected):
            current = params[name].data if name in params else slots[name][0]._buffers[slots[name][1]]
            value = np.asarray(state[name])
            if value.shape != tuple(current.shape):
                raise ValueError(f"state dict entry {name!r} has shape {value.shape}, expected {tuple(current.shape)}")
        for name, p in params.items():
            p.data[...] = self._backend.asarray(state[name], p.data.dtype)
        for name, (owner, key) in slots.items():
            owner._buffers[key] = owner._backend.asarray(np.array(state[name]), owner.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


class Sequential(Module):
    """Layers applied in order; parameters named ``"0.weight"``, ``"1.bias"``, ...

    Takes backend and dtype from its layers, which must all agree.
    """

    def __init__(self, *layers: Module):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise ValueError(f"Sequential: layer {i} is a {type(layer).__name__}, not a Module")
        first = layers[0]
        for i, layer in enumerate(layers):
            if layer.backend != first.backend or layer.dtype != first.dtype:
                raise ValueError(
                    f"Sequential: layer {i} has backend {layer.backend!r} and dtype {layer.dtype}, "
                    f"layer 0 has {first.backend!r} and {first.dtype}"
                )
        super().__init__(backend=first.backend, dtype=first.dtype, rng=first.rng)
        self.layers = list(layers)
        self.training = all(layer.training for layer in layers)

    def children(self) -> dict[str, Module]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out, input_grad: bool = True):
        """The layers' backward in reverse order; with ``input_grad=False`` the leading
        parameter-free layers are skipped and the first layer with parameters is
        told not to compute its input gradient."""
        first = 0
        if not input_grad:
            first = next((i for i, layer in enumerate(self.layers) if layer.parameters()), len(self.layers))
        for i in range(len(self.layers) - 1, first - 1, -1):
            grad_out = self.layers[i].backward(grad_out, input_grad=input_grad or i > first)
        return grad_out if input_grad else None

    def _adopt(self, children: dict[str, Module]) -> None:
        self.layers = list(children.values())

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
