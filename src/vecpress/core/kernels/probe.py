"""Planning one query's scan of a partitioned index in one compiled call: its nearest lists,
nearest first, their spans of positions and their tail rows (see
``partitions.ListLayout.probe``, whose numpy steps cost a single query more than scanning a
small list does)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .heap import _heap_init, _heap_offer


@njit(inline="always")
def _nearest_lists(scores, n):
    """The indices of the ``n`` highest ``scores``, highest first (of equal scores, the lower
    index): a bounded heap finds the ``n``-th highest score, O(lists log n), where sorting
    every list's score cost a query at 1,024 lists about as much as scanning a small list.
    The lists are then the ones above that score and, of those equal to it, the lowest
    indices: which of several equal scores the heap kept depends on the order it met them."""
    n = min(n, scores.shape[0])
    heap_s = np.empty(n, dtype=np.float64)
    heap_r = np.empty(n, dtype=np.int64)
    _heap_init(heap_s, heap_r)
    size = 0
    for i in range(scores.shape[0]):
        size = _heap_offer(heap_s, heap_r, size, np.float64(scores[i]), i)
    picked = np.empty(size, dtype=np.int64)
    if size == 0:
        return picked
    floor = heap_s[0]  # the n-th highest score
    above = 0
    for i in range(scores.shape[0]):
        if np.float64(scores[i]) > floor:
            above += 1
    ties_left = size - above
    filled = 0
    for i in range(scores.shape[0]):  # index order, so the sort below keeps ties in it
        value = np.float64(scores[i])
        if value > floor or (value == floor and ties_left > 0):
            if value == floor:
                ties_left -= 1
            picked[filled] = i
            filled += 1
    picked = picked[:filled]  # (fewer only if a score is NaN, which queries are checked for)
    values = np.empty(filled, dtype=np.float64)
    for j in range(filled):
        values[j] = scores[picked[j]]
    return picked[np.argsort(-values, kind="mergesort")]


@njit(cache=True, nogil=True)
def plan_one_query(scores, nprobe, bounds, tail_order, tail_bounds, allowed_counts):
    """The ``nprobe`` lists with the highest ``scores``, and then ``(held, spans, rows)``:
    the allowed rows they hold (``allowed_counts`` per list), their spans ``[start, stop)``
    of positions nearest list first (a list that follows the one before it in RAM joins its
    span), and their tail rows, nearest list first (``tail_order`` grouped by
    ``tail_bounds``; empty arrays for no tail). Nearest first, the scan's heap holds
    near-final scores after the first lists, so the bounds prune the later ones: in RAM
    order a query of 1M rows took 6.0 ms at 128 lists against 3.1 at 112, nearest first
    3.6 ms (the same time as before at fewer lists; see ``segments.scan_segments_task``)."""
    probed = _nearest_lists(scores, nprobe)
    count = probed.shape[0]  # (at most the number of lists, whatever ``nprobe`` says)
    held = 0
    n_spans = 0
    n_tail = 0
    last_stop = -1
    has_tail = tail_bounds.shape[0] > 0
    for i in range(count):
        lst = probed[i]
        held += allowed_counts[lst]
        start, stop = bounds[lst], bounds[lst + 1]
        if stop > start:
            if start != last_stop:
                n_spans += 1
            last_stop = stop
        if has_tail:
            n_tail += tail_bounds[lst + 1] - tail_bounds[lst]
    spans = np.empty((n_spans, 2), dtype=np.int64)
    rows = np.empty(n_tail, dtype=np.int64)
    at = -1
    last_stop = -1
    filled = 0
    for i in range(count):
        lst = probed[i]
        start, stop = bounds[lst], bounds[lst + 1]
        if stop > start:
            if start != last_stop:
                at += 1
                spans[at, 0] = start
            spans[at, 1] = stop
            last_stop = stop
        if has_tail:
            for j in range(tail_bounds[lst], tail_bounds[lst + 1]):
                rows[filled] = tail_order[j]
                filled += 1
    return held, spans, rows


@njit(cache=True, nogil=True)
def rows_at(perm, end, positions):
    """The rows at ``positions`` (any shape of int64) of a layout whose first ``end``
    positions hold the rows ``perm`` and later ones their own row; -1 stays -1. (numpy's
    masks and fancy indexing cost a query's 30 candidates about 10 us.)"""
    flat = positions.ravel()
    end = min(end, perm.shape[0])
    out = np.empty(flat.shape[0], dtype=np.int64)
    for i in range(flat.shape[0]):
        position = flat[i]
        out[i] = perm[position] if 0 <= position < end else position
    return out.reshape(positions.shape)


@njit(cache=True, nogil=True)
def span_extent(bounds, extra_rows):
    """``(reach, rows)`` of spans ``bounds`` (m, 2) and explicit rows ``extra_rows``: one past
    the last row either touches (0 for none) and the rows the spans hold. One call where
    numpy took four (about 6 us of a single query's search)."""
    reach = 0
    rows = 0
    for i in range(bounds.shape[0]):
        reach = max(reach, bounds[i, 1])
        rows += bounds[i, 1] - bounds[i, 0]
    for i in range(extra_rows.shape[0]):
        reach = max(reach, extra_rows[i] + 1)
    return reach, rows
