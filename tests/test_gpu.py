"""The CuPy backend ``nbclust.kernels.gpu``.

Two layers of checks:

- *Simulated* (run everywhere, no GPU or CuPy needed): the gpu modules are
  imported with NumPy standing in for CuPy, and each ElementwiseKernel body
  (a C expression) is compiled as C++ on the host with g++ and run through
  ctypes.  This executes the backend's own code, index tables and kernel
  expressions against the reference: agreement, finite differences, ties and
  repeated unpooling indices.  The CUDA bodies are also compiled by NVRTC
  where CuPy and NVRTC are installed (no GPU needed for that either).
- *On a GPU* (skipped unless ``nbclust.engine.backend.cuda_available()``): torch CUDA
  parity for every op with a torch equivalent, bit-identical repeated runs,
  and DCTL/DBC fits on backend "cuda" vs "cpu".  tests/test_ops.py also runs
  its finite-difference and agreement tests on "cuda" whenever it is available.
"""

from __future__ import annotations

import ctypes
import importlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from nbclust.engine.backend import Backend, cuda_available, get_backend
from nbclust.engine.gradcheck import TOLERANCE, cast_inputs, check_op, run_op
from nbclust.engine.optable import OPS

from conftest import assert_declared_backend, assert_matches_reference, rel_err

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and an NVIDIA GPU")


# ------------------------------------------------------------------ simulation on the host

_CPP = """
#include <cmath>
using namespace std;
template <typename T> static void {name}({params}, T* out_, long n) {{
  for (long i = 0; i < n; ++i) {{
    {loads}
    T out;
    {operation}
    out_[i] = out;
  }}
}}
extern "C" void {name}_f32({cparams_f}, float* o, long n) {{ {name}<float>({args}, o, n); }}
extern "C" void {name}_f64({cparams_d}, double* o, long n) {{ {name}<double>({args}, o, n); }}
"""


class _HostKernel:
    """Stand-in for ``cupy.ElementwiseKernel``: the same C body, compiled by g++ for the host."""

    registry: list = []

    def __init__(self, in_params, out_params, operation, name):
        self.inputs = [p.split()[-1] for p in in_params.split(",")]
        if [p.split() for p in out_params.split(",")] != [["T", "out"]]:
            raise AssertionError(f"{name}: the host stand-in expects the output 'T out'")
        self.operation, self.name, self.lib = operation, name, None
        _HostKernel.registry.append(self)

    def source(self) -> str:
        ins = self.inputs
        return _CPP.format(
            name=self.name, operation=self.operation,
            params=", ".join(f"const T* {p}_" for p in ins),
            loads=" ".join(f"const T {p} = {p}_[i];" for p in ins),
            cparams_f=", ".join(f"const float* {p}_" for p in ins),
            cparams_d=", ".join(f"const double* {p}_" for p in ins),
            args=", ".join(f"{p}_" for p in ins),
        )

    def __call__(self, *args):
        like = next(a for a in args if isinstance(a, np.ndarray))
        dtype = like.dtype
        arrays = [np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dtype), like.shape)) for a in args]
        out = np.empty(like.shape, dtype=dtype)
        fn = getattr(self.lib, f"{self.name}_{'f32' if dtype == np.float32 else 'f64'}")
        fn(*(a.ctypes.data_as(ctypes.c_void_p) for a in arrays), out.ctypes.data_as(ctypes.c_void_p),
           ctypes.c_long(out.size))
        return out


class _NumpyAsCupy(types.ModuleType):
    """NumPy under CuPy's name, plus an ElementwiseKernel: the host one, or ``kernel`` (e.g. a
    stand-in that builds nothing, for code that runs no elementwise kernel)."""

    def __init__(self, kernel=None):
        super().__init__("cupy (simulated by numpy)")
        self.ElementwiseKernel = _HostKernel if kernel is None else kernel

    def __getattr__(self, name):
        return getattr(np, name)


def simulated_backend(gpu_package) -> Backend:
    """The backend of a simulated gpu package, falling back to the reference as "cuda" does."""
    return Backend("cuda-simulated", np, gpu_package, get_backend("reference"))


def _import_gpu_with(xp_module):
    """Import a fresh copy of nbclust.kernels.gpu with ``xp_module`` in the place of CuPy (its
    runtime's ``xp``), leaving sys.modules as it was."""
    import nbclust.kernels as kernels_pkg

    prefix = "nbclust.kernels.gpu"

    def swapped(name):
        return name in ("cupy", prefix) or name.startswith(prefix + ".")

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if swapped(k)}
    had_attr, old_attr = hasattr(kernels_pkg, "gpu"), getattr(kernels_pkg, "gpu", None)
    sys.modules["cupy"] = xp_module
    try:
        return importlib.import_module(prefix)
    finally:
        for k in [k for k in sys.modules if swapped(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        if had_attr:
            kernels_pkg.gpu = old_attr
        elif hasattr(kernels_pkg, "gpu"):
            del kernels_pkg.gpu


@pytest.fixture(scope="module")
def _sim_package(tmp_path_factory):
    """The gpu backend's package imported with NumPy for CuPy (ElementwiseKernel bodies via g++)."""
    if shutil.which("g++") is None:
        pytest.skip("the host simulation compiles the kernel bodies with g++")
    _HostKernel.registry = []
    gpu = _import_gpu_with(_NumpyAsCupy())
    folder = tmp_path_factory.mktemp("gpu_sim")
    src, lib = folder / "kernels.cpp", folder / "kernels.so"
    src.write_text("\n".join(k.source() for k in _HostKernel.registry))
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    handle = ctypes.CDLL(str(lib))
    for k in _HostKernel.registry:
        k.lib = handle
    return gpu


@pytest.fixture
def sim(_sim_package, monkeypatch):
    """The gpu backend's code running on NumPy arrays.

    The reference functions it shares take their array module from the inputs
    (``nbclust.reference._runtime.array_module``): a stand-in ``cupy`` in
    ``sys.modules`` makes that the simulated CuPy rather than NumPy, so their
    device-side branches (a 0-d device ``grad_out``) run here too.
    """
    fake = _NumpyAsCupy()
    fake.get_array_module = lambda *arrays: fake
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return simulated_backend(_sim_package)


def test_simulated_backend_declares_its_reference_fallbacks(sim):
    """The cuda backend's own code for every op but those it declares (RUNS_REFERENCE)."""
    assert_declared_backend(sim)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OPS))
def test_simulated_backend_matches_reference(sim, name, dtype):
    assert_matches_reference(sim, name, dtype)


@pytest.mark.parametrize("name", sorted(OPS))
def test_simulated_gradient_matches_finite_differences(sim, name):
    assert check_op(sim, OPS[name], np.float64) <= TOLERANCE["float64"]


def test_simulated_pool_ties_and_repeated_unpool_indices(sim):
    """Ties: the first maximum wins; overlapping windows: gradients summed; repeated indices: last wins."""
    ref = get_backend("reference")
    x = np.round(np.random.default_rng(3).normal(size=(2, 3, 7, 6)))  # many ties
    for kernel, stride in (((3, 3), (1, 1)), ((2, 3), (2, 1)), ((3, 2), (3, 2))):
        ys, ctx_s = OPS.max_pool2d(sim, x, kernel=kernel, stride=stride)
        yr, ctx_r = OPS.max_pool2d(ref, x, kernel=kernel, stride=stride)
        ids, idr = ctx_s.aux["indices"], ctx_r.aux["indices"]
        np.testing.assert_array_equal(ids, idr)
        np.testing.assert_array_equal(ys, yr)
        g = np.random.default_rng(4).normal(size=ys.shape)
        np.testing.assert_allclose(ctx_s.backward(g)[0], ctx_r.backward(g)[0], rtol=1e-13, atol=1e-13)
        u_s, uctx_s = OPS.max_unpool2d(sim, ys, ids, output_size=x.shape[2:])
        u_r, uctx_r = OPS.max_unpool2d(ref, yr, idr, output_size=x.shape[2:])
        np.testing.assert_array_equal(u_s, u_r)
        gu = np.random.default_rng(5).normal(size=u_s.shape)
        np.testing.assert_array_equal(uctx_s.backward(gu)[0], uctx_r.backward(gu)[0])


def test_simulated_validation_errors(sim):
    x = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match="channels"):
        OPS.conv2d(sim, x, np.zeros((4, 2, 3, 3)), None, stride=(1, 1), padding=(0, 0))
    with pytest.raises(ValueError, match="indices must lie"):
        OPS.max_unpool2d(sim, x, np.full(x.shape, 99, dtype=np.int64), output_size=(5, 5))
    with pytest.raises(ValueError, match="rank-deficient"):
        OPS.neg_logdet(sim, np.ones((3, 1, 2, 2)))


# ------------------------------------------------------------------ NVRTC (CuPy installed, no GPU needed)

def _nvrtc_arch(nvrtc) -> int:
    """The oldest virtual architecture this NVRTC accepts (CUDA 13 rejects those below 75)."""
    try:
        return min(int(a) for a in nvrtc.getSupportedArchs())
    except (AttributeError, ValueError):  # an NVRTC too old to list them accepts 75
        return 75


def test_nvrtc_arch_is_asked_of_nvrtc():
    class Nvrtc13:
        @staticmethod
        def getSupportedArchs():
            return (120, 75, 89, 100)

    class Old:
        pass

    assert _nvrtc_arch(Nvrtc13) == 75
    assert _nvrtc_arch(Old) == 75


def test_elementwise_bodies_compile_with_nvrtc():
    pytest.importorskip("cupy")
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # NVRTC library absent
        pytest.skip(f"NVRTC unavailable: {exc}")
    from nbclust.kernels.gpu import losses, pointwise

    arch = f"-arch=compute_{_nvrtc_arch(nvrtc)}"
    for kernel in [*pointwise._K.values(), *losses._K.values()]:
        ins = [p.name for p in kernel.in_params]
        for ctype in ("float", "double"):
            src = (f"typedef {ctype} T;\nextern \"C\" __global__ void k("
                   + ", ".join(f"const T* {p}_" for p in ins) + ", T* out_, int n) {\n"
                   "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n  "
                   + " ".join(f"const T {p} = {p}_[i];" for p in ins)
                   + f"\n  T out;\n  {kernel.operation}\n  out_[i] = out;\n}}\n")
            prog = nvrtc.createProgram(src, f"{kernel.name}.cu", [], [])
            try:
                nvrtc.compileProgram(prog, [arch])
            except Exception:
                pytest.fail(f"{kernel.name} ({ctype}) does not compile:\n{nvrtc.getProgramLog(prog)}")


# ------------------------------------------------------------------ on a GPU

def _torch_run(spec, inputs, attrs, grad_out, device):
    """torch outputs and gradients of ``sum(out0 * grad_out)`` for the differentiable inputs."""
    import torch

    tensors = []
    for name, a in zip(spec.inputs, inputs):
        if a is None:
            tensors.append(None)
            continue
        t = torch.as_tensor(np.asarray(a), device=device)
        tensors.append(t.requires_grad_(True) if name in spec.differentiable else t)
    out = spec.torch(*tensors, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    wrt = [t for name, t in zip(spec.inputs, tensors) if name in spec.differentiable and t is not None]
    go = torch.as_tensor(grad_out, device=device, dtype=outs[0].dtype)
    grads = torch.autograd.grad((outs[0] * go).sum(), wrt, allow_unused=True) if wrt else ()
    it = iter(grads)
    full = tuple(next(it) if name in spec.differentiable and t is not None else None
                 for name, t in zip(spec.inputs, tensors))
    return (tuple(o.detach().cpu().numpy() for o in outs),
            tuple(None if g is None else g.detach().cpu().numpy() for g in full))


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(n for n, s in OPS.items() if s.torch is not None))
def test_cuda_matches_torch_cuda(name, dtype, monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 convolutions
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    spec, cuda = OPS[name], get_backend("cuda")
    tol = {np.float32: 1e-4, np.float64: 1e-10}[dtype]
    rng = np.random.default_rng(2)
    for case in spec.cases(rng):
        inputs = cast_inputs(case, dtype)
        outs, _ = run_op(cuda, spec, inputs, case.attrs)
        grad_out = rng.normal(size=outs[0].shape).astype(dtype)
        outs, grads = run_op(cuda, spec, inputs, case.attrs, grad_out)
        t_outs, t_grads = _torch_run(spec, inputs, case.attrs, grad_out, "cuda")
        for got, want in zip(outs, t_outs):
            if want.dtype.kind in "iu":
                np.testing.assert_array_equal(got, want)
            else:
                assert rel_err(got, want.astype(np.float64)) <= tol, f"{name} [{case.label}] forward"
        for k, (got, want) in enumerate(zip(grads, t_grads)):
            if got is not None and want is not None:
                assert rel_err(got, want.astype(np.float64)) <= tol, f"{name} [{case.label}] grad {spec.inputs[k]}"


@needs_cuda
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_runs_are_bit_identical(name):
    """Forward and backward twice on larger float32 inputs: identical bits (no order-dependent atomics)."""
    spec, cuda = OPS[name], get_backend("cuda")
    rng = np.random.default_rng(7)
    for case in spec.cases(rng):
        inputs = cast_inputs(case, np.float32)
        outs, _ = run_op(cuda, spec, inputs, case.attrs)
        grad_out = rng.normal(size=outs[0].shape).astype(np.float32)
        first = run_op(cuda, spec, inputs, case.attrs, grad_out)
        second = run_op(cuda, spec, inputs, case.attrs, grad_out)
        for a, b in zip(first[0] + first[1], second[0] + second[1]):
            assert (a is None and b is None) or np.array_equal(a, b), f"{name} [{case.label}] differs between runs"


@needs_cuda
def test_cuda_conv_stack_is_bit_identical_at_scale():
    """A batch-64 conv -> pool -> unpool -> conv_transpose chain (many colliding contributions), twice."""
    cuda = get_backend("cuda")
    xp = cuda.xp
    rng = np.random.default_rng(8)
    x = cuda.asarray(rng.normal(size=(64, 6, 28, 28)).astype(np.float32))
    w = cuda.asarray(rng.normal(size=(16, 6, 5, 5)).astype(np.float32))
    wt = cuda.asarray(rng.normal(size=(16, 6, 5, 5)).astype(np.float32))

    def run():
        y, c1 = OPS.conv2d(cuda, x, w, None, stride=(1, 1), padding=(2, 2))
        p, c2 = OPS.max_pool2d(cuda, y, kernel=(3, 3), stride=(2, 2))
        u, c3 = OPS.max_unpool2d(cuda, p, c2.aux["indices"], output_size=y.shape[2:])
        z, c4 = OPS.conv_transpose2d(cuda, u, wt, None, stride=(1, 1), padding=(2, 2), output_padding=(0, 0))
        g = xp.ones_like(z)
        g, gwt, _ = c4.backward(g)
        g, _ = c3.backward(g)
        (g,) = c2.backward(g)
        gx, gw, _ = c1.backward(g)
        return [cuda.to_numpy(a) for a in (z, gwt, gx, gw)]

    for a, b in zip(run(), run()):
        assert np.array_equal(a, b)


def _blobs(n_per=30, size=28, seed=0):
    """Four easy image clusters: bright squares in different quadrants plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    half = size // 2
    for k, (r, c) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
        base = np.zeros((size, size))
        base[r + 2:r + half - 2, c + 2:c + half - 2] = 1.0
        images.append(np.clip(base + 0.1 * rng.normal(size=(n_per, size, size)), 0, 1))
        labels += [k] * n_per
    return np.concatenate(images).astype(np.float32), np.array(labels)


SMALL_FIT = {
    "DCTL": dict(epochs=10, batch_size=32),
    "DBC": dict(pretrain_epochs=10, epochs=10, batch_size=32, n_init=5),
}


@needs_cuda
@pytest.mark.parametrize("method", sorted(SMALL_FIT))
def test_fit_on_cuda_matches_cpu(method):
    from nbclust import methods

    est_cls = methods.available().get(method)
    if est_cls is None:
        pytest.skip(f"nbclust.methods has no {method} yet")
    from nbclust.methods.metrics import cluster_acc

    x, y = _blobs()
    accs, labels = {}, {}
    for backend in ("cpu", "cuda", "cuda"):
        est = est_cls(n_clusters=4, backend=backend, random_state=0, **SMALL_FIT[method]).fit(x)
        accs[backend] = cluster_acc(y, est.labels_)
        labels.setdefault(backend, []).append(est.labels_)
    assert abs(accs["cuda"] - accs["cpu"]) <= 0.01
    np.testing.assert_array_equal(*labels["cuda"])  # determinism on the GPU
