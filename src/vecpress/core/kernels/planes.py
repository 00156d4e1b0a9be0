"""Bit-plane codes (the ``rabitq`` codec): packing, the rotation, code fitting and the scan.

Layout of a B-bit code: for each row, ``B`` bit planes of ``W = ceil(dim / 64)`` uint64 words
(plane ``b`` holds bit ``b`` of every coordinate's level). Inner products against a query that
is quantized to ``Bq`` bits are then sums of ``popcount(code_plane & query_plane) << (b + j)``,
computed with the CPU's popcount instruction.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .heap import _finish, _heap_init, _heap_offer, _heap_size, _row_at
from .intrinsics import popcount64

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


@njit(cache=True, nogil=True)
def quantize_planes(rotated, bits, words, dither, use_dither):
    """Queries (q, dim) float32 quantized to ``bits`` levels between each row's minimum and
    maximum and packed: ``(planes (q, words, bits) uint64, step (q,), low (q,))``, float32
    arithmetic as numpy's on float32 rows. A level is the nearest one, or with
    ``use_dither`` ``floor(scaled + dither)`` (``dither`` float64 per coordinate)."""
    n, dim = rotated.shape
    top = (1 << bits) - 1
    planes = np.zeros((n, words, bits), dtype=np.uint64)
    steps = np.empty(n, dtype=np.float64)
    lows = np.empty(n, dtype=np.float64)
    one = np.uint64(1)
    levels = np.empty(64, dtype=np.uint64)  # (one word's levels)
    for r in range(n):
        low = rotated[r, 0]
        high = rotated[r, 0]
        for i in range(1, dim):
            low = min(low, rotated[r, i])
            high = max(high, rotated[r, i])
        step = (high - low) / np.float32(top)
        if step == 0:
            step = np.float32(1.0)
        # a word's 64 levels first, then each plane's word built in a register (setting
        # the bits in the planes array one at a time took 3.0 against 2.2 us a 384-d query)
        for word in range(min(words, (dim + 63) >> 6)):
            first = word << 6
            count = min(64, dim - first)
            for j in range(count):
                scaled = (rotated[r, first + j] - low) / step
                if use_dither:
                    level = np.floor(np.float64(scaled) + dither[first + j])
                else:
                    level = np.float64(np.rint(scaled))
                levels[j] = np.uint64(min(max(level, 0.0), np.float64(top)))
            for b in range(bits):
                packed = np.uint64(0)
                for j in range(count):
                    packed |= ((levels[j] >> np.uint64(b)) & one) << np.uint64(j)
                planes[r, word, b] = packed
        steps[r] = step
        lows[r] = low
    return planes, steps, lows


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


# --------------------------------------------------------------------------- scan


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
                     spans, span_lo, span_hi, q, qplanes, q_step, q_low, q_sum, q_const,
                     level_mid, metric_l2, prune_col, q_bound, heap_s, heap_r):
    """Bit-plane codes (n, bits, words) against query ``q`` of (q, words, query_bits) planes.

    With ``prune_col >= 0`` (multi-bit codes), each row is first estimated from its top bit
    plane alone, a plain 1-bit RaBitQ code whose correction factor is ``factors[:, prune_col]``,
    and the full code is scored only when that estimate plus its error bound
    (``|factor| * q_bound[q]``) could still enter the heap. The top plane is a quarter or less
    of the code, so most rows cost a 1-bit scan. Rows go by blocks: a branch-free loop computes
    the block's estimates, then a second loop filters and selects (LLVM optimises the popcount
    loops far better without branches around them).
    """
    size = _heap_size(heap_r)
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
    for span in range(span_lo, span_hi):
        for block in range(spans[span, 0], spans[span, 1], _BLOCK):
            count = min(_BLOCK, spans[span, 1] - block)
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
                         spans, span_offsets, qplanes, q_step, q_low, q_sum, q_const, level_mid,
                         metric_l2, prune_col, q_bound, out_scores, out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        _heap_init(out_scores[q, chunk], out_rows[q, chunk])  # (the task continues a heap)
        scan_planes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                         spans, span_offsets[task], span_offsets[task + 1], q, qplanes, q_step,
                         q_low, q_sum, q_const, level_mid, metric_l2, prune_col, q_bound,
                         out_scores[q, chunk], out_rows[q, chunk])
