"""The write path's files: each add as a segment (or, with ``durability="process"``, a record
of the row log), removals as tombstone files, and the manifest commit that publishes them;
replaced files are deleted once no reader can still be opening them."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import rowlog, segments, storage
from ..codecs import Codec
from ..columns import _Blocks

#: a writer deletes the files of a replaced manifest only after the next commit and once this
#: many seconds have passed since it was replaced, so a reader that has just read it can still
#: open its files ...
RETAIN_SECONDS = 2.0
#: ... plus the time a reader takes to read the store's RAM part (codes, factors, ids) at this
#: rate, so a large store's readers do not start again and again while a writer commits
READER_BYTES_PER_SECOND = 50 << 20
#: once a store has this many tombstone files, the next removal writes them all as one
MAX_TOMBSTONE_FILES = 16


class _Writes:
    """The :class:`~vecpress.core.index.Index` methods that write segments, tombstones, the row
    log and manifests."""

    # ------------------------------------------------------------------ internals: files
    def _check_writable(self) -> None:
        if self._read_only:
            raise PermissionError("this index is read-only (opened with read_only=True or "
                                  "closed); open it with Index.load(path) to write")

    def _new_manifest(self) -> dict[str, Any]:
        return {"format": storage.FORMAT_NAME, "format_version": storage.FORMAT_VERSION,
                "config": self._config, "codec": self._codec.params(), "generation": 0,
                "next_id": 0, "count": 0, "rows": 0, "codec_files": {}, "segments": [],
                "tombstones": []}

    def _commit(self, manifest: dict[str, Any]) -> None:
        # (a store of format 1 moves up; one naming a row log is refused by older versions)
        extended = manifest.get("log") or manifest.get("partitions")
        manifest["format_version"] = (storage.EXTENDED_FORMAT_VERSION if extended
                                      else storage.FORMAT_VERSION)
        storage.write_manifest(self._path, manifest, sync=self._sync)
        previous, self._manifest = self._manifest, manifest
        if previous is not None:
            dropped = storage.manifest_files(previous) - storage.manifest_files(manifest)
            self._superseded.append((time.monotonic(), dropped))
        self._remove_replaced_files()

    def _remove_replaced_files(self, *, sweep: bool = False) -> None:
        """Delete files no manifest names any more, except those of the manifest replaced
        last and of any replaced less than ``RETAIN_SECONDS`` ago: a reader may have read
        that manifest a moment before and be opening its files (it would start again from
        the newest manifest, see ``load``, but most never need to).

        The files a commit dropped are deleted by name once they expire, so a commit costs
        no directory listing; leftovers of failed writes (named by no manifest) are swept
        by listing the directory at most once per ``RETAIN_SECONDS``, or when ``sweep``."""
        now, retain = time.monotonic(), self._retain_seconds()
        last = len(self._superseded) - 1
        kept = []
        for n, (when, names) in enumerate(self._superseded):
            if n == last or now - when < retain:
                kept.append((when, names))
            else:
                storage.remove_files(self._path, names)
        self._superseded = kept
        if sweep or now - self._swept >= RETAIN_SECONDS:
            self._swept = now
            keep = storage.manifest_files(self._manifest).union(*(names for _, names in kept))
            storage.remove_files_except(self._path, keep)

    def _retain_seconds(self) -> float:
        """How long replaced files are kept: ``RETAIN_SECONDS`` plus the time a reader needs
        to read the files ``load`` reads whole (originals are only mapped)."""
        manifest = self._manifest
        entries = [*manifest["codec_files"].values(), *storage.tombstone_entries(manifest)]
        for segment in manifest["segments"]:
            entries += [e for part, e in segment["files"].items() if part != "originals"]
        loaded = sum(np.dtype(e["dtype"]).itemsize * math.prod(e["shape"]) for e in entries)
        return RETAIN_SECONDS + loaded / READER_BYTES_PER_SECOND

    def _write_codec_state(self, manifest: dict[str, Any], codec: Codec | None = None) -> None:
        gen = manifest["generation"]
        manifest["codec_files"] = {
            name: storage.write_array(self._path, f"codec-{gen:08d}-{name}.npy", array,
                                      sync=self._sync)
            for name, array in (codec or self._codec).state_arrays().items()}

    def _write_segment(self, gen: int, codes: np.ndarray, factors: np.ndarray,
                       ids: np.ndarray, kept: np.ndarray | None,
                       labels: np.ndarray | None) -> dict[str, Any]:
        name = f"seg-{gen:08d}"
        parts = [("codes", codes), ("factors", factors), ("ids", ids)]
        if labels is not None:
            parts.append(("lists", labels.astype(np.int32)))
        files = {part: storage.write_array(self._path, f"{name}-{part}.npy", array,
                                           sync=self._sync)
                 for part, array in parts}
        if kept is not None:
            files["originals"] = storage.write_array(self._path, f"{name}-originals.npy", kept,
                                                     blocks=True, sync=self._sync)
        return {"name": name, "rows": len(ids), "files": files}

    def _segment_writer(self, directory: Path, gen: int, rows: int, codec: Codec, *,
                        with_lists: bool) -> segments.SegmentWriter:
        """Streams a new segment of ``rows`` rows (codes of ``codec``, and each row's list
        number when ``with_lists``) into ``directory``."""
        parts = {"codes": (codec.code_dtype, codec.code_shape()),
                 "factors": (np.float32, (codec.factor_count,)), "ids": (np.int64, ())}
        if self.rerank:
            parts["originals"] = (self._rerank_dtype, (self.dim,))
        if with_lists:
            parts["lists"] = (np.int32, ())
        return segments.SegmentWriter(directory, f"seg-{gen:08d}", rows, parts, sync=self._sync)

    def _open_originals(self, segment: dict[str, Any]) -> np.ndarray:
        return storage.read_array(self._path, segment["files"]["originals"], mmap=True,
                                  verify=False)

    def _tombstones_with(self, gen: int, rows: np.ndarray) -> list[dict[str, Any]]:
        """The manifest's tombstone list after removing ``rows``: one new file holding just
        them, or, once there are ``MAX_TOMBSTONE_FILES``, one file holding every removed row."""
        entries = storage.tombstone_entries(self._manifest)
        rows = np.union1d(np.asarray(rows, dtype=np.int64), self._pending_rows())
        if len(entries) >= MAX_TOMBSTONE_FILES:
            entries, rows = [], np.union1d(self._ids.removed_rows(), rows)
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        return entries + [storage.write_array(self._path, f"tomb-{gen:08d}.npy", rows,
                                              sync=self._sync)]

    def _persist_add(self, codes, factors, ids, kept, labels, replaced, next_id,
                     fitting) -> None:
        self._fold_log()
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        gen = manifest["generation"]
        if fitting or not manifest["codec_files"]:
            self._write_codec_state(manifest)
        segment = self._write_segment(gen, codes, factors, ids, kept, labels)
        manifest["segments"] = self._manifest["segments"] + [segment]
        if len(replaced) or self._pending_removals:
            manifest["tombstones"] = self._tombstones_with(gen, replaced)
        manifest.update(next_id=next_id, rows=self._ids.size + len(ids),
                        count=len(self) + len(ids) - len(replaced))
        self._commit(manifest)
        self._pending_removals = []
        if kept is not None:
            block = self._open_originals(segment)
            with self._mutex:  # (extra rows of originals are never read by a search)
                self._originals.append(block)

    # ------------------------------------------------------------------ internals: row log
    def _log_takes(self, rows: int, fitting: bool) -> bool:
        """Whether an add of ``rows`` rows goes to the row log: small adds without fsyncs
        (``durability="process"``) once the codec's state is committed."""
        return (not self._sync and not fitting and rows <= rowlog.LOG_ADD_ROWS
                and bool(self._manifest["codec_files"] or not self._codec.state_arrays()))

    def _append_log(self, codes: np.ndarray, factors: np.ndarray, ids: np.ndarray,
                    kept: np.ndarray | None, replaced: np.ndarray,
                    labels: np.ndarray | None) -> None:
        """Append an add to the row log (starting a new one first when there is none of this
        writer's, or it is full), then publish its rows."""
        record = rowlog.encode_record(ids, codes, factors, kept, self._store_layout())
        log = self._log
        if (log is None or log.broken or self._log_rows + len(ids) > rowlog.LOG_MAX_ROWS
                or log.size + len(record) > rowlog.LOG_MAX_BYTES):
            self._fold_log(new_log=True)
        self._log.append(record)
        self._log_offset = self._log.size
        self._publish_log_rows(codes, factors, ids, kept, replaced, labels)

    def _fold_log(self, *, new_log: bool = False, drop_empty: bool = False) -> None:
        """Commit the row log's rows as a segment and the rows they replaced (with any other
        pending removals) as tombstones; the commit names a new empty log when ``new_log``,
        else none. Without rows in the log it commits only to start a log (``new_log``) or
        to drop an empty one (``drop_empty``)."""
        named = bool(self._manifest.get("log"))
        if not (self._log_rows or new_log or (drop_empty and named)):
            return
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        gen = manifest["generation"]
        manifest.pop("log", None)
        segment = writer = None
        if self._log_rows:
            first = self._manifest["rows"]
            rows = np.arange(first, self._ids.size)
            kept = None if self._log_originals is None else self._log_originals.view
            codes, factors = self._code_rows(rows)
            labels = None if self._lists is None else self._row_labels(rows)
            segment = self._write_segment(gen, codes, factors, self._ids.of_rows(rows), kept,
                                          labels)
            manifest["segments"] = manifest["segments"] + [segment]
            if self._pending_removals:
                manifest["tombstones"] = self._tombstones_with(gen, np.zeros(0, np.int64))
            manifest.update(rows=self._ids.size, count=len(self), next_id=self._next_id)
        if new_log:
            writer = rowlog.LogWriter(self._path, f"log-{gen:08d}.log")
            manifest["log"] = {"file": writer.name}
        try:
            self._commit(manifest)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if segment is not None:
            self._pending_removals = []
            if self._log_originals is not None:
                originals = _Blocks()
                for block in self._originals.blocks[:-1] + [self._open_originals(segment)]:
                    originals.append(block)
                with self._mutex:  # (the same rows, now mapped from the segment)
                    self._originals = originals
        if self._log is not None:
            self._log.close()
        self._log, self._log_rows, self._log_offset, self._log_originals = writer, 0, 0, None
