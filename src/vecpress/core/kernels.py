"""numba kernels: bit packing, popcount scans, code fitting and a bounded top-k.

Plain module-level functions on arrays, compiled once with ``cache=True``. They never raise on
user data and know nothing of documents or files: the Python layers validate before calling.

Layout of a B-bit code: for each row, ``B`` bit planes of ``W = ceil(dim / 64)`` uint64 words
(plane ``b`` holds bit ``b`` of every coordinate's level). Inner products against a query that
is quantized to ``Bq`` bits are then sums of ``popcount(code_plane & query_plane) << (b + j)``,
computed with the CPU's popcount instruction.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

_NO_ROW = -1


@intrinsic
def popcount64(typingctx, word):
    """Hardware population count of a uint64 (LLVM ``ctpop``, one instruction on x86-64)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


# --------------------------------------------------------------------------- bit packing


@njit(cache=True)
def pack_planes(levels, bits, words):
    """Pack (n, dim) uint8 levels into (n, bits, words) uint64 bit planes."""
    n, dim = levels.shape
    out = np.zeros((n, bits, words), dtype=np.uint64)
    for r in range(n):
        for i in range(dim):
            value = np.uint64(levels[r, i])
            word = i >> 6
            shift = np.uint64(i & 63)
            for b in range(bits):
                if (value >> np.uint64(b)) & np.uint64(1):
                    out[r, b, word] |= np.uint64(1) << shift
    return out


@njit(cache=True)
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


@njit(cache=True, parallel=True)
def fit_levels(rows, bits, n_scales, n_sweeps):
    """Choose B-bit levels per row that maximise cos(level vector, row).

    The level vector is ``x = level - (2**bits - 1) / 2``. A few candidate scales are tried (the
    extended-RaBitQ rescaling idea), then coordinate descent moves single levels by one step
    while the cosine improves (SAQ's code adjustment). Returns levels (n, dim) uint8 and
    ``<x, row>`` per row, the quantity the estimator's correction factor needs.
    """
    n, dim = rows.shape
    top = float((1 << bits) - 1)
    mid = top / 2.0
    levels = np.zeros((n, dim), dtype=np.uint8)
    x_dot_row = np.zeros(n, dtype=np.float64)
    for r in prange(n):
        row = rows[r]
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
                    x = float(levels[r, i]) - mid
                    v = row[i]
                    current = ip / np.sqrt(sq)
                    if levels[r, i] < top:
                        up_ip = ip + v
                        up_sq = sq + 2.0 * x + 1.0
                        if up_ip / np.sqrt(up_sq) > current:
                            levels[r, i] += 1
                            ip = up_ip
                            sq = up_sq
                            changed = True
                            continue
                    if levels[r, i] > 0:
                        down_ip = ip - v
                        down_sq = sq - 2.0 * x + 1.0
                        if down_sq > 0 and down_ip / np.sqrt(down_sq) > current:
                            levels[r, i] -= 1
                            ip = down_ip
                            sq = down_sq
                            changed = True
                if not changed:
                    break
            best_ip = ip
        x_dot_row[r] = best_ip
    return levels, x_dot_row


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


@njit(inline="always")
def _row_allowed(row, ids, check_ids, mask, check_mask):
    if check_ids and ids[row] < 0:
        return False
    if check_mask and not mask[row]:
        return False
    return True


# --------------------------------------------------------------------------- B-bit scan


@njit(inline="always")
def _plane_score(codes, row, qplanes, qbits, factors, metric_l2, q_step, q_low, level_mid,
                 q_sum, q_const):
    """Estimated score (higher is better) of one row from its bit planes."""
    bits = codes.shape[1]
    words = codes.shape[2]
    acc = 0
    level_sum = 0
    for b in range(bits):
        for w in range(words):
            cw = codes[row, b, w]
            level_sum += np.int64(popcount64(cw)) << b
            for j in range(qbits):
                acc += np.int64(popcount64(cw & qplanes[j, w])) << (b + j)
    # <level, q'> from the quantized query, then <level - mid, q'>.
    x_dot_q = q_step * acc + q_low * level_sum - level_mid * q_sum
    ip = factors[row, 0] * x_dot_q
    if metric_l2:
        return -(factors[row, 1] + q_const - 2.0 * ip)
    return ip + q_const


@njit(cache=True)
def scan_planes(codes, factors, ids, check_ids, mask, check_mask, qplanes, q_step, q_low,
                level_mid, q_sum, q_const, metric_l2, start, stop, heap_scores, heap_rows):
    """Scan rows [start, stop) and keep the best ``len(heap_scores)`` estimates in the heap."""
    _heap_init(heap_scores, heap_rows)
    size = 0
    qbits = qplanes.shape[0]
    for row in range(start, stop):
        if not _row_allowed(row, ids, check_ids, mask, check_mask):
            continue
        s = _plane_score(codes, row, qplanes, qbits, factors, metric_l2, q_step, q_low,
                         level_mid, q_sum, q_const)
        size = _heap_offer(heap_scores, heap_rows, size, s, row)
    return size


@njit(cache=True)
def scan_planes_rows(codes, factors, rows, qplanes, q_step, q_low, level_mid, q_sum, q_const,
                     metric_l2, heap_scores, heap_rows):
    """Like :func:`scan_planes` but over an explicit list of allowed rows (selective filters)."""
    _heap_init(heap_scores, heap_rows)
    size = 0
    qbits = qplanes.shape[0]
    for i in range(rows.shape[0]):
        row = rows[i]
        s = _plane_score(codes, row, qplanes, qbits, factors, metric_l2, q_step, q_low,
                         level_mid, q_sum, q_const)
        size = _heap_offer(heap_scores, heap_rows, size, s, row)
    return size


@njit(cache=True, parallel=True)
def scan_planes_chunked(codes, factors, ids, check_ids, mask, check_mask, qplanes, q_step,
                        q_low, level_mid, q_sum, q_const, metric_l2, n_rows, n_chunks,
                        out_scores, out_rows):
    """One query over all rows, split in ``n_chunks`` parallel chunks, one heap per chunk."""
    chunk = (n_rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        start = c * chunk
        stop = min(n_rows, start + chunk)
        scan_planes(codes, factors, ids, check_ids, mask, check_mask, qplanes, q_step, q_low,
                    level_mid, q_sum, q_const, metric_l2, start, max(start, stop),
                    out_scores[c], out_rows[c])


@njit(cache=True, parallel=True)
def scan_planes_batch(codes, factors, ids, check_ids, mask, check_mask, qplanes, q_step, q_low,
                      level_mid, q_sum, q_const, metric_l2, n_rows, out_scores, out_rows):
    """Many queries, one thread each: ``qplanes`` is (q, Bq, W), the scalars are (q,) arrays."""
    for q in prange(qplanes.shape[0]):
        scan_planes(codes, factors, ids, check_ids, mask, check_mask, qplanes[q], q_step[q],
                    q_low[q], level_mid, q_sum[q], q_const[q], metric_l2, 0, n_rows,
                    out_scores[q], out_rows[q])


# --------------------------------------------------------------------------- byte codes (int8 / fp8)


@njit(inline="always")
def _byte_score(codes, row, table, query, factors, metric_l2, q_const):
    dim = codes.shape[1]
    acc = 0.0
    for i in range(dim):
        acc += table[codes[row, i]] * query[i]
    ip = factors[row, 0] * acc
    if metric_l2:
        return -(factors[row, 1] + q_const - 2.0 * ip)
    return ip + q_const


@njit(cache=True)
def scan_bytes(codes, factors, table, ids, check_ids, mask, check_mask, query, q_const,
               metric_l2, start, stop, heap_scores, heap_rows):
    """Scan one-byte-per-dimension codes decoded through a 256-entry ``table``."""
    _heap_init(heap_scores, heap_rows)
    size = 0
    for row in range(start, stop):
        if not _row_allowed(row, ids, check_ids, mask, check_mask):
            continue
        s = _byte_score(codes, row, table, query, factors, metric_l2, q_const)
        size = _heap_offer(heap_scores, heap_rows, size, s, row)
    return size


@njit(cache=True)
def scan_bytes_rows(codes, factors, table, rows, query, q_const, metric_l2, heap_scores,
                    heap_rows):
    """:func:`scan_bytes` over an explicit list of allowed rows."""
    _heap_init(heap_scores, heap_rows)
    size = 0
    for i in range(rows.shape[0]):
        row = rows[i]
        s = _byte_score(codes, row, table, query, factors, metric_l2, q_const)
        size = _heap_offer(heap_scores, heap_rows, size, s, row)
    return size


@njit(cache=True, parallel=True)
def scan_bytes_chunked(codes, factors, table, ids, check_ids, mask, check_mask, query, q_const,
                       metric_l2, n_rows, n_chunks, out_scores, out_rows):
    chunk = (n_rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        start = c * chunk
        stop = min(n_rows, start + chunk)
        scan_bytes(codes, factors, table, ids, check_ids, mask, check_mask, query, q_const,
                   metric_l2, start, max(start, stop), out_scores[c], out_rows[c])


@njit(cache=True, parallel=True)
def scan_bytes_batch(codes, factors, table, ids, check_ids, mask, check_mask, queries, q_const,
                     metric_l2, n_rows, out_scores, out_rows):
    for q in prange(queries.shape[0]):
        scan_bytes(codes, factors, table, ids, check_ids, mask, check_mask, queries[q],
                   q_const[q], metric_l2, 0, n_rows, out_scores[q], out_rows[q])
