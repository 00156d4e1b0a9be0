"""LLVM intrinsics the scans use: hardware popcount, a cache prefetch hint and the float16
to float32 conversion."""

from __future__ import annotations

from llvmlite import binding as _llvm
from llvmlite import ir as _ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: fast-math flags that let LLVM vectorise float reductions; no "ninf"/"nnan", because the
#: top-k heaps start at -inf and must compare it correctly
_VECTORISE = {"reassoc", "contract"}


@intrinsic
def popcount64(typingctx, word):
    """Hardware population count of a uint64 (LLVM ``ctpop``, one instruction on x86-64)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


#: LLVM's name of the prefetch intrinsic for an i8 pointer (opaque pointers from LLVM 17)
_PREFETCH_NAME = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, array, i, j):
    """Ask the CPU to start loading the cache line of ``array[i, j]`` (a hint: results never
    depend on it). The tiled 1-bit pass streams faster than the hardware prefetcher guesses."""
    sig = types.void(array, i, j)

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1], args[2]],
                                       wraparound=False)
        byte_ptr = _ir.IntType(8).as_pointer()
        i32 = _ir.IntType(32)
        fnty = _ir.FunctionType(_ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        # read, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), _ir.Constant(i32, 0),
                          _ir.Constant(i32, 3), _ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def half_to_float(typingctx, bits):
    """The float32 value of a float16 given by its 16 bits (LLVM ``fpext half``: one
    ``vcvtph2ps`` per 8 or 16 values on x86 with F16C). numba has no float16 type on the CPU,
    and numpy's float16 -> float32 cast cost a rerank of 30 rows about 20 us."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

    return sig, codegen


def _loader(value_type: types.Type, llvm_type: _ir.Type):
    """An intrinsic ``load(address, index)``: the ``index``-th value of ``value_type`` at the
    int64 ``address`` (a load through a raw pointer: the caller keeps the memory alive and the
    index in range)."""

    @intrinsic
    def load(typingctx, address, index):
        sig = value_type(types.int64, types.int64)

        def codegen(context, builder, signature, args):
            pointer = builder.inttoptr(args[0], llvm_type.as_pointer())
            return builder.load(builder.gep(pointer, [args[1]]))

        return sig, codegen

    return load


#: the float32 at ``address + 4 * index`` (rows of arrays the kernels reach by address)
load_float32 = _loader(types.float32, _ir.FloatType())
#: the 16 bits of the float16 at ``address + 2 * index``
load_half_bits = _loader(types.uint16, _ir.IntType(16))


@intrinsic
def prefetch_address(typingctx, address):
    """:func:`_prefetch` of the cache line at the int64 ``address`` (a hint: it never faults)."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        byte_ptr = _ir.IntType(8).as_pointer()
        i32 = _ir.IntType(32)
        fnty = _ir.FunctionType(_ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        builder.call(fn, [builder.inttoptr(args[0], byte_ptr), _ir.Constant(i32, 0),
                          _ir.Constant(i32, 3), _ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def weighted_popcount8(typingctx, word, planes, i):
    """``sum_j popcount(word & planes[i, j]) << j`` for ``j < 8``: a uint64 against the
    eight bit planes of row ``i`` of a C-contiguous (rows, 8) uint64 array, as one 8-lane
    vector operation (an AND, a ``vpopcntq`` on AVX-512, per-lane shifts, a sum) instead of
    eight scalar popcounts, shifts and adds: a 4-bit code row scored against an 8-bit query
    took 73 against 23 ns in this form. The caller guarantees the row has eight columns."""
    if not (isinstance(planes, types.Array) and planes.ndim == 2 and planes.layout == "C"
            and planes.dtype == types.uint64):
        return None
    sig = types.uint64(types.uint64, planes, types.intp)

    def codegen(context, builder, signature, args):
        array_type = signature.args[1]
        array = context.make_array(array_type)(context, builder, args[1])
        zero = context.get_constant(types.intp, 0)
        first = cgutils.get_item_pointer(context, builder, array_type, array, [args[2], zero],
                                         wraparound=False)
        i64, i32 = _ir.IntType(64), _ir.IntType(32)
        lanes = _ir.VectorType(i64, 8)
        row = builder.load(builder.bitcast(first, lanes.as_pointer()), align=8)
        undefined = _ir.Constant(lanes, _ir.Undefined)
        one = builder.insert_element(undefined, args[0], _ir.Constant(i32, 0))
        spread = builder.shuffle_vector(one, undefined,
                                        _ir.Constant(_ir.VectorType(i32, 8), [0] * 8))
        popcount = cgutils.get_or_insert_function(
            builder.module, _ir.FunctionType(lanes, [lanes]), "llvm.ctpop.v8i64")
        counts = builder.call(popcount, [builder.and_(spread, row)])
        weighted = builder.shl(counts, _ir.Constant(lanes, list(range(8))))
        total = cgutils.get_or_insert_function(
            builder.module, _ir.FunctionType(i64, [lanes]), "llvm.vector.reduce.add.v8i64")
        return builder.call(total, [weighted])

    return sig, codegen
