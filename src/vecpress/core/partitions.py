"""Inverted lists over the codes: which rows a query scans, and where they lie in RAM.

A partitioned :class:`~vecpress.core.index.Index` assigns every row to its nearest centroid
(its *list*). In RAM the codes are kept in *position* order: the rows of list 0, then list 1,
..., so a list is one contiguous run that the flat scan kernels read as a span. Rows added
since the layout was built sit after the lists, in row order (the *tail*: position = row).
A query scans only the tail rows of the lists it probes: :meth:`ListLayout.tail_groups` groups
the tail's positions by list (in RAM, recomputed as the tail grows), and the scan reads them
row by row. Once the tail grows past :func:`tail_limit` the layout is rebuilt (in RAM only: the
files keep rows in row order plus each row's list number).

The codes are not residuals: a row's code is the same whether or not the index is
partitioned, so lists can be rebuilt, split or retrained without re-encoding. What
partitions buy is scanning fewer rows; each scanned row costs more than in a flat scan,
because the rows of the nearest lists are all close to the query and their 1-bit bounds
prune fewer of them (residual codes, as FAISS's IVF uses, would keep the bounds tight).

How many lists a query probes (``nprobe``) is calibrated when the lists are trained, on
sampled rows of the index used as queries (see :class:`Calibration`): first from the lists
alone (the smallest count whose lists hold :data:`CALIBRATION_RECALL` of their true ten
nearest rows), then through the search itself once the lists are in place, codes, rerank and
all (:func:`searched_nprobe`: the smallest count whose search finds
:data:`SEARCH_CALIBRATION_RECALL` of them). A filtered search probes further lists until it
has found enough allowed rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import clustering, kernels
from .codecs import PlannedSpans
from .store_format import MAX_LISTS

#: below this many rows ``partitions="auto"`` keeps the flat scan (see benchmarks/bench_partitions)
AUTO_MIN_ROWS = 65_536
#: a partitioned index is retrained (new centroids) once it holds this many times the rows it
#: was trained on. 4 let lists grow to about 4x their trained size before the next training:
#: 1M synthetic vectors added 10k at a time were then searched with the 512 lists of 270k
#: rows (0.9521 at 1.38 ms, nprobe 16); with 2 the lists are those of the last doubling
#: (1,024 at 524k): 0.9966 at 0.34 ms. The trainings cost more in all (each row is assigned
#: about twice, not 1.33 times): a 10M build by adds of 100k took 514 s against 371 s
#: (benchmarks/results/lists_scale_10000000*.md)
RETRAIN_GROWTH = 2
#: training rows drawn per list (and at most MAX_TRAIN_ROWS). 256 rows and 20 iterations
#: against 64 and 10: the share of true top-10 in the 4 / 16 / 64 nearest lists rose from
#: 0.774 / 0.923 / 0.985 to 0.798 / 0.936 / 0.988 on 100k WordNet glosses (256 lists) and
#: from 0.827 / 0.931 / 0.985 to 0.900 / 0.959 / 0.992 on 1M synthetic vectors (512 lists),
#: as good as FAISS's k-means with the same sample (see the #14 notes)
TRAIN_ROWS_PER_LIST = 256
MAX_TRAIN_ROWS = 262_144
#: k-means iterations while the training work (sample rows x lists) is at most
#: TRAIN_WORK_LIMIT, else FEW_TRAIN_ITERATIONS (10M rows, 4,096 lists: minutes per 10 rounds)
TRAIN_ITERATIONS = 20
FEW_TRAIN_ITERATIONS = 10
TRAIN_WORK_LIMIT = 1 << 27
#: an explicit list count needs this many rows per list before the lists are trained
MIN_ROWS_PER_LIST = 16
#: sampled rows used as queries to calibrate nprobe, and the recall@CALIBRATION_K they must reach
#: (128 queries put nprobe anywhere from 70 to 116 of 256 lists on one corpus: the recall's
#: last half percent rests on a handful of neighbours)
CALIBRATION_QUERIES = 512
CALIBRATION_K = 10
CALIBRATION_RECALL = 0.995
#: the calibrated nprobe is multiplied by this margin: sampled rows are a little easier
#: queries than held-out ones (on 100k WordNet glosses, 256 lists, the nprobe at which sampled
#: rows reach 0.995 gives held-out glosses 0.99; see benchmarks/bench_partitions.py)
CALIBRATION_MARGIN = 1.1
#: the recall@CALIBRATION_K that the sampled rows' own searches must reach at the default
#: nprobe (their own row left out). On 100k WordNet glosses (256 lists, 4-bit codes) it
#: tracked held-out glosses' recall within 0.0015 from nprobe 48 to 112 (0.9918 against
#: 0.9928 at 88), so 0.992 leaves held-out queries above 0.99 with room for the sample's noise
SEARCH_CALIBRATION_RECALL = 0.992
#: nprobe grows by this factor between the searched counts (then a bisection) ...
SEARCH_CALIBRATION_STEP = 1.25
#: ... up to this many times the lists-alone count: where recall stops growing (codes too
#: coarse for the rerank's candidates, not too few lists) the smallest count within
#: SEARCH_PLATEAU of the best recall seen is kept rather than probing every list
SEARCH_CALIBRATION_REACH = 8
SEARCH_PLATEAU = 0.001
#: ... and then the rerank's candidates per hit are multiplied by these factors in turn until
#: the target is reached: at 10M synthetic vectors with 1-bit codes recall stopped at 0.9745
#: whatever the nprobe with 10 candidates a hit, and reached 0.998 with 20
SEARCH_OVERSAMPLE_FACTORS = (1, 2, 4)
#: between trainings the search defaults are tuned again each time the index has grown by this
#: factor since they were: denser lists need more candidates from coarse codes (10M synthetic
#: vectors, 1 bit, lists trained and tuned at 6.4M: recall 0.9915 there, 0.9745 at 10M)
RETUNE_GROWTH = 1.5
#: a retuning's reference neighbours come from a search with this many times the default
#: nprobe and oversample (an exact pass would read every original). Its cost grows with
#: both: at 900k rows 8x and 8x took 28 s, most of it scanning for 880 candidates a query
RETUNE_TRUTH_NPROBE = 4
RETUNE_TRUTH_OVERSAMPLE = 2
#: the layout is rebuilt once the tail holds more than this fraction of the rows ...
TAIL_FRACTION = 1 / 32
#: ... and more than this many rows
TAIL_MIN_ROWS = 4096


def auto_lists(rows: int) -> int:
    """Lists for ``rows`` rows under ``partitions="auto"``: about ``sqrt(rows)``, so a list
    holds about as many rows as there are lists (a power of two, for round numbers)."""
    return int(min(MAX_LISTS, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(rows)))))))


def training_iterations(sample_rows: int, n_lists: int) -> int:
    """k-means rounds for ``sample_rows`` training rows and ``n_lists`` lists: more rounds
    while they are cheap, fewer where one round already takes tens of seconds."""
    work = sample_rows * n_lists
    return TRAIN_ITERATIONS if work <= TRAIN_WORK_LIMIT else FEW_TRAIN_ITERATIONS


def label_dtype(n_lists: int) -> np.dtype:
    """The smallest unsigned integer type that numbers ``n_lists`` lists."""
    for dtype in (np.uint8, np.uint16):
        if n_lists <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def tail_limit(rows: int) -> int:
    """Rows the tail may hold before the layout is rebuilt."""
    return max(TAIL_MIN_ROWS, int(rows * TAIL_FRACTION))


@dataclass
class ListLayout:
    """Centroids and where each list's rows sit. Immutable once built, except for caches
    (a search may fill them; two searches filling one at once compute the same value).

    ``perm[p]`` is the row at position ``p < sorted_end``; ``labels[r]`` the list of row
    ``r < sorted_end``; positions from ``sorted_end`` on hold the rows of the same number.
    List ``l`` occupies positions ``bounds[l]:bounds[l + 1]``, its rows in ascending row order,
    so a row's position is found by a binary search of its list's span of ``perm``.

    RAM per ordered row: ``perm`` (4 bytes) and ``labels`` (1 byte up to 256 lists, 2 up to
    65,536). An inverse permutation would make :meth:`positions_of` a lookup but cost 4 bytes
    a row; its callers (merges, compaction, selective filters, a relayout) ask for few rows at
    a time or for every row once.
    """

    centroids: np.ndarray  # (lists, code dim) float32
    metric: str  # "ip" or "l2", the codec's metric
    nprobe: int
    bounds: np.ndarray  # (lists + 1,) int64
    perm: np.ndarray  # (sorted_end,) int32 (int64 from 2**31 rows)
    labels: np.ndarray  # (sorted_end,) uint8 / uint16 / int32, the smallest that holds the lists
    #: the rerank's candidates per hit a search takes by default, when the tuning found the
    #: index's own ``oversample`` too few for its codes (None: the index's)
    oversample: int | None = None
    _removed_cache: tuple[Any, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _shift: np.ndarray | None = field(default=None, repr=False)
    _tail_cache: "TailGroups | None" = field(default=None, repr=False)

    @classmethod
    def build(cls, centroids: np.ndarray, metric: str, nprobe: int, labels: np.ndarray,
              oversample: int | None = None) -> "ListLayout":
        """The layout of rows whose lists are ``labels`` (one int per row): a stable sort,
        so a list keeps its rows in row order."""
        n_lists = len(centroids)
        index_type = np.int32 if len(labels) < 2 ** 31 else np.int64  # (8 B a row, not 16)
        perm = np.argsort(labels, kind="stable").astype(index_type)
        bounds = np.zeros(n_lists + 1, np.int64)
        np.cumsum(np.bincount(labels, minlength=n_lists), out=bounds[1:])
        return cls(centroids=centroids, metric=metric, nprobe=nprobe, bounds=bounds, perm=perm,
                   labels=np.asarray(labels).astype(label_dtype(n_lists)), oversample=oversample)

    @property
    def n_lists(self) -> int:
        return len(self.centroids)

    @property
    def sorted_end(self) -> int:
        return len(self.perm)

    @property
    def nbytes(self) -> int:
        return int(self.centroids.nbytes + self.bounds.nbytes + self.perm.nbytes
                   + self.labels.nbytes)

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (-1 stays -1)."""
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        return kernels.rows_at(self.perm, self.sorted_end, positions)

    def positions_of(self, rows: np.ndarray) -> np.ndarray:
        """The positions of ``rows``: a binary search of each ordered row's list, all rows
        at once (about log2 of the longest list steps)."""
        rows = np.asarray(rows, dtype=np.int64)
        inside = np.nonzero(rows < self.sorted_end)[0]
        positions = rows.copy()
        wanted = rows[inside]
        lists = self.labels[wanted].astype(np.int64)
        lo, hi = self.bounds[lists], self.bounds[lists + 1]
        while True:  # lo: the first position of the list whose row is not below the wanted one
            open_ = np.nonzero(lo < hi)[0]
            if not len(open_):
                break
            mid = (lo[open_] + hi[open_]) // 2
            below = self.perm[mid] < wanted[open_]
            lo[open_[below]] = mid[below] + 1
            hi[open_[~below]] = mid[~below]
        positions[inside] = lo
        return positions

    def inverse(self) -> np.ndarray:
        """``inverse[r]``: the position of ordered row ``r``, all at once (4 or 8 bytes a row:
        for a caller that maps every row, such as a relayout, and then drops it)."""
        inverse = np.empty_like(self.perm)
        inverse[self.perm] = np.arange(len(self.perm), dtype=self.perm.dtype)
        return inverse

    def lists_of(self, rows: np.ndarray) -> np.ndarray:
        """The list of each ordered row (``rows`` below ``sorted_end``), as int32."""
        return self.labels[np.asarray(rows, dtype=np.int64)].astype(np.int32)

    def to_positions(self, by_row: np.ndarray) -> np.ndarray:
        """A per-row array (one entry per row) reordered by position."""
        end = self.sorted_end
        return np.concatenate([by_row[self.perm], by_row[end:]])

    def removal_flags(self, key: object, removed: np.ndarray | None,
                      n_rows: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(removal flags by position for ``n_rows`` rows or None, live rows per list) from
        the flags by row ``removed``; the gather over the lists is cached per ``key`` (see
        ``_IdColumn.removal_key``), only the tail is read per call."""
        cache = self._removed_cache
        if cache is None or cache[0] is not key:
            if removed is None:
                cache = (key, None, np.diff(self.bounds))
            else:
                flags = removed[self.perm]
                live = np.zeros(len(flags) + 1, np.int64)
                np.cumsum(~flags, out=live[1:])
                cache = (key, flags, np.diff(live[self.bounds]))
            self._removed_cache = cache
        _, flags, counts = cache
        if flags is None:
            return None, counts
        return np.concatenate([flags, removed[self.sorted_end:n_rows]]), counts

    def tail_groups(self, tail_labels: np.ndarray) -> "TailGroups":
        """The tail's positions grouped by list, for the tail whose rows' lists are
        ``tail_labels`` (the rows from ``sorted_end`` on). Cached per tail length: a layout's
        tail only grows by appended rows, so the length names the tail."""
        cache = self._tail_cache
        if cache is None or len(cache.order) != len(tail_labels):
            cache = TailGroups.build(tail_labels, self.n_lists, self.sorted_end)
            self._tail_cache = cache
        return cache

    def _ranked(self, queries: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` nearest lists of each float32 query (the centroids' shift cached)."""
        if self._shift is None:
            self._shift = clustering.centroid_shift(self.centroids, self.metric)
        return clustering.ranked(queries, self.centroids, self._shift, n)

    def probe(self, queries: np.ndarray, nprobe: int, *, allowed_counts: np.ndarray,
              need: int, tail: "TailGroups | None" = None) -> "PlannedSpans":
        """Spans ``(offsets, bounds)`` to scan per query (see ``codecs.run_scan``): the
        ``nprobe`` lists nearest each query, then further lists in order of nearness until
        they hold ``need`` allowed rows (``allowed_counts`` per list, the tail's rows of each
        list included). With a ``tail`` the spans carry each query's tail rows of its probed
        lists as explicit positions (``PlannedSpans.extra``)."""
        nprobe = min(nprobe, self.n_lists)
        planned = self._planned(np.ascontiguousarray(queries, dtype=np.float32), nprobe,
                                allowed_counts, need, tail)
        # (a probe of every list must find what the flat scan finds; a filter's extra lists
        # do not make a partial probe exhaustive, and its promise is k hits, not exactness)
        planned.partial = nprobe < self.n_lists
        return planned

    def _planned(self, queries: np.ndarray, nprobe: int, allowed_counts: np.ndarray,
                 need: int, tail: "TailGroups | None") -> "PlannedSpans":
        """:meth:`probe`'s spans."""
        if len(queries) == 1:  # one query: one compiled call, unless its lists hold too few
            planned = self._one_query(queries, nprobe, allowed_counts, need, tail)
            if planned is not None:
                return planned
        nearest = self._ranked(queries, nprobe)
        if (allowed_counts[nearest].sum(axis=1) >= need).all():
            return self._spans_of(nearest, tail)
        probed_lists = []
        for q in range(len(queries)):
            probed = nearest[q]
            if allowed_counts[probed].sum() < need:
                # too few allowed rows in the nearest lists: further lists, nearest first
                order = self._ranked(queries[q:q + 1], self.n_lists)[0]
                enough = int(np.searchsorted(np.cumsum(allowed_counts[order]), need)) + 1
                probed = order[: min(self.n_lists, max(nprobe, enough))]
            probed_lists.append(probed)
        return self._ragged_spans(probed_lists, tail)

    def _one_query(self, query: np.ndarray, nprobe: int, allowed_counts: np.ndarray, need: int,
                   tail: "TailGroups | None") -> "PlannedSpans | None":
        """:meth:`probe` of a single query in one compiled call (``kernels.plan_one_query``);
        None when its ``nprobe`` lists hold fewer than ``need`` allowed rows."""
        if self._shift is None:
            self._shift = clustering.centroid_shift(self.centroids, self.metric)
        scores = self.centroids @ query[0]
        scores -= self._shift
        held, bounds, rows = kernels.plan_one_query(
            scores, nprobe, self.bounds, _NO_ROWS if tail is None else tail.order,
            _NO_ROWS if tail is None else tail.bounds, allowed_counts)
        if held < need:
            return None
        planned = PlannedSpans((np.array([0, len(bounds)], np.int64), bounds))
        if tail is not None:
            planned.extra = (np.array([0, len(rows)], np.int64), rows)
        return planned

    def _ragged_spans(self, probed_lists: list[np.ndarray],
                      tail: "TailGroups | None") -> "PlannedSpans":
        """:meth:`_spans_of` for queries that probe different numbers of lists."""
        offsets = np.zeros(len(probed_lists) + 1, np.int64)
        spans, extra = [], []
        for q, probed in enumerate(probed_lists):
            one = self._spans_of(probed[None, :], tail)
            spans.append(one[1])
            offsets[q + 1] = offsets[q] + len(one[1])
            if one.extra is not None:
                extra.append(one.extra[1])
        bounds = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)
        planned = PlannedSpans((offsets, np.ascontiguousarray(bounds, np.int64).reshape(-1, 2)))
        if tail is not None:
            rows = np.concatenate(extra) if extra else np.zeros(0, np.int64)
            counts = np.array([len(e) for e in extra], np.int64)
            planned.extra = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows)
        return planned

    def _spans_of(self, probed: np.ndarray, tail: "TailGroups | None") -> "PlannedSpans":
        """The spans of each query's ``probed`` lists (a (q, n) array, each row nearest list
        first), all queries at once: per query, its lists in that order (nearest first, so
        the scan's heap is near-final after the first lists and prunes the rest), a list
        that follows the one before it in RAM joining its span; and with a ``tail``, each
        query's tail rows of those lists (as ``extra``)."""
        n_queries = len(probed)
        starts, stops = self.bounds[probed], self.bounds[probed + 1]
        keep = stops > starts
        query = np.broadcast_to(np.arange(n_queries)[:, None], starts.shape)[keep]
        starts, stops = starts[keep], stops[keep]
        # a run begins at each query's first piece and wherever a piece does not touch the last
        begins = np.ones(len(starts), dtype=bool)
        begins[1:] = (query[1:] != query[:-1]) | (starts[1:] != stops[:-1])
        ends = np.ones(len(starts), dtype=bool)  # a run ends where the next one begins
        ends[:-1] = begins[1:]
        bounds = np.stack([starts[begins], stops[ends]], axis=1)
        offsets = np.zeros(n_queries + 1, np.int64)
        np.cumsum(np.bincount(query[begins], minlength=n_queries), out=offsets[1:])
        planned = PlannedSpans((offsets, bounds))
        if tail is not None:
            planned.extra = tail.rows_of(probed)
        return planned


@dataclass
class TailGroups:
    """The tail's positions grouped by list: list ``l``'s tail rows are
    ``order[bounds[l]:bounds[l + 1]]``, ascending (positions, which in the tail are rows)."""

    order: np.ndarray  # (tail rows,) int64 positions
    bounds: np.ndarray  # (lists + 1,) int64
    first: int = 0  # the tail's first position

    @classmethod
    def build(cls, tail_labels: np.ndarray, n_lists: int, first: int) -> "TailGroups":
        """Groups of the tail rows from position ``first`` whose lists are ``tail_labels``:
        a stable sort (a radix sort for list numbers below 2**16)."""
        labels = np.asarray(tail_labels)
        if n_lists <= 1 << 16:
            labels = labels.astype(np.uint16)
        order = np.argsort(labels, kind="stable").astype(np.int64) + first
        bounds = np.zeros(n_lists + 1, np.int64)
        np.cumsum(np.bincount(tail_labels, minlength=n_lists), out=bounds[1:])
        return cls(order=order, bounds=bounds, first=first)

    @property
    def counts(self) -> np.ndarray:
        """Tail rows per list."""
        return np.diff(self.bounds)

    def allowed_counts(self, allowed: np.ndarray) -> np.ndarray:
        """Tail rows per list that ``allowed`` (bool per tail row, in row order) allows."""
        sums = np.zeros(len(self.order) + 1, np.int64)
        np.cumsum(allowed[self.order - self.first], out=sums[1:])
        return np.diff(sums[self.bounds])

    def rows_of(self, probed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, positions)``: query ``q``'s tail rows of its ``probed[q]`` lists are
        ``positions[offsets[q]:offsets[q + 1]]``, list by list."""
        starts = self.bounds[probed].ravel()
        lengths = self.bounds[probed + 1].ravel() - starts
        per_query = lengths.reshape(len(probed), -1).sum(axis=1)
        offsets = np.zeros(len(probed) + 1, np.int64)
        np.cumsum(per_query, out=offsets[1:])
        total = int(offsets[-1])
        if not total:
            return offsets, np.zeros(0, np.int64)
        run_first = np.cumsum(lengths) - lengths  # where each list's run begins in the output
        at = np.repeat(starts - run_first, lengths) + np.arange(total)
        return offsets, self.order[at]


_NO_ROWS = np.zeros(0, np.int64)


class Calibration:
    """Finds the ``nprobe`` at which sampled rows, used as queries, find their true nearest
    rows. Rows stream through :meth:`observe` (in any order, each once); the exact top
    ``CALIBRATION_K`` of every sample query is kept (its rows and their lists), excluding the
    query's own row."""

    def __init__(self, queries: np.ndarray, query_rows: np.ndarray, metric: str) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.query_rows = np.asarray(query_rows, dtype=np.int64)
        self.metric = metric
        k = CALIBRATION_K
        self.best_scores = np.full((len(queries), k), -np.inf, np.float32)
        self.best_labels = np.full((len(queries), k), -1, np.int64)
        self.best_rows = np.full((len(queries), k), -1, np.int64)

    def observe(self, vectors: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
        """Rows ``rows`` with code vectors ``vectors`` belong to lists ``labels``."""
        if not len(rows) or not len(self.queries):
            return
        rows = np.asarray(rows, dtype=np.int64)
        scores = self.queries @ np.ascontiguousarray(vectors, dtype=np.float32).T
        if self.metric == "l2":
            scores = 2 * scores - np.einsum("ij,ij->i", vectors, vectors)[None, :]
        self._exclude_own_rows(scores, rows)
        # the chunk's own best K per query first: merging K columns, not the whole chunk's
        if np.isfinite(self.best_scores).all():  # most chunks: few rows beat the K-th best
            scores, columns = self._entering(scores)
        elif scores.shape[1] > CALIBRATION_K:
            columns = np.argpartition(-scores, CALIBRATION_K - 1, axis=1)[:, :CALIBRATION_K]
            scores = np.take_along_axis(scores, columns, axis=1)
        else:
            columns = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        taken = columns >= 0
        at = np.where(taken, columns, 0)
        chunk_labels = np.where(taken, np.asarray(labels, dtype=np.int64)[at], -1)
        chunk_rows = np.where(taken, rows[at], -1)
        merged_s = np.concatenate([self.best_scores, scores], axis=1)
        top = np.argpartition(-merged_s, CALIBRATION_K - 1, axis=1)[:, :CALIBRATION_K]
        self.best_scores = np.take_along_axis(merged_s, top, axis=1)
        self.best_labels = np.take_along_axis(
            np.concatenate([self.best_labels, chunk_labels], axis=1), top, axis=1)
        self.best_rows = np.take_along_axis(
            np.concatenate([self.best_rows, chunk_rows], axis=1), top, axis=1)

    def _entering(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query's best K columns among those above its K-th best so far, (scores,
        columns) padded with -inf / -1: once the top K are filled, few rows of a chunk beat
        them, so this sorts those few instead of partitioning every query's whole row."""
        k = CALIBRATION_K
        query, column = np.nonzero(scores > self.best_scores.min(axis=1)[:, None])
        values = scores[query, column]
        order = np.lexsort((-values, query))
        query, column, values = query[order], column[order], values[order]
        rank = np.arange(len(query)) - np.searchsorted(query, query)  # (first of its query)
        keep = rank < k
        out_scores = np.full((len(scores), k), -np.inf, np.float32)
        out_columns = np.full((len(scores), k), -1, np.int64)
        out_scores[query[keep], rank[keep]] = values[keep]
        out_columns[query[keep], rank[keep]] = column[keep]
        return out_scores, out_columns

    @classmethod
    def from_neighbours(cls, queries: np.ndarray, query_rows: np.ndarray, found: np.ndarray,
                        labels: np.ndarray, metric: str) -> "Calibration":
        """A calibration whose reference neighbours are given rather than observed: ``found``
        ((queries, at least K + 1) rows, best first, -1 padding; each query's own row is left
        out) in lists ``labels`` (same shape)."""
        calibration = cls(queries, query_rows, metric)
        found = np.asarray(found, dtype=np.int64)
        order = calibration._own_row_last(found)
        rows = np.take_along_axis(found, order, axis=1)[:, :CALIBRATION_K]
        lists = np.take_along_axis(np.asarray(labels, np.int64), order, axis=1)[:, :CALIBRATION_K]
        known = (rows >= 0) & (rows != calibration.query_rows[:, None])
        calibration.best_rows = np.where(known, rows, -1)
        calibration.best_labels = np.where(known, lists, -1)
        calibration.best_scores = np.where(known, 0.0, -np.inf).astype(np.float32)
        return calibration

    def _own_row_last(self, found: np.ndarray) -> np.ndarray:
        """The column order that moves each query's own row (if found) to the end of its
        row of ``found``, the rest kept in order (a stable sort on "is own")."""
        return np.argsort(found == self.query_rows[:, None], axis=1, kind="stable")

    def _exclude_own_rows(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """A sample query is not its own neighbour: -inf where a column is the query's row."""
        order = np.argsort(rows, kind="stable")
        at = np.minimum(np.searchsorted(rows, self.query_rows, sorter=order), len(rows) - 1)
        columns = order[at]
        own = np.nonzero(rows[columns] == self.query_rows)[0]
        scores[own, columns[own]] = -np.inf

    def nprobe(self, centroids: np.ndarray, recall: float = CALIBRATION_RECALL,
               margin: float = CALIBRATION_MARGIN) -> int:
        """The smallest nprobe whose lists hold ``recall`` of the true neighbours, times
        ``margin``."""
        n_lists = len(centroids)
        if not len(self.queries):
            return n_lists
        order = clustering.rank_lists(self.queries, centroids, self.metric, n_lists)
        rank = np.empty_like(order)
        rank[np.arange(len(order))[:, None], order] = np.arange(n_lists)[None, :]
        found = self.best_labels >= 0
        needed = np.where(found, np.take_along_axis(rank, np.maximum(self.best_labels, 0),
                                                    axis=1), -1)
        counts = np.bincount(needed[found], minlength=n_lists)  # neighbours by list rank
        share = np.cumsum(counts) / max(1, int(found.sum()))
        plain = int(np.searchsorted(share, recall - 1e-12)) + 1
        return int(min(n_lists, max(1, math.ceil(plain * margin))))

    def renumber(self, live: np.ndarray) -> None:
        """Rows were renumbered by a compaction keeping the sorted ``live`` rows (row ``r``
        becomes ``searchsorted(live, r)``); the queries' and neighbours' rows follow."""
        self.query_rows = np.searchsorted(live, self.query_rows)
        self.best_rows = np.where(self.best_rows >= 0, np.searchsorted(live, self.best_rows), -1)

    def search_recall(self, found: np.ndarray) -> float:
        """The share of the sample queries' true neighbours among the rows their searches
        ``found`` ((queries, at least K + 1) rows, best first, -1 padding): each query's own
        row is left out, then its first ``CALIBRATION_K`` are counted."""
        found = np.asarray(found, dtype=np.int64)
        kept = np.take_along_axis(found, self._own_row_last(found), axis=1)[:, :CALIBRATION_K]
        known = (self.best_rows >= 0) & np.isfinite(self.best_scores)  # (not padding)
        true = np.where(known, self.best_rows, -2)
        hits = (kept[:, :, None] == true[:, None, :]).any(axis=1)
        return float(hits.sum() / max(1, int(known.sum())))


def searched_nprobe(recall_at: Callable[[int], float], lower: int, n_lists: int,
                    target: float = SEARCH_CALIBRATION_RECALL) -> tuple[int, float]:
    """``(nprobe, its recall)``: the smallest ``nprobe >= lower`` with ``recall_at(nprobe) >=
    target``, searched upwards by SEARCH_CALIBRATION_STEP then bisected (recall is taken to
    grow with nprobe). Up to SEARCH_CALIBRATION_REACH times ``lower`` (and ``n_lists``); when
    the target is out of reach there, the smallest count searched whose recall is within
    SEARCH_PLATEAU of the best seen. ``lower`` is the count the lists alone need for the
    target: a search finds no more than its lists hold."""
    lower = int(min(max(1, lower), n_lists))
    reach = min(n_lists, lower * SEARCH_CALIBRATION_REACH)
    seen: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in seen:
            seen[nprobe] = float(recall_at(nprobe))
        return seen[nprobe]

    below, nprobe = 0, lower  # below: the largest count known to fall short
    while recall(nprobe) < target:
        if nprobe >= reach:
            best = max(seen.values())
            chosen = min(n for n, r in seen.items() if r >= best - SEARCH_PLATEAU)
            return chosen, seen[chosen]
        step = max(nprobe + 1, math.ceil(nprobe * SEARCH_CALIBRATION_STEP))
        below, nprobe = nprobe, min(reach, step)
    while nprobe - below > 1 and below:  # bisect (below, nprobe]
        middle = (below + nprobe) // 2
        if recall(middle) >= target:
            nprobe = middle
        else:
            below = middle
    return nprobe, seen[nprobe]


def searched_setting(recall_at: Callable[[int, int], float], lower: int, n_lists: int,
                     oversample: int, limit: int,
                     target: float = SEARCH_CALIBRATION_RECALL) -> tuple[int, int, float]:
    """``(nprobe, oversample, recall)``: :func:`searched_nprobe` with ``recall_at(nprobe,
    oversample)`` at the index's ``oversample``, then at each larger factor of
    SEARCH_OVERSAMPLE_FACTORS (up to ``limit``) while the target is out of reach: the first
    that reaches it, else the one with the best recall (the smaller oversample on a tie)."""
    best: tuple[int, int, float] | None = None
    for factor in SEARCH_OVERSAMPLE_FACTORS:
        candidates = min(limit, oversample * factor)
        if best is not None and candidates <= best[1]:
            break
        nprobe, recall = searched_nprobe(lambda n: recall_at(n, candidates), lower, n_lists,
                                         target)
        if best is None or recall > best[2]:
            best = (nprobe, candidates, recall)
        if recall >= target:
            break
    return best


def sample_rows(live: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of the ``live`` rows (all when fewer), sorted, drawn with ``seed``."""
    if len(live) <= count:
        return live
    picked = np.random.default_rng(seed).choice(len(live), count, replace=False)
    return live[np.sort(picked)]
