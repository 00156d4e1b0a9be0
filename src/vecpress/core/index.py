"""``Index``: int64 ids over compact codes in RAM, kept originals for an exact rerank, durable files.

Rows are appended in order; a removed row is a tombstone (flagged, and shown as id -1) until
compaction rewrites the live rows. In memory the codes (in the layout their codec scans) and
per-vector factors are contiguous arrays the numba scan reads directly; ids cost nothing while
they run consecutively (see :mod:`vecpress.core.columns`). On disk each write adds a segment of
``.npy`` files and commits a new JSON manifest (see :mod:`vecpress.core.storage`; what a manifest
may say, :mod:`vecpress.core.store_format`; which segments merge, :mod:`vecpress.core.segments`);
originals stay in those files and are memory-mapped, so RAM holds the codes alone.

A search reads a snapshot (:class:`~vecpress.core.columns._Snapshot`) taken under a short
publish mutex and scans it without a lock; writers run one at a time under their own lock and
publish each new state at once.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import activity, clustering, partitions, rowlog, segments, storage, store_format
from .codecs import Codec, RowFilter, default_codec_name, make_codec
from .columns import _Blocks, _Growable, _IdColumn, _row_filter, _Snapshot, _TiledCodes
from .partitions import Calibration, ListLayout
from .validate import as_durability, as_id_list, as_ids, as_matrix, as_positive_int

#: accepted metric names -> canonical name
METRIC_ALIASES = {"cosine": "cosine", "cos": "cosine", "ip": "ip", "dot": "ip",
                  "inner_product": "ip", "l2": "l2", "euclidean": "l2"}
#: candidates scanned per requested hit, by code bits, when reranking (from benchmarks/)
DEFAULT_OVERSAMPLE = {1: 10, 2: 6, 3: 4, 4: 3, 5: 3, 6: 2, 7: 2, 8: 2}
RERANK_DTYPES = {"float16": np.float16, "float32": np.float32}
#: at most this many rows are copied or re-encoded per chunk (fewer for wide rows: see
#: ``segments.MERGE_BUFFER_BYTES``)
REENCODE_ROWS = 65_536
#: results are padded with id -1 up to ``k`` only while ``k`` is at most this or the row count
#: (a huge ``k`` must not allocate huge arrays)
MAX_PADDED_K = 1024
#: the largest magnitude float16 holds; originals beyond it would be stored as infinity
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: largest squared norm of a vector whose scores stay finite in float32
_MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4
#: norms below this lose precision in float32 (squares near the subnormal range)
_TINY_NORM = 1e-18
#: a read-only open (or ``refresh``) starts again from the newest manifest at most this many
#: times when a writer's commit deletes the files it was reading
LOAD_ATTEMPTS = 20
#: a writer deletes the files of a replaced manifest only after the next commit and once this
#: many seconds have passed since it was replaced, so a reader that has just read it can still
#: open its files ...
RETAIN_SECONDS = 2.0
#: ... plus the time a reader takes to read the store's RAM part (codes, factors, ids) at this
#: rate, so a large store's readers do not start again and again while a writer commits
READER_BYTES_PER_SECOND = 50 << 20
#: once a store has this many tombstone files, the next removal writes them all as one
MAX_TOMBSTONE_FILES = 16

_T = TypeVar("_T")


class Index:
    """A compressed vector index: quantized codes scanned in RAM, reranked exactly from originals.

    Args:
        dim: vector dimension.
        metric: ``"cosine"`` (vectors normalised on insert), ``"ip"`` or ``"l2"``.
        bits: bits per dimension of the in-RAM code: 1-8 quantized, 16 float16, 32 float32.
        rerank: keep the original vectors (on disk when ``path`` is set) and re-score the
            ``k * oversample`` best candidates exactly. Ignored for exact codes (16/32 bits).
        path: a directory to persist to; every returned ``add``/``remove`` is committed there
            (see ``durability``). ``None`` keeps everything in memory (``save`` writes a copy).
        codec: ``"saq"`` (default for 1-8 bits: PCA, bits spent by variance, a scale per
            segment; refitted from the kept originals as the index grows), ``"rabitq"`` (plain
            RaBitQ-family codes, data-oblivious, 8-12 bytes less per vector), ``"int8"`` or
            ``"fp8"`` (8 bits).
        oversample: candidates per requested hit for the rerank; default by ``bits``.
        rerank_dtype: ``"float16"`` (default) or ``"float32"`` for the kept originals.
        truncate_dim: quantize only the first ``truncate_dim`` coordinates (Matryoshka
            models); the rerank still uses the full vectors.
        seed: seed of the random rotation (and of the lists' training).
        partitions: ``"auto"`` (default): a flat scan of every code while the index is small,
            inverted lists once it holds ``partitions.AUTO_MIN_ROWS`` rows (about
            sqrt(rows) lists, retrained as the index grows fourfold); an int: that many
            lists, trained once the index holds 16 rows per list; ``None``: always flat.
            Lists are trained from the kept originals, so they need ``rerank=True``.
        durability: what a returned write on disk survives. ``"full"`` (default): its files,
            the manifest and the directory are fsynced, so it survives a power loss.
            ``"process"``: written to the OS without fsyncs, and an add of a few rows is
            appended to a row log instead of writing a segment and a manifest (see
            :mod:`vecpress.core.rowlog`; a one-row add then costs well under a millisecond
            instead of several fsyncs): it survives the process being killed at any moment;
            after a power loss or OS crash the store opens at an earlier commit, or is
            refused with ``StoreCorruptedError`` if the manifest reached the disk before the
            files it names (checksums catch it, never a half-written store). ``close()``
            fsyncs the committed state. Merges and compactions follow the same setting. A
            setting of this open, not of the files: a store may be opened either way.

    Scores are higher-is-better: cosine similarity, inner product, or minus the squared L2
    distance. Missing hits (fewer than ``k`` allowed rows) are padded with id -1, score -inf.
    """

    def __init__(self, dim: int, metric: str = "cosine", bits: int = 4, rerank: bool = True,
                 path: str | Path | None = None, *, codec: str | None = None,
                 oversample: int | None = None, rerank_dtype: str = "float16",
                 truncate_dim: int | None = None, seed: int = 0,
                 query_bits: int | None = None,
                 partitions: int | str | None = "auto", durability: str = "full") -> None:
        config = _make_config(dim=dim, metric=metric, bits=bits, rerank=rerank, codec=codec,
                              oversample=oversample, rerank_dtype=rerank_dtype,
                              truncate_dim=truncate_dim, seed=seed, query_bits=query_bits,
                              partitions=partitions)
        durability = as_durability(durability)
        self._setup(config, read_only=False)
        self._sync = durability == "full"
        if path is not None:
            self._create_directory(Path(path))

    # ------------------------------------------------------------------ construction
    def _setup(self, config: dict[str, Any], *, read_only: bool) -> None:
        self._config = config
        self.dim: int = config["dim"]
        self.metric: str = config["metric"]
        self.bits: int = config["bits"]
        self.oversample: int = config["oversample"]
        code_dim = config["truncate_dim"] or self.dim
        codec_metric = "l2" if self.metric == "l2" else "ip"
        options = {}
        if config["codec"] in ("rabitq", "saq"):
            options = {"seed": config["seed"], "query_bits": config["query_bits"]}
        self._codec: Codec = make_codec(config["codec"], code_dim, self.bits, codec_metric,
                                        **options)
        self.rerank: bool = bool(config["rerank"]) and self._codec.lossy
        self._codec_metric = codec_metric
        #: partitioned: the lists (None while flat) and each row's list number; the codes
        #: and factors are then kept in the lists' position order (see partitions.py)
        self._lists: ListLayout | None = None
        self._labels = _Growable((), np.int32)
        self._trained_rows = 0
        self._codes = self._new_code_store()
        self._factors = _Growable((self._codec.factor_count,), np.float32)
        self._ids = _IdColumn()
        self._originals = _Blocks()
        self._memory_originals: _Growable | None = None
        self._next_id = 0
        self._path: Path | None = None
        self._manifest: dict[str, Any] | None = None
        self._lock_file: storage.DirectoryLock | None = None
        self._read_only = read_only
        #: fsync every write (durability="full"); False: written to the OS only ("process")
        self._sync = True
        # Writers take _writer for the whole write (encoding, files, upkeep) and _mutex only to
        # publish the new in-memory state; a search takes _mutex just long enough to take a
        # snapshot (_Snapshot), so it never waits for an encode, an fsync or a merge.
        self._writer = threading.RLock()
        self._verify: bool | str = True
        #: rows removed with durable=False, committed with the next manifest
        self._pending_removals: list[np.ndarray] = []
        #: (when, file names) per recent commit: the files it dropped, kept a while for
        #: readers of the manifest it replaced
        self._superseded: list[tuple[float, set[str]]] = []
        #: when the directory was last swept for files no manifest names (see _commit)
        self._swept = time.monotonic()
        # The row log (see rowlog): rows past the manifest's, in the log file it names.
        #: rows in the log (loaded or appended); in RAM the last rows of the index
        self._log_rows = 0
        #: bytes of the log read or written so far (a reader's refresh reads on from there)
        self._log_offset = 0
        #: their kept originals (the last block of _originals)
        self._log_originals: _Growable | None = None
        #: this writer's open log (None: the next small add starts one)
        self._log: rowlog.LogWriter | None = None
        self._mutex = threading.RLock()
        self._refreshing = threading.Lock()  # one refresh at a time; searches go on meanwhile

    def _new_code_store(self, codes: np.ndarray | None = None) -> "_Growable | _TiledCodes":
        """An array of code rows in the layout the current codec scans, holding ``codes``."""
        store = _code_store(self._codec)
        if codes is not None:
            store.replace(codes)
        return store

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
        store_format.validate_layout(manifest, path, self._store_layout())
        self._load_codec_state(path, manifest, verify)
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
            layout = ListLayout.build(centroids, self._codec_metric, int(lists["nprobe"]),
                                      self._labels.view)
            self._codes, self._factors = self._reordered(self._codes, self._factors, layout,
                                                         None, self._codec)
            self._lists = layout
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
            fresh = Index._from_manifest(self._path, manifest, self._verify)
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

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return self._ids.size - self._ids.deleted

    def __contains__(self, item: object) -> bool:
        if (isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 0
                or item > np.iinfo(np.int64).max):
            return False
        return bool(self.contains([item])[0])

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return (f"Index(dim={self.dim}, metric={self.metric!r}, bits={self.bits}, "
                f"codec={self._codec.name!r}, count={len(self)}{where})")

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def ids(self) -> np.ndarray:
        """Live ids in row order (a copy)."""
        with self._mutex:
            return self._ids.of_rows(self._ids.live_rows())

    def add(self, vectors: Any, ids: Any = None, *, upkeep: bool = True) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids. Adding an existing id replaces it.

        Searches running meanwhile see the index before or after the whole batch, never a part.
        ``upkeep=False`` leaves merges, compaction and refits for a later :meth:`maintain`
        (a ``Collection`` runs a compaction, which renumbers rows, while no search runs).
        """
        self._check_writable()
        vectors = as_matrix(vectors, self.dim, "vectors")
        explicit_ids = None if ids is None else as_ids(ids, len(vectors))
        for_codes, for_originals = self._prepare_vectors(vectors, "vectors")
        self._check_storable(for_originals, "vectors")
        with self._writer:
            self._check_writable()
            new_ids = (np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
                       if explicit_ids is None else explicit_ids)
            fitting = not self._codec.fitted
            if fitting:
                self._codec.fit(for_codes)
                self._codes = self._new_code_store()  # (empty: only a first add fits)
            codes, factors = self._codec.encode(for_codes)
            kept = for_originals.astype(self._rerank_dtype) if self.rerank else None
            labels = (None if self._lists is None else
                      clustering.assign(for_codes, self._lists.centroids, self._codec_metric))
            old_rows, present = self._ids.rows_of(new_ids)
            replaced = np.unique(old_rows[present])
            next_id = max(self._next_id, int(new_ids.max()) + 1)
            if self._path is not None and self._log_takes(len(new_ids), fitting):
                self._append_log(codes, factors, new_ids, kept, replaced, labels)
            else:
                if self._path is not None:
                    self._persist_add(codes, factors, new_ids, kept, labels, replaced, next_id,
                                      fitting)
                elif kept is not None:
                    self._append_originals(kept)  # (originals first: extra rows are never read)
                with self._mutex:
                    self._append_rows(codes, factors, labels, new_ids, replaced, next_id)
            if upkeep:
                self._maintain()
        return new_ids

    def remove(self, ids: Any, *, upkeep: bool = True, durable: bool = True) -> int:
        """Remove ids (KeyError if any is unknown, before anything changes); returns the count.
        ``upkeep`` as for :meth:`add`.

        ``durable=False`` (persistent indexes) removes them from searches at once but writes
        the tombstones with the next commit (the next ``add``, ``remove``, compaction or
        ``close``), saving this call's fsyncs; after a crash before then they are back. A
        ``Collection`` uses it for vectors whose documents SQLite has already dropped (it
        removes such leftovers when it opens).
        """
        self._check_writable()
        wanted = np.unique(as_id_list(ids))
        with self._writer:
            self._check_writable()
            rows, present = self._ids.rows_of(wanted)
            if not present.all():
                missing = wanted[~present]
                raise KeyError(f"ids not in the index: {missing[:10].tolist()}"
                               f"{' ...' if len(missing) > 10 else ''}; nothing was removed")
            if self._path is not None and durable:
                self._persist_removal(rows)
            elif self._path is not None:
                self._pending_removals.append(rows)
            with self._mutex:
                self._ids.remove(rows)
            if upkeep:
                self._maintain()
        return len(rows)

    def _append_rows(self, codes: np.ndarray, factors: np.ndarray, labels: np.ndarray | None,
                     ids: np.ndarray, replaced: np.ndarray, next_id: int) -> None:
        """Publish added rows (the caller holds the publish mutex): a partitioned layout
        takes them into its tail, each with its list number."""
        self._codes.extend(codes)
        self._factors.extend(factors)
        if labels is not None:
            self._labels.extend(labels)
        self._ids.extend(ids)
        self._ids.remove(replaced)
        self._next_id = next_id

    def _persist_removal(self, rows: np.ndarray) -> None:
        """Commit tombstones for ``rows`` (and for removals still pending)."""
        self._fold_log()
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        manifest["tombstones"] = self._tombstones_with(manifest["generation"], rows)
        manifest["count"] = len(self) - len(rows)  # (rows: live until the caller removes them)
        self._commit(manifest)
        self._pending_removals = []

    def _pending_rows(self) -> np.ndarray:
        """Rows removed with ``durable=False`` whose tombstones are not committed yet."""
        if not self._pending_removals:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(self._pending_removals))

    @property
    def compaction_due(self) -> bool:
        """Whether the next upkeep compacts (half the rows removed) or refits the codec; both
        renumber the rows, so a boolean ``mask`` made before them no longer applies."""
        with self._mutex:
            return self._compaction_due()

    def _compaction_due(self) -> bool:
        half_removed = self._ids.deleted >= 64 and 2 * self._ids.deleted >= self._ids.size
        return half_removed or (self._can_refit and self._codec.refit_due(len(self)))

    def maintain(self, *, compact: bool = True) -> None:
        """The upkeep ``add`` and ``remove`` run by themselves unless told not to: compaction
        or a refit when due (skipped with ``compact=False``), else merging segments."""
        self._check_writable()
        with self._writer:
            if compact or not self._compaction_due():
                self._maintain()

    def search(self, queries: Any, k: int = 10, *, mask: Any = None,
               oversample: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` per query: ``(scores, ids)`` of shape (q, k), best first, id -1 padding.

        ``mask`` restricts the search to some vectors before scoring: either a collection of
        ids, or a boolean array over :attr:`row_ids` (one taken before later adds covers the
        rows it had; the rows added since are not allowed). A filtered search returns ``k``
        hits whenever ``k`` allowed vectors exist.

        Work and memory grow with the index, not with the arguments: ``k`` above both the
        number of rows and ``MAX_PADDED_K`` gives ``k`` = the number of rows, and the
        candidates for the rerank (``k * oversample``) never exceed the rows. The search reads
        a snapshot of the index and holds no lock while it scans, so many threads search at
        once and writes go on meanwhile.

        A partitioned index scans the ``nprobe`` lists nearest each query (default: the count
        calibrated when the lists were trained, see ``partitions``), and further lists while
        those hold fewer allowed rows than candidates are needed; a selective ``mask`` scans
        every allowed row. ``nprobe`` is ignored while the index is flat.
        """
        queries = as_matrix(queries, self.dim, "queries", allow_1d=True)
        k = as_positive_int(k, "k")
        oversample = self.oversample if oversample is None else as_positive_int(oversample, "oversample")
        if nprobe is not None:
            nprobe = as_positive_int(nprobe, "nprobe")
        for_codes, full = self._prepare_vectors(queries, "queries")
        snap = self._snapshot()
        n_rows = snap.ids.size
        k = min(k, max(n_rows, MAX_PADDED_K))
        flt = _row_filter(snap.ids, mask)
        if n_rows == 0:
            return _empty_result(len(queries), k)
        candidates = min(k * oversample if self.rerank else k, n_rows)
        if snap.lists is None:
            scores, rows = snap.codec.scan(snap.codes, snap.factors, for_codes, candidates, flt)
        else:
            scores, rows = _scan_lists(snap, for_codes, candidates, flt, nprobe)
        if self.rerank:
            scores, rows = self._rerank(snap.originals, full, rows, k)
        else:
            scores, rows = scores[:, :k], rows[:, :k]
        found = np.where(rows >= 0, snap.ids.of_rows(np.maximum(rows, 0)), -1)
        if found.shape[1] < k:
            scores, found = _pad(scores, found, k)
        scores = np.where(found >= 0, scores, -np.inf).astype(np.float32)
        return scores, found

    def get(self, ids: Any) -> np.ndarray:
        """Kept original vectors of ``ids`` as float32 (normalised for cosine)."""
        wanted = as_id_list(ids)
        with self._mutex:
            rows = self._rows_of(wanted)
            if self.rerank:
                originals = self._originals.frozen()
            elif not self._codec.lossy:
                return np.asarray(self._code_rows(rows)[0], dtype=np.float32)
            else:
                raise ValueError("this index keeps no original vectors (rerank=False with a "
                                 "quantized code); create it with rerank=True to read vectors "
                                 "back")
        return originals.fetch(rows)

    def contains(self, ids: Any) -> np.ndarray:
        """Bool per id: whether the index holds it (vectorised ``in``)."""
        wanted = as_id_list(ids)
        with self._mutex:
            return self._ids.rows_of(wanted)[1]

    @property
    def row_ids(self) -> np.ndarray:
        """The id of every row, -1 for removed rows: the order a boolean ``mask`` follows."""
        with self._mutex:
            return self._ids.all()

    def stats(self) -> dict[str, Any]:
        """Counts and sizes. ``ram_bytes``: what the data uses in RAM (codes, factors, ids,
        list membership, in-memory originals, plus ``ram_fixed_bytes``: codec state and list
        centroids, which do not grow with the rows); ``ram_reserved_bytes``: spare capacity
        allocated for rows still to come; ``ram_bytes_per_vector``: see
        :func:`ram_bytes_per_vector`; ``disk_bytes``: the files of a persistent store."""
        with self._mutex:
            fixed = sum(a.nbytes for a in self._codec.state_arrays().values())
            columns = [self._codes, self._factors, self._ids]
            lists = self._lists
            per_row_lists = 0
            if lists is not None:
                columns.append(self._labels)
                fixed += lists.centroids.nbytes + lists.bounds.nbytes
                per_row_lists = lists.nbytes - lists.centroids.nbytes - lists.bounds.nbytes
            used = sum(column.used_nbytes for column in columns) + per_row_lists
            reserved = sum(column.nbytes for column in columns) + per_row_lists - used
            ram = used + self._originals.nbytes + fixed
            disk = (storage.disk_bytes(self._path, self._manifest)
                    if self._path is not None else 0)
            return {"count": len(self), "dim": self.dim, "bits": self.bits,
                    "metric": self.metric, "codec": self._codec.name, "rerank": self.rerank,
                    "oversample": self.oversample, "rows": self._ids.size,
                    "deleted": self._ids.deleted, "code_bytes": self._codec.code_bytes(),
                    "ram_bytes": int(ram), "ram_fixed_bytes": int(fixed),
                    "ram_reserved_bytes": int(reserved),
                    "ram_bytes_per_vector": ram_bytes_per_vector(int(ram), int(fixed), len(self)),
                    "disk_bytes": int(disk),
                    "segments": len(self._manifest["segments"]) if self._manifest else 0,
                    "lists": 0 if lists is None else lists.n_lists,
                    "nprobe": 0 if lists is None else lists.nprobe,
                    "list_rows": _spread(None if lists is None else np.diff(lists.bounds))}

    def save(self, path: str | Path) -> None:
        """Write a compacted copy of the index to a new directory (open it with ``load``)."""
        target = Path(path)
        with self._writer:
            if self._path is not None and target.resolve() == self._path.resolve():
                return  # a persistent index is always saved
            copy = Index.__new__(Index)
            copy._setup(dict(self._config), read_only=False)
            copy._codec.load_state(self._codec.state_arrays())
            copy._create_directory(target)
            try:
                copy._write_compacted(self, self._ids.live_rows(), keep_in_ram=False,
                                      lists=self._kept_lists())
            finally:
                copy.close()

    def compact(self) -> None:
        """Drop removed rows from RAM and disk, refitting a data-fitted codec from the kept
        originals (runs by itself when half the rows are removed, and to refit as the index
        grows: see ``SegmentCodec``)."""
        self._check_writable()
        with self._writer:
            live = self._ids.live_rows()
            refitted = self._refitted_codec(live) if self._can_refit else None
            self._write_compacted(self, live, refitted, lists=self._planned_lists(live))

    def close(self) -> None:
        """Commit pending removals, make the committed state durable (with
        ``durability="process"``, whose writes were not fsynced) and release the directory's
        write lock (the index stays searchable in memory)."""
        if self._lock_file is not None:
            with self._writer:
                self._fold_log(drop_empty=True)
                if self._pending_removals:
                    self._persist_removal(np.zeros(0, np.int64))
                if not self._sync:
                    storage.sync_files(self._path, [*storage.manifest_files(self._manifest),
                                                    storage.MANIFEST])
            self._remove_replaced_files(sweep=True)
            self._lock_file.release()
            self._lock_file = None
            self._read_only = True

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals: vectors
    @property
    def _rerank_dtype(self) -> Any:
        return RERANK_DTYPES[self._config["rerank_dtype"]]

    def _prepare_vectors(self, vectors: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(vectors for the codes, vectors for the rerank), normalised for cosine."""
        if self.metric == "cosine":
            vectors = _normalized(vectors, name)
        cut = self._config["truncate_dim"]
        if not cut:
            return vectors, vectors
        short = np.ascontiguousarray(vectors[:, :cut])
        if self.metric == "cosine":
            short = _normalized(short, f"{name} (first {cut} dimensions)")
        return short, vectors

    def _check_storable(self, originals: np.ndarray, name: str) -> None:
        """Refuse vectors whose scores or kept originals would not be finite numbers."""
        if self.metric == "cosine":
            return  # unit vectors: every value and score is in [-1, 1]
        squared = np.einsum("ij,ij->i", originals, originals, dtype=np.float64)
        if (squared > _MAX_SQUARED_NORM).any():
            row = int(np.nonzero(squared > _MAX_SQUARED_NORM)[0][0])
            raise ValueError(
                f"{name} row {row} has norm {np.sqrt(squared[row]):.3g}; with metric="
                f"{self.metric!r} its scores would overflow float32. Scale the vectors down "
                f"(or use metric='cosine')")
        if self.rerank and self._rerank_dtype == np.float16:
            peak = np.abs(originals).max(axis=1)
            if (peak > FLOAT16_MAX).any():
                row = int(np.nonzero(peak > FLOAT16_MAX)[0][0])
                raise ValueError(
                    f"{name} row {row} holds {peak[row]:.6g}, beyond float16's largest value "
                    f"({FLOAT16_MAX:g}), so the kept original would be infinite; create the "
                    f"index with rerank_dtype='float32', or scale the vectors down")

    def _snapshot(self) -> "_Snapshot":
        """What a search reads, consistent and immutable: later writes do not change it."""
        with self._mutex:
            return _Snapshot(codec=self._codec, codes=self._codes.scan_view,
                             factors=self._factors.view, ids=self._ids.frozen(),
                             originals=self._originals.frozen(), lists=self._lists)

    def _rows_of(self, wanted: np.ndarray) -> np.ndarray:
        """Rows of live ids, in the order given; KeyError naming the unknown ones."""
        rows, found = self._ids.rows_of(wanted)
        if not found.all():
            raise KeyError(f"ids not in the index: {wanted[~found][:10].tolist()}")
        return rows

    def _rerank(self, originals: "_Blocks", queries: np.ndarray, rows: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows from the kept originals; best ``k`` per query."""
        valid = rows >= 0
        unique = np.unique(rows[valid])
        if unique.size == 0:
            return _empty_result(len(queries), k)
        vectors = originals.fetch(unique)
        positions = np.searchsorted(unique, np.where(valid, rows, unique[0]))
        gathered = vectors[positions]  # (q, K, dim)
        scores = np.einsum("qkd,qd->qk", gathered, queries)
        if self.metric == "l2":
            scores = -(np.einsum("qkd,qkd->qk", gathered, gathered)
                       + np.einsum("qd,qd->q", queries, queries)[:, None] - 2 * scores)
        if self.metric == "cosine":
            scores = np.clip(scores, -1.0, 1.0)  # float16 originals can overshoot by ~1e-4
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(scores, order, axis=1).astype(np.float32),
                np.take_along_axis(rows, order, axis=1))

    def _append_originals(self, kept: np.ndarray) -> None:
        """In memory, originals grow in one array (on disk, _persist_add maps each segment)."""
        if self._path is not None:
            return
        if self._memory_originals is None:
            self._memory_originals = _Growable(kept.shape[1:], kept.dtype)
        self._memory_originals.extend(kept)
        blocks = _Blocks()
        blocks.append(self._memory_originals.view)
        self._originals = blocks

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
            labels = None if self._lists is None else self._labels.view[first:]
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
        codec.fit(self._code_vectors(self._originals.fetch(sample)))
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
                              lists=self._labels.view[lo:hi] if partitioned else None)
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
                    labels = source._labels.view[rows]
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
                                      ram.labels.view)
            ram.codes, ram.factors = self._reordered(ram.codes, ram.factors, layout, None, codec)
        with self._mutex:  # one publish: a search never pairs the new codec with old codes
            self._codec = codec
            ram.install(self, originals)
            self._lists = layout
            self._trained_rows = lists.trained_rows if lists is not None else 0
            self._next_id = next_id

    # ------------------------------------------------------------------ internals: lists
    def _training_due(self) -> bool:
        """Whether the next upkeep trains the lists: the first time once the index is large
        enough for its ``partitions`` setting, then each time it has grown fourfold."""
        setting = self._config.get("partitions")
        if setting is None or not self.rerank:
            return False
        live = len(self)
        if self._lists is None:
            needed = (partitions.AUTO_MIN_ROWS if setting == "auto"
                      else setting * partitions.MIN_ROWS_PER_LIST)
            return live >= needed
        return live >= partitions.RETRAIN_GROWTH * max(1, self._trained_rows)

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
        centroids = clustering.train_centroids(sample, n_lists, self._codec_metric, seed=seed)
        picked = partitions.sample_rows(np.arange(len(sample_rows)),
                                        partitions.CALIBRATION_QUERIES, seed + 1)
        calibration = Calibration(sample[picked], sample_rows[picked], self._codec_metric)
        return _ListPlan(centroids=centroids, nprobe=n_lists, trained_rows=len(live),
                         calibration=calibration)

    def _train_lists(self) -> None:
        """Train new lists (the first time, or after fourfold growth) without renumbering a
        row: every row's originals stream through once to get its list (and to calibrate
        nprobe), each segment gets a new lists file and the manifest commits; then the codes
        are reordered in RAM and published at once. Codes and originals are not rewritten,
        so searches (and a Collection's cached filter masks) are unaffected."""
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
        relabelled = _Growable((), np.int32)
        relabelled.replace(labels)
        with self._mutex:
            self._codes, self._factors, self._labels = codes, factors, relabelled
            self._lists, self._trained_rows = layout, plan.trained_rows

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
        """float32 originals of the sorted ``rows``, read from disk with ``pread`` rather
        than through the memory maps: a sample spread over the whole store would map every
        block of the originals (and checksum it whole), leaving gigabytes of file pages in
        the process's resident memory (5 GB in a 10M build)."""
        if self._path is None:
            return self._originals.fetch(rows)
        out = np.empty((len(rows), self.dim), np.float32)
        start = 0
        for segment in self._manifest["segments"]:
            stop = start + segment["rows"]
            first, last = np.searchsorted(rows, [start, stop])
            if last > first:
                with storage.RowReader(self._path, segment["files"]["originals"]) as reader:
                    for i in range(first, last):
                        row = int(rows[i]) - start
                        out[i] = reader.read(row, row + 1)[0]
            start = stop
        beyond = int(np.searchsorted(rows, start))  # rows of the row log, kept in RAM
        if beyond < len(rows):
            out[beyond:] = self._originals.fetch(rows[beyond:])
        return out

    def _partitions_entry(self, gen: int, plan: "_ListPlan") -> dict[str, Any]:
        """The manifest's ``partitions`` entry for ``plan``, its centroids written first."""
        centroids = storage.write_array(self._path, f"part-{gen:08d}-centroids.npy",
                                        plan.centroids, sync=self._sync)
        return {"lists": len(plan.centroids), "nprobe": plan.nprobe,
                "trained_rows": plan.trained_rows, "centroids": centroids}

    def _kept_lists(self) -> "_ListPlan | None":
        """The current lists, unchanged (None while flat)."""
        if self._lists is None:
            return None
        return _ListPlan(centroids=self._lists.centroids, nprobe=self._lists.nprobe,
                         trained_rows=self._trained_rows)

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
        for lo in range(0, n_rows, REENCODE_ROWS):
            rows = layout.rows_at(np.arange(lo, min(n_rows, lo + REENCODE_ROWS)))
            at = rows if old is None else old.positions_of(rows)
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
                                      self._labels.view[:n_rows])
            codes, factors = self._reordered(self._codes, self._factors, layout, old,
                                             self._codec)
            with self._mutex:
                self._codes, self._factors, self._lists = codes, factors, layout


@dataclass
class _ListPlan:
    """The lists a rewrite gives the rows: ``centroids`` and the ``nprobe`` they need. With
    a ``calibration`` the centroids are new: every row is assigned to one and ``nprobe`` is
    calibrated as the rows stream by; without one each row keeps its list."""

    centroids: np.ndarray
    nprobe: int
    trained_rows: int
    calibration: Calibration | None = None


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


def _make_config(*, dim: Any, metric: Any, bits: Any, rerank: Any, codec: Any, oversample: Any,
                 rerank_dtype: Any, truncate_dim: Any, seed: Any, query_bits: Any,
                 partitions: Any = None) -> dict[str, Any]:
    """Validate constructor arguments into the JSON config the manifest stores."""
    dim = as_positive_int(dim, "dim")
    if not isinstance(metric, str) or metric.lower() not in METRIC_ALIASES:
        raise ValueError(f"metric={metric!r} is unknown; use 'cosine', 'ip' or 'l2'")
    metric = METRIC_ALIASES[metric.lower()]
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an integer (1-8, 16 or 32), got {bits!r}")
    bits = int(bits)
    if not (1 <= bits <= 8 or bits in (16, 32)):
        raise ValueError(f"bits={bits} is out of range; use 1-8 for quantized codes, 16 for "
                         f"float16 or 32 for exact float32")
    codec = default_codec_name(bits) if codec is None else codec
    if not isinstance(rerank, (bool, np.bool_)):
        raise TypeError(f"rerank must be True or False, got {rerank!r}")
    if oversample is None:
        oversample = DEFAULT_OVERSAMPLE.get(bits, 1)
    oversample = as_positive_int(oversample, "oversample")
    if oversample > store_format.MAX_OVERSAMPLE:
        raise ValueError(f"oversample={oversample} is above {store_format.MAX_OVERSAMPLE}; "
                         f"pass a larger oversample to search() for one query instead")
    if rerank_dtype not in RERANK_DTYPES:
        raise ValueError(f"rerank_dtype={rerank_dtype!r} is unknown; use 'float16' or 'float32'")
    if truncate_dim is not None:
        truncate_dim = as_positive_int(truncate_dim, "truncate_dim")
        if truncate_dim > dim:
            raise ValueError(f"truncate_dim={truncate_dim} exceeds dim={dim}")
        if truncate_dim == dim:
            truncate_dim = None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if query_bits is not None:
        query_bits = as_positive_int(query_bits, "query_bits")
        if not 4 <= query_bits <= 8:
            raise ValueError(f"query_bits={query_bits} is out of range; use 4-8")
    lossy = make_codec(codec, truncate_dim or dim, bits, "ip").lossy  # validates codec/bits
    partitions = _check_partitions(partitions, rerank=bool(rerank) and lossy)
    config = {"dim": dim, "metric": metric, "bits": bits, "rerank": bool(rerank),
              "codec": codec, "oversample": oversample, "rerank_dtype": rerank_dtype,
              "truncate_dim": truncate_dim, "seed": int(seed), "query_bits": query_bits,
              "partitions": partitions}
    return config


def _check_partitions(partitions: Any, *, rerank: bool) -> int | str | None:
    """``partitions`` as the config stores it: None, "auto" or a list count."""
    if partitions is None or partitions == "auto":
        return partitions
    if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)):
        raise TypeError(f"partitions must be 'auto', None or a number of lists, got "
                        f"{partitions!r}")
    if not 1 <= int(partitions) <= store_format.MAX_LISTS:
        raise ValueError(f"partitions={int(partitions)} is out of range; use 1 to "
                         f"{store_format.MAX_LISTS} lists, 'auto' or None")
    if not rerank:
        raise ValueError(f"partitions={int(partitions)} needs the kept originals to train the "
                         f"lists: use rerank=True with a quantized code (1-8 bits), or "
                         f"partitions=None")
    return int(partitions)


def _scan_lists(snap: _Snapshot, queries: np.ndarray, candidates: int, flt: RowFilter,
                nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The scan of a partitioned snapshot: best ``candidates`` rows per query among the
    lists it probes (every allowed row for a selective filter), as rows, not positions."""
    lists = snap.lists
    n_rows = snap.ids.size
    removed, live_counts = lists.removal_flags(snap.ids.removal_key, flt.removed, n_rows)
    spans = None
    if flt.rows is not None:  # selective: few rows, scan them all
        by_position = RowFilter(n_rows=n_rows, removed=removed,
                                rows=np.sort(lists.positions_of(flt.rows)))
    else:
        mask = None if flt.mask is None else lists.to_positions(flt.mask)
        allowed = mask if removed is None or mask is None else mask & ~removed
        if allowed is None and removed is None:
            counts, tail = live_counts, n_rows - lists.sorted_end
        elif allowed is None:
            counts, tail = live_counts, int((~removed[lists.sorted_end:]).sum())
        else:
            in_lists = np.zeros(lists.sorted_end + 1, np.int64)
            np.cumsum(allowed[: lists.sorted_end], out=in_lists[1:])
            counts, tail = np.diff(in_lists[lists.bounds]), int(allowed[lists.sorted_end:].sum())
        spans = lists.probe(queries, lists.nprobe if nprobe is None else nprobe, n_rows,
                            allowed_counts=counts, need=candidates, tail_allowed=tail)
        by_position = RowFilter(n_rows=n_rows, removed=removed, mask=mask)
    scores, positions = snap.codec.scan(snap.codes, snap.factors, queries, candidates,
                                        by_position, spans=spans)
    return scores, lists.rows_at(positions)


def ram_bytes_per_vector(ram_bytes: int, fixed_bytes: int, count: int) -> float | None:
    """RAM each vector costs: (``ram_bytes`` - ``fixed_bytes``) / ``count`` (codes, factors,
    ids, list membership; spare capacity and fixed costs excluded), ``None`` for an empty
    index. Every figure vecpress prints per vector (``stats()``, ``vecpress stats``, ``bench``,
    the demo, the README) comes from here."""
    if count <= 0:
        return None
    return (ram_bytes - fixed_bytes) / count


def _spread(sizes: np.ndarray | None) -> dict[str, int]:
    """Smallest, median and largest of ``sizes`` (empty while flat)."""
    if sizes is None or not len(sizes):
        return {}
    return {"min": int(sizes.min()), "median": int(np.median(sizes)), "max": int(sizes.max())}


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


def _normalized(vectors: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to unit length. Rows whose squared norm overflows float32 (values near
    1e19 and above) or underflows it (near 1e-19 and below) are first divided by their largest
    magnitude, so a row of 1e20s is normalised instead of becoming zeros."""
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    awkward = ~np.isfinite(norms) | (norms < _TINY_NORM)
    if awkward.any():
        rows = vectors[awkward].astype(np.float64)
        peak = np.abs(rows).max(axis=1, keepdims=True)
        rows = np.divide(rows, peak, out=np.zeros_like(rows), where=peak > 0)
        vectors = vectors.copy()
        vectors[awkward] = rows.astype(np.float32)
        norms[awkward] = np.linalg.norm(vectors[awkward], axis=1)
    if (norms == 0).any():
        row = int(np.nonzero(norms == 0)[0][0])
        raise ValueError(f"{name} row {row} is all zeros; cosine similarity needs non-zero vectors")
    return np.ascontiguousarray(vectors / norms[:, None], dtype=np.float32)


def _empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.full((n_queries, k), -np.inf, dtype=np.float32),
            np.full((n_queries, k), -1, dtype=np.int64))


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    extra = k - ids.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=-1))

