"""numba kernels: bit packing, popcount scans, code fitting and a bounded top-k.

Plain module-level functions on arrays, compiled once with ``cache=True``. They never raise on
user data and know nothing of documents or files: the Python layers validate before calling.

Layout of a B-bit code: for each row, ``B`` bit planes of ``W = ceil(dim / 64)`` uint64 words
(plane ``b`` holds bit ``b`` of every coordinate's level). Inner products against a query that
is quantized to ``Bq`` bits are then sums of ``popcount(code_plane & query_plane) << (b + j)``,
computed with the CPU's popcount instruction. Segment codes (the default ``saq`` codec) are
laid out differently, with a bit count per segment: see "segment codes" below.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir as _ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .parallel import configure_threading_layer

configure_threading_layer()  # before any parallel kernel runs (see parallel.py)

_NO_ROW = -1
#: rows per tile of the in-RAM layout of segment codes
TILE_ROWS = 256
_TILE_SHIFT = 8
_TILE_MASK = TILE_ROWS - 1
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


# --------------------------------------------------------------------------- bit packing


@njit(inline="always")
def _pack_row(levels, row, bits, out):
    one = np.uint64(1)
    for b in range(bits):
        for word in range(out.shape[2]):
            start = word << 6
            stop = min(start + 64, levels.shape[1])
            packed = np.uint64(0)
            for i in range(start, stop):
                packed |= ((np.uint64(levels[row, i]) >> np.uint64(b)) & one) << np.uint64(i - start)
            out[row, b, word] = packed


@njit(cache=True, nogil=True)
def pack_planes(levels, bits, words):
    """Pack (n, dim) uint8 levels into (n, bits, words) uint64 bit planes, on this thread
    (queries: a thread pool would cost more than the work)."""
    out = np.zeros((levels.shape[0], bits, words), dtype=np.uint64)
    for r in range(levels.shape[0]):
        _pack_row(levels, r, bits, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def pack_planes_parallel(levels, bits, words):
    """:func:`pack_planes` for large batches, rows spread over all threads."""
    out = np.zeros((levels.shape[0], bits, words), dtype=np.uint64)
    for r in prange(levels.shape[0]):
        _pack_row(levels, r, bits, out)
    return out


@njit(cache=True, nogil=True)
def unpack_planes(planes, dim):
    """Inverse of :func:`pack_planes`: (n, bits, words) uint64 -> (n, dim) uint8 levels."""
    n, bits, _ = planes.shape
    out = np.zeros((n, dim), dtype=np.uint8)
    for r in range(n):
        for i in range(dim):
            word = i >> 6
            shift = np.uint64(i & 63)
            value = 0
            for b in range(bits):
                if (planes[r, b, word] >> shift) & np.uint64(1):
                    value |= 1 << b
            out[r, i] = value
    return out


# --------------------------------------------------------------------------- rotation


@njit(cache=True, nogil=True)
def orthonormal_rows(matrix):
    """Gram-Schmidt (each row orthogonalised twice, for float64 stability) of a square matrix.

    On a Gaussian matrix this gives a Haar-random rotation, like a QR with a positive diagonal,
    but on one thread: a LAPACK QR with a threaded BLAS can stall for seconds on a busy machine.
    """
    q = matrix.astype(np.float64)
    n = q.shape[0]
    for j in range(n):
        for _ in range(2):
            for i in range(j):
                dot = 0.0
                for c in range(q.shape[1]):
                    dot += q[i, c] * q[j, c]
                for c in range(q.shape[1]):
                    q[j, c] -= dot * q[i, c]
        norm = 0.0
        for c in range(q.shape[1]):
            norm += q[j, c] * q[j, c]
        norm = np.sqrt(norm)
        for c in range(q.shape[1]):
            q[j, c] /= norm
    return q


# --------------------------------------------------------------------------- code fitting


@njit(inline="always")
def _round_levels(row, scale, top, mid, levels_out):
    """Uniform levels of ``row / scale`` centred on ``mid``; returns <x, row> and ||x||^2."""
    ip = 0.0
    sq = 0.0
    for i in range(row.shape[0]):
        level = np.floor(row[i] / scale + mid + 0.5)
        if level < 0.0:
            level = 0.0
        elif level > top:
            level = top
        levels_out[i] = np.uint8(level)
        x = level - mid
        ip += x * row[i]
        sq += x * x
    return ip, sq


@njit(cache=True, nogil=True, parallel=True)
def fit_levels(rows, bits, n_scales, n_sweeps):
    """Choose B-bit levels per row that maximise cos(level vector, row).

    The level vector is ``x = level - (2**bits - 1) / 2``. A few candidate scales are tried (the
    extended-RaBitQ rescaling idea), then coordinate descent moves single levels by one step
    while the cosine improves (SAQ's code adjustment). Returns levels (n, dim) uint8 and, per
    row, the sums the correction factors need: ``<x, row>``, ``<x1, row>`` where
    ``x1 = +-1/2`` by the top bit of the level (the top plane as a 1-bit code), and ``|row|^2``.
    """
    n, dim = rows.shape
    top = float((1 << bits) - 1)
    mid = top / 2.0
    half = 1 << (bits - 1)
    levels = np.zeros((n, dim), dtype=np.uint8)
    x_dot_row = np.zeros(n, dtype=np.float64)
    x1_dot_row = np.zeros(n, dtype=np.float64)
    norm_sq = np.zeros(n, dtype=np.float64)
    for r in prange(n):
        row = rows[r]
        x1 = 0.0
        sq_norm = 0.0
        for i in range(dim):
            sq_norm += float(row[i]) * row[i]
        norm_sq[r] = sq_norm
        peak = 0.0
        for i in range(dim):
            a = abs(row[i])
            if a > peak:
                peak = a
        if peak == 0.0:
            for i in range(dim):
                levels[r, i] = np.uint8(mid + 0.5)
            continue
        trial = np.empty(dim, dtype=np.uint8)
        best_cos = -2.0
        best_ip = 0.0
        best_sq = 1.0
        for s in range(n_scales):
            # Fraction of the peak that maps to the outermost level: from 1.0 down to 0.4.
            frac = 1.0 - 0.6 * s / max(n_scales - 1, 1)
            scale = peak * frac / mid
            ip, sq = _round_levels(row, scale, top, mid, trial)
            cos = ip / np.sqrt(sq) if sq > 0 else -1.0
            if cos > best_cos:
                best_cos = cos
                best_ip = ip
                best_sq = sq
                levels[r, :] = trial
            if bits == 1:
                break
        if bits > 1:
            ip = best_ip
            sq = best_sq
            for _ in range(n_sweeps):
                changed = False
                for i in range(dim):
                    # move one level up or down when that raises cos = ip / sqrt(sq);
                    # compared as ip'^2 * sq > ip^2 * sq' (both ip > 0) to avoid square roots
                    x = float(levels[r, i]) - mid
                    v = row[i]
                    step = 1.0 if v > 0 else -1.0
                    if (step > 0 and levels[r, i] < top) or (step < 0 and levels[r, i] > 0):
                        new_ip = ip + step * v
                        new_sq = sq + 2.0 * step * x + 1.0
                        if new_ip * new_ip * sq > ip * ip * new_sq:
                            levels[r, i] = np.uint8(levels[r, i] + step)
                            ip = new_ip
                            sq = new_sq
                            changed = True
                if not changed:
                    break
            best_ip = ip
        x_dot_row[r] = best_ip
        for i in range(dim):
            x1 += row[i] if levels[r, i] >= half else -row[i]
        x1_dot_row[r] = 0.5 * x1
    return levels, x_dot_row, x1_dot_row, norm_sq


# --------------------------------------------------------------------------- top-k heap


@njit(inline="always")
def _heap_offer(heap_scores, heap_rows, size, score, row):
    """Offer (score, row) to a min-heap of the best scores; returns the new size."""
    capacity = heap_scores.shape[0]
    if size < capacity:
        pos = size
        size += 1
        while pos > 0:
            parent = (pos - 1) >> 1
            if heap_scores[parent] <= score:
                break
            heap_scores[pos] = heap_scores[parent]
            heap_rows[pos] = heap_rows[parent]
            pos = parent
        heap_scores[pos] = score
        heap_rows[pos] = row
        return size
    if score <= heap_scores[0]:
        return size
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        right = left + 1
        if right < size and heap_scores[right] < heap_scores[left]:
            child = right
        if heap_scores[child] >= score:
            break
        heap_scores[pos] = heap_scores[child]
        heap_rows[pos] = heap_rows[child]
        pos = child
    heap_scores[pos] = score
    heap_rows[pos] = row
    return size


@njit(inline="always")
def _heap_init(heap_scores, heap_rows):
    for i in range(heap_scores.shape[0]):
        heap_scores[i] = -np.inf
        heap_rows[i] = _NO_ROW



# --------------------------------------------------------------------------- scans
#
# Each code family has an inline score function, a serial ``*_task`` that scans the candidate
# items [start, stop) for query ``q`` into one bounded heap, and a ``*_parallel`` driver that
# runs ``n_queries * n_chunks`` tasks, task (q, c) filling heap ``out_scores[q, c]``. One query
# over many rows uses several chunks (both cores); a batch uses one chunk per query. Small scans
# call the task directly: waking a thread pool costs more than they do, and far more when the
# cores are busy (an embedding model in the same process). Candidates are either all rows
# ``0..n_items`` (skipping removed rows and rows outside ``mask``) or, for selective filters,
# the explicit ``rows`` list.


@njit(inline="always")
def _row_at(i, rows, use_rows):
    if use_rows:
        return rows[i]
    return i


@njit(inline="always")
def _chunk_bounds(chunk, n_chunks, n_items):
    """Items of ``chunk``: an even share, in whole tiles of TILE_ROWS (see segment codes)."""
    size = (((n_items + n_chunks - 1) // n_chunks + _TILE_MASK) >> _TILE_SHIFT) << _TILE_SHIFT
    start = min(n_items, chunk * size)
    return start, min(n_items, start + size)


@njit(inline="always")
def _finish(ip, factors, row, metric_l2, l2_col, q_const):
    """Turn an estimated inner product with the residual into a higher-is-better score (for L2
    the squared residual norm is in column ``l2_col`` of the factors)."""
    if metric_l2:
        return -(factors[row, l2_col] + q_const - 2.0 * ip)
    return ip + q_const


@njit(inline="always")
def _level_dot_q4(codes, row, qplanes):
    """(<level, q_u>, sum of levels) for a 4-bit query: the unrolled RaBitQ case."""
    acc = np.uint64(0)
    level_sum = np.uint64(0)
    for b in range(codes.shape[1]):
        shift = np.uint64(b)
        for w in range(codes.shape[2]):
            cw = codes[row, b, w]
            level_sum += popcount64(cw) << shift
            acc += (popcount64(cw & qplanes[w, 0])
                    + (popcount64(cw & qplanes[w, 1]) << np.uint64(1))
                    + (popcount64(cw & qplanes[w, 2]) << np.uint64(2))
                    + (popcount64(cw & qplanes[w, 3]) << np.uint64(3))) << shift
    return acc, level_sum


@njit(inline="always")
def _level_dot(codes, row, qplanes):
    """(<level, q_u>, sum of levels) for any number of query planes."""
    acc = np.uint64(0)
    level_sum = np.uint64(0)
    for b in range(codes.shape[1]):
        for w in range(codes.shape[2]):
            cw = codes[row, b, w]
            level_sum += popcount64(cw) << np.uint64(b)
            for j in range(qplanes.shape[1]):
                acc += popcount64(cw & qplanes[w, j]) << np.uint64(b + j)
    return acc, level_sum


@njit(inline="always")
def _plane_score(codes, row, qplanes, q_step, q_low, level_mid, q_sum):
    """<level - mid, q'> for bit-plane codes against a query quantized to bit planes
    ``qplanes`` (words, query_bits): ``q' ~ q_low + q_step * q_u``."""
    if qplanes.shape[1] == 4:
        acc, level_sum = _level_dot_q4(codes, row, qplanes)
    else:
        acc, level_sum = _level_dot(codes, row, qplanes)
    return q_step * np.float64(acc) + q_low * np.float64(level_sum) - level_mid * q_sum


@njit(inline="always")
def _top_plane_ip(codes, row, query4):
    """Pieces of <top level bit, q4>: the popcount sum of the code's top plane against the
    4-bit query ``query4`` (words, 4), and the plane's popcount."""
    top = codes.shape[1] - 1
    acc = np.uint64(0)
    ones = np.uint64(0)
    for w in range(codes.shape[2]):
        cw = codes[row, top, w]
        ones += popcount64(cw)
        acc += (popcount64(cw & query4[w, 0])
                + (popcount64(cw & query4[w, 1]) << np.uint64(1))
                + (popcount64(cw & query4[w, 2]) << np.uint64(2))
                + (popcount64(cw & query4[w, 3]) << np.uint64(3)))
    return np.float64(acc), np.float64(ones)


#: rows scored per block: a first tight loop estimates the block, a second one selects
_BLOCK = 256


@njit(inline="always")
def _top_plane_estimates(codes, factors, rows, use_rows, start, count, query4, step4, low4,
                         total, prune_col, bound, out):
    """Upper bounds (in inner-product units) of a block of rows from their top planes."""
    for j in range(count):
        row = _row_at(start + j, rows, use_rows)
        acc, ones = _top_plane_ip(codes, row, query4)
        factor = factors[row, prune_col]
        out[j] = factor * (step4 * acc + low4 * ones - 0.5 * total) + abs(factor) * bound


@njit(inline="always")
def _full_estimates(codes, factors, rows, use_rows, start, count, query, step, low, level_mid,
                    total, out):
    for j in range(count):
        row = _row_at(start + j, rows, use_rows)
        out[j] = factors[row, 0] * _plane_score(codes, row, query, step, low, level_mid, total)


@njit(cache=True, nogil=True)
def scan_planes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                     start, stop, q, qplanes, q_step, q_low, q_sum, q_const, level_mid, metric_l2,
                     prune_col, q_bound, heap_s, heap_r):
    """Bit-plane codes (n, bits, words) against query ``q`` of (q, words, query_bits) planes.

    With ``prune_col >= 0`` (multi-bit codes), each row is first estimated from its top bit
    plane alone, a plain 1-bit RaBitQ code whose correction factor is ``factors[:, prune_col]``,
    and the full code is scored only when that estimate plus its error bound
    (``|factor| * q_bound[q]``) could still enter the heap. The top plane is a quarter or less
    of the code, so most rows cost a 1-bit scan. Rows go by blocks: a branch-free loop computes
    the block's estimates, then a second loop filters and selects (LLVM optimises the popcount
    loops far better without branches around them).
    """
    _heap_init(heap_s, heap_r)
    size = 0
    capacity = heap_s.shape[0]
    query = qplanes[q]
    step, low, total, const = q_step[q], q_low[q], q_sum[q], q_const[q]
    first = qplanes.shape[2] - 4
    query4 = np.ascontiguousarray(query[:, first:])  # the 4 most significant query planes
    scale4 = np.float64(1 << first)
    step4 = step * scale4
    low4 = low + step * (scale4 - 1.0) / 2.0
    bound = q_bound[q]
    estimates = np.empty(_BLOCK, dtype=np.float64)
    for block in range(start, stop, _BLOCK):
        count = min(_BLOCK, stop - block)
        pruning = prune_col >= 0 and size == capacity
        if pruning:
            _top_plane_estimates(codes, factors, rows, use_rows, block, count, query4, step4,
                                 low4, total, prune_col, bound, estimates)
        else:
            _full_estimates(codes, factors, rows, use_rows, block, count, query, step, low,
                            level_mid, total, estimates)
        for j in range(count):
            row = _row_at(block + j, rows, use_rows)
            # (two plain ifs: a helper function here slows the whole scan ten-fold)
            if check_removed and removed[row]:
                continue
            if check_mask and not mask[row]:
                continue
            ip = estimates[j]
            if pruning:
                if _finish(ip, factors, row, metric_l2, 1, const) <= heap_s[0]:
                    continue
                ip = factors[row, 0] * _plane_score(codes, row, query, step, low, level_mid,
                                                    total)
            size = _heap_offer(heap_s, heap_r, size, _finish(ip, factors, row, metric_l2, 1,
                                                             const), row)


@njit(cache=True, nogil=True, parallel=True)
def scan_planes_parallel(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                         n_items, qplanes, q_step, q_low, q_sum, q_const, level_mid, metric_l2,
                         prune_col, q_bound, out_scores, out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        start, stop = _chunk_bounds(chunk, n_chunks, n_items)
        scan_planes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                         start, stop, q, qplanes, q_step, q_low, q_sum, q_const, level_mid,
                         metric_l2, prune_col, q_bound, out_scores[q, chunk], out_rows[q, chunk])


@njit(cache=True, nogil=True, fastmath=_VECTORISE)
def scan_bytes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows, start,
                    stop, q, table, queries, q_const, metric_l2, heap_s, heap_r):
    """One byte per coordinate decoded through a 256-entry ``table`` (int8, float8)."""
    _heap_init(heap_s, heap_r)
    size = 0
    dim = codes.shape[1]
    query = queries[q]
    const = q_const[q]
    for i in range(start, stop):
        row = _row_at(i, rows, use_rows)
        if check_removed and removed[row]:
            continue
        if check_mask and not mask[row]:
            continue
        acc = np.float32(0.0)
        for d in range(dim):
            acc += table[codes[row, d]] * query[d]
        ip = factors[row, 0] * acc
        size = _heap_offer(heap_s, heap_r, size, _finish(ip, factors, row, metric_l2, 1, const), row)


@njit(cache=True, nogil=True, parallel=True)
def scan_bytes_parallel(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                        n_items, table, queries, q_const, metric_l2, out_scores, out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        start, stop = _chunk_bounds(chunk, n_chunks, n_items)
        scan_bytes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                        start, stop, q, table, queries, q_const, metric_l2, out_scores[q, chunk],
                        out_rows[q, chunk])


#: serial task and parallel driver of each code family
SCANS = {
    "planes": (scan_planes_task, scan_planes_parallel),
    "bytes": (scan_bytes_task, scan_bytes_parallel),
}


# --------------------------------------------------------------------------- segment codes
#
# Segment codes (``SegmentCodec``): the rotated vector is cut into segments of whole 64-bit
# words, segment ``s`` gets ``seg_bits[s]`` bits per coordinate (0 = not coded) and its own
# scale. Plane ``b`` (bit ``b`` of the levels) of segment ``s`` is ``words_s`` words long and
# starts at word ``plane_at[s, b]`` of the row. The layout puts every segment's top plane (its
# sign plane) first: the first ``n_sign`` words of a row are its 1-bit code.
# ``seg_starts`` (S + 1) holds the segments' first dimensions (multiples of 64).
#
# In RAM the rows are stored in tiles of ``TILE_ROWS`` rows (``write_tiles``): a tile holds
# word 0 of its rows' sign planes side by side, then word 1, ... then the rest of each row.
# The 1-bit pass then reads each sign word of 256 rows as one run, which the compiler turns
# into vector instructions (vpopcntq on AVX-512): twice as fast as row by row.


@njit(cache=True, nogil=True)
def write_tiles(tiles, start, codes, n_sign):
    """Store code rows (n, width) as rows ``start..`` of ``tiles`` (n_tiles, TILE_ROWS * width):
    within a tile, word ``i < n_sign`` of lane ``l`` is at ``i * TILE_ROWS + l``, and the other
    words of lane ``l`` follow each other from ``n_sign * TILE_ROWS + l * (width - n_sign)``."""
    width = codes.shape[1]
    rest = width - n_sign
    for j in range(codes.shape[0]):
        row = start + j
        tile = row >> _TILE_SHIFT
        lane = row & _TILE_MASK
        for i in range(n_sign):
            tiles[tile, (i << _TILE_SHIFT) + lane] = codes[j, i]
        base = (n_sign << _TILE_SHIFT) + lane * rest
        for i in range(rest):
            tiles[tile, base + i] = codes[j, n_sign + i]


@njit(cache=True, nogil=True)
def read_tiles(tiles, rows, n_sign, width):
    """Code rows (len(rows), width) back from the tiled layout of :func:`write_tiles`."""
    out = np.empty((rows.shape[0], width), dtype=tiles.dtype)
    for j in range(rows.shape[0]):
        for i in range(width):
            out[j, i] = _code_word(tiles, rows[j], i, n_sign, width)
    return out


@njit(inline="always")
def _code_word(tiles, row, i, n_sign, width):
    """Word ``i`` of code row ``row`` in the tiled layout."""
    tile = row >> _TILE_SHIFT
    lane = row & _TILE_MASK
    if i < n_sign:
        return tiles[tile, (i << _TILE_SHIFT) + lane]
    return tiles[tile, (n_sign << _TILE_SHIFT) + lane * (width - n_sign) + (i - n_sign)]


@njit(inline="always", fastmath=_VECTORISE)
def _level(value, inv_scale, mid, top):
    """The level of ``value`` on a grid of ``1 / inv_scale`` steps centred on ``mid``,
    clipped to [0, top]."""
    return min(max(np.floor(value * inv_scale + mid + 0.5), 0.0), top)


#: rows per task of the segment encoder (each task reuses one row of levels)
_ENCODE_BLOCK = 64


@njit(cache=True, nogil=True, parallel=True, fastmath=_VECTORISE)
def encode_segments(rows, seg_starts, seg_bits, n_scales, plane_at, row_words):
    """Segment codes of rotated rows: per row and segment, levels that point as closely as
    possible along the row's segment, packed straight into bit planes.

    As :func:`fit_levels`, but each segment has its own bit count and scale, the best of
    ``n_scales`` candidates (the outermost level at 100% down to 40% of the segment's peak),
    chosen by the cosine before any level is written. Returns the codes (n, row_words) uint64
    (see :func:`pack_segments`) and per (row, segment): ``<x_s, r_s>``, ``|r_s|^2`` and
    ``<x1_s, r_s>`` where ``x1 = +-1/2`` by the level's top bit (the segment's sign plane).
    No (n, dim) array of levels is made: at 100k rows it was 38 MB of fresh memory.
    """
    n, dim = rows.shape
    n_seg = seg_bits.shape[0]
    codes = np.zeros((n, row_words), dtype=np.uint64)
    x_dot = np.zeros((n, n_seg), dtype=np.float64)
    r_sq = np.zeros((n, n_seg), dtype=np.float64)
    sign_dot = np.zeros((n, n_seg), dtype=np.float64)
    for block in prange((n + _ENCODE_BLOCK - 1) // _ENCODE_BLOCK):
        levels = np.zeros(dim, dtype=np.uint8)
        for r in range(block * _ENCODE_BLOCK, min(n, (block + 1) * _ENCODE_BLOCK)):
            row = rows[r]
            for s in range(n_seg):
                lo, hi, bits = seg_starts[s], seg_starts[s + 1], seg_bits[s]
                sq = 0.0
                peak = 0.0
                for i in range(lo, hi):
                    v = float(row[i])
                    sq += v * v
                    peak = max(peak, abs(v))
                r_sq[r, s] = sq
                levels[lo:hi] = 0
                if bits == 0 or peak == 0.0:
                    continue
                top = float((1 << bits) - 1)
                mid = top / 2.0
                best_cos = -2.0
                best_scale = mid / peak
                for c in range(n_scales if bits > 1 else 1):
                    scale = mid / (peak * (1.0 - 0.6 * c / max(n_scales - 1, 1)))  # inverse step
                    ip = 0.0
                    xx = 0.0
                    for i in range(lo, hi):
                        x = _level(row[i], scale, mid, top) - mid
                        ip += x * row[i]
                        xx += x * x
                    cos = ip / np.sqrt(xx) if xx > 0 else -1.0
                    if cos > best_cos:
                        best_cos = cos
                        best_scale = scale
                half = 1 << (bits - 1)
                ip = 0.0
                signs = 0.0
                for i in range(lo, hi):
                    level = _level(row[i], best_scale, mid, top)
                    levels[i] = np.uint8(level)
                    ip += (level - mid) * row[i]
                    signs += row[i] if level >= half else -row[i]
                x_dot[r, s] = ip
                sign_dot[r, s] = 0.5 * signs
            _pack_segment_row(levels, seg_starts, seg_bits, plane_at, codes[r])
    return codes, x_dot, r_sq, sign_dot


@njit(inline="always")
def _pack_segment_row(levels, seg_starts, seg_bits, plane_at, out):
    """Pack one row of levels (dim,) into its segment bit planes ``out`` (row_words,)."""
    one = np.uint64(1)
    for s in range(seg_bits.shape[0]):
        lo, hi = seg_starts[s], seg_starts[s + 1]
        words = (hi - lo + 63) >> 6
        for b in range(seg_bits[s]):
            for w in range(words):
                start = lo + (w << 6)
                packed = np.uint64(0)
                for i in range(start, min(start + 64, hi)):
                    packed |= ((np.uint64(levels[i]) >> np.uint64(b)) & one) << np.uint64(i - start)
                out[plane_at[s, b] + w] = packed


@njit(cache=True, nogil=True)
def pack_segments(levels, seg_starts, seg_bits, plane_at, row_words):
    """Pack (n, dim) levels into (n, row_words) uint64 rows of segment bit planes."""
    out = np.zeros((levels.shape[0], row_words), dtype=np.uint64)
    for r in range(levels.shape[0]):
        _pack_segment_row(levels[r], seg_starts, seg_bits, plane_at, out[r])
    return out


@njit(cache=True, nogil=True)
def unpack_segments(codes, seg_starts, seg_bits, plane_at, dim):
    """Inverse of :func:`pack_segments` (uncoded segments read as level 0)."""
    n = codes.shape[0]
    out = np.zeros((n, dim), dtype=np.uint8)
    for r in range(n):
        for s in range(seg_bits.shape[0]):
            lo, hi = seg_starts[s], seg_starts[s + 1]
            for i in range(lo, hi):
                w = (i - lo) >> 6
                shift = np.uint64((i - lo) & 63)
                value = 0
                for b in range(seg_bits[s]):
                    if (codes[r, plane_at[s, b] + w] >> shift) & np.uint64(1):
                        value |= 1 << b
                out[r, i] = value
    return out


#: 2**(e - 25) for the exponent field e of a float16 (e = 0: subnormal scale 2**-24)
_HALF_SCALE = np.array([2.0 ** -24] + [2.0 ** (e - 25) for e in range(1, 32)])


@njit(inline="always")
def _half_ratio(halves, row, s):
    """Segment ``s``'s factor ratio: a non-negative float16, read from the uint16 view of the
    factor columns (after column 0, which is the float32 sign-plane factor)."""
    h = halves[row, 2 + s]
    exponent = (h >> np.uint16(10)) & np.uint16(31)
    mantissa = np.uint32(h & np.uint16(1023)) | (np.uint32(exponent != 0) << np.uint32(10))
    return np.float64(mantissa) * _HALF_SCALE[exponent]


@njit(inline="always")
def _plane_dot8(cw, query, w):
    """sum_j popcount(cw & query[w, j]) << j for an 8-bit query (unrolled)."""
    return (popcount64(cw & query[w, 0])
            + (popcount64(cw & query[w, 1]) << np.uint64(1))
            + (popcount64(cw & query[w, 2]) << np.uint64(2))
            + (popcount64(cw & query[w, 3]) << np.uint64(3))
            + (popcount64(cw & query[w, 4]) << np.uint64(4))
            + (popcount64(cw & query[w, 5]) << np.uint64(5))
            + (popcount64(cw & query[w, 6]) << np.uint64(6))
            + (popcount64(cw & query[w, 7]) << np.uint64(7)))


@njit(inline="always")
def _segment_score(codes, factors, halves, row, query, step, low, seg_sums, seg_starts,
                   seg_bits, plane_at, seg_mid, n_sign, width):
    """Estimated <r, q> of one row (tiled layout): per segment, factor * <level - mid, q'>."""
    total = 0.0
    eight = query.shape[1] == 8
    for s in range(seg_bits.shape[0]):
        bits = seg_bits[s]
        if bits == 0:
            continue
        first = seg_starts[s] >> 6
        words = (seg_starts[s + 1] - seg_starts[s] + 63) >> 6
        acc = np.uint64(0)
        level_sum = np.uint64(0)
        for b in range(bits):
            base = plane_at[s, b]
            shift = np.uint64(b)
            for w in range(words):
                cw = _code_word(codes, row, base + w, n_sign, width)
                level_sum += popcount64(cw) << shift
                if eight:
                    acc += _plane_dot8(cw, query, first + w) << shift
                else:
                    for j in range(query.shape[1]):
                        acc += popcount64(cw & query[first + w, j]) << np.uint64(b + j)
        # (through int64: converting a uint64 to float takes several instructions on x86)
        dot = (step * np.float64(np.int64(acc)) + low * np.float64(np.int64(level_sum))
               - seg_mid[s] * seg_sums[s])
        total += _half_ratio(halves, row, s) * dot
    return np.float64(factors[row, 0]) * total


@njit(inline="always")
def _sign_dot(cw, sign_query, i):
    """sum_j popcount(cw & sign_query[i, j]) << j for the 4-bit sign-pass query."""
    return (popcount64(cw & sign_query[i, 0])
            + (popcount64(cw & sign_query[i, 1]) << np.uint64(1))
            + (popcount64(cw & sign_query[i, 2]) << np.uint64(2))
            + (popcount64(cw & sign_query[i, 3]) << np.uint64(3)))


#: tiles ahead of the 1-bit pass whose sign words and factors are prefetched: at 1M rows (out
#: of cache) 1 and 2 took the pass from 6.4 to 5.0 / 4.8 ms; in cache it changes nothing
_PREFETCH_TILES = 2


@njit(inline="always")
def _prefetch_tile(codes, factors, tile, n_sign):
    """Prefetch the sign words and factors of ``tile`` (if it exists)."""
    if tile >= codes.shape[0]:
        return
    for at in range(0, n_sign << _TILE_SHIFT, 8):  # 8 words: one 64-byte line
        _prefetch(codes, tile, at)
    first = tile << _TILE_SHIFT
    last = min(first + TILE_ROWS, factors.shape[0]) - 1
    step = max(1, 64 // (4 * factors.shape[1]))  # rows per line of float32 factors
    for row in range(first, last + 1, step):
        _prefetch(factors, row, 0)


@njit(inline="always")
def _tile_sign_sums(codes, tile, sign_query, acc, ones):
    """Sign-plane sums of all TILE_ROWS lanes of ``tile``: ``acc`` (query-weighted) and
    ``ones`` (set bits). One run of 256 words per sign word: a vectorised loop."""
    for lane in range(TILE_ROWS):
        acc[lane] = 0
        ones[lane] = 0
    for i in range(sign_query.shape[0]):
        at = i << _TILE_SHIFT
        for lane in range(TILE_ROWS):
            cw = codes[tile, at + lane]
            ones[lane] += popcount64(cw)
            acc[lane] += _sign_dot(cw, sign_query, i)


@njit(inline="always")
def _sign_estimates(codes, factors, rows, use_rows, start, count, sign_query, sign_step,
                    sign_low, sign_sum, acc, ones, out):
    """1-bit estimates of <r, q> for ``count`` candidates from ``start`` (within one tile
    unless ``use_rows``) from their sign planes (the top plane of each coded segment)
    against the 4-bit query ``sign_query`` (words, 4) that was weighted by each segment's
    typical scale."""
    n_sign = sign_query.shape[0]
    if use_rows:
        width = codes.shape[1] >> _TILE_SHIFT
        for j in range(count):
            row = rows[start + j]
            acc[j] = 0
            ones[j] = 0
            for i in range(n_sign):
                cw = _code_word(codes, row, i, n_sign, width)
                ones[j] += popcount64(cw)
                acc[j] += _sign_dot(cw, sign_query, i)
        first = 0
    else:
        tile = start >> _TILE_SHIFT
        _prefetch_tile(codes, factors, tile + _PREFETCH_TILES, n_sign)
        _tile_sign_sums(codes, tile, sign_query, acc, ones)
        first = start & _TILE_MASK
    for j in range(count):
        row = _row_at(start + j, rows, use_rows)
        out[j] = np.float64(factors[row, 0]) * (
            sign_step * np.float64(np.int64(acc[first + j]))
            + sign_low * np.float64(np.int64(ones[first + j])) - 0.5 * sign_sum)


#: rows whose sign-plane upper bounds one segment scan holds at a time (see scan_segments_task)
_WINDOW = 65_536
#: rows scored first, per wanted candidate: with 2 the heap starts near its final state (on
#: the benchmark, in a numpy simulation, 1 / 2 / 4 / 8 scored 1083 / 413 / 395 / 435 rows)
_SEEDS_PER_HIT = 2


@njit(cache=True, nogil=True)
def scan_segments_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                       start, stop, q, halves, qplanes, q_step, q_low, q_seg_sums, q_const,
                       seg_starts, seg_bits, plane_at, seg_mid, metric_l2, l2_col, prune,
                       sign_planes, sign_step, sign_low, sign_sum, q_bound, heap_s, heap_r):
    """Segment codes in tiles (see :func:`write_tiles`) against query ``q`` of (q, words,
    query_bits) planes.

    Without ``prune`` every allowed row gets the full estimate. With it, every row is first
    bounded from above by its sign planes (a 1-bit code whose factor is column 0, scanned
    against a 4-bit query weighted by the segments' scales, plus ``q_bound[q]`` standard
    errors), and only rows whose bound beats the heap are scored in full. Early in a scan the
    heap is weak, so while it is not full the rows go by windows of ``_WINDOW``: the whole
    window is bounded, the ``2 K`` rows with the highest bounds are scored first, which fills
    the heap with near-final scores, and then the window's other rows that still beat it.
    (Scoring every row that beats the heap as it stands scored about twice as many rows on
    the benchmark; later windows do exactly that, as the heap is then near-final.)
    """
    _heap_init(heap_s, heap_r)
    size = 0
    capacity = heap_s.shape[0]
    query = qplanes[q]
    step, low, const = q_step[q], q_low[q], q_const[q]
    seg_sums = q_seg_sums[q]
    n_sign = sign_planes.shape[1]
    width = codes.shape[1] >> _TILE_SHIFT
    if not prune:
        for item in range(start, stop):
            row = _row_at(item, rows, use_rows)
            if check_removed and removed[row]:
                continue
            if check_mask and not mask[row]:
                continue
            ip = _segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                                seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)
            size = _heap_offer(heap_s, heap_r, size,
                               _finish(ip, factors, row, metric_l2, l2_col, const), row)
        return
    sign_query = sign_planes[q]
    bound = q_bound[q]
    upper = np.empty(min(_WINDOW, max(stop - start, 0)), dtype=np.float64)
    n_seeds = _SEEDS_PER_HIT * capacity
    seed_s = np.empty(n_seeds, dtype=np.float32)
    seed_r = np.empty(n_seeds, dtype=np.int64)
    acc = np.empty(TILE_ROWS, dtype=np.uint64)
    ones = np.empty(TILE_ROWS, dtype=np.uint64)
    estimates = np.empty(TILE_ROWS, dtype=np.float64)
    for window in range(start, stop, _WINDOW):
        end = min(stop, window + _WINDOW)
        # until the heap is full, bound the whole window first and seed the heap with the best
        # bounds; once it is full, score a row as soon as its bound beats the heap
        seeding = size < capacity
        _heap_init(seed_s, seed_r)
        seeds = 0
        block = window
        while block < end:
            count = min(end, (block | _TILE_MASK) + 1) - block  # up to the end of the tile
            _sign_estimates(codes, factors, rows, use_rows, block, count, sign_query,
                            sign_step[q], sign_low[q], sign_sum[q], acc, ones, estimates)
            for j in range(count):
                at = block + j - window
                row = _row_at(block + j, rows, use_rows)
                upper[at] = -np.inf
                # (two plain ifs: a helper function here slows the whole scan ten-fold)
                if check_removed and removed[row]:
                    continue
                if check_mask and not mask[row]:
                    continue
                margin = abs(np.float64(factors[row, 0])) * bound
                ub = _finish(estimates[j] + margin, factors, row, metric_l2, l2_col, const)
                if seeding:
                    upper[at] = ub
                    # (a heap's root is its minimum only once it is full)
                    if seeds < n_seeds or ub > seed_s[0]:
                        seeds = _heap_offer(seed_s, seed_r, seeds, ub, at)
                elif ub > heap_s[0]:
                    ip = _segment_score(codes, factors, halves, row, query, step, low,
                                        seg_sums, seg_starts, seg_bits, plane_at, seg_mid,
                                        n_sign, width)
                    size = _heap_offer(heap_s, heap_r, size,
                                       _finish(ip, factors, row, metric_l2, l2_col, const),
                                       row)
            block += count
        if not seeding:
            continue
        # the seeds in full: the heap is then close to final
        for i in range(seeds):
            at = seed_r[i]
            row = _row_at(window + at, rows, use_rows)
            upper[at] = -np.inf
            ip = _segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                                seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)
            size = _heap_offer(heap_s, heap_r, size,
                               _finish(ip, factors, row, metric_l2, l2_col, const), row)
        # the window's other rows whose bound beats the heap
        for at in range(end - window):
            if upper[at] == -np.inf or (size == capacity and upper[at] <= heap_s[0]):
                continue
            row = _row_at(window + at, rows, use_rows)
            ip = _segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                                seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)
            size = _heap_offer(heap_s, heap_r, size,
                               _finish(ip, factors, row, metric_l2, l2_col, const), row)


@njit(cache=True, nogil=True, parallel=True)
def scan_segments_parallel(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                           n_items, halves, qplanes, q_step, q_low, q_seg_sums, q_const,
                           seg_starts, seg_bits, plane_at, seg_mid, metric_l2, l2_col, prune,
                           sign_planes, sign_step, sign_low, sign_sum, q_bound, out_scores,
                           out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        start, stop = _chunk_bounds(chunk, n_chunks, n_items)
        scan_segments_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                           start, stop, q, halves, qplanes, q_step, q_low, q_seg_sums, q_const,
                           seg_starts, seg_bits, plane_at, seg_mid, metric_l2, l2_col, prune,
                           sign_planes, sign_step, sign_low, sign_sum, q_bound,
                           out_scores[q, chunk], out_rows[q, chunk])


SCANS["segments"] = (scan_segments_task, scan_segments_parallel)
