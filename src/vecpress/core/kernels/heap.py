"""Pieces every scan shares: the bounded top-k heap, candidate rows and the turn of an
estimated inner product into a score.

Each code family has an inline score function, a serial ``*_task`` that scans the candidate
items of the spans ``spans[span_lo:span_hi]`` (rows ``[start, stop)`` of an int64 (m, 2)
array, not overlapping, scanned in the order given) for query ``q`` into one bounded heap,
and a ``*_parallel`` driver that runs ``n_queries * n_chunks`` tasks (each heap starts as its
caller passes it: empty, all -inf and -1, or holding an earlier scan's best), task
``t = q * n_chunks + c`` scanning the spans ``span_offsets[t]:span_offsets[t + 1]`` into heap
``out_scores[q, c]``. A flat scan is
one span ``[0, n_items)``; a partitioned one scans a query's lists, which lie contiguous. One
query over many rows uses several chunks (both cores); a batch uses one chunk per query. Small
scans call the task directly: waking a thread pool costs more than they do, and far more when
the cores are busy (an embedding model in the same process). An item is a row itself (skipping
removed rows and rows outside ``mask``) or, for selective filters, an index into the explicit
``rows`` list.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NO_ROW = -1


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
def _heap_size(heap_rows):
    """Entries held by a heap (its valid entries are a prefix, rows >= 0; the rest were set
    to -inf / -1 before its first use): a task continues a heap its caller passes in, so
    that the tail rows of a partitioned scan meet the heap of the lists, not a fresh one."""
    size = 0
    while size < heap_rows.shape[0] and heap_rows[size] != _NO_ROW:
        size += 1
    return size


@njit(inline="always")
def _row_at(i, rows, use_rows):
    if use_rows:
        return rows[i]
    return i


@njit(inline="always")
def _finish(ip, factors, row, metric_l2, l2_col, q_const):
    """Turn an estimated inner product with the residual into a higher-is-better score (for L2
    the squared residual norm is in column ``l2_col`` of the factors)."""
    if metric_l2:
        return -(factors[row, l2_col] + q_const - 2.0 * ip)
    return ip + q_const


@njit(cache=True, nogil=True)
def sorted_heaps(scores, rows, k):
    """The best ``k`` of each query's heaps (q, K), best first, of equal scores the earlier
    slot first (numpy's stable sort; numba's "mergesort" argsort is not stable): float32
    scores and int64 rows, -1 where a score is not finite (an unfilled slot). An insertion
    into the best ``k`` so far, O(K k): for the few hundred slots of a search's heaps one
    call costs what numpy's sort and gathers took in about 12 us a query."""
    n, capacity = scores.shape
    k = max(0, min(k, capacity))
    out_scores = np.empty((n, k), dtype=np.float32)
    out_rows = np.empty((n, k), dtype=np.int64)
    best = np.empty(k, dtype=np.int64)
    for q in range(n if k > 0 else 0):
        filled = 0
        for slot in range(capacity):
            value = scores[q, slot]
            if filled == k and not value > scores[q, best[k - 1]]:
                continue
            at = min(filled, k - 1)  # (the last place is dropped when the list is full)
            while at > 0 and value > scores[q, best[at - 1]]:
                best[at] = best[at - 1]
                at -= 1
            best[at] = slot
            filled = min(filled + 1, k)
        for j in range(k):
            value = scores[q, best[j]]
            out_scores[q, j] = value
            out_rows[q, j] = rows[q, best[j]] if np.isfinite(value) else _NO_ROW
    return out_scores, out_rows
