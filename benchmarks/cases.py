"""Benchmark cases shared by the pytest-benchmark files and ``compare.py``.

A case is built for one runtime (``"nbclust"``: the cpu backend, or ``"torch"``:
torch CPU) and returns a zero-argument callable doing one repetition.  Torch
networks are translated from the nbclust ones layer by layer with the same
weights, so both runtimes compute the same thing on the same shapes.

Cases:

- ``layer/<config>/<fwd|fwdbwd>``: every convolution, transposed convolution,
  pooling, unpooling, batch-norm and activation configuration met in the
  networks below (found by tracing them), float32, training mode.
- ``step/<net>``: forward + MSE loss + backward + Adam update of a network.
- ``embed/<net>``: forward-only (eval mode) pass of a network's encoder.

Networks (MNIST-sized, 1 channel): DCAE, DBC's FCAE autoencoder and its
stage-II encoder, DCTL at 28x28 and 32x32, the DEPICT autoencoder, DCEC.
This module imports neither torch nor the backends at import time.
"""

from __future__ import annotations

import functools

import numpy as np

from nbclust.engine import convshape

# ----------------------------------------------------------------- networks


def _nbclust_nets(backend="cpu"):
    """name -> (image shape, [modules of the training net], [modules of the embedding pass]).

    The torch runtime builds them on the ``reference`` backend (plain NumPy), so
    that no Numba thread pool starts in its process.
    """
    from nbclust.engine import nn
    from nbclust.methods.architectures import dcae, dcec, fcae
    from nbclust.methods.dctl import DCTLTransform
    from nbclust.methods.depict import DEPICTNet

    kw = dict(backend=backend, dtype=np.float32)
    out = {}
    e, d = dcae((1, 28, 28), rng=0, **kw)
    out["dcae"] = ((1, 28, 28), [e, d], [e])
    e, d = fcae((1, 28, 28), rng=1, **kw)
    out["fcae"] = ((1, 28, 28), [e, d], [e])
    e2, _ = fcae((1, 28, 28), rng=1, **kw)
    out["fcae_encoder"] = ((1, 28, 28), [e2], [e2])
    for side in (28, 32):
        t = DCTLTransform(1, rng=np.random.default_rng(2), **kw)
        out[f"dctl{side}"] = ((1, side, side), [t.net], [t.net])
    dp = DEPICTNet((1, 28, 28), 10, rng=np.random.default_rng(3), **kw)
    enc = nn.Sequential(dp.enc1, dp.enc2, dp.enc3)
    out["depict"] = ((1, 28, 28), [enc, dp.dec3, dp.dec2, dp.dec1], [enc])
    e, d = dcec((1, 28, 28), rng=4, **kw)
    out["dcec"] = ((1, 28, 28), [e, d], [e])
    return out


NETWORKS = ("dcae", "fcae", "fcae_encoder", "dctl28", "dctl32", "depict", "dcec")
EMBEDDINGS = ("dcae", "fcae", "dctl28", "dctl32", "depict", "dcec")


def _leaves(modules):
    from nbclust.engine import nn

    for m in modules:
        if isinstance(m, nn.Sequential):
            yield from _leaves(m.layers)
        else:
            yield m


# ------------------------------------------------------------ FLOP counting


def _layer_flops(layer, in_shape, out_shape) -> int:
    """Multiply-adds x 2 of one forward of a conv, transposed conv or linear layer (else 0)."""
    name = type(layer).__name__
    if name == "Conv2d":
        return 2 * int(np.prod(out_shape)) * layer.in_channels * int(np.prod(layer.kernel_size))
    if name == "ConvTranspose2d":
        return 2 * int(np.prod(in_shape)) * layer.out_channels * int(np.prod(layer.kernel_size))
    if name == "Linear":
        return 2 * in_shape[0] * layer.in_features * layer.out_features
    return 0


def _trace(modules, x):
    """[(leaf layer, input shape, output shape)] of one forward of the chained modules."""
    rows = []
    for layer in _leaves(modules):
        y = layer.forward(x)
        rows.append((layer, tuple(x.shape), tuple(y.shape)))
        x = y
    return rows


# ------------------------------------------------------------------ layers

_LAYER_TYPES = ("Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "BatchNorm2d", "BatchNorm1d",
                "Sigmoid", "Tanh", "ReLU", "SELU", "LeakyReLU")


def _layer_key(layer, in_shape) -> str:
    name = type(layer).__name__
    shape = "x".join(map(str, in_shape[1:]))
    if name in ("Conv2d", "ConvTranspose2d"):
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        extra = f" s{s[0]}" if s != (1, 1) else ""
        extra += f" p{p}" if p != (0, 0) else ""
        if name == "ConvTranspose2d" and layer.output_padding != (0, 0):
            extra += f" op{layer.output_padding[0]}"
        return f"{name} {layer.in_channels}->{layer.out_channels} {k[0]}x{k[1]}{extra} @{shape}"
    return f"{name} @{shape}"


@functools.cache
def layer_configs():
    """{key: (network, index of the leaf layer)} of the distinct layer configurations, in network order."""
    from nbclust.engine.backend import get_backend

    b = get_backend("reference")
    configs = {}
    for net, (shape, modules, _) in _nbclust_nets("reference").items():
        x = b.asarray(np.random.default_rng(0).random((2, *shape)), np.float32)
        for i, (layer, s_in, _) in enumerate(_trace(modules, x)):
            if type(layer).__name__ in _LAYER_TYPES:
                configs.setdefault(_layer_key(layer, s_in), (net, i))
    return configs


def case_names(batch_sizes=(100, 256)) -> list[str]:
    names = []
    for n in batch_sizes:
        for net in NETWORKS:
            names.append(f"step/{net}/b{n}")
        for net in EMBEDDINGS:
            names.append(f"embed/{net}/b{n}")
        for key in layer_configs():
            for mode in ("fwd", "fwdbwd"):
                names.append(f"layer/{key}/{mode}/b{n}")
    return names


# ---------------------------------------------------------- torch translation


class _TorchNet:
    """A torch version of chained nbclust modules, same weights; pools hand indices to their unpools."""

    def __init__(self, modules):
        import torch

        self.torch = torch
        self.training, self.indices, self.sizes = True, {}, {}
        self.layers, self.params = [], []
        for layer in _leaves(modules):
            self.layers.append(self._translate(layer))

    def _param(self, p):
        t = self.torch.tensor(np.asarray(p.data, dtype=np.float32), requires_grad=True)
        self.params.append(t)
        return t

    def _translate(self, layer):
        import torch.nn.functional as F

        name = type(layer).__name__
        if name in ("Conv2d", "ConvTranspose2d", "Linear"):
            w = self._param(layer.weight)
            b = None if layer.bias is None else self._param(layer.bias)
            if name == "Linear":
                return lambda x: F.linear(x, w, b)
            (t, bt), (l, r) = convshape.normalize_padding(layer.padding)
            if name == "Conv2d":  # asymmetric padding (TF "same"): F.pad, then an unpadded conv
                return lambda x: F.conv2d(F.pad(x, (l, r, t, bt)), w, b, stride=layer.stride)
            oh, ow = layer.output_padding  # the crop of the full output; output_padding shrinks its end

            def conv_t(x):
                y = F.conv_transpose2d(x, w, None, stride=layer.stride)
                y = F.pad(y, (-l, ow - r, -t, oh - bt))  # negative amounts crop
                return y if b is None else y + b[None, :, None, None]
            return conv_t
        if name in ("BatchNorm2d", "BatchNorm1d"):
            g, bb = self._param(layer.weight), self._param(layer.bias)
            rm, rv = self.torch.zeros(layer.num_features), self.torch.ones(layer.num_features)
            return lambda x: F.batch_norm(x, rm, rv, g, bb, training=self.training, momentum=layer.momentum,
                                          eps=layer.eps)
        if name == "MaxPool2d":
            key = id(layer)

            def pool(x):
                y, self.indices[key] = F.max_pool2d(x, layer.kernel_size, layer.stride, return_indices=True)
                self.sizes[key] = tuple(x.shape[2:])
                return y
            return pool
        if name == "MaxUnpool2d":
            key = id(layer.pool)
            return lambda x: F.max_unpool2d(x, self.indices[key], layer.pool.kernel_size, layer.pool.stride,
                                            output_size=self.sizes[key])
        simple = {"Sigmoid": self.torch.sigmoid, "Tanh": self.torch.tanh, "ReLU": self.torch.relu,
                  "SELU": F.selu, "Flatten": lambda x: x.reshape(x.shape[0], -1)}
        if name in simple:
            return simple[name]
        if name == "LeakyReLU":
            return lambda x: F.leaky_relu(x, layer.negative_slope)
        if name == "Reshape":
            return lambda x: x.reshape(x.shape[0], *layer.shape)
        raise ValueError(f"no torch translation for layer {name}")

    def __call__(self, x):
        self.indices, self.sizes = {}, {}
        for f in self.layers:
            x = f(x)
        return x


# ------------------------------------------------------------------ builders


def _inputs(shape, n, seed=0):
    r = np.random.default_rng(seed)
    return r.random((n, *shape)).astype(np.float32)


def _backend_of(runtime):
    return "reference" if runtime == "torch" else "cpu"


def _step_case(runtime, net, n):
    shape, modules, _ = _nbclust_nets(_backend_of(runtime))[net]
    x = _inputs(shape, n)
    if runtime == "torch":
        import torch
        import torch.nn.functional as F

        tn = _TorchNet(modules)
        opt = torch.optim.Adam(tn.params, lr=1e-3)
        xt = torch.from_numpy(x)
        target = tn(xt).detach().clone().uniform_()

        def run():
            opt.zero_grad()
            loss = F.mse_loss(tn(xt), target)
            loss.backward()
            opt.step()
        return run, modules, x
    from nbclust.engine import nn
    from nbclust.engine.backend import get_backend
    from nbclust.engine.optable import OPS
    from nbclust.engine.optim import Adam

    b = get_backend("cpu")
    model = nn.Sequential(*modules)
    opt = Adam(model.parameters(), lr=1e-3)
    xb = b.asarray(x)
    target = np.random.default_rng(1).random(model.forward(xb).shape).astype(np.float32)

    def run():
        opt.zero_grad()
        _, ctx = OPS.mse(b, model.forward(xb), target)
        model.backward(ctx.backward()[0], input_grad=False)  # as torch: x needs no grad
        opt.step()
    return run, modules, x


def _embed_case(runtime, net, n):
    shape, _, modules = _nbclust_nets(_backend_of(runtime))[net]
    x = _inputs(shape, n)
    if runtime == "torch":
        import torch

        tn = _TorchNet(modules)
        tn.training = False
        xt = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                tn(xt)
        return run, modules, x
    (model,) = modules
    model.eval()
    return (lambda: model.forward(x)), modules, x


def _layer_case(runtime, key, mode, n):
    """One layer of a network, fed a random input of its traced shape (its pool run first for an unpool)."""
    from nbclust.engine.backend import get_backend

    net, index = layer_configs()[key]
    shape, modules, _ = _nbclust_nets(_backend_of(runtime))[net]
    b = get_backend(_backend_of(runtime))
    rows = _trace(modules, b.asarray(_inputs(shape, n)))  # sets every pool's indices at batch n
    layer, s_in, s_out = rows[index]
    r = np.random.default_rng(5)
    x = r.normal(size=s_in).astype(np.float32)
    g = r.normal(size=s_out).astype(np.float32)
    if runtime == "torch":
        import torch

        pool = getattr(layer, "pool", None)
        tn = _TorchNet([pool, layer] if pool is not None else [layer])
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)
        f = tn.layers[-1]
        if pool is not None:  # the same indices as nbclust's pool
            tn.indices = {id(pool): torch.from_numpy(pool.last_indices()[0])}
            tn.sizes = {id(pool): pool.last_indices()[1]}
        if mode == "fwd":
            def run():
                with torch.no_grad():
                    f(xt)
        else:
            xg = xt.clone().requires_grad_(True)

            def run():
                f(xg).backward(gt)
        return run, [layer], x
    if mode == "fwd":
        return (lambda: layer.forward(x)), [layer], x

    def run():
        layer.forward(x)
        layer.backward(g)
    return run, [layer], x


def build(runtime: str, name: str):
    """(callable doing one repetition, useful FLOPs per repetition) of the case ``name``."""
    from nbclust.engine.backend import get_backend

    kind, rest = name.split("/", 1)
    rest, batch = rest.rsplit("/", 1)
    n = int(batch[1:])
    if kind == "step":
        run, modules, x = _step_case(runtime, rest, n)
        passes = 3
    elif kind == "embed":
        run, modules, x = _embed_case(runtime, rest, n)
        passes = 1
    else:
        key, mode = rest.rsplit("/", 1)
        run, modules, x = _layer_case(runtime, key, mode, n)
        passes = 1 if mode == "fwd" else 3
    if kind == "layer" and type(modules[0]).__name__ == "MaxUnpool2d":
        flops = 0
    else:
        rows = _trace(modules, get_backend(_backend_of(runtime)).asarray(x))
        per = [_layer_flops(layer, s_in, s_out) for layer, s_in, s_out in rows]
        # training steps: 3 passes per layer, but no input gradient for the first layer
        flops = sum(per) * passes - (per[0] if kind == "step" and per else 0)
    return run, flops
