"""The cpu backend's runtime: the thread runner, the batch-last layout helpers, memory reuse.

Thread runner
-------------
:func:`run` runs a parallel kernel on one thread below :data:`SERIAL_BELOW` units of work.

Layout
------
Batch-last layout helpers shared by the conv kernels.

The conv kernels work on batch-last arrays (C, H, W, N): every copy and every
inner loop then runs over N contiguous values however small the image.

Memory
------
Reuse freed memory instead of returning it to the OS (glibc only).

glibc serves allocations above its mmap threshold (at most 32 MiB by default)
with a fresh ``mmap`` and unmaps them on free, so every large temporary (the
im2col matrices of the wide layers, the batch-last copies of the register-tiled
ones; DCEC's and DEPICT's 5x5 stride-2 layers had 40-63 MiB column matrices at
batch 256 before they were tiled) is page-faulted and zeroed by the kernel again
at every call: filling a fresh 40 MiB array takes 5-6.5 ms, a reused one 1.6 ms
(measured here).
Raising the mmap and trim thresholds makes freed blocks go back to malloc's
free lists, as torch's caching allocators do, at the price of the process
keeping its peak heap.  Set ``NBCLUST_KEEP_MEMORY=0`` to leave malloc alone.

Vectors
-------
Explicit 256-bit vectors inside Numba kernels (LLVM vector types through intrinsics).

LLVM's loop vectoriser only vectorises innermost loops; a register-blocked matrix kernel
needs the opposite: a dozen vector accumulators that live in registers across a long
reduction loop, each loaded operand feeding several of them.  :class:`Vec` is an LLVM
``<8 x float>`` / ``<4 x double>`` value (32 bytes: one AVX register, and 16 of them fit
AVX2's register file) that Numba carries through local variables, so such a kernel can
be written directly::

    acc = vsplat(b)                      # all lanes b
    acc = vfma(w, vload(x, i), acc)      # acc + w * x[i:i + L] (w a scalar or a Vec)
    vstore(y, j, acc)                    # y[j:j + L] = acc

``lanes(a)`` is L, the lanes of a vector of ``a``'s dtype.  Indices are element offsets
from ``a``'s first element, unchecked and without negative wrap-around (callers keep them
in range); loads and stores need no alignment.  :func:`vsum` adds the lanes in a fixed
order, so results do not depend on anything but the data.  ``vfma`` is LLVM's ``fma``
(one rounding), whatever the kernel's ``fastmath`` flags.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

SERIAL_BELOW = 1 << 18
"""Work (elements, or multiply-adds for the conv kernels) below which a parallel kernel runs on one thread."""


def run(kernel, work: int, *args):
    """``kernel(*args)``, on one thread when ``work < SERIAL_BELOW``."""
    if work >= SERIAL_BELOW:
        return kernel(*args)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


@njit(cache=True, parallel=True)
def _transpose(a, out):
    """out = a.T for 2-D ``a``, in 16 x 16 tiles (cache-friendly both ways); full tiles have
    constant trip counts, which LLVM unrolls (10-30% faster than 32 x 32 tiles with variable
    bounds).  Parallel over row strips of ``a``."""
    rows, cols = a.shape
    for strip in prange((rows + 15) // 16):
        r0 = strip * 16
        c0 = 0
        if r0 + 16 <= rows:
            while c0 + 16 <= cols:
                for c in range(16):
                    for r in range(16):
                        out[c0 + c, r0 + r] = a[r0 + r, c0 + c]
                c0 += 16
        for c in range(c0, cols):
            for r in range(r0, min(r0 + 16, rows)):
                out[c, r] = a[r, c]


def contiguous(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def batch_last(a):
    """(N, C, H, W) -> (C, H, W, N), batch innermost (any rank: the first axis moves last)."""
    out = np.empty((*a.shape[1:], a.shape[0]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(a.shape[0], -1), out.reshape(-1, a.shape[0]))
    return out


def batch_first(a):
    """(C, H, W, N) -> (N, C, H, W) (any rank: the last axis moves first)."""
    out = np.empty((a.shape[-1], *a.shape[:-1]), dtype=a.dtype)
    run(_transpose, a.size, a.reshape(-1, a.shape[-1]), out.reshape(a.shape[-1], -1))
    return out


def placed(at, top, left, hw):
    """Batch-last ``at`` (C, H, W, N) shifted by (top, left) into zeros of spatial size ``hw``
    (zero padding where the shift is positive, cropping where it is negative); ``at`` itself
    when there is nothing to do."""
    c, h, w, n = at.shape
    if top == left == 0 and tuple(hw) == (h, w):
        return at
    out = np.zeros((c, *hw, n), dtype=at.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, hw[0]), min(left + w, hw[1])
    out[:, r0:r1, c0:c1] = at[:, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 1 << 30  # 1 GiB: any single array of the engine's working set


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if done."""
    if os.environ.get("NBCLUST_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


# ------------------------------------------------------------------ vectors
VECTOR_BYTES = 32
"""The vector width.  64 (AVX-512 registers) works as well (the tests pass with it), but on this
project's Zen 4 machine, which splits 512-bit operations in two, it made DEPICT's and DCEC's
training steps 6-16% slower (the batch padded to 16 lanes instead of 8, twice the packed data);
a CPU with full-rate 512-bit FMAs may prefer it."""


class Vec(types.Type):
    """A vector of ``VECTOR_BYTES // itemsize`` lanes of a float dtype."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec({dtype}x{self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _vec_of(dtype):
    if dtype not in (types.float32, types.float64):
        raise TypeError(f"no vector type for {dtype}")
    return Vec(dtype)


def _element_pointer(context, builder, array_type, array, index):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


def _splat(builder, llvm_type, lanes, scalar):
    v = builder.insert_element(ir.Constant(llvm_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(v, ir.Constant(llvm_type, ir.Undefined), zeros)


@intrinsic
def lanes(typingctx, a):
    """The number of lanes of a vector of ``a``'s dtype (a compile-time constant)."""
    n = _vec_of(a.dtype).lanes

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), n)
    return types.intp(a), codegen


@intrinsic
def vload(typingctx, a, index):
    """a[index:index + L] as a vector (``a`` a C-contiguous array)."""
    vec = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        p = builder.bitcast(p, context.get_value_type(vec).as_pointer())
        return builder.load(p, align=a.dtype.bitwidth // 8)
    return vec(a, index), codegen


@intrinsic
def vstore(typingctx, a, index, v):
    """a[index:index + L] = v."""
    if v != _vec_of(a.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        p = builder.bitcast(p, context.get_value_type(v).as_pointer())
        builder.store(args[2], p, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(a, index, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """A vector with every lane ``x`` (a float32 or float64 scalar)."""
    vec = _vec_of(x)

    def codegen(context, builder, sig, args):
        return _splat(builder, context.get_value_type(vec), vec.lanes, args[0])
    return vec(x), codegen


@intrinsic
def vzero(typingctx, a):
    """A zero vector of ``a``'s dtype."""
    vec = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vec), None)
    return vec(a), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c with one rounding; ``a`` a vector or a scalar of the same dtype (broadcast)."""
    if not isinstance(c, Vec) or b != c or (a != c and a != c.dtype):
        return None

    def codegen(context, builder, sig, args):
        llvm_type = context.get_value_type(c)
        x = args[0] if isinstance(sig.args[0], Vec) else _splat(builder, llvm_type, c.lanes, args[0])
        name = f"llvm.fma.v{c.lanes}f{c.dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llvm_type, [llvm_type] * 3), name)
        return builder.call(fma, [x, args[1], args[2]])
    return c(a, b, c), codegen


@intrinsic
def vsum(typingctx, v):
    """The lanes of ``v`` added left to right."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        total = builder.extract_element(args[0], ir.Constant(ir.IntType(32), 0))
        for i in range(1, v.lanes):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(ir.IntType(32), i)))
        return total
    return v.dtype(v), codegen


@intrinsic
def prefetch(typingctx, a, index):
    """Hint the cache line of a[index] into the second-level cache (x86 ``prefetcht1``); a no-op
    for the results, and harmless for an index past the data (prefetches do not fault)."""
    def codegen(context, builder, sig, args):
        p = builder.bitcast(_element_pointer(context, builder, sig.args[0], args[0], args[1]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(a, index), codegen
