"""The rerank's exact scores: kept original rows (float16 or float32) against their queries,
read in place from the blocks of originals by address, accumulated in float64; and the
candidates put in row order before, and cut to each query's best k after."""

from __future__ import annotations

import numpy as np
from numba import njit

from .intrinsics import (_VECTORISE, half_to_float, load_float32, load_half_bits,
                         prefetch_address)


#: rows of originals whose cache lines are asked for before the rerank reads them: a query's
#: 30 float16 candidates (rows spread over 77 MB) scored in 8.7 us with 32 rows ahead, 9.7
#: with every row asked for first, 18 without
_AHEAD = 32


@njit(cache=True, nogil=True, fastmath=_VECTORISE)
def exact_scores_at(addresses, halves, starts, dim, rows, queries, query_of, dots, squares):
    """For each ``j``: ``dots[j] = <x, queries[query_of[j]]>`` and ``squares[j] = |x|^2``, ``x``
    the original of row ``rows[j]``, over every block in one call: block ``b`` holds rows
    ``[starts[b], starts[b + 1])``, C-contiguous (n, ``dim``) at ``addresses[b]``, float16
    where ``halves[b]`` and float32 elsewhere. ``rows`` must be sorted and lie in
    ``[0, starts[-1])`` (the caller checks; the blocks are read by address). One call instead
    of one per block spared a rerank over seven segment files about 60 us."""
    ahead = 0  # the next row whose cache lines are asked for, _AHEAD rows before its read
    b_ahead = 0
    b = 0
    for j in range(rows.shape[0]):
        while ahead < rows.shape[0] and ahead < j + _AHEAD:
            while rows[ahead] >= starts[b_ahead + 1]:
                b_ahead += 1
            width = 2 if halves[b_ahead] else 4
            begin = addresses[b_ahead] + (rows[ahead] - starts[b_ahead]) * dim * width
            for line in range(begin - begin % 64, begin + dim * width, 64):
                prefetch_address(line)
            ahead += 1
        row = rows[j]
        while row >= starts[b + 1]:
            b += 1
        first = (row - starts[b]) * dim
        address = addresses[b]
        query = queries[query_of[j]]
        dot = 0.0
        square = 0.0
        if halves[b]:
            for d in range(dim):
                value = np.float64(half_to_float(load_half_bits(address, first + d)))
                dot += value * query[d]
                square += value * value
        else:
            for d in range(dim):
                value = np.float64(load_float32(address, first + d))
                dot += value * query[d]
                square += value * value
        dots[j] = dot
        squares[j] = square


@njit(cache=True, nogil=True)
def rows_checked(rows, starts, check_base, check_rows, checked, mark):
    """Whether every checksum block that sorted ``rows`` touch has passed its check, as
    ``checked`` records it (one flag per block of every checked file, in row order): block
    ``b`` of originals holds rows ``[starts[b], starts[b + 1])`` in checksum blocks of
    ``check_rows[b]`` rows (0: nothing to check), flagged from ``checked[check_base[b]]`` on.
    With ``mark`` it records them as passed instead (after the caller verified them). One call
    for a rerank's rows: walking the files and their blocks in Python cost a search about
    15 us for as long as some block of the store had never been read."""
    b = 0
    for j in range(rows.shape[0]):
        row = rows[j]
        while row >= starts[b + 1]:
            b += 1
        per = check_rows[b]
        if per == 0:
            continue
        at = check_base[b] + (row - starts[b]) // per
        if mark:
            checked[at] = True
        elif not checked[at]:
            return False
    return True


@njit(cache=True, nogil=True)
def candidates_by_row(rows):
    """The candidates of ``rows`` (q, width) int64, -1 where a slot holds none, in row order:
    ``(rows, query_of, slot)`` of each, so a rerank reads each originals file once, in order."""
    n_queries, width = rows.shape
    count = 0
    for q in range(n_queries):
        for c in range(width):
            if rows[q, c] >= 0:
                count += 1
    flat = np.empty(count, dtype=np.int64)
    query_of = np.empty(count, dtype=np.int64)
    slot = np.empty(count, dtype=np.int64)
    i = 0
    for q in range(n_queries):
        for c in range(width):
            if rows[q, c] >= 0:
                flat[i] = rows[q, c]
                query_of[i] = q
                slot[i] = c
                i += 1
    order = np.argsort(flat, kind="mergesort")
    return flat[order], query_of[order], slot[order]


@njit(cache=True, nogil=True)
def best_candidates(rows, query_of, slot, exact, k):
    """The best ``k`` of each query's candidates by their ``exact`` scores (candidate ``i``
    being ``rows[query_of[i], slot[i]]``), best first, ties in slot order: ``(scores
    float32, rows)`` of shape (q, min(k, width)), -inf where a query had fewer."""
    n_queries, width = rows.shape
    scores = np.full((n_queries, width), -np.inf)
    for i in range(exact.shape[0]):
        scores[query_of[i], slot[i]] = exact[i]
    kept = min(k, width)
    out_scores = np.empty((n_queries, kept), dtype=np.float32)
    out_rows = np.empty((n_queries, kept), dtype=np.int64)
    for q in range(n_queries):
        order = np.argsort(-scores[q], kind="mergesort")
        for j in range(kept):
            out_scores[q, j] = scores[q, order[j]]
            out_rows[q, j] = rows[q, order[j]]
    return out_scores, out_rows
