"""Explicit 256-bit vectors inside Numba kernels (LLVM vector types through intrinsics).

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

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

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
