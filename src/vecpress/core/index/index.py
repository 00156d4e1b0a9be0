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

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import clustering, kernels, rowlog, storage
from ..codecs import Codec, make_codec
from ..columns import _Blocks, _Growable, _IdColumn, _row_filter, _Snapshot, _TiledCodes
from ..partitions import ListLayout
from ..validate import as_durability, as_id_list, as_ids, as_matrix, as_positive_int
from .config import (FLOAT16_MAX, RERANK_DTYPES, _MAX_SQUARED_NORM, _empty_result, _make_config,
                     _normalized, _pad, _spread, ram_bytes_per_vector)
from .lists import _Lists, _scan_lists
from .loading import _Loading
from .upkeep import _code_store, _Upkeep
from .writes import _Writes

#: results are padded with id -1 up to ``k`` only while ``k`` is at most this or the row count
#: (a huge ``k`` must not allocate huge arrays)
MAX_PADDED_K = 1024


class Index(_Loading, _Writes, _Upkeep, _Lists):
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
            sqrt(rows) lists, retrained each time the index doubles); an int: that many
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
                              coded_factors=True,
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
        if config.get("coded_factors") and config["codec"] == "saq":
            options["coded_factors"] = True
        if config["rerank"] and config["codec"] == "saq":
            options["reranked"] = True  # (its scan may prune harder: see SegmentCodec)
        self._codec: Codec = make_codec(config["codec"], code_dim, self.bits, codec_metric,
                                        **options)
        self.rerank: bool = bool(config["rerank"]) and self._codec.lossy
        self._codec_metric = codec_metric
        #: partitioned: the lists (None while flat; they hold the list number of every row
        #: they order) and the list numbers of the tail's rows, those after the layout's
        #: (see _row_labels); the codes and factors are kept in the lists' position order
        self._lists: ListLayout | None = None
        self._labels = _Growable((), np.int32)
        self._trained_rows = 0
        self._tuned_rows = 0  # (live rows when the search defaults were last tuned)
        self._codes = self._new_code_store()
        self._factors = self._new_factor_store()
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

    def _new_factor_store(self) -> _Growable:
        """An empty array of factor rows as wide as the current codec's (a ``saq`` codec's
        width follows its fit: see ``SegmentCodec.ratio_slots``)."""
        return _Growable((self._codec.factor_count,), np.float32)

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
                self._factors = self._new_factor_store()
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
        if oversample is not None:
            oversample = as_positive_int(oversample, "oversample")
        if nprobe is not None:
            nprobe = as_positive_int(nprobe, "nprobe")
        for_codes, full = self._prepare_vectors(queries, "queries")
        snap = self._snapshot()
        n_rows = snap.ids.size
        k = min(k, max(n_rows, MAX_PADDED_K))
        flt = _row_filter(snap.ids, mask)
        if n_rows == 0:
            return _empty_result(len(queries), k)
        if oversample is None:  # (the lists' own when their tuning needed more)
            oversample = self._default_oversample(snap.lists)
        candidates = min(k * oversample if self.rerank else k, n_rows)
        if snap.lists is None:
            scores, rows = snap.codec.scan(snap.codes, snap.factors, for_codes, candidates, flt)
        else:
            scores, rows = _scan_lists(snap, for_codes, candidates, flt, nprobe)
        if self.rerank:
            scores, rows = self._rerank(snap.originals, full, rows, k)
        else:
            scores, rows = scores[:, :k], rows[:, :k]
        found = snap.ids.of_found(rows)  # (a slot without a hit: row -1, score -inf)
        if found.shape[1] < k:
            scores, found = _pad(scores, found, k)
        return np.ascontiguousarray(scores, dtype=np.float32), found

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
                    "oversample": self._default_oversample(lists), "rows": self._ids.size,
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
        # (in the vectors' own precision, a vectorised pass; a square beyond float32 is
        # infinite, and refused all the same)
        squared = np.einsum("ij,ij->i", originals, originals)
        if (squared > _MAX_SQUARED_NORM).any():
            row = int(np.nonzero(squared > _MAX_SQUARED_NORM)[0][0])
            norm = np.linalg.norm(originals[row].astype(np.float64))
            raise ValueError(
                f"{name} row {row} has norm {norm:.3g}; with metric="
                f"{self.metric!r} its scores would overflow float32. Scale the vectors down "
                f"(or use metric='cosine')")
        if (self.rerank and self._rerank_dtype == np.float16
                and max(originals.max(), -originals.min()) > FLOAT16_MAX):  # (no |x| copy)
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
                             originals=self._originals.frozen(), lists=self._lists,
                             tail_labels=None if self._lists is None else self._labels.view)

    def _rows_of(self, wanted: np.ndarray) -> np.ndarray:
        """Rows of live ids, in the order given; KeyError naming the unknown ones."""
        rows, found = self._ids.rows_of(wanted)
        if not found.all():
            raise KeyError(f"ids not in the index: {wanted[~found][:10].tolist()}")
        return rows

    def _default_oversample(self, lists: "ListLayout | None") -> int:
        """Candidates per hit a search takes unless told: the lists' tuned count when their
        tuning found the index's ``oversample`` too few for its codes, else the index's."""
        if lists is not None and lists.oversample is not None:
            return lists.oversample
        return self.oversample

    def _rerank(self, originals: "_Blocks", queries: np.ndarray, rows: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows from the kept originals; best ``k`` per query.
        Each candidate is scored against its own query where its original lies (in row order,
        so each originals file is visited once): a query's 30 candidates cost about 20 us."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        candidates, query_of, slot = kernels.candidates_by_row(rows)
        if not len(candidates):
            return _empty_result(len(queries), k)
        dots, squares = originals.exact_scores(candidates, queries, query_of)
        if self.metric == "l2":
            query_squares = np.einsum("qd,qd->q", queries, queries, dtype=np.float64)
            exact = 2 * dots - squares - query_squares[query_of]
        elif self.metric == "cosine":
            # float16 originals can overshoot by ~1e-4 (in place: np.clip costs ~4 us)
            exact = np.minimum(np.maximum(dots, -1.0, out=dots), 1.0, out=dots)
        else:
            exact = dots
        return kernels.best_candidates(rows, query_of, slot, exact, k)

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
