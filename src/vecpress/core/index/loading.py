"""Opening a store: reading a validated manifest's files into an index's RAM, replaying its
row log, and a read-only index's ``refresh`` (only the new segments when the writer only
appended). The directory is untrusted input: see :mod:`vecpress.core.store_format`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .. import clustering, rowlog, storage, store_format
from ..columns import _Blocks, _Growable, _IdColumn
from ..partitions import ListLayout
from ..validate import as_durability
from .config import _make_config

if TYPE_CHECKING:
    from .index import Index

#: a read-only open (or ``refresh``) starts again from the newest manifest at most this many
#: times when a writer's commit deletes the files it was reading
LOAD_ATTEMPTS = 20

_T = TypeVar("_T")


class _Loading:
    """The :class:`~vecpress.core.index.Index` methods that create, open and refresh a store."""

    def _create_directory(self, path: Path) -> None:
        if (path / storage.MANIFEST).exists():
            raise FileExistsError(
                f"path={str(path)!r} already holds a vecpress index; open it with "
                f"Index.load({str(path)!r})")
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory path")
        if path.exists() and any(p.name != storage.LOCK_FILE for p in path.iterdir()):
            raise FileExistsError(
                f"path={str(path)!r} is a non-empty directory that is not a vecpress index; "
                f"choose an empty or new directory")
        path.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock_file = storage.DirectoryLock(path)
        self._commit(self._new_manifest())

    @classmethod
    def load(cls, path: str | Path, *, read_only: bool = False,
             verify: bool | str = True, durability: str = "full") -> "Index":
        """Open a store written by an index with a ``path`` or by :meth:`save`.

        ``read_only=True`` takes no write lock, so a second process may search a store that
        another process is writing: it sees the state of one commit (the newest when it
        opened; :meth:`refresh` catches up). If a commit deletes files while it opens them,
        it starts again from the newest manifest. ``verify=True``
        checks the CRC32 of every file read into RAM and the size of the memory-mapped
        originals, whose blocks of rows are CRC-checked the first time a search or ``get``
        reads them; ``verify="full"`` reads the originals for their CRC32 at once (slower: the
        whole store), ``verify=False`` checks sizes only. ``durability`` is as for
        :class:`Index` (this open's writes; nothing about it is stored).

        The directory is untrusted input: its manifest, file names, shapes and sizes are
        checked before anything is allocated, links and special files are refused, and any
        violation is a ``StoreCorruptedError`` naming the file and the rule.
        """
        if verify not in (True, False, "full"):
            raise ValueError(f"verify={verify!r}; use True, False or 'full'")
        durability = as_durability(durability)
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"path={str(path)!r} is not a directory holding a vecpress index")
        lock = None if read_only else storage.DirectoryLock(path)
        try:
            if read_only:
                self = _read_consistently(path, lambda m: cls._from_manifest(path, m, verify))
            else:
                self = cls._from_manifest(path, storage.read_manifest(path), verify)
                self._lock_file = lock
                self._read_only = False
                self._sync = durability == "full"
                storage.remove_unreferenced(path, self._manifest)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return self

    @classmethod
    def _from_manifest(cls, path: Path, manifest: dict[str, Any],
                       verify: bool | str) -> "Index":
        """A read-only index holding the state ``manifest`` describes (validated first: see
        :mod:`vecpress.core.store_format`)."""
        store_format.validate_manifest(manifest, path)
        self = cls.__new__(cls)
        self._setup(_config_from_manifest(manifest, path), read_only=True)
        self._path = path
        self._verify = verify
        self._read_from(path, manifest, verify=verify)
        return self

    def _read_from(self, path: Path, manifest: dict[str, Any], *, verify: bool | str) -> None:
        """Load a manifest that passed ``store_format.validate_manifest``: every entry is
        checked against the codec before a file is read, then the ids and counts."""
        full = verify == "full"
        verify = bool(verify)
        store_format.validate_codec_files(manifest, path, self._store_layout())
        self._load_codec_state(path, manifest, verify)
        store_format.validate_layout(manifest, path, self._store_layout())
        self._factors = self._new_factor_store()  # (as wide as the loaded state says)
        codes, factors, ids, labels = [], [], [], []
        lists = manifest.get("partitions")
        for segment in manifest["segments"]:
            files = segment["files"]
            codes.append(storage.read_array(path, files["codes"], verify=verify))
            factors.append(storage.read_array(path, files["factors"], verify=verify))
            ids.append(storage.read_array(path, files["ids"], verify=verify))
            if "originals" in files:
                self._originals.append(_map_originals(path, files["originals"], verify, full))
            if lists is not None:
                labels.append(_read_labels(path, files["lists"], lists["lists"], verify))
        if codes:
            self._codes = self._new_code_store(np.concatenate(codes))
            self._factors.replace(np.concatenate(factors))
            self._ids = _IdColumn(np.concatenate(ids))
        if lists is not None:
            centroids = _read_centroids(path, lists["centroids"], verify)
            self._labels.replace(np.concatenate(labels) if labels else np.zeros(0, np.int32))
            self._trained_rows = int(lists["trained_rows"])
            self._tuned_rows = int(lists.get("tuned_rows", self._trained_rows))
            layout = ListLayout.build(centroids, self._codec_metric, int(lists["nprobe"]),
                                      self._labels.view, lists.get("oversample"))
            self._codes, self._factors = self._reordered(self._codes, self._factors, layout,
                                                         None, self._codec)
            self._lists = layout
            self._labels = _Growable((), np.int32)  # (the layout orders every row: no tail)
        dead = _read_tombstones(path, storage.tombstone_entries(manifest), manifest["rows"],
                                verify=verify)
        store_format.check_count(manifest, len(dead), path)
        self._ids.remove(dead)
        store_format.check_ids(self._ids.of_rows(np.arange(self._ids.size)), self._ids.removed,
                               manifest, path)
        self._next_id = int(manifest["next_id"])
        self._manifest = manifest
        if manifest.get("log"):
            self._read_log()

    def _read_log(self) -> bool:
        """Replay the log's records past ``_log_offset`` (each add, with the rows it
        replaced); returns whether there were any."""
        if not self._codec.fitted:  # (a writer starts a log only once the fit is committed)
            raise storage.StoreCorruptedError(
                f"{self._path / storage.MANIFEST}: names a row log but no fitted codec state "
                f"(codec_files is incomplete); restore the store from a copy")
        rows, self._log_offset = rowlog.read_log(self._path, self._manifest["log"]["file"],
                                                 self._store_layout(), self._log_offset)
        start = 0
        for count in rows.counts:
            part = slice(start, start + count)
            old_rows, present = self._ids.rows_of(rows.ids[part])
            replaced = np.unique(old_rows[present])
            kept = None if rows.originals is None else rows.originals[part]
            self._publish_log_rows(rows.codes[part], rows.factors[part], rows.ids[part], kept,
                                   replaced)
            start += count
        return bool(rows.counts)

    def _publish_log_rows(self, codes: np.ndarray, factors: np.ndarray, ids: np.ndarray,
                          kept: np.ndarray | None, replaced: np.ndarray,
                          labels: np.ndarray | None = None) -> None:
        """Make rows of the log part of the index (their originals first); in a partitioned
        index they join the tail, their lists assigned from their originals when replayed."""
        if self._lists is not None and labels is None:
            labels = clustering.assign(self._code_vectors(kept), self._lists.centroids,
                                       self._codec_metric)
        if kept is not None:
            originals = _Blocks()  # the segments' blocks, then the log's grown block
            blocks = self._originals.blocks
            for block in blocks if self._log_originals is None else blocks[:-1]:
                originals.append(block)
            if self._log_originals is None:
                self._log_originals = _Growable(kept.shape[1:], kept.dtype)
            self._log_originals.extend(kept)  # (a search's snapshot keeps its shorter view)
            originals.append(self._log_originals.view)
        with self._mutex:
            if kept is not None:
                self._originals = originals
            self._append_rows(codes, factors, labels, ids, replaced,
                              max(self._next_id, int(ids.max()) + 1))
        self._log_rows += len(ids)
        if len(replaced):  # tombstoned when the log is folded into a segment
            self._pending_removals.append(replaced)

    def _store_layout(self) -> "store_format.StoreLayout":
        """The shapes and dtypes this index's codec and config give each segment file."""
        originals_dtype = self._rerank_dtype if self.rerank else None
        return store_format.StoreLayout.of(self._codec, self.dim, originals_dtype)

    def _load_codec_state(self, path: Path, manifest: dict[str, Any], verify: bool) -> None:
        files = manifest["codec_files"]
        state = {name: storage.read_array(path, entry, verify=verify)
                 for name, entry in files.items()}
        try:
            self._codec.load_state(state)
        except ValueError as exc:
            names = ", ".join(entry["file"] for entry in files.values())
            raise storage.StoreCorruptedError(
                f"{path / storage.MANIFEST}: the codec state ({names}) is inconsistent ({exc}); "
                f"restore the store from a copy") from None
        if manifest["rows"] and not self._codec.fitted:
            raise storage.StoreCorruptedError(
                f"{path / storage.MANIFEST}: the store holds rows but no fitted codec state "
                f"(codec_files is incomplete); restore the store from a copy")

    def refresh(self) -> bool:
        """Catch up with the writer: read the newest commit of a read-only index's store.

        When the writer only added segments and tombstones since the state this index holds
        (no compaction or refit), just those are read; otherwise the store is read again.
        Returns whether anything changed. A no-op for writers and in-memory indexes, which
        always hold their newest state.
        """
        if self._path is None or self._lock_file is not None:
            return False
        with self._refreshing:
            return _read_consistently(self._path, self._catch_up)

    def _catch_up(self, manifest: dict[str, Any]) -> bool:
        if manifest == self._manifest:  # the same commit; its log may have grown
            return bool(manifest.get("log")) and self._read_log()
        store_format.validate_manifest(manifest, self._path)
        appended = None
        if self._only_appends(manifest):  # same codec: its layout checks the new files too
            store_format.validate_layout(manifest, self._path, self._store_layout())
            appended = self._read_appended(manifest)
        if appended is None:
            fresh = type(self)._from_manifest(self._path, manifest, self._verify)
            with self._mutex:
                for name, value in vars(fresh).items():
                    if name not in ("_mutex", "_writer", "_refreshing"):
                        setattr(self, name, value)
            return True
        codes, factors, ids, labels, removed, originals = appended
        with self._mutex:
            if len(ids):
                self._codes.extend(codes)
                self._factors.extend(factors)
                self._ids.extend(ids)
                if self._lists is not None:
                    self._labels.extend(labels)
            self._ids.remove(removed)
            self._originals = originals
            self._next_id = max(self._next_id, int(manifest["next_id"]))
            self._manifest = manifest
        # (the rows of this index's log, if any, are in the new segments: see _only_appends)
        self._log_rows, self._log_offset, self._log_originals = 0, 0, None
        self._pending_removals = []  # (what the log's replacements removed is in tombstones)
        if manifest.get("log"):
            self._read_log()
        self._fold_tail()
        return True

    def _only_appends(self, manifest: dict[str, Any]) -> bool:
        """Whether ``manifest`` holds this index's rows unchanged, plus new rows and removals.

        Only a compaction (or refit) rewrites rows, and it always writes new codec files; a
        merge copies rows verbatim into a new segment file."""
        old = self._manifest  # (rows of its log count in self._ids.size)
        return (old is not None and bool(old["codec_files"])
                and all(manifest.get(key) == old.get(key)
                        for key in ("config", "codec", "codec_files", "partitions"))
                and manifest["generation"] > old["generation"]
                and manifest["rows"] >= self._ids.size)

    def _read_appended(self, manifest: dict[str, Any]) -> tuple | None:
        """The rows, removals and originals maps a newer ``manifest`` adds (None: read the
        whole store instead, its rows do not line up with this index's)."""
        path, loaded, verify = self._path, self._ids.size, bool(self._verify)
        codes, factors, ids, labels = [], [], [], []
        lists = manifest.get("partitions")
        maps = {s["name"]: (s["files"].get("originals"), block)
                for s, block in zip(self._manifest["segments"], self._originals.blocks)}
        originals = _Blocks()
        start = 0
        for segment in manifest["segments"]:
            files, stop = segment["files"], start + segment["rows"]
            if "originals" in files:
                entry, block = maps.get(segment["name"], (None, None))
                originals.append(block if entry == files["originals"] else _map_originals(
                    path, files["originals"], verify, self._verify == "full"))
            if stop > loaded:
                skip = max(0, loaded - start)  # a merge may hold loaded rows and new ones
                segment_ids = storage.read_array(path, files["ids"], verify=verify)
                if skip and not np.array_equal(segment_ids[:skip],
                                               self._ids.of_rows(np.arange(start, loaded))):
                    return None
                codes.append(storage.read_array(path, files["codes"], verify=verify)[skip:])
                factors.append(storage.read_array(path, files["factors"], verify=verify)[skip:])
                ids.append(segment_ids[skip:].astype(np.int64))
                if lists is not None:
                    labels.append(_read_labels(path, files["lists"], lists["lists"],
                                               verify)[skip:])
            start = stop
        if start != manifest["rows"]:
            return None
        seen = {entry["file"] for entry in storage.tombstone_entries(self._manifest)}
        fresh = [e for e in storage.tombstone_entries(manifest) if e["file"] not in seen]
        removed = _read_tombstones(path, fresh, manifest["rows"], verify=verify)
        if not codes:
            codes = [np.zeros((0, *self._codec.code_shape()), self._codec.code_dtype)]
            factors = [np.zeros((0, self._codec.factor_count), np.float32)]
            ids = [np.zeros(0, np.int64)]
        labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        return (np.concatenate(codes), np.concatenate(factors), np.concatenate(ids), labels,
                removed, originals)



def _read_labels(path: Path, entry: dict[str, Any], lists: int, verify: bool) -> np.ndarray:
    """A segment's list numbers, checked to name one of the ``lists`` lists."""
    labels = storage.read_array(path, entry, verify=verify)
    store_format.check_labels(path, entry, labels, lists)
    return labels


def _read_centroids(path: Path, entry: dict[str, Any], verify: bool) -> np.ndarray:
    centroids = storage.read_array(path, entry, verify=verify)
    if not np.isfinite(centroids).all():
        raise storage.StoreCorruptedError(
            f"{path / entry['file']}: holds values that are not finite numbers; restore the "
            f"store from a copy")
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _read_consistently(path: Path, read: Callable[[dict[str, Any]], _T]) -> _T:
    """``read(manifest)`` of the newest manifest; if a file it names is gone (a writer
    committed meanwhile and deleted it), again from the newer manifest. Files are deleted only
    after a newer manifest is committed, so this converges unless commits keep coming faster
    than a store can be read."""
    error: Exception | None = None
    for _ in range(LOAD_ATTEMPTS):
        manifest = storage.read_manifest(path)
        try:
            return read(manifest)
        except (storage.StoreCorruptedError, FileNotFoundError) as exc:
            if storage.read_manifest(path) == manifest:
                raise  # the store did not change: the file really is missing or damaged
            error = exc
    raise storage.StoreCorruptedError(
        f"{path}: a writer committed {LOAD_ATTEMPTS} times while this reader was reading the "
        f"store, each time deleting files it had yet to read (last: {error}); open it again "
        f"when the writer is less busy") from error


def _read_tombstones(path: Path, entries: list[dict[str, Any]], rows: int, *,
                     verify: bool) -> np.ndarray:
    """The sorted row numbers in tombstone files, checked to lie within the ``rows`` rows
    (one reader for a whole load and for a refresh's new files alike)."""
    arrays = [storage.read_array(path, entry, verify=verify) for entry in entries]
    return store_format.dead_rows(path, entries, arrays, rows)


def _map_originals(path: Path, entry: dict[str, Any], verify: bool,
                   full: bool) -> "np.ndarray | storage.CheckedRows":
    """Memory-map an originals file: read in full for its CRC32 when ``full``, else wrapped so
    that each block of rows is CRC-checked on first read (when ``verify`` and the entry has
    block checksums; older stores have none)."""
    array = storage.read_array(path, entry, mmap=True, verify=full)
    # a plain view of the map: np.memmap's indexing costs ~10 us of Python per call
    array = array.view(np.ndarray) if isinstance(array, np.memmap) else array
    if full or not verify or "block_crc32" not in entry or not len(array):
        return array
    return storage.CheckedRows(array, path / entry["file"], entry["block_rows"],
                               entry["block_crc32"])


def _config_from_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        return _make_config(**manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise storage.StoreCorruptedError(
            f"{path / storage.MANIFEST}: invalid index configuration ({exc})") from None
