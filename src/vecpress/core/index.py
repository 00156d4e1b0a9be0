"""``Index``: int64 ids over compact codes in RAM, kept originals for an exact rerank, durable files.

Rows are appended in order; a removed row is a tombstone (flagged, and shown as id -1) until
compaction rewrites the live rows. In memory the codes (in the layout their codec scans) and
per-vector factors are contiguous arrays the numba scan reads directly; ids cost nothing while
they run consecutively (see ``_IdColumn``). On disk each write adds a segment of ``.npy`` files and
commits a new JSON manifest (see :mod:`vecpress.core.storage`); originals stay in those files and
are memory-mapped, so RAM holds the codes alone.
"""

from __future__ import annotations

import threading
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels, storage, store_format
from .codecs import Codec, RowFilter, default_codec_name, make_codec, tile_codes
from .validate import as_id_list, as_ids, as_matrix, as_positive_int

#: accepted metric names -> canonical name
METRIC_ALIASES = {"cosine": "cosine", "cos": "cosine", "ip": "ip", "dot": "ip",
                  "inner_product": "ip", "l2": "l2", "euclidean": "l2"}
#: candidates scanned per requested hit, by code bits, when reranking (from benchmarks/)
DEFAULT_OVERSAMPLE = {1: 10, 2: 6, 3: 4, 4: 3, 5: 3, 6: 2, 7: 2, 8: 2}
RERANK_DTYPES = {"float16": np.float16, "float32": np.float32}
#: a filter allowing at most this fraction of rows is scored row by row instead of by mask
SELECTIVE_FRACTION = 1 / 16
#: segments are merged while the newest is at least this fraction of the one before it
MERGE_RATIO = 0.5
#: rows re-encoded per chunk when a refit re-encodes the index
REENCODE_ROWS = 65_536


class _Growable:
    """A row-appendable array with amortised O(1) growth."""

    def __init__(self, tail: tuple[int, ...], dtype: Any) -> None:
        self._data = np.empty((0, *tail), dtype=dtype)
        self.size = 0

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.size]

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def extend(self, block: np.ndarray) -> None:
        needed = self.size + len(block)
        if needed > len(self._data):
            capacity = needed if self.size == 0 else max(needed, int(len(self._data) * 1.5))
            grown = np.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size: needed] = block
        self.size = needed

    def replace(self, array: np.ndarray) -> None:
        self._data = np.ascontiguousarray(array)
        self.size = len(array)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.view[rows]

    @property
    def scan_view(self) -> np.ndarray:
        return self.view


class _IdColumn:
    """The id of every row, and which rows are removed.

    While rows carry consecutive ids (the index's own numbering, or a ``Collection``'s) the
    ids are implicit, ``first + row``, and cost no RAM; the first row that breaks the run
    turns them into an explicit int64 array. Removed rows are flagged in a bool array that
    exists only while there are any (compaction drops them).
    """

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self.size = 0
        self._first = 0  # id of row 0 while implicit
        self._explicit: _Growable | None = None
        self._removed: _Growable | None = None
        self.deleted = 0
        if ids is not None and len(ids):
            self.extend(np.asarray(ids, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in (self._explicit, self._removed) if part is not None)

    @property
    def removed(self) -> np.ndarray | None:
        """Bool per row, True where removed; None while no row is."""
        return None if self._removed is None else self._removed.view

    def extend(self, ids: np.ndarray) -> None:
        if self._explicit is None:
            start = self._first + self.size if self.size else int(ids[0])
            if not self.size:
                self._first = start
            if not np.array_equal(ids, np.arange(start, start + len(ids))):
                self._explicit = _Growable((), np.int64)
                self._explicit.extend(self._first + np.arange(self.size, dtype=np.int64))
        if self._explicit is not None:
            self._explicit.extend(ids)
        if self._removed is not None:
            self._removed.extend(np.zeros(len(ids), np.bool_))
        self.size += len(ids)

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Ids of ``rows`` (whether removed or not), as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._explicit is None:
            return self._first + rows
        return self._explicit.view[rows]

    def all(self) -> np.ndarray:
        """The id of every row, -1 for removed rows (a new array)."""
        ids = self.of_rows(np.arange(self.size))
        if self._removed is not None:
            ids[self._removed.view] = -1
        return ids

    def live_rows(self) -> np.ndarray:
        return (np.arange(self.size) if self._removed is None
                else np.nonzero(~self._removed.view)[0])

    def removed_rows(self) -> np.ndarray:
        return (np.zeros(0, np.int64) if self._removed is None
                else np.nonzero(self._removed.view)[0])

    def rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) for ``ids``: the live row holding each id (0 where there is none)
        and whether there is one."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._explicit is None:
            rows = ids - self._first
            found = (rows >= 0) & (rows < self.size)
        else:
            live = self.live_rows()
            if len(live) == 0:
                return np.zeros(len(ids), np.int64), np.zeros(len(ids), np.bool_)
            view = self._explicit.view
            order = live[np.argsort(view[live], kind="stable")]
            rows = order[np.searchsorted(view[order], ids).clip(0, len(order) - 1)]
            found = view[rows] == ids
        rows = np.where(found, rows, 0)
        if self._removed is not None:
            found &= ~self._removed.view[rows]
        return rows, found

    def remove(self, rows: np.ndarray) -> None:
        """Flag ``rows`` as removed."""
        if len(rows) == 0:
            return
        if self._removed is None:
            self._removed = _Growable((), np.bool_)
            self._removed.extend(np.zeros(self.size, np.bool_))
        rows = np.unique(rows)
        fresh = rows[~self._removed.view[rows]]
        self._removed.view[fresh] = True
        self.deleted += len(fresh)


class _TiledCodes:
    """Code rows kept in the tiled layout their codec scans (``Codec.tile_sign_words``):
    rows in, rows out, tiles to the scan. Grows like :class:`_Growable`, a tile at a time."""

    def __init__(self, width: int, sign_words: int) -> None:
        self._tiles = _Growable((kernels.TILE_ROWS * width,), np.uint64)
        self.width = width
        self.sign_words = sign_words
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self._tiles.nbytes

    @property
    def scan_view(self) -> np.ndarray:
        return self._tiles.view

    def extend(self, codes: np.ndarray) -> None:
        new_tiles = -(-(self.size + len(codes)) // kernels.TILE_ROWS) - self._tiles.size
        if new_tiles > 0:
            self._tiles.extend(np.zeros((new_tiles, self._tiles.view.shape[1]), np.uint64))
        kernels.write_tiles(self._tiles.view, self.size, np.ascontiguousarray(codes, np.uint64),
                            self.sign_words)
        self.size += len(codes)

    def replace(self, codes: np.ndarray) -> None:
        self._tiles.replace(tile_codes(np.ascontiguousarray(codes, np.uint64), self.sign_words))
        self.size = len(codes)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return kernels.read_tiles(self._tiles.view, np.asarray(rows, dtype=np.int64),
                                  self.sign_words, self.width)


class _Blocks:
    """Kept original vectors as a list of row blocks (in-memory arrays or memory maps)."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.starts: list[int] = []
        self.rows = 0

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.starts.append(self.rows)
        self.rows += len(block)

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        """float32 originals of ``rows`` (any order), reading only those rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.blocks[0].shape[1]), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        edges = np.searchsorted(sorted_rows, self.starts + [self.rows])
        for b, block in enumerate(self.blocks):
            lo, hi = edges[b], edges[b + 1]
            if lo < hi:
                out[order[lo:hi]] = block[sorted_rows[lo:hi] - self.starts[b]]
        return out

    def span(self, start: int, stop: int) -> np.ndarray:
        return self.fetch(np.arange(start, stop))

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.blocks
                       if isinstance(b, np.ndarray) and not isinstance(b, np.memmap)))


class Index:
    """A compressed vector index: quantized codes scanned in RAM, reranked exactly from originals.

    Args:
        dim: vector dimension.
        metric: ``"cosine"`` (vectors normalised on insert), ``"ip"`` or ``"l2"``.
        bits: bits per dimension of the in-RAM code: 1-8 quantized, 16 float16, 32 float32.
        rerank: keep the original vectors (on disk when ``path`` is set) and re-score the
            ``k * oversample`` best candidates exactly. Ignored for exact codes (16/32 bits).
        path: a directory to persist to; every returned ``add``/``remove`` is durable there.
            ``None`` keeps everything in memory (``save`` writes a copy).
        codec: ``"saq"`` (default for 1-8 bits: PCA, bits spent by variance, a scale per
            segment; refitted from the kept originals as the index grows), ``"rabitq"`` (plain
            RaBitQ-family codes, data-oblivious, 8-12 bytes less per vector), ``"int8"`` or
            ``"fp8"`` (8 bits).
        oversample: candidates per requested hit for the rerank; default by ``bits``.
        rerank_dtype: ``"float16"`` (default) or ``"float32"`` for the kept originals.
        truncate_dim: quantize only the first ``truncate_dim`` coordinates (Matryoshka
            models); the rerank still uses the full vectors.
        seed: seed of the random rotation.

    Scores are higher-is-better: cosine similarity, inner product, or minus the squared L2
    distance. Missing hits (fewer than ``k`` allowed rows) are padded with id -1, score -inf.
    """

    def __init__(self, dim: int, metric: str = "cosine", bits: int = 4, rerank: bool = True,
                 path: str | Path | None = None, *, codec: str | None = None,
                 oversample: int | None = None, rerank_dtype: str = "float16",
                 truncate_dim: int | None = None, seed: int = 0,
                 query_bits: int | None = None) -> None:
        config = _make_config(dim=dim, metric=metric, bits=bits, rerank=rerank, codec=codec,
                              oversample=oversample, rerank_dtype=rerank_dtype,
                              truncate_dim=truncate_dim, seed=seed, query_bits=query_bits)
        self._setup(config, read_only=False)
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
        self._mutex = threading.RLock()

    def _new_code_store(self, codes: np.ndarray | None = None) -> "_Growable | _TiledCodes":
        """An array of code rows in the layout the current codec scans, holding ``codes``."""
        layout = self._codec.tile_sign_words
        store = (_Growable(self._codec.code_shape(), self._codec.code_dtype) if layout is None
                 else _TiledCodes(int(np.prod(self._codec.code_shape())), layout))
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
        self._manifest = self._new_manifest()
        self._commit(self._manifest)

    @classmethod
    def load(cls, path: str | Path, *, read_only: bool = False,
             verify: bool | str = True) -> "Index":
        """Open a store written by an index with a ``path`` or by :meth:`save`.

        ``read_only=True`` takes no write lock, so a second process may search a store that
        another process is writing (it sees the state at the time it opened). ``verify=True``
        checks the CRC32 of every file read into RAM and the size of the memory-mapped
        originals, whose blocks of rows are CRC-checked the first time a search or ``get``
        reads them; ``verify="full"`` reads the originals for their CRC32 at once (slower: the
        whole store), ``verify=False`` checks sizes only.

        The directory is untrusted input: its manifest, file names, shapes and sizes are
        checked before anything is allocated, links and special files are refused, and any
        violation is a ``StoreCorruptedError`` naming the file and the rule.
        """
        if verify not in (True, False, "full"):
            raise ValueError(f"verify={verify!r}; use True, False or 'full'")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"path={str(path)!r} is not a directory holding a vecpress index")
        lock = None if read_only else storage.DirectoryLock(path)
        try:
            manifest = storage.read_manifest(path)
            store_format.validate_manifest(manifest, path)
            self = cls.__new__(cls)
            self._setup(_config_from_manifest(manifest, path), read_only=read_only)
            self._path = path
            self._lock_file = lock
            self._read_from(path, manifest, verify=verify)
            if not read_only:
                storage.remove_unreferenced(path, manifest)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return self

    def _read_from(self, path: Path, manifest: dict[str, Any], *, verify: bool | str) -> None:
        """Load a manifest that passed ``store_format.validate_manifest``: every entry is
        checked against the codec before a file is read, then the ids and counts."""
        full = verify == "full"
        verify = bool(verify)
        originals_dtype = self._rerank_dtype if self.rerank else None
        store_format.validate_layout(
            manifest, path, store_format.StoreLayout.of(self._codec, self.dim, originals_dtype))
        self._load_codec_state(path, manifest, verify)
        codes, factors, ids = [], [], []
        for segment in manifest["segments"]:
            files = segment["files"]
            codes.append(storage.read_array(path, files["codes"], verify=verify))
            factors.append(storage.read_array(path, files["factors"], verify=verify))
            ids.append(storage.read_array(path, files["ids"], verify=verify))
            if "originals" in files:
                self._originals.append(_map_originals(path, files["originals"], verify, full))
        if codes:
            self._codes = self._new_code_store(np.concatenate(codes))
            self._factors.replace(np.concatenate(factors))
            self._ids = _IdColumn(np.concatenate(ids))
        dead = store_format.dead_rows(
            [storage.read_array(path, entry, verify=verify)
             for entry in storage.tombstone_entries(manifest)], manifest, path)
        store_format.check_count(manifest, len(dead), path)
        self._ids.remove(dead)
        store_format.check_ids(self._ids.of_rows(np.arange(self._ids.size)), self._ids.removed,
                               manifest, path)
        self._next_id = int(manifest["next_id"])
        self._manifest = manifest

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

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return self._ids.size - self._ids.deleted

    def __contains__(self, item: object) -> bool:
        if (isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 0
                or item > np.iinfo(np.int64).max):
            return False
        return bool(self._ids.rows_of(np.array([item]))[1][0])

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
        return self._ids.of_rows(self._ids.live_rows())

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids. Adding an existing id replaces it."""
        self._check_writable()
        vectors = as_matrix(vectors, self.dim, "vectors")
        new_ids = (np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
                   if ids is None else as_ids(ids, len(vectors)))
        for_codes, for_originals = self._prepare_vectors(vectors, "vectors")
        with self._mutex:
            fitting = not self._codec.fitted
            if fitting:
                self._codec.fit(for_codes)
                self._codes = self._new_code_store()  # (empty: only a first add fits)
            codes, factors = self._codec.encode(for_codes)
            kept = for_originals.astype(self._rerank_dtype) if self.rerank else None
            old_rows, present = self._ids.rows_of(new_ids)
            replaced = np.unique(old_rows[present])
            next_id = max(self._next_id, int(new_ids.max()) + 1)
            if self._path is not None:
                self._persist_add(codes, factors, new_ids, kept, replaced, next_id, fitting)
            self._codes.extend(codes)
            self._factors.extend(factors)
            self._ids.extend(new_ids)
            if kept is not None:
                self._append_originals(kept)
            self._ids.remove(replaced)
            self._next_id = next_id
            self._maintain()
        return new_ids

    def remove(self, ids: Any) -> int:
        """Remove ids (KeyError if any is unknown, before anything changes); returns the count."""
        self._check_writable()
        wanted = np.unique(as_id_list(ids))
        with self._mutex:
            rows, present = self._ids.rows_of(wanted)
            if not present.all():
                missing = wanted[~present]
                raise KeyError(f"ids not in the index: {missing[:10].tolist()}"
                               f"{' ...' if len(missing) > 10 else ''}; nothing was removed")
            if self._path is not None:
                dead = np.union1d(self._ids.removed_rows(), rows)
                manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
                manifest["tombstones"] = storage.write_array(
                    self._path, f"tomb-{manifest['generation']:08d}.npy", dead.astype(np.int64))
                self._commit(manifest)
            self._ids.remove(rows)
            self._maintain()
        return len(rows)

    def search(self, queries: Any, k: int = 10, *, mask: Any = None,
               oversample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` per query: ``(scores, ids)`` of shape (q, k), best first, id -1 padding.

        ``mask`` restricts the search to some vectors before scoring: either a collection of
        ids, or a boolean array over :attr:`row_ids`. A filtered search returns ``k`` hits
        whenever ``k`` allowed vectors exist.
        """
        queries = as_matrix(queries, self.dim, "queries", allow_1d=True)
        k = as_positive_int(k, "k")
        oversample = self.oversample if oversample is None else as_positive_int(oversample, "oversample")
        for_codes, full = self._prepare_vectors(queries, "queries")
        with self._mutex:
            flt = self._row_filter(mask)
            if self._ids.size == 0:
                return _empty_result(len(queries), k)
            candidates = k * oversample if self.rerank else k
            scores, rows = self._codec.scan(self._codes.scan_view, self._factors.view, for_codes,
                                            candidates, flt)
            if self.rerank:
                scores, rows = self._rerank(full, rows, k)
            else:
                scores, rows = scores[:, :k], rows[:, :k]
            found = np.where(rows >= 0, self._ids.of_rows(np.maximum(rows, 0)), -1)
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
                return self._originals.fetch(rows)
            if not self._codec.lossy:
                return np.asarray(self._codes.rows(rows), dtype=np.float32)
        raise ValueError("this index keeps no original vectors (rerank=False with a quantized "
                         "code); create it with rerank=True to read vectors back")

    @property
    def row_ids(self) -> np.ndarray:
        """The id of every row, -1 for removed rows: the order a boolean ``mask`` follows."""
        return self._ids.all()

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: ``ram_bytes`` counts codes, factors, ids, in-memory originals and
        codec state; ``disk_bytes`` the files of a persistent store."""
        with self._mutex:
            codec_bytes = sum(a.nbytes for a in self._codec.state_arrays().values())
            per_row = self._codes.nbytes + self._factors.nbytes + self._ids.nbytes
            ram = per_row + self._originals.nbytes + codec_bytes
            disk = (storage.disk_bytes(self._path, self._manifest)
                    if self._path is not None else 0)
            return {"count": len(self), "dim": self.dim, "bits": self.bits,
                    "metric": self.metric, "codec": self._codec.name, "rerank": self.rerank,
                    "oversample": self.oversample, "rows": self._ids.size,
                    "deleted": self._ids.deleted, "code_bytes": self._codec.code_bytes(),
                    "ram_bytes": int(ram), "ram_fixed_bytes": int(codec_bytes),
                    "disk_bytes": int(disk),
                    "segments": len(self._manifest["segments"]) if self._manifest else 0}

    def save(self, path: str | Path) -> None:
        """Write a compacted copy of the index to a new directory (open it with ``load``)."""
        target = Path(path)
        with self._mutex:
            if self._path is not None and target.resolve() == self._path.resolve():
                return  # a persistent index is always saved
            copy = Index.__new__(Index)
            copy._setup(dict(self._config), read_only=False)
            copy._codec.load_state(self._codec.state_arrays())
            copy._create_directory(target)
            try:
                copy._write_compacted(self, self._ids.live_rows())
            finally:
                copy.close()

    def compact(self) -> None:
        """Drop removed rows from RAM and disk, refitting a data-fitted codec from the kept
        originals (runs by itself when half the rows are removed, and to refit as the index
        grows: see ``SegmentCodec``)."""
        self._check_writable()
        with self._mutex:
            live = self._ids.live_rows()
            previous = self._codec
            codes, factors = None, None
            if self._can_refit:
                self._codec, codes, factors = self._refit(live)
            try:
                if self._path is not None:
                    self._write_compacted(self, live, codes, factors)
            except BaseException:
                self._codec = previous  # nothing was committed: keep the old fit
                raise
            if self._path is None:
                kept = self._originals.fetch(live).astype(self._rerank_dtype) if self.rerank else None
                self._codes = self._new_code_store(self._codes.rows(live) if codes is None
                                                   else codes)
                self._factors.replace(self._factors.view[live] if factors is None else factors)
                self._ids = _IdColumn(self._ids.of_rows(live))
                self._originals = _Blocks()
                self._memory_originals = None
                if kept is not None:
                    self._append_originals(kept)

    def close(self) -> None:
        """Release the directory's write lock (the index stays searchable in memory)."""
        if self._lock_file is not None:
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

    def _row_filter(self, mask: Any) -> RowFilter:
        n_rows = self._ids.size
        flt = RowFilter(n_rows=n_rows, removed=self._ids.removed)
        if mask is None:
            return flt
        allowed = self._mask_rows(mask)
        if len(allowed) <= max(64, n_rows * SELECTIVE_FRACTION):
            flt.rows = allowed
        else:
            flt.mask = np.zeros(n_rows, dtype=np.bool_)
            flt.mask[allowed] = True
        return flt

    def _mask_rows(self, mask: Any) -> np.ndarray:
        """Sorted live rows that ``mask`` (ids or a boolean row array) allows."""
        if isinstance(mask, (set, frozenset)):
            mask = np.fromiter(mask, dtype=np.int64, count=len(mask))
        array = np.asarray(mask)
        if array.dtype == np.bool_:
            if array.shape != (self._ids.size,):
                raise ValueError(f"mask is a boolean array of shape {array.shape}; it must have "
                                 f"one entry per row, shape ({self._ids.size},) (see Index.row_ids)")
            if self._ids.removed is not None:
                array = array & ~self._ids.removed
            return np.nonzero(array)[0]
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise TypeError("mask must be a collection of integer ids or a boolean row array, "
                            f"got dtype {array.dtype} with shape {array.shape}")
        rows, present = self._ids.rows_of(array)
        return np.unique(rows[present])

    def _rows_of(self, wanted: np.ndarray) -> np.ndarray:
        """Rows of live ids, in the order given; KeyError naming the unknown ones."""
        rows, found = self._ids.rows_of(wanted)
        if not found.all():
            raise KeyError(f"ids not in the index: {wanted[~found][:10].tolist()}")
        return rows

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows from the kept originals; best ``k`` per query."""
        valid = rows >= 0
        unique = np.unique(rows[valid])
        if unique.size == 0:
            return _empty_result(len(queries), k)
        vectors = self._originals.fetch(unique)
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
        self._originals = _Blocks()
        self._originals.append(self._memory_originals.view)

    # ------------------------------------------------------------------ internals: files
    def _check_writable(self) -> None:
        if self._read_only:
            raise PermissionError("this index is read-only (opened with read_only=True or "
                                  "closed); open it with Index.load(path) to write")

    def _new_manifest(self) -> dict[str, Any]:
        return {"format": storage.FORMAT_NAME, "format_version": storage.FORMAT_VERSION,
                "config": self._config, "codec": self._codec.params(), "generation": 0,
                "next_id": 0, "count": 0, "rows": 0, "codec_files": {}, "segments": [],
                "tombstones": None}

    def _commit(self, manifest: dict[str, Any]) -> None:
        storage.write_manifest(self._path, manifest)
        self._manifest = manifest

    def _write_codec_state(self, manifest: dict[str, Any]) -> None:
        gen = manifest["generation"]
        manifest["codec_files"] = {
            name: storage.write_array(self._path, f"codec-{gen:08d}-{name}.npy", array)
            for name, array in self._codec.state_arrays().items()}

    def _write_segment(self, gen: int, codes: np.ndarray, factors: np.ndarray,
                       ids: np.ndarray, kept: np.ndarray | None) -> dict[str, Any]:
        name = f"seg-{gen:08d}"
        files = {part: storage.write_array(self._path, f"{name}-{part}.npy", array)
                 for part, array in (("codes", codes), ("factors", factors), ("ids", ids))}
        if kept is not None:
            files["originals"] = storage.write_array(self._path, f"{name}-originals.npy", kept,
                                                     blocks=True)
        return {"name": name, "rows": len(ids), "files": files}

    def _open_originals(self, segment: dict[str, Any]) -> np.ndarray:
        return storage.read_array(self._path, segment["files"]["originals"], mmap=True,
                                  verify=False)

    def _persist_add(self, codes, factors, ids, kept, replaced, next_id, fitting) -> None:
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        gen = manifest["generation"]
        if fitting or not manifest["codec_files"]:
            self._write_codec_state(manifest)
        segment = self._write_segment(gen, codes, factors, ids, kept)
        manifest["segments"] = self._manifest["segments"] + [segment]
        if len(replaced):
            dead = np.union1d(self._ids.removed_rows(), replaced)
            manifest["tombstones"] = storage.write_array(
                self._path, f"tomb-{gen:08d}.npy", dead.astype(np.int64))
        manifest.update(next_id=next_id, rows=self._ids.size + len(ids),
                        count=len(self) + len(ids) - len(replaced))
        self._commit(manifest)
        if kept is not None:
            self._originals.append(self._open_originals(segment))
        storage.remove_unreferenced(self._path, manifest)

    @property
    def _can_refit(self) -> bool:
        """A data-fitted codec (PCA) is refitted, and every row re-encoded, from the kept
        originals; without originals it keeps the fit of the first batch."""
        return self.rerank and hasattr(self._codec, "refit_due")

    def _refit(self, live: np.ndarray) -> tuple[Codec, np.ndarray, np.ndarray]:
        """A copy of the codec refitted on (a sample of) the live rows' originals, and the
        live rows' codes under it (the index's own codec is untouched until they are in)."""
        codec = deepcopy(self._codec)
        sample = live
        limit = getattr(codec, "MAX_FIT_ROWS", len(live))
        if len(live) > limit:
            picked = np.random.default_rng(self._config["seed"]).choice(len(live), limit,
                                                                        replace=False)
            sample = live[np.sort(picked)]
        codec.fit(self._code_vectors(self._originals.fetch(sample)))
        codes, factors = [], []
        for start in range(0, len(live), REENCODE_ROWS):
            chunk = self._code_vectors(self._originals.fetch(live[start:start + REENCODE_ROWS]))
            chunk_codes, chunk_factors = codec.encode(chunk)
            codes.append(chunk_codes)
            factors.append(chunk_factors)
        if not codes:
            return (codec, np.zeros((0, *codec.code_shape()), codec.code_dtype),
                    np.zeros((0, codec.factor_count), np.float32))
        return codec, np.concatenate(codes), np.concatenate(factors)

    def _code_vectors(self, originals: np.ndarray) -> np.ndarray:
        """Kept originals back to the vectors the codes are made from."""
        return self._prepare_vectors(np.ascontiguousarray(originals, dtype=np.float32),
                                     "kept originals")[0]

    def _maintain(self) -> None:
        """Compact when half the rows are removed, or refit a data-fitted codec once the index
        has outgrown its fit; merge small trailing segments."""
        if self._ids.deleted >= 64 and 2 * self._ids.deleted >= self._ids.size:
            self.compact()
        elif self._can_refit and self._codec.refit_due(len(self)):
            try:
                self.compact()
            except Exception as exc:  # the add itself is committed; refitting is an upkeep
                warnings.warn(f"vecpress: refitting the codec failed ({exc!r}); the index "
                              f"keeps its previous fit and tries again as it grows",
                              RuntimeWarning, stacklevel=3)
        elif self._path is not None:
            self._merge_segments()

    def _merge_segments(self) -> None:
        """Merge the newest segments while they are similar in size (a binary-counter scheme
        keeping O(log n) segments and rewriting each row O(log n) times)."""
        segments = list(self._manifest["segments"])
        tail = 1
        while tail < len(segments) and segments[-tail]["rows"] >= MERGE_RATIO * segments[-tail - 1]["rows"]:
            tail += 1
        if tail < 2:
            return
        start = sum(s["rows"] for s in segments[:-tail])
        stop = self._ids.size
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        kept = self._originals.span(start, stop).astype(self._rerank_dtype) if self.rerank else None
        merged = self._write_segment(manifest["generation"],
                                     self._codes.rows(np.arange(start, stop)),
                                     self._factors.view[start:stop],
                                     self._ids.of_rows(np.arange(start, stop)),
                                     kept)
        manifest["segments"] = segments[:-tail] + [merged]
        self._commit(manifest)
        if self.rerank:
            first_block = len(segments) - tail
            self._originals.blocks = self._originals.blocks[:first_block]
            self._originals.starts = self._originals.starts[:first_block]
            self._originals.rows = start
            self._originals.append(self._open_originals(merged))
        storage.remove_unreferenced(self._path, manifest)

    def _write_compacted(self, source: "Index", live: np.ndarray, codes: np.ndarray | None = None,
                         factors: np.ndarray | None = None) -> None:
        """Replace this index's files (and RAM arrays) with ``source``'s live rows (with new
        ``codes``/``factors`` after a refit)."""
        manifest = dict(self._manifest, generation=self._manifest["generation"] + 1)
        gen = manifest["generation"]
        self._write_codec_state(manifest)
        kept = source._originals.fetch(live).astype(self._rerank_dtype) if self.rerank else None
        codes = source._codes.rows(live) if codes is None else codes
        factors = source._factors.view[live] if factors is None else factors
        ids = source._ids.of_rows(live)
        manifest["segments"] = [self._write_segment(gen, codes, factors, ids, kept)] if len(live) else []
        manifest.update(tombstones=None, next_id=max(source._next_id, self._next_id),
                        rows=len(live), count=len(live))
        self._commit(manifest)
        self._codes = self._new_code_store(codes)
        self._factors.replace(factors)
        self._ids = _IdColumn(ids)
        self._next_id = manifest["next_id"]
        self._originals = _Blocks()
        if kept is not None and len(live):
            self._originals.append(self._open_originals(manifest["segments"][0]))
        storage.remove_unreferenced(self._path, manifest)


# ---------------------------------------------------------------------- helpers


def _make_config(*, dim: Any, metric: Any, bits: Any, rerank: Any, codec: Any, oversample: Any,
                 rerank_dtype: Any, truncate_dim: Any, seed: Any, query_bits: Any) -> dict[str, Any]:
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
    config = {"dim": dim, "metric": metric, "bits": bits, "rerank": bool(rerank),
              "codec": codec, "oversample": oversample, "rerank_dtype": rerank_dtype,
              "truncate_dim": truncate_dim, "seed": int(seed), "query_bits": query_bits}
    make_codec(codec, truncate_dim or dim, bits, "ip")  # validates codec/bits pairing
    return config


def _map_originals(path: Path, entry: dict[str, Any], verify: bool,
                   full: bool) -> "np.ndarray | storage.CheckedRows":
    """Memory-map an originals file: read in full for its CRC32 when ``full``, else wrapped so
    that each block of rows is CRC-checked on first read (when ``verify`` and the entry has
    block checksums; older stores have none)."""
    array = storage.read_array(path, entry, mmap=True, verify=full)
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
    norms = np.linalg.norm(vectors, axis=1)
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

