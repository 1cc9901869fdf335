"""SGD and Adam with exactly torch.optim's update rules, in place on the backend's arrays.

Both take the :class:`~nbclust.engine.nn.Parameter` list of a module (``module.parameters()``)
or the module itself.  Unlike torch, gradients are never ``None`` here (a
parameter without gradient has a zero one), so every parameter is updated.
``state_dict()`` is a flat dict of NumPy arrays (hyperparameters, the step
count, per-parameter buffers ``"<i>.<name>"``), ready for
:func:`nbclust.data.io.save_state`.
"""

from __future__ import annotations

import math

import numpy as np

from nbclust.engine.nn.module import Module, Parameter


def _number(v, name: str, low: float, *, strict: bool = False, high: float | None = None) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if strict else v >= low) and (high is None or v < high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low}" + ("" if high is None else f" and < {high}")
        raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")
    return float(v)


class Optimizer:
    """Common parameter handling and state (de)serialisation."""

    hyper: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()

    def __init__(self, params):
        if isinstance(params, Module):
            params = params.parameters()
        params = list(params)
        if not params:
            raise ValueError("optimiser got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise ValueError(f"optimiser parameter {i} is a {type(p).__name__}, not an nbclust.nn.Parameter")
        self.params = params
        self.step_count = 0
        self.state: list[dict] = [{} for _ in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        self.step_count += 1
        for p, state in zip(self.params, self.state):
            self._update(p, state)

    def touched(self) -> list:
        """The arrays a step writes: the parameters and their buffers (a diverging fit shows there first)."""
        return [p.data for p in self.params] + [v for state in self.state for v in state.values()]

    def _update(self, p: Parameter, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Hyperparameters, ``"step"`` and per-parameter buffers ``"<i>.<name>"`` as NumPy arrays."""
        out = {k: np.array(getattr(self, k), dtype=np.float64) for k in self.hyper}
        out["step"] = np.array(self.step_count, dtype=np.int64)
        for i, state in enumerate(self.state):
            for k, v in state.items():
                out[f"{i}.{k}"] = np.array(v.get() if hasattr(v, "get") else v)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` taken from an optimiser over parameters of the same shapes."""
        expected = {*self.hyper, "step"}
        buffers = {k for k in state if k not in expected}
        allowed = {f"{i}.{b}" for i in range(len(self.params)) for b in self.buffers}
        missing = sorted(expected - set(state))
        if missing or not buffers <= allowed:
            raise ValueError(f"optimiser state mismatch: missing {missing}, unexpected {sorted(buffers - allowed)}")
        new_state: list[dict] = [{} for _ in self.params]
        for key in buffers:
            i, name = key.split(".", 1)
            p = self.params[int(i)]
            value = np.asarray(state[key])
            if value.shape != p.shape:
                raise ValueError(f"optimiser state {key!r} has shape {value.shape}, parameter has {p.shape}")
            buffer = p.data.copy()
            buffer[...] = value
            new_state[int(i)][name] = buffer
        for i, st in enumerate(new_state):
            if st and set(st) != set(self.buffers):
                raise ValueError(f"optimiser state of parameter {i} has {sorted(st)}, expected {list(self.buffers)}")
        for k in self.hyper:
            setattr(self, k, float(state[k]))
        self.step_count = int(state["step"])
        self.state = new_state


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0)::

        g = grad + weight_decay * p
        buf = g at the first step, else momentum * buf + g       (if momentum)
        g = g + momentum * buf if nesterov else buf               (if momentum)
        p -= lr * g
    """

    hyper = ("lr", "momentum", "weight_decay")
    buffers = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params)
        self.lr = _number(lr, "lr", 0.0, strict=True)
        self.momentum = _number(momentum, "momentum", 0.0)
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _update(self, p: Parameter, state: dict) -> None:
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam (no amsgrad; L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = _number(lr, "lr", 0.0, strict=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        self.beta1 = _number(betas[0], "betas[0]", 0.0, high=1.0)
        self.beta2 = _number(betas[1], "betas[1]", 0.0, high=1.0)
        self.eps = _number(eps, "eps", 0.0)
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)

    def _update(self, p: Parameter, state: dict) -> None:
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if not state:
            state["exp_avg"] = np.zeros_like(p.data)  # a CuPy array for CuPy data (__array_function__)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1 - self.beta1) * (g - m)
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        t = self.step_count
        step_size = self.lr / (1 - self.beta1**t)
        denom = (v ** 0.5) / math.sqrt(1 - self.beta2**t) + self.eps
        p.data -= step_size * m / denom


class RowAdam:
    """Adam on the rows of one (N, d) array that a step touches, each row with its own step count
    (torch's ``SparseAdam`` for a row-sparse gradient), optionally projected onto ``x >= low``::

        t_i += 1;   m_i = beta1 m_i + (1 - beta1) g_i;   v_i = beta2 v_i + (1 - beta2) g_i^2
        x_i = max(x_i - lr / (1 - beta1^t_i) * m_i / (sqrt(v_i) / sqrt(1 - beta2^t_i) + eps), low)

    for the rows i of the last :meth:`rows` call; the other rows and their moments stay as they
    are.  DCTL's codes Z: one row per sample, updated on the rows of its mini-batch.  Same
    ``zero_grad``/``step``/``state_dict`` protocol as :class:`Optimizer` (the array is not a
    :class:`~nbclust.engine.nn.Parameter`: ``rows(idx, grad)`` gives the gradient of the next step).
    """

    hyper = ("lr", "beta1", "beta2", "eps")

    def __init__(self, data, lr, betas=(0.9, 0.999), eps=1e-8, low=None):
        if getattr(data, "ndim", 0) != 2:
            raise ValueError(f"RowAdam needs a 2-D array, got shape {getattr(data, 'shape', None)}")
        self.data = data
        self.lr = _number(lr, "lr", 0.0, strict=True)
        self.beta1 = _number(betas[0], "betas[0]", 0.0, high=1.0)
        self.beta2 = _number(betas[1], "betas[1]", 0.0, high=1.0)
        self.eps = _number(eps, "eps", 0.0)
        self.low = low
        self.exp_avg = np.zeros_like(data)  # a CuPy array for CuPy data (__array_function__)
        self.exp_avg_sq = np.zeros_like(data)
        self.row_steps = np.zeros(data.shape[0], dtype=np.int64)
        self.step_count = 0
        self._pending = self._last = None

    def zero_grad(self) -> None:
        self._pending = None

    def rows(self, idx, grad) -> None:
        """The gradient ``grad`` (len(idx), d) of the rows ``idx`` (distinct) for the next step."""
        self._pending = (np.asarray(idx), grad)

    def step(self) -> None:
        if self._pending is None:
            return
        idx, g = self._pending
        self._pending, self._last = None, idx
        self.step_count += 1
        xp = _array_module(self.data)
        b1, b2, dtype = self.beta1, self.beta2, self.data.dtype
        t = self.row_steps[idx] + 1
        self.row_steps[idx] = t
        m = b1 * self.exp_avg[idx] + (1 - b1) * g
        v = b2 * self.exp_avg_sq[idx] + (1 - b2) * g * g
        self.exp_avg[idx], self.exp_avg_sq[idx] = m, v
        bc1 = xp.asarray(1 - b1**t, dtype=dtype)[:, None]
        bc2 = xp.asarray(np.sqrt(1 - b2**t), dtype=dtype)[:, None]
        new = self.data[idx] - (self.lr / bc1) * m / (xp.sqrt(v) / bc2 + self.eps)
        self.data[idx] = new if self.low is None else xp.maximum(new, self.low)

    def touched(self) -> list:
        """The rows of the array and of its moments that the last step wrote."""
        idx = self._last
        return [] if idx is None else [self.data[idx], self.exp_avg[idx], self.exp_avg_sq[idx]]

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {k: np.array(getattr(self, k), dtype=np.float64) for k in self.hyper}
        out["step"] = np.array(self.step_count, dtype=np.int64)
        for name in ("exp_avg", "exp_avg_sq"):
            a = getattr(self, name)
            out[name] = np.array(a.get() if hasattr(a, "get") else a)
        out["row_steps"] = self.row_steps.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        missing = sorted({*self.hyper, "step", "exp_avg", "exp_avg_sq", "row_steps"} - set(state))
        if missing:
            raise ValueError(f"optimiser state mismatch: missing {missing}")
        for name in ("exp_avg", "exp_avg_sq"):
            value = np.asarray(state[name])
            if value.shape != self.data.shape:
                raise ValueError(f"optimiser state {name!r} has shape {value.shape}, the array has {self.data.shape}")
            buffer = self.data.copy()
            buffer[...] = value
            setattr(self, name, buffer)
        self.row_steps = np.array(state["row_steps"], dtype=np.int64)
        for k in self.hyper:
            setattr(self, k, float(state[k]))
        self.step_count = int(state["step"])


def _array_module(a):
    """CuPy for a CuPy array, else NumPy (CuPy is never imported here)."""
    import sys

    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(a)
