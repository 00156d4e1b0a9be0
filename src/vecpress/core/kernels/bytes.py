"""Byte codes (the ``int8`` and ``fp8`` codecs): one byte per coordinate, decoded through a
256-entry table."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .heap import _finish, _heap_init, _heap_offer, _heap_size, _row_at
from .intrinsics import _VECTORISE


@njit(cache=True, nogil=True, fastmath=_VECTORISE)
def scan_bytes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                    spans, span_lo, span_hi, q, table, queries, q_const, metric_l2, heap_s,
                    heap_r):
    """One byte per coordinate decoded through a 256-entry ``table`` (int8, float8)."""
    size = _heap_size(heap_r)
    dim = codes.shape[1]
    query = queries[q]
    const = q_const[q]
    for span in range(span_lo, span_hi):
        for i in range(spans[span, 0], spans[span, 1]):
            row = _row_at(i, rows, use_rows)
            if check_removed and removed[row]:
                continue
            if check_mask and not mask[row]:
                continue
            acc = np.float32(0.0)
            for d in range(dim):
                acc += table[codes[row, d]] * query[d]
            ip = factors[row, 0] * acc
            size = _heap_offer(heap_s, heap_r, size,
                               _finish(ip, factors, row, metric_l2, 1, const), row)


@njit(cache=True, nogil=True, parallel=True)
def scan_bytes_parallel(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                        spans, span_offsets, table, queries, q_const, metric_l2, out_scores,
                        out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        _heap_init(out_scores[q, chunk], out_rows[q, chunk])  # (the task continues a heap)
        scan_bytes_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                        spans, span_offsets[task], span_offsets[task + 1], q, table, queries,
                        q_const, metric_l2, out_scores[q, chunk], out_rows[q, chunk])
