"""Running a scan: the row filter, the spans a query scans, serial or threaded runs of a
code family's kernel, and merging their per-chunk heaps into the best k (shared by every
codec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import get_num_threads, parallel_chunksize

from .. import kernels
from ..parallel import parallel_section

#: rows of work (rows x queries) below which a batch of queries runs on the calling thread
PARALLEL_MIN_ROWS = 50_000
#: rows below which one query runs on the calling thread: splitting it pays little on an idle
#: machine (1.4 -> 1.1 ms at 100k rows) and costs a scheduler tick (~8 ms) whenever another
#: process holds a core, so only large scans are split
PARALLEL_MIN_ROWS_ONE_QUERY = 400_000


@dataclass
class RowFilter:
    """Which rows a scan may return. ``rows`` (sorted int64) wins over ``mask`` when given."""

    n_rows: int
    removed: np.ndarray | None = None  # bool per row: True for removed rows (None: none are)
    mask: np.ndarray | None = None  # bool per row
    rows: np.ndarray | None = None  # explicit allowed rows (selective filters)


_EMPTY_BOOL = np.zeros(1, dtype=np.bool_)
_EMPTY_ROWS = np.zeros(1, dtype=np.int64)
_NO_ROWS = np.zeros(0, dtype=np.int64)  # (no explicit rows: for kernels.span_extent)


#: which items each query scans: ``(offsets, bounds)``, query ``i`` scanning the rows
#: ``[start, stop)`` of ``bounds[offsets[i]:offsets[i + 1]]`` (see :func:`run_scan`)
Spans = tuple[np.ndarray, np.ndarray]


def run_scan(family: str, codes: np.ndarray, factors: np.ndarray, flt: RowFilter,
             n_queries: int, k: int, *query_args: Any,
             spans: Spans | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the scan of a code family (see ``kernels.SCANS``); best ``k`` per query.

    Every query scans all items, or with ``spans`` only its own runs of rows (the lists of a
    partitioned index), all into one heap. Small scans run on the calling thread. Otherwise a
    single query is split in chunks of about equal row count that the threads take one at a
    time (so a thread that lost its core delays one chunk, not a half), and a batch of
    queries runs one query per task.
    """
    task, parallel = kernels.SCANS[family]
    check_removed = flt.removed is not None
    removed = flt.removed if check_removed else _EMPTY_BOOL
    check_mask = flt.mask is not None
    mask = flt.mask if check_mask else _EMPTY_BOOL
    use_rows = flt.rows is not None
    rows = flt.rows if use_rows else _EMPTY_ROWS
    if spans is None:
        n_items = len(rows) if use_rows else flt.n_rows
        offsets = np.arange(n_queries + 1, dtype=np.int64)
        bounds = np.tile(np.array([[0, n_items]], dtype=np.int64), (n_queries, 1))
        work = n_items * n_queries
    else:
        offsets, bounds = checked_spans(spans, n_queries, flt)
        work = int(kernels.span_extent(bounds, _NO_ROWS)[1])
    minimum = PARALLEL_MIN_ROWS_ONE_QUERY if n_queries == 1 else PARALLEL_MIN_ROWS
    serial = work < minimum or _thread_count() == 1
    chunks = 1
    if not serial and n_queries == 1:
        chunks = _chunk_count(work)
        # (planned spans come nearest list first; chunks are cut from them in RAM order)
        offsets, bounds = _split_spans(bounds[np.argsort(bounds[:, 0], kind="stable")], chunks)
    extra = getattr(spans, "extra", None)
    if extra is not None and not len(extra[1]):
        extra = None
    out_s = np.full((n_queries, chunks, k), -np.inf, np.float32)  # (empty heaps)
    out_r = np.full((n_queries, chunks, k), -1, np.int64)
    common = (codes, factors, removed, check_removed, mask, check_mask)
    if serial:
        for q in range(n_queries):
            task(*common, rows, use_rows, bounds, offsets[q], offsets[q + 1], q, *query_args,
                 out_s[q, 0], out_r[q, 0])
    else:
        with parallel_section(), parallel_chunksize(1):
            parallel(*common, rows, use_rows, bounds, offsets, *query_args, out_s, out_r)
    if extra is not None:  # the explicit rows, one span of items per query, into the heap
        extra_offsets, extra_rows = extra  # its spans filled: only rows that beat it are scored
        items = np.stack([extra_offsets[:-1], extra_offsets[1:]], axis=1)
        for q in range(n_queries):
            task(*common, extra_rows, True, items, q, q + 1, q, *query_args, out_s[q, 0],
                 out_r[q, 0])
    return _sort_heaps(out_s, out_r, k)


class PlannedSpans(tuple):
    """Spans ``(offsets, bounds)`` that a partition layout planned itself (contiguous int64,
    one run per query, not overlapping, in the order to scan them: nearest list first, not
    RAM order): :func:`checked_spans` checks only that they lie within the rows, which spares
    a single query about 50 us of checks.

    ``extra``: ``(offsets, positions)`` or None, rows scanned one by one besides the spans
    (query ``q``: ``positions[offsets[q]:offsets[q + 1]]``; the tail rows of a partitioned
    index's probed lists), into the same top k.

    ``partial``: the queries probe only some of the lists, so the probe bounds their recall
    anyway and a scan may prune harder; a probe of every list is a flat scan in another
    order and must find what the flat scan finds."""

    extra: tuple[np.ndarray, np.ndarray] | None = None
    partial: bool = False


def checked_spans(spans: Spans, n_queries: int, flt: RowFilter) -> Spans:
    """``spans`` as contiguous int64 ``(offsets, bounds)``; ``ValueError`` unless there are
    ``n_queries`` runs of spans within ``[0, flt.n_rows)``, each sorted and not overlapping,
    and the filter does not list rows (spans are code rows, not positions in a list)."""
    if flt.rows is not None:
        raise ValueError("spans= cannot be combined with a row filter that lists its rows "
                         "(RowFilter.rows); pass a mask instead")
    if isinstance(spans, PlannedSpans):
        offsets, bounds = spans
        extra = spans.extra
        reach = int(kernels.span_extent(bounds, _NO_ROWS if extra is None
                                        else np.ascontiguousarray(extra[1], np.int64))[0])
        if len(offsets) != n_queries + 1 or reach > flt.n_rows:
            raise ValueError(f"planned spans for {len(offsets) - 1} queries reach row "
                             f"{reach}; the scan has {n_queries} queries and {flt.n_rows} rows")
        return offsets, bounds
    if not isinstance(spans, tuple) or len(spans) != 2:
        raise ValueError("spans must be a tuple (offsets, bounds)")
    offsets, bounds = (np.asarray(a) for a in spans)
    for name, array, ndim in (("offsets", offsets, 1), ("bounds", bounds, 2)):
        if array.dtype.kind not in "iu" or array.ndim != ndim:
            raise ValueError(f"spans' {name} must be a {ndim}-d integer array, got "
                             f"{array.dtype}{list(array.shape)}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if bounds.shape[1] != 2:
        raise ValueError(f"spans' bounds must have shape (m, 2), got {list(bounds.shape)}")
    m = len(bounds)
    if (len(offsets) != n_queries + 1 or offsets[0] != 0 or offsets[-1] != m
            or (np.diff(offsets) < 0).any()):
        raise ValueError(f"spans' offsets must rise from 0 to len(bounds)={m} in "
                         f"n_queries + 1 = {n_queries + 1} steps")
    if m and ((bounds[:, 0] < 0).any() or (bounds[:, 1] < bounds[:, 0]).any()
              or (bounds[:, 1] > flt.n_rows).any()):
        raise ValueError(f"spans' bounds must be [start, stop) with "
                         f"0 <= start <= stop <= n_rows={flt.n_rows}")
    first = np.zeros(m, dtype=bool)
    first[offsets[:-1][offsets[:-1] < m]] = True
    if m > 1 and ((bounds[1:, 0] < bounds[:-1, 1]) & ~first[1:]).any():
        raise ValueError("spans' bounds of one query must be sorted and must not overlap")
    return offsets, bounds


def _split_spans(bounds: np.ndarray, n_chunks: int) -> Spans:
    """One query's spans cut into ``n_chunks`` runs of about equal row count (some may be
    empty), at tile boundaries: ``(offsets, bounds)`` with one run per chunk."""
    lengths = bounds[:, 1] - bounds[:, 0]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    tile = kernels.TILE_ROWS
    size = max(tile, -(-(-(-total // n_chunks)) // tile) * tile)
    targets = np.arange(size, total, size, dtype=np.int64)  # chunk starts, in rows scanned
    span = np.searchsorted(ends, targets, side="right")
    at = bounds[span, 0] + targets - (ends[span] - lengths[span])
    cuts = np.unique(np.minimum(-(-at // tile) * tile, bounds[span, 1]))
    # a cut strictly inside a span splits it (spans do not overlap, so sorting the starts and
    # the stops apart keeps each piece's ends together)
    holder = np.searchsorted(bounds[:, 0], cuts, side="right") - 1
    inner = cuts[(cuts > bounds[holder, 0]) & (cuts < bounds[holder, 1])]
    starts = np.sort(np.concatenate([bounds[:, 0], inner]))
    stops = np.sort(np.concatenate([bounds[:, 1], inner]))
    keep = stops > starts
    pieces = np.stack([starts[keep], stops[keep]], axis=1)
    chunk = np.searchsorted(cuts, pieces[:, 0], side="right")
    offsets = np.searchsorted(chunk, np.arange(n_chunks + 1), side="left").astype(np.int64)
    return offsets, np.ascontiguousarray(pieces, dtype=np.int64)


def _thread_count() -> int:
    return max(1, int(get_num_threads()))


#: heap slots per query up to which the heaps are merged by ``kernels.sorted_heaps``
_FEW_SLOTS = 512


def _sort_heaps(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk heaps (..., chunks, K) into the best ``k`` per query, best first."""
    scores = scores.reshape(scores.shape[0], -1)
    rows = rows.reshape(rows.shape[0], -1)
    k = min(k, scores.shape[1])
    if (scores.shape[1] <= min(4 * k, _FEW_SLOTS) and scores.dtype == np.float32
            and rows.dtype == np.int64):  # (a search's heaps: one or a few, small)
        return kernels.sorted_heaps(scores, rows, k)
    line = np.arange(scores.shape[0])[:, None]
    if scores.shape[1] > 4 * k:  # many chunks: the best k of each query first
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = top[line, np.argsort(-scores[line, top], axis=1, kind="stable")]
    else:  # one heap or a few: sorting it whole is cheaper than partitioning
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out_scores = scores[line, best].astype(np.float32, copy=False)
    out_rows = rows[line, best].astype(np.int64, copy=False)
    out_rows[~np.isfinite(out_scores)] = -1
    return out_scores, out_rows


def _chunk_count(n_rows: int) -> int:
    """Chunks for one query: about 50k rows each, at least two per thread."""
    return max(2 * _thread_count(), n_rows // 50_000)
