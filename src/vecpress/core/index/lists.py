"""Partition maintenance of an :class:`~vecpress.core.index.Index`: training the inverted lists
(and calibrating ``nprobe``) without renumbering a row, keeping the codes in the lists' order,
folding the tail of new rows in, and the scan of a partitioned snapshot."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import clustering, partitions, storage, store_format
from ..codecs import Codec, RowFilter
from ..columns import _Blocks, _Growable, _row_filter, _Snapshot, _TiledCodes
from ..partitions import Calibration, ListLayout
from .upkeep import REENCODE_ROWS, _code_store


#: a training sample holding more than one row in this many of a segment's reads the segment
#: through in chunks rather than a ``pread`` per row (at 1M rows the 131k-row sample of the
#: second training took 1.9 CPU s row by row: about 14 us a ``pread``, against well under one
#: for a row of a sequential read)
DENSE_SAMPLE = 16
#: the sampled queries of a tuning are searched a few at a time, so that their candidates'
#: originals (float32, read for the rerank) stay under this many rows: all 512 queries of a
#: retuning at once, 880 candidates each, raised a 10M build's peak memory by 320 MiB
SAMPLE_SEARCH_ROWS = 32_768


class _Lists:
    """The :class:`~vecpress.core.index.Index` methods that train and lay out its lists."""

    # ------------------------------------------------------------------ internals: lists
    def _training_due(self) -> bool:
        """Whether the next upkeep trains the lists: the first time once the index is large
        enough for its ``partitions`` setting, then each time it has grown
        ``partitions.RETRAIN_GROWTH``-fold."""
        setting = self._config.get("partitions")
        if setting is None or not self.rerank:
            return False
        live = len(self)
        if self._lists is None:
            needed = (partitions.AUTO_MIN_ROWS if setting == "auto"
                      else setting * partitions.MIN_ROWS_PER_LIST)
            return live >= needed
        return live >= partitions.RETRAIN_GROWTH * max(1, self._trained_rows)

    def _retune_due(self) -> bool:
        """Whether the next upkeep tunes the search defaults again (the lists are kept): once
        the index has grown ``partitions.RETUNE_GROWTH``-fold since they were tuned."""
        if self._lists is None or not self.rerank:
            return False
        return len(self) >= partitions.RETUNE_GROWTH * max(1, self._tuned_rows)

    def _planned_lists(self, live: np.ndarray) -> "_ListPlan | None":
        """The lists a compaction of the ``live`` rows gives them: new centroids when
        training is due (trained on a sample of their originals), else the current ones."""
        if not self._training_due():
            return self._kept_lists()
        setting = self._config["partitions"]
        n_lists = partitions.auto_lists(len(live)) if setting == "auto" else setting
        seed = self._config["seed"]
        count = min(partitions.MAX_TRAIN_ROWS, n_lists * partitions.TRAIN_ROWS_PER_LIST)
        sample_rows = partitions.sample_rows(live, count, seed)
        sample = self._code_vectors(self._sampled_originals(sample_rows))
        centroids = clustering.train_centroids(
            sample, n_lists, self._codec_metric, seed=seed,
            iterations=partitions.training_iterations(len(sample), n_lists))
        picked = partitions.sample_rows(np.arange(len(sample_rows)),
                                        partitions.CALIBRATION_QUERIES, seed + 1)
        calibration = Calibration(sample[picked], sample_rows[picked], self._codec_metric)
        return _ListPlan(centroids=centroids, nprobe=n_lists, trained_rows=len(live),
                         calibration=calibration)

    def _train_lists(self) -> None:
        """Train new lists (the first time, or after ``RETRAIN_GROWTH``-fold growth) without
        renumbering a row: every row's originals stream through once to get its list (and to
        calibrate nprobe), each segment gets a new lists file and the manifest commits; then
        the codes are reordered in RAM and published at once. Codes and originals are not
        rewritten, so searches (and a Collection's cached filter masks) are unaffected."""
        live = self._ids.live_rows()
        plan = self._planned_lists(live)
        n_rows = self._ids.size
        labels = np.empty(n_rows, np.int32)
        removed = self._ids.removed
        for lo, hi, kept in self._all_original_chunks():
            vectors = self._code_vectors(kept)
            labels[lo:hi] = clustering.assign(vectors, plan.centroids, self._codec_metric)
            alive = np.arange(lo, hi) if removed is None else np.nonzero(~removed[lo:hi])[0] + lo
            plan.calibration.observe(vectors[alive - lo], alive, labels[alive])
        plan.nprobe = plan.calibration.nprobe(plan.centroids)
        if self._path is not None:
            self._persist_lists(plan, labels)
        layout = ListLayout.build(plan.centroids, self._codec_metric, plan.nprobe, labels)
        codes, factors = self._reordered(self._codes, self._factors, layout, self._lists,
                                         self._codec)
        with self._mutex:  # (the layout orders every row: no tail, so no tail labels)
            self._codes, self._factors, self._labels = codes, factors, _Growable((), np.int32)
            self._lists, self._trained_rows = layout, plan.trained_rows
            self._tuned_rows = plan.trained_rows
        self._tune_search_defaults(plan.calibration)

    def _retune_search_defaults(self) -> None:
        """Tune the search defaults of the lists again as the index grows: sampled live rows
        are searched as in a training's tuning, their reference neighbours found by a search
        wider in nprobe and in oversample than the current defaults (``RETUNE_TRUTH_*`` in
        ``partitions``; the exact neighbours would take a pass over every original). The
        live count it was tuned at is committed with the result, so a reopen does not tune
        again; a failure warns, and the next try waits for the next growth."""
        live = self._ids.live_rows()
        self._tuned_rows = len(live)
        try:
            calibration = self._widely_searched_sample(live)
        except Exception as exc:  # (tuning is an optimisation: never lose the write to it)
            _warn_tuning_failed(exc)
            return
        self._tune_search_defaults(calibration, tuned_rows=len(live))

    def _widely_searched_sample(self, live: np.ndarray) -> Calibration:
        """A :class:`Calibration` of ``CALIBRATION_QUERIES`` sampled ``live`` rows whose
        reference neighbours are those of a search wider than the defaults (see
        :meth:`_retune_search_defaults`)."""
        snap = self._snapshot()
        layout = snap.lists
        rows = partitions.sample_rows(live, partitions.CALIBRATION_QUERIES,
                                      self._config["seed"] + len(live))
        for_codes, full = self._prepare_vectors(self._sampled_originals(rows), "kept originals")
        nprobe = min(layout.n_lists, partitions.RETUNE_TRUTH_NPROBE * layout.nprobe)
        oversample = min(store_format.MAX_OVERSAMPLE,
                         partitions.RETUNE_TRUTH_OVERSAMPLE * self._default_oversample(layout))
        found = self._sample_searched(snap, for_codes, full, nprobe, oversample)
        labels = self._row_labels(np.maximum(found, 0).ravel()).reshape(found.shape)
        return Calibration.from_neighbours(for_codes, rows, found, labels, self._codec_metric)

    def _sample_searched(self, snap: _Snapshot, for_codes: np.ndarray, full: np.ndarray,
                         nprobe: int, oversample: int) -> np.ndarray:
        """The rows (best first, -1 padding) of the ``CALIBRATION_K + 1`` best hits of each
        sampled query (one of them its own row) with ``nprobe`` lists and ``oversample``
        candidates a hit. The rerank reads the candidates' originals with ``pread`` (as the
        training sample is read), not through the memory maps, which would pull whole blocks
        of a large store into the process's resident memory."""
        k = partitions.CALIBRATION_K + 1
        candidates = min(k * oversample, snap.ids.size)
        flt, reader = _row_filter(snap.ids, None), _ReadRows(self)
        found = np.empty((len(for_codes), k), np.int64)
        step = max(1, SAMPLE_SEARCH_ROWS // candidates)
        for lo in range(0, len(for_codes), step):
            hi = lo + step
            _, rows = _scan_lists(snap, for_codes[lo:hi], candidates, flt, nprobe)
            found[lo:hi] = self._rerank(reader, full[lo:hi], rows, k)[1]
        return found

    def _tune_search_defaults(self, calibration: Calibration,
                              tuned_rows: int | None = None) -> None:
        """Set the search defaults of the lists just published (``nprobe``, and ``oversample``
        when the codes need more candidates) through the search itself:
        the sampled rows of ``calibration`` are searched (their own row left out) with the
        codes and the rerank, and the smallest count whose recall reaches
        ``partitions.SEARCH_CALIBRATION_RECALL`` is committed; when no count reaches it with
        the index's ``oversample`` (codes too coarse for that many candidates), a larger
        oversample that does is committed with it (see :func:`partitions.searched_setting`).
        The lists alone cannot tell what the codes lose, nor how much margin their count
        needs. A failure (of the searches or of the commit) keeps the count the index had with
        a warning: the rows and the lists are committed already. ``tuned_rows`` (a retuning)
        is committed with the result, changed or not."""
        try:
            layout, nprobe, oversample = self._searched_setting(calibration)
            unchanged = layout is None or (nprobe, oversample) == (layout.nprobe,
                                                                   layout.oversample)
            if unchanged and tuned_rows is None:
                return
            if self._path is not None and layout is not None:
                manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
                entry = dict(manifest["partitions"], nprobe=nprobe)
                entry.pop("oversample", None)
                if oversample is not None:
                    entry["oversample"] = oversample
                if tuned_rows is not None:
                    entry["tuned_rows"] = tuned_rows
                manifest["partitions"] = entry
                self._commit(manifest)
        except Exception as exc:  # (tuning is an optimisation: never lose the write to it)
            _warn_tuning_failed(exc)
            return
        if unchanged:
            return
        with self._mutex:
            if self._lists is layout:
                self._lists = dataclasses.replace(layout, nprobe=nprobe, oversample=oversample)

    def _searched_setting(self, calibration: Calibration
                          ) -> tuple[ListLayout | None, int, int | None]:
        """(the published layout, the nprobe its sampled rows' searches need, and the
        oversample they need when it is above the index's, else None)."""
        snap = self._snapshot()
        layout = snap.lists
        if layout is None or not len(calibration.query_rows):
            return layout, 0, None
        for_codes, full = self._prepare_vectors(
            self._sampled_originals(calibration.query_rows), "kept originals")

        def recall_at(nprobe: int, oversample: int) -> float:
            found = self._sample_searched(snap, for_codes, full, nprobe, oversample)
            return calibration.search_recall(found)

        lower = calibration.nprobe(layout.centroids, partitions.SEARCH_CALIBRATION_RECALL, 1.0)
        nprobe, oversample, _ = partitions.searched_setting(
            recall_at, lower, layout.n_lists, self.oversample, store_format.MAX_OVERSAMPLE)
        return layout, nprobe, oversample if oversample > self.oversample else None

    def _persist_lists(self, plan: "_ListPlan", labels: np.ndarray) -> None:
        """Commit new centroids and a new lists file for every segment (nothing else)."""
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        gen = manifest["generation"]
        new_segments, start = [], 0
        for number, segment in enumerate(self._manifest["segments"]):
            stop = start + segment["rows"]
            files = dict(segment["files"])
            files["lists"] = storage.write_array(self._path, f"seg-{gen:08d}-lists-{number}.npy",
                                                 labels[start:stop], sync=self._sync)
            new_segments.append(dict(segment, files=files))
            start = stop
        manifest["segments"] = new_segments
        manifest["partitions"] = self._partitions_entry(gen, plan)
        if self._pending_removals:
            manifest["tombstones"] = self._tombstones_with(gen, np.zeros(0, np.int64))
            manifest["count"] = len(self)
        self._commit(manifest)
        self._pending_removals = []

    def _sampled_originals(self, rows: np.ndarray) -> np.ndarray:
        """float32 originals of the sorted ``rows``, read from disk rather than through the
        store's memory maps: a sample spread over the whole store would map every block of
        the originals (and checksum it whole), leaving gigabytes of file pages in the
        process's resident memory (5 GB in a 10M build). A dense sample reads its segments
        in order, checking their CRC32; a sparse one maps a window of the file at a time
        (``RowReader.gather``)."""
        if self._path is None:
            return self._originals.fetch_sorted(rows)
        out = np.empty((len(rows), self.dim), np.float32)
        start = 0
        for segment in self._manifest["segments"]:
            stop = start + segment["rows"]
            first, last = np.searchsorted(rows, [start, stop])
            if last > first:
                with storage.RowReader(self._path, segment["files"]["originals"]) as reader:
                    wanted = rows[first:last] - start
                    if len(wanted) * DENSE_SAMPLE > segment["rows"]:
                        _read_dense(reader, segment["rows"], wanted, out[first:last],
                                    self._chunk_rows)
                    else:
                        reader.gather(wanted, out[first:last])
            start = stop
        beyond = int(np.searchsorted(rows, start))  # rows of the row log, kept in RAM
        if beyond < len(rows):
            out[beyond:] = self._originals.fetch_sorted(rows[beyond:])
        return out

    def _partitions_entry(self, gen: int, plan: "_ListPlan") -> dict[str, Any]:
        """The manifest's ``partitions`` entry for ``plan``, its centroids written first."""
        centroids = storage.write_array(self._path, f"part-{gen:08d}-centroids.npy",
                                        plan.centroids, sync=self._sync)
        entry = {"lists": len(plan.centroids), "nprobe": plan.nprobe,
                 "trained_rows": plan.trained_rows, "centroids": centroids}
        if plan.oversample is not None:
            entry["oversample"] = plan.oversample
        if plan.tuned_rows is not None and plan.tuned_rows != plan.trained_rows:
            entry["tuned_rows"] = plan.tuned_rows
        return entry

    def _kept_lists(self) -> "_ListPlan | None":
        """The current lists, unchanged (None while flat)."""
        if self._lists is None:
            return None
        return _ListPlan(centroids=self._lists.centroids, nprobe=self._lists.nprobe,
                         trained_rows=self._trained_rows, oversample=self._lists.oversample,
                         tuned_rows=self._tuned_rows)

    def _row_labels(self, rows: np.ndarray) -> np.ndarray:
        """The list number (int32) of each of ``rows`` of a partitioned index: the layout's
        for the rows it orders, ``_labels`` (the tail's, kept apart) for the rows after them."""
        rows = np.asarray(rows, dtype=np.int64)
        end = self._lists.sorted_end
        labels = np.empty(len(rows), np.int32)
        ordered = rows < end
        labels[ordered] = self._lists.lists_of(rows[ordered])
        labels[~ordered] = self._labels.view[rows[~ordered] - end]
        return labels

    def _code_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, factors) of ``rows``, wherever the layout keeps them."""
        at = rows if self._lists is None else self._lists.positions_of(rows)
        return self._codes.rows(at), self._factors.view[at]

    def _reordered(self, codes: "_Growable | _TiledCodes", factors: _Growable,
                   layout: ListLayout, old: ListLayout | None,
                   codec: Codec) -> tuple["_Growable | _TiledCodes", _Growable]:
        """New code and factor stores holding the rows of ``codes`` and ``factors`` (in
        ``old``'s position order, or in row order when ``old`` is None) in ``layout``'s
        order, copied a chunk at a time."""
        n_rows = factors.size
        new_codes = _code_store(codec)
        new_codes.reserve(n_rows)
        new_factors = _Growable((codec.factor_count,), np.float32)
        new_factors.reserve(n_rows)
        inverse = None if old is None else old.inverse()  # (every row is mapped: a lookup)
        for lo in range(0, n_rows, REENCODE_ROWS):
            rows = layout.rows_at(np.arange(lo, min(n_rows, lo + REENCODE_ROWS)))
            at = rows if old is None else _positions(inverse, rows)
            new_codes.extend(codes.rows(at))
            new_factors.extend(factors.view[at])
        return new_codes, new_factors

    def _fold_tail(self) -> None:
        """Rebuild the layout once the rows added since it was built (the tail, which every
        query scans) outgrow ``partitions.tail_limit``: RAM only, the files are unchanged."""
        with self._writer:
            old = self._lists
            if old is None:
                return
            n_rows = self._ids.size
            if n_rows - old.sorted_end <= partitions.tail_limit(n_rows):
                return
            layout = ListLayout.build(old.centroids, self._codec_metric, old.nprobe,
                                      self._row_labels(np.arange(n_rows)), old.oversample)
            codes, factors = self._reordered(self._codes, self._factors, layout, old,
                                             self._codec)
            with self._mutex:
                self._codes, self._factors, self._lists = codes, factors, layout
                self._labels = _Growable((), np.int32)  # (the tail is folded in)



def _warn_tuning_failed(exc: Exception) -> None:
    warnings.warn(f"vecpress: tuning nprobe by search failed ({exc!r}); the index keeps the "
                  f"count it had", RuntimeWarning, stacklevel=4)


def _positions(inverse: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of ``rows`` under a layout whose :meth:`ListLayout.inverse` is ``inverse``
    (rows after the ones it orders keep their number)."""
    if not len(inverse):
        return rows
    ordered = rows < len(inverse)
    return np.where(ordered, inverse[np.where(ordered, rows, 0)], rows)


class _ReadRows:
    """Originals of sorted rows read with ``pread`` (``Index._sampled_originals``): what
    ``Index._rerank`` scores from during a tuning (as it scores from ``_Blocks``)."""

    def __init__(self, index: Any) -> None:
        self._index = index

    def fetch_sorted(self, rows: np.ndarray) -> np.ndarray:
        return self._index._sampled_originals(np.asarray(rows, dtype=np.int64))

    def exact_scores(self, rows: np.ndarray, queries: np.ndarray,
                     query_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As ``_Blocks.exact_scores`` (rows sorted, repeats allowed): the rows are read once,
        then scored as one block of originals is."""
        unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        read = _Blocks()
        read.append(self.fetch_sorted(unique))
        return read.exact_scores(inverse.astype(np.int64), queries, query_of)


@dataclass
class _ListPlan:
    """The lists a rewrite gives the rows: ``centroids`` and the ``nprobe`` they need. With
    a ``calibration`` the centroids are new: every row is assigned to one and ``nprobe`` is
    calibrated as the rows stream by; without one each row keeps its list."""

    centroids: np.ndarray
    nprobe: int
    trained_rows: int
    calibration: Calibration | None = None
    oversample: int | None = None  # (see ListLayout.oversample)
    tuned_rows: int | None = None  # (live rows at the last tuning, when after the training)



def _scan_lists(snap: _Snapshot, queries: np.ndarray, candidates: int, flt: RowFilter,
                nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The scan of a partitioned snapshot: best ``candidates`` rows per query among the
    lists it probes, their tail rows included (every allowed row for a selective filter),
    as rows, not positions."""
    lists = snap.lists
    n_rows = snap.ids.size
    end = lists.sorted_end
    removed, live_counts = lists.removal_flags(snap.ids.removal_key, flt.removed, n_rows)
    spans = None
    if flt.rows is not None:  # selective: few rows, scan them all
        by_position = RowFilter(n_rows=n_rows, removed=removed,
                                rows=np.sort(lists.positions_of(flt.rows)))
    else:
        tail = lists.tail_groups(snap.tail_labels) if n_rows > end else None
        mask = None if flt.mask is None else lists.to_positions(flt.mask)
        allowed = mask if removed is None or mask is None else mask & ~removed
        if allowed is None:
            counts = live_counts
            if tail is not None:
                counts = counts + (tail.counts if removed is None
                                   else tail.allowed_counts(~removed[end:]))
        else:
            in_lists = np.zeros(end + 1, np.int64)
            np.cumsum(allowed[:end], out=in_lists[1:])
            counts = np.diff(in_lists[lists.bounds])
            if tail is not None:
                counts = counts + tail.allowed_counts(allowed[end:])
        spans = lists.probe(queries, lists.nprobe if nprobe is None else nprobe,
                            allowed_counts=counts, need=candidates, tail=tail)
        by_position = RowFilter(n_rows=n_rows, removed=removed, mask=mask)
    scores, positions = snap.codec.scan(snap.codes, snap.factors, queries, candidates,
                                        by_position, spans=spans)
    return scores, lists.rows_at(positions)


def _read_dense(reader: "storage.RowReader", n_rows: int, wanted: np.ndarray, out: np.ndarray,
                step: int) -> None:
    """Rows ``wanted`` (sorted) of a segment of ``n_rows`` into ``out``, reading the whole
    segment in order ``step`` rows at a time (its CRC32 is checked on the way)."""
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        a, b = np.searchsorted(wanted, [lo, hi])
        chunk = reader.read(lo, hi)
        if b > a:
            out[a:b] = chunk[wanted[a:b] - lo]
    reader.check()
