"""The ``cuda`` backend against torch CUDA: per op (forward + backward) and per training step.

Run on a machine with an NVIDIA GPU, CuPy and torch with CUDA::

    python benchmarks/gpu_bench.py [--dtype float32] [--batch 256] [--reps 20]

Each measurement is a warm-up (compiles kernels, fills caches, lets
``cudnn.benchmark`` pick algorithms), then ``reps`` repetitions between two
CUDA events on the library's current stream; the table prints milliseconds
per repetition and the ratio ours / torch (above 1: we are slower).  The
per-op inputs come from the op table's ``torch`` equivalents, so both sides
compute the same thing.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from nbclust.engine.backend import get_backend
from nbclust.engine.optable import OPS


def _op_configs(n: int) -> dict:
    """op name -> (inputs as NumPy float64 / int64, attrs), MNIST-sized layers of the methods."""
    r = np.random.default_rng(0)
    x28 = r.normal(size=(n, 1, 28, 28))
    x14 = r.normal(size=(n, 32, 14, 14))
    pooled, idx = _pool_indices(x14)
    probs = r.uniform(0.1, 1.0, size=(n, 10))
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "conv2d 1->32 5x5 28x28": ("conv2d", (x28, r.normal(size=(32, 1, 5, 5)), r.normal(size=32)),
                                   dict(stride=(1, 1), padding=(2, 2))),
        "conv2d 32->64 5x5 14x14": ("conv2d", (x14, r.normal(size=(64, 32, 5, 5)), r.normal(size=64)),
                                    dict(stride=(1, 1), padding=(2, 2))),
        "conv2d 1->3 9x9 same (DCTL)": ("conv2d", (x28, r.normal(size=(3, 1, 9, 9)), None),
                                        dict(stride=(1, 1), padding=(4, 4))),
        "conv_transpose2d 64->32 4x4 s2": ("conv_transpose2d", (r.normal(size=(n, 64, 7, 7)),
                                           r.normal(size=(64, 32, 4, 4)), r.normal(size=32)),
                                           dict(stride=(2, 2), padding=(1, 1), output_padding=(0, 0))),
        "max_pool2d 2x2": ("max_pool2d", (x14,), dict(kernel=(2, 2), stride=(2, 2))),
        "max_pool2d 3x3 s2 (overlap)": ("max_pool2d", (x14,), dict(kernel=(3, 3), stride=(2, 2))),
        "max_unpool2d 2x2": ("max_unpool2d", (pooled, idx), dict(output_size=(14, 14))),
        "linear 3136->10": ("linear", (r.normal(size=(n, 3136)), r.normal(size=(10, 3136)), r.normal(size=10)), {}),
        "batch_norm 4-D train": ("batch_norm", (x14, r.normal(size=32), r.normal(size=32), np.zeros(32), np.ones(32)),
                                 dict(training=True, momentum=0.1, eps=1e-5)),
        "relu": ("relu", (x14,), {}),
        "selu": ("selu", (x14,), {}),
        "sigmoid": ("sigmoid", (x14,), {}),
        "softmax": ("softmax", (r.normal(size=(n, 10)),), {}),
        "mse": ("mse", (x28, r.normal(size=x28.shape)), {}),
        "bce": ("bce", (1 / (1 + np.exp(-x28)), r.uniform(size=x28.shape)), dict(eps=1e-7)),
        "bce_with_logits": ("bce_with_logits", (x28, r.uniform(size=x28.shape)), {}),
        "dbc_kl": ("dbc_kl", (r.normal(size=(n, 120)), r.normal(size=(10, 120)), probs), dict(v=1.0)),
        "neg_logdet 3x1x9x9": ("neg_logdet", (r.normal(size=(3, 1, 9, 9)),), {}),
    }


def _pool_indices(x):
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    a = win.argmax(axis=-1)
    rows = np.arange(h // 2)[:, None] * 2 + a // 2
    cols = np.arange(w // 2)[None, :] * 2 + a % 2
    return np.take_along_axis(win, a[..., None], -1)[..., 0], (rows * w + cols).astype(np.int64)


def _time(fn, clock, reps: int, warmup: int = 3) -> float:
    """Milliseconds per call of ``fn`` between two CUDA events, after ``warmup`` calls."""
    make_event, elapsed_ms, synchronize = clock
    for _ in range(warmup):
        fn()
    synchronize()
    start, stop = make_event(), make_event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return elapsed_ms(start, stop) / reps


def _ours_op(name, inputs, attrs, dtype):
    import cupy

    b = get_backend("cuda")
    dev = [None if a is None else b.asarray(a, dtype=None if a.dtype.kind in "iu" else dtype) for a in inputs]
    out, _ = OPS[name](b, *dev, **attrs)
    g = cupy.ones_like(out)

    def run():
        _, ctx = OPS[name](b, *dev, **attrs)
        ctx.backward(g)

    return run


def _torch_op(name, inputs, attrs, dtype):
    import torch

    spec = OPS[name]
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tensors = []
    for nm, a in zip(spec.inputs, inputs):
        if a is None:
            tensors.append(None)
            continue
        t = torch.as_tensor(a, device="cuda")
        t = t.to(tdt) if t.is_floating_point() else t
        tensors.append(t.requires_grad_(nm in spec.differentiable))

    def run():
        out = spec.torch(*tensors, **attrs)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))

    return run


def _clocks():
    """(make_event, elapsed_ms, synchronize) for CuPy and for torch."""
    import cupy
    import torch

    return ((cupy.cuda.Event, cupy.cuda.get_elapsed_time, cupy.cuda.Device().synchronize),
            (lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b), torch.cuda.synchronize))


def _autoencoder_steps(n: int, dtype):
    """One Adam training step of a small conv autoencoder (MSE), ours and torch's."""
    import cupy
    import torch

    from nbclust.engine import nn, optim

    kw = dict(backend="cuda", dtype=dtype, rng=0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2, **kw), nn.BatchNorm2d(32, **kw), nn.ReLU(**kw), nn.MaxPool2d(2, **kw),
        nn.Conv2d(32, 64, 5, padding=2, **kw), nn.BatchNorm2d(64, **kw), nn.ReLU(**kw), nn.MaxPool2d(2, **kw),
        nn.Flatten(**kw), nn.Linear(3136, 10, **kw), nn.Linear(10, 3136, **kw), nn.Reshape((64, 7, 7), **kw),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1, **kw), nn.ReLU(**kw),
        nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1, **kw), nn.Sigmoid(**kw),
    )
    opt = optim.Adam(net.parameters(), lr=1e-3)
    b = get_backend("cuda")
    x = b.asarray(np.random.default_rng(1).uniform(size=(n, 1, 28, 28)), dtype=dtype)
    one = cupy.ones((), dtype=dtype)

    def ours():
        net.zero_grad()
        y = net.forward(x)
        _, ctx = OPS.mse(b, y, x)
        net.backward(ctx.backward(one)[0])
        opt.step()

    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tn = torch.nn
    tnet = tn.Sequential(
        tn.Conv2d(1, 32, 5, padding=2), tn.BatchNorm2d(32), tn.ReLU(), tn.MaxPool2d(2),
        tn.Conv2d(32, 64, 5, padding=2), tn.BatchNorm2d(64), tn.ReLU(), tn.MaxPool2d(2),
        tn.Flatten(), tn.Linear(3136, 10), tn.Linear(10, 3136), tn.Unflatten(1, (64, 7, 7)),
        tn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), tn.ReLU(),
        tn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), tn.Sigmoid(),
    ).to("cuda", tdt)
    topt = torch.optim.Adam(tnet.parameters(), lr=1e-3)
    tx = torch.as_tensor(cupy.asnumpy(x), device="cuda")

    def theirs():
        topt.zero_grad()
        torch.nn.functional.mse_loss(tnet(tx), tx).backward()
        topt.step()

    return ours, theirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tf32", action="store_true", help="let torch use TF32 (off by default: CuPy does not)")
    args = parser.parse_args(argv)
    try:
        import torch

        get_backend("cuda")
        if not torch.cuda.is_available():
            raise ValueError("torch has no CUDA")
    except (ImportError, ValueError) as exc:
        print(f"error: this benchmark needs CuPy, a GPU and torch with CUDA ({exc})", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    # Same arithmetic on both sides: CuPy's cuBLAS calls do not use TF32 (unless CUPY_TF32=1).
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    dtype = np.dtype(args.dtype).type
    ours_clock, torch_clock = _clocks()
    rows = []
    for label, (name, inputs, attrs) in _op_configs(args.batch).items():
        ours = _time(_ours_op(name, inputs, attrs, dtype), ours_clock, args.reps)
        theirs = _time(_torch_op(name, inputs, attrs, dtype), torch_clock, args.reps)
        rows.append((label, ours, theirs))
    try:
        ours_step, torch_step = _autoencoder_steps(args.batch, dtype)
        rows.append(("autoencoder Adam step", _time(ours_step, ours_clock, args.reps),
                     _time(torch_step, torch_clock, args.reps)))
    except Exception as exc:  # the layer API may be missing a piece; report it, keep the op table
        print(f"(training step skipped: {type(exc).__name__}: {exc})", file=sys.stderr)
    print(f"device: {torch.cuda.get_device_name()}  dtype {args.dtype}  batch {args.batch}  "
          f"reps {args.reps}  torch TF32 {'on' if args.tf32 else 'off'}  (forward + backward, ms)")
    print(f"{'op':<34}{'cuda (ours)':>12}{'torch':>10}{'ratio':>8}")
    for label, ours, theirs in rows:
        print(f"{label:<34}{ours:12.3f}{theirs:10.3f}{ours / theirs:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
