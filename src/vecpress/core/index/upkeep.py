"""Upkeep after writes: merging segments, compaction (dropping removed rows) and refitting the
codec, each streaming the rows through in bounded chunks and committing once."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import activity, clustering, segments, storage
from ..codecs import Codec
from ..columns import _Blocks, _Growable, _IdColumn, _TiledCodes
from ..partitions import ListLayout

if TYPE_CHECKING:
    from .index import Index
    from .lists import _ListPlan

#: at most this many rows are copied or re-encoded per chunk (fewer for wide rows: see
#: ``segments.MERGE_BUFFER_BYTES``)
REENCODE_ROWS = 65_536


class _Upkeep:
    """The :class:`~vecpress.core.index.Index` methods that merge, compact and refit."""

    @property
    def _can_refit(self) -> bool:
        """A data-fitted codec (PCA) is refitted, and every row re-encoded, from the kept
        originals; without originals it keeps the fit of the first batch."""
        return self.rerank and hasattr(self._codec, "refit_due")

    def _refitted_codec(self, live: np.ndarray) -> Codec:
        """A copy of the codec refitted on (a sample of) the live rows' originals (the
        index's own codec is untouched until the rows re-encoded with it are committed)."""
        codec = deepcopy(self._codec)
        sample = live
        limit = getattr(codec, "MAX_FIT_ROWS", len(live))
        if len(live) > limit:
            picked = np.random.default_rng(self._config["seed"]).choice(len(live), limit,
                                                                        replace=False)
            sample = live[np.sort(picked)]
        codec.fit(self._code_vectors(self._originals.fetch_sorted(sample)))  # (rows ascending)
        return codec

    def _code_vectors(self, originals: np.ndarray) -> np.ndarray:
        """Kept originals back to the vectors the codes are made from."""
        return self._prepare_vectors(np.ascontiguousarray(originals, dtype=np.float32),
                                     "kept originals")[0]

    def _maintain(self) -> None:
        """Compact when half the rows are removed, or refit a data-fitted codec once the index
        has outgrown its fit; merge segments of similar size (see ``compaction_due``)."""
        live = f"{len(self):,}"
        if self._ids.deleted >= 64 and 2 * self._ids.deleted >= self._ids.size:
            with activity.step(f"compacting: rewriting the {live} live rows"):
                self.compact()
        elif self._can_refit and self._codec.refit_due(len(self)):
            with activity.step(f"refitting the codec and re-encoding {live} rows"):
                self._upkeep_step(self.compact)
        else:
            if self._path is not None:
                self._merge_segments()
            if self._training_due():
                with activity.step(f"building the inverted lists over {live} rows"):
                    self._upkeep_step(self._train_lists)
            else:
                self._fold_tail()
                if self._retune_due():
                    with activity.step(f"tuning nprobe again at {live} rows"):
                        self._retune_search_defaults()

    def _upkeep_step(self, step: Callable[[], None]) -> None:
        """Run a refit or a training: the write that triggered it is committed already, so a
        failure is a warning and the index keeps its previous state, retried as it grows."""
        try:
            step()
        except Exception as exc:
            warnings.warn(f"vecpress: refitting the codec or the lists failed ({exc!r}); "
                          f"the index keeps its previous fit and tries again as it grows",
                          RuntimeWarning, stacklevel=4)

    @property
    def _chunk_rows(self) -> int:
        """Rows per streamed chunk: four float32 copies of them fit ``MERGE_BUFFER_BYTES``."""
        return segments.chunk_rows(4 * 4 * self.dim, cap=REENCODE_ROWS)

    def _merge_segments(self) -> None:
        """Merge runs of segments of one size tier until none is due (see ``segments``)."""
        max_rows = segments.max_segment_rows(self.dim * np.dtype(self._rerank_dtype).itemsize)
        while (run := segments.plan_merge([s["rows"] for s in self._manifest["segments"]],
                                          max_rows)) is not None:
            self._merge_run(*run)

    def _merge_run(self, first: int, stop: int) -> None:
        """Copy segments ``[first, stop)`` into one new segment, chunk by chunk: codes,
        factors and ids from RAM, originals read from their files (checked against their
        CRC32 on the way, so a merge never launders a damaged file into a fresh checksum)."""
        old = self._manifest["segments"]
        start_row = sum(s["rows"] for s in old[:first])
        stop_row = start_row + sum(s["rows"] for s in old[first:stop])
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        partitioned = self._lists is not None
        with self._segment_writer(self._path, manifest["generation"], stop_row - start_row,
                                  self._codec, with_lists=partitioned) as writer:
            for lo, hi, kept in self._original_chunks(old[first:stop], start_row):
                rows = np.arange(lo, hi)
                codes, factors = self._code_rows(rows)
                writer.append(codes=codes, factors=factors, ids=self._ids.of_rows(rows),
                              originals=kept,
                              lists=self._row_labels(rows) if partitioned else None)
            merged = writer.finish()
        manifest["segments"] = old[:first] + [merged] + old[stop:]
        self._commit(manifest)
        if self.rerank:
            blocks = self._originals.blocks
            originals = _Blocks()
            for block in blocks[:first] + [self._open_originals(merged)] + blocks[stop:]:
                originals.append(block)
            with self._mutex:  # searches see the old blocks or the new ones, never a part
                self._originals = originals

    def _original_chunks(self, segment_list: list[dict[str, Any]],
                         start_row: int) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """``(lo, hi, originals of rows [lo, hi))`` for every row of consecutive on-disk
        segments starting at row ``start_row``, a chunk at a time, read with ``pread`` so that
        no page stays mapped; each file's CRC32 is checked once it is read through. Without
        originals the third item is None."""
        step = self._chunk_rows
        for segment in segment_list:
            rows = segment["rows"]
            if "originals" not in segment["files"]:
                for lo in range(0, rows, step):
                    yield start_row + lo, start_row + min(rows, lo + step), None
            else:
                with storage.RowReader(self._path, segment["files"]["originals"]) as reader:
                    for lo in range(0, rows, step):
                        hi = min(rows, lo + step)
                        yield start_row + lo, start_row + hi, reader.read(lo, hi)
                    reader.check()
            start_row += rows

    def _all_original_chunks(self) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """Every row's originals in order, a chunk at a time (from RAM in memory)."""
        if self._path is not None:
            yield from self._original_chunks(self._manifest["segments"], 0)
            if self._log_rows:  # (a read-only index being saved: its log rows are in RAM)
                lo = self._manifest["rows"]
                yield lo, lo + self._log_rows, (None if self._log_originals is None
                                                else self._log_originals.view)
            return
        step = self._chunk_rows
        for lo in range(0, self._ids.size, step):
            hi = min(self._ids.size, lo + step)
            yield lo, hi, (None if self._memory_originals is None
                           else self._memory_originals.view[lo:hi])

    def _write_compacted(self, source: "Index", live: np.ndarray, codec: Codec | None = None,
                         *, keep_in_ram: bool = True, lists: "_ListPlan | None" = None) -> None:
        """Replace this index's files (when it has a path) and, with ``keep_in_ram``, its RAM
        arrays with ``source``'s ``live`` rows, re-encoded when a refitted ``codec`` is given,
        and partitioned as ``lists`` says (None: flat).

        Rows stream through in chunks: originals are read from ``source``'s files (or RAM)
        and written to the new segment as they come, so memory stays at a chunk plus the new
        codes, and nothing changes (the old fit stays too) until the manifest commits."""
        codec = self._codec if codec is None else codec
        reencode = codec is not self._codec
        ram = (_Rebuilt(self, codec, len(live), with_originals=self._path is None,
                        with_labels=lists is not None) if keep_in_ram else None)
        manifest = gen = writer = None
        if self._path is not None:
            self._fold_log()  # (rows keep their numbers; the log's are then in a segment)
            manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
            gen = manifest["generation"]
            self._write_codec_state(manifest, codec)
            if len(live):
                writer = self._segment_writer(self._path, gen, len(live), codec,
                                              with_lists=lists is not None)
        training = lists is not None and lists.calibration is not None
        try:
            for lo, hi, kept in source._all_original_chunks():
                rows = live[np.searchsorted(live, lo): np.searchsorted(live, hi)]
                if not len(rows):
                    continue
                kept = None if kept is None else kept[rows - lo]
                vectors = self._code_vectors(kept) if reencode or training else None
                if reencode:
                    codes, factors = codec.encode(vectors)
                else:
                    codes, factors = source._code_rows(rows)
                labels = None
                if training:
                    labels = clustering.assign(vectors, lists.centroids, self._codec_metric)
                    lists.calibration.observe(vectors, rows, labels)
                elif lists is not None:
                    labels = source._row_labels(rows)
                ids = source._ids.of_rows(rows)
                if writer is not None:
                    writer.append(codes=codes, factors=factors, ids=ids, originals=kept,
                                  lists=labels)
                if ram is not None:
                    ram.extend(codes, factors, ids, kept, labels)
            segment = writer.finish() if writer is not None else None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if training:
            lists.nprobe = lists.calibration.nprobe(lists.centroids)
        next_id = max(source._next_id, self._next_id)
        if manifest is not None:
            manifest.update(segments=[segment] if segment else [], tombstones=[],
                            next_id=next_id, rows=len(live), count=len(live))
            manifest.pop("partitions", None)
            if lists is not None:
                manifest["partitions"] = self._partitions_entry(gen, lists)
            self._commit(manifest)
            self._pending_removals = []  # (the removed rows are gone from the files)
        if ram is None:
            with self._mutex:
                self._codec = codec
                self._next_id = next_id
            return
        originals = ram.blocks(self, segment)
        layout = None
        if lists is not None:  # (ordered by list before the publish: searches go on)
            layout = ListLayout.build(lists.centroids, self._codec_metric, lists.nprobe,
                                      ram.labels.view, lists.oversample)
            ram.codes, ram.factors = self._reordered(ram.codes, ram.factors, layout, None, codec)
            ram.labels = _Growable((), np.int32)  # (the layout orders every row: no tail)
        with self._mutex:  # one publish: a search never pairs the new codec with old codes
            self._codec = codec
            ram.install(self, originals)
            self._lists = layout
            self._trained_rows = lists.trained_rows if lists is not None else 0
            self._tuned_rows = 0 if lists is None else lists.tuned_rows or lists.trained_rows
            self._next_id = next_id
        if training:  # (the sample's rows were the source's: now they are the live rows')
            lists.calibration.renumber(live)
            self._tune_search_defaults(lists.calibration)



def _code_store(codec: Codec) -> "_Growable | _TiledCodes":
    """An empty array of code rows in the layout ``codec`` scans."""
    layout = codec.tile_sign_words
    if layout is None:
        return _Growable(codec.code_shape(), codec.code_dtype)
    return _TiledCodes(int(np.prod(codec.code_shape())), layout)


class _Rebuilt:
    """The RAM arrays of an index being rebuilt from the live rows of another, filled chunk
    by chunk (room for every row is reserved up front, so nothing is copied to grow)."""

    def __init__(self, index: Index, codec: Codec, rows: int, *, with_originals: bool,
                 with_labels: bool = False) -> None:
        self.codes = _code_store(codec)
        self.codes.reserve(rows)
        self.factors = _Growable((codec.factor_count,), np.float32)
        self.factors.reserve(rows)
        self.ids = np.empty(rows, np.int64)
        self.labels = _Growable((), np.int32)
        if with_labels:
            self.labels.reserve(rows)
        self.filled = 0
        self.originals: _Growable | None = None
        if with_originals and index.rerank:
            self.originals = _Growable((index.dim,), index._rerank_dtype)
            self.originals.reserve(rows)

    def extend(self, codes: np.ndarray, factors: np.ndarray, ids: np.ndarray,
               kept: np.ndarray | None, labels: np.ndarray | None = None) -> None:
        if not len(ids):
            return
        self.codes.extend(codes)
        self.factors.extend(factors)
        self.ids[self.filled:self.filled + len(ids)] = ids
        self.filled += len(ids)
        if self.originals is not None and kept is not None:
            self.originals.extend(kept)
        if labels is not None:
            self.labels.extend(labels)

    def blocks(self, index: Index, segment: dict[str, Any] | None) -> _Blocks:
        """The kept originals of the rebuilt rows: in RAM, or mapped from ``segment``."""
        blocks = _Blocks()
        if self.originals is not None:
            blocks.append(self.originals.view)
        elif segment is not None and "originals" in segment["files"]:
            blocks.append(index._open_originals(segment))
        return blocks

    def install(self, index: Index, originals: _Blocks) -> None:
        """Make these the index's arrays (the caller holds the index's publish mutex)."""
        index._codes = self.codes
        index._factors = self.factors
        index._ids = _IdColumn(self.ids)
        index._labels = self.labels
        index._originals = originals
        index._memory_originals = self.originals
