"""``Collection``: documents (string id, text, metadata, vector) over one :class:`Index` + SQLite.

Layout of a persistent collection::

    <path>/docs.sqlite      ids, text, metadata JSON, FTS5 index (WAL mode)
    <path>/index/           the Index (codes, kept originals, manifest)
    <path>/LOCK             held by the one process that writes

**One write, two stores.** Every document version gets a fresh int64 row id (``docs.rowid``
equals its vector's id in the Index). A write first makes the new vectors durable in the Index,
then commits one SQLite transaction (insert the new rows, delete the replaced or deleted ones),
and only then removes the old vectors from the Index. The SQLite commit is the commit point:
a crash before it leaves vectors no document refers to, a crash after it leaves old vectors
nothing refers to, and opening the collection for writing removes both. So after a crash the
two agree, and every call that returned is present.

**Threads and processes.** Searches and reads run in parallel, and the Index scans a snapshot
without a lock. Writes run one at a time; an upsert encodes and writes its vectors while
searches go on (rows without a document are skipped), then holds searches off only around the
SQLite commit and the removal of replaced vectors (a readers-writer lock), so a search never
sees half a write: a replaced document appears in its old or its new version. A compaction,
which renumbers the rows that cached filter masks point at, also holds them off. Another
process may open the same directory with ``read_only=True``: it reads SQLite live and the Index
as it was when opened (:meth:`Collection.refresh` reloads it); hits whose document has gone
are dropped and refilled.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import filters as filters_module
from . import relevance as relevance_module
from . import storage
from .docstore import DB_FILE, DocStore, fts_query
from .index import METRIC_ALIASES, Index
from .relevance import DEFAULT_PARAMS, RelevanceParams, ScoreSample, ScoreStats
from .validate import MAX_NESTING, as_durability, as_matrix, as_positive_int

FORMAT_NAME = "vecpress-collection"
FORMAT_VERSION = 1
INDEX_DIR = "index"
SEARCH_MODES = ("dense", "text", "hybrid")
FUSIONS = ("rrf", "weighted")
#: reciprocal rank fusion constant (Cormack et al. 2009)
RRF_K = 60
INDEX_OPTIONS = ("rerank", "codec", "oversample", "rerank_dtype", "truncate_dim", "seed",
                 "query_bits", "partitions")
#: key of the fitted relevance parameters in the collection's metadata (SQLite ``meta``)
RELEVANCE_META_KEY = "relevance"


@dataclass
class Hit:
    """One document: ``score`` is higher-is-better (``None`` when read by :meth:`Collection.get`).

    Dense scores are the index metric's score (cosine similarity, inner product, or minus the
    squared L2 distance); text scores are BM25; hybrid scores are the fused score.
    """

    id: str
    score: float | None
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: calibrated relevance in [0, 1] (``search(..., relevance=True)`` or ``min_relevance``)
    relevance: float | None = None


class SearchResults(list):
    """The hits of one search (a plain ``list`` of :class:`Hit`), plus ``stats``: the query's
    :class:`~vecpress.core.relevance.ScoreStats` when relevance was asked for, else None."""

    def __init__(self, hits: Sequence[Hit] = (), stats: ScoreStats | None = None) -> None:
        super().__init__(hits)
        self.stats = stats


def relevance_score(score: Any, metric: str) -> Any:
    """Map a dense score to [0, 1], higher is more relevant (for framework adapters).

    For unit-length embeddings all three metrics give the same number, ``(1 + cosine) / 2``:
    cosine and inner product map ``s -> (1 + s) / 2``; L2 scores (``-d²``, and ``d² = 2 - 2 cos``
    for unit vectors) map ``s -> 1 + s / 4``. Results are clipped to [0, 1], so for vectors far
    from unit length the mapping saturates; rank by the raw score in that case.
    """
    metric = METRIC_ALIASES.get(str(metric).lower())
    if metric is None:
        raise ValueError(f"metric must be 'cosine', 'ip' or 'l2', got {metric!r}")
    value = np.asarray(score, dtype=np.float64)
    mapped = (1.0 + value) / 2.0 if metric in ("cosine", "ip") else 1.0 + value / 4.0
    mapped = np.clip(mapped, 0.0, 1.0)
    return float(mapped) if mapped.ndim == 0 else mapped


def maximal_marginal_relevance(query: np.ndarray, candidates: np.ndarray, k: int,
                               lambda_mult: float) -> list[int]:
    """Indices of ``k`` candidates chosen greedily by ``lambda * sim(query, d) - (1 - lambda) *
    max sim(d, chosen)``, with cosine similarity (Carbonell & Goldstein 1998)."""
    if len(candidates) == 0:
        return []
    unit = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    relevance = unit @ q
    chosen = [int(np.argmax(relevance))]
    redundancy = unit @ unit[chosen[0]]
    while len(chosen) < min(k, len(candidates)):
        value = lambda_mult * relevance - (1.0 - lambda_mult) * redundancy
        value[chosen] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return chosen


def fuse_rankings(dense: list[tuple[Any, float]], text: list[tuple[Any, float]], k: int,
                  alpha: float, fusion: str, *, dense_scores: Any, text_scores: Any
                  ) -> list[tuple[Any, float]]:
    """The hybrid ranking: the best ``k`` ``(key, fused score)`` of two ranked lists of
    ``(key, score)`` (best first), ties broken by key.

    ``"rrf"`` scores ``alpha / (60 + dense rank) + (1 - alpha) / (60 + text rank)``;
    ``"weighted"`` scores ``alpha * dense + (1 - alpha) * text`` over every candidate, with the
    dense scores min-max scaled and BM25 divided by its maximum; it asks
    ``dense_scores(keys, known)`` (a dict holding every key) and ``text_scores(keys)`` (a dict;
    absent keys do not match) for the scores the two lists do not give. Keys are row ids in a
    :class:`Collection`, string ids in a sharded one.
    """
    fused: dict[Any, float] = {}
    if fusion == "rrf":
        for weight, ranked in ((alpha, dense), (1.0 - alpha, text)):
            for rank, (key, _) in enumerate(ranked, start=1):
                fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank)
    else:
        keys = list(dict.fromkeys([key for key, _ in dense] + [key for key, _ in text]))
        dense_of = dense_scores(keys, dict(dense))
        text_of = text_scores(keys)
        d = np.array([dense_of[key] for key in keys])
        t = np.array([text_of.get(key, 0.0) for key in keys])
        span = d.max() - d.min() if len(d) else 0.0
        d = (d - d.min()) / span if span > 0 else np.ones_like(d)
        t = t / t.max() if len(t) and t.max() > 0 else np.zeros_like(t)
        fused = dict(zip(keys, (alpha * d + (1.0 - alpha) * t).tolist()))
    order = sorted(fused, key=lambda key: (-fused[key], key))[:k]
    return [(key, fused[key]) for key in order]


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers. Not re-entrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class Collection:
    """Documents with string ids, text, JSON metadata and a vector, searchable by vector, text,
    both, or maximal marginal relevance, with metadata filters applied before scoring.

    Args:
        dim: vector dimension (needed to create; checked when opening).
        path: a directory. ``None`` keeps everything in memory. A directory that already holds a
            collection is opened for writing (``dim``/``bits``/``metric``/index options, when
            given, must match what it was created with, else ``ValueError``); a new or empty
            directory gets a new collection; any other directory is ``FileExistsError``.
        bits: code size per dimension of the :class:`Index` (default 4; 32 is exact).
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        read_only: open an existing directory without taking the write lock (another process
            may be writing it). Same as :meth:`Collection.open`. On a read-only filesystem the
            database is opened ``immutable`` (SQLite then assumes nobody writes it; see
            :mod:`vecpress.core.docstore`).
        filter_cache_size: how many filters' matching row sets to keep until the next write
            (a repeated filter then costs nothing). Off for ``read_only`` collections, which
            cannot see when another process writes.
        durability: what a returned write survives. ``"full"`` (default): the Index's files
            and manifest are fsynced and SQLite commits with ``synchronous=FULL``, so it
            survives a power loss. ``"process"``: no write waits for an fsync (SQLite
            ``synchronous=NORMAL`` fsyncs only at its WAL checkpoints; small adds go to the
            Index's row log, see :mod:`vecpress.core.rowlog`), so a one-document upsert
            costs well under a millisecond; it survives the process being killed at
            any moment, and after a power loss or OS crash the collection opens at an earlier
            commit (the last writes lost) or its index is refused with
            ``StoreCorruptedError`` (checksums catch files that did not reach the disk).
            ``close()`` makes everything durable. A setting of this open, not stored.
        **index_options: passed to :class:`Index` (``rerank``, ``codec``, ``oversample``,
            ``rerank_dtype``, ``truncate_dim``, ``seed``, ``query_bits``, ``partitions``).

    Filters (``where=``) are LangChain-style dicts or LlamaIndex ``MetadataFilters``; see
    :mod:`vecpress.core.filters` for the exact semantics.
    """

    def __init__(self, dim: int | None = None, path: str | Path | None = None,
                 bits: int | None = None, metric: str | None = None, *,
                 read_only: bool = False, filter_cache_size: int = 64,
                 durability: str = "full", **index_options: Any) -> None:
        unknown = set(index_options) - set(INDEX_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Collection arguments {sorted(unknown)}; index options "
                            f"are {', '.join(INDEX_OPTIONS)}")
        if isinstance(filter_cache_size, bool) or not isinstance(filter_cache_size, int) \
                or filter_cache_size < 0:
            raise ValueError(f"filter_cache_size must be a non-negative integer, got "
                             f"{filter_cache_size!r}")
        self._durability = as_durability(durability)
        self._rw = _ReadWriteLock()
        # Writes take _writing (one at a time) for their whole length, and _rw's write side
        # only around the SQLite commit and the Index's tombstones (and compactions): an
        # upsert encodes and writes its vectors while searches go on.
        self._writing = threading.Lock()
        #: filter repr -> [sorted matching row ids, Index row mask or None]; "" -> all row ids
        self._cache: OrderedDict[str, list] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = 0 if read_only else filter_cache_size
        #: the sample of rows that a query's score statistics come from (None: draw it anew)
        self._sample: ScoreSample | None = None
        self._relevance: RelevanceParams = DEFAULT_PARAMS
        self._lock: storage.DirectoryLock | None = None
        self._path = None if path is None else Path(path)
        given = {"dim": dim, "bits": bits, "metric": metric, **index_options}
        if self._path is None:
            if read_only:
                raise ValueError("read_only=True needs the path of an existing collection")
            self._create(given)
        elif (self._path / DB_FILE).exists():
            self._open(given, read_only=read_only)
        elif read_only:
            raise FileNotFoundError(f"path={str(self._path)!r} holds no vecpress collection "
                                    f"({DB_FILE} is missing)")
        else:
            self._create(given)

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, **kwargs: Any) -> "Collection":
        """Open an existing collection directory (``FileNotFoundError`` if there is none)."""
        if not (Path(path) / DB_FILE).exists():
            raise FileNotFoundError(f"path={str(path)!r} holds no vecpress collection ({DB_FILE} "
                                    f"is missing); create one with Collection(dim, path=...)")
        return cls(path=path, read_only=read_only, **kwargs)

    # ------------------------------------------------------------------ create / open
    def _create(self, given: dict[str, Any]) -> None:
        if given["dim"] is None:
            raise TypeError("dim is required to create a collection: Collection(dim, path=...)")
        options = {k: v for k, v in given.items() if k not in ("dim", "bits", "metric")}
        bits = 4 if given["bits"] is None else given["bits"]
        metric = "cosine" if given["metric"] is None else given["metric"]
        # an in-memory Index validates every argument before any file exists
        index = Index(given["dim"], metric=metric, bits=bits, path=None, **options)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dim": index.dim,
                "metric": index.metric, "bits": index.bits, "index_options": options}
        if self._path is not None:
            path = self._path
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory")
            if path.exists() and any(p.name != storage.LOCK_FILE for p in path.iterdir()):
                raise FileExistsError(f"path={str(path)!r} is a non-empty directory that holds "
                                      f"no vecpress collection; choose a new or empty directory")
            path.mkdir(parents=True, exist_ok=True)
            self._lock = storage.DirectoryLock(path)
        try:
            # SQLite first: a crash before the Index directory exists leaves an empty collection
            # that the next open completes (see _open)
            self._store = DocStore(self._path, sync=self._durability == "full")
            self._store.create(meta)
            if self._path is not None:
                index = Index(given["dim"], metric=metric, bits=bits,
                              path=self._path / INDEX_DIR, durability=self._durability,
                              **options)
        except BaseException:
            if hasattr(self, "_store"):
                self._store.close()
            self._release_lock()
            raise
        self._index = index
        self._read_only = False
        self._meta = meta
        self._next_rowid = 0

    def _open(self, given: dict[str, Any], *, read_only: bool) -> None:
        path = self._path
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal"):
            storage.require_plain(path / name)  # SQLite would follow a link out of the store
        storage.require_plain(path / INDEX_DIR, directory=True)
        if not read_only:
            self._lock = storage.DirectoryLock(path)
        try:
            self._store = DocStore(path, read_only=read_only,
                                   sync=self._durability == "full")
            self._meta = self._checked_meta(given)
            self._relevance = self._stored_relevance(self._meta)
            index_path = path / INDEX_DIR
            if (index_path / storage.MANIFEST).exists():
                self._index = Index.load(index_path, read_only=read_only,
                                         durability=self._durability)
            elif self._store.count() == 0 and not read_only:
                # a crash while creating: SQLite was written, the Index directory was not
                self._index = Index(self._meta["dim"], metric=self._meta["metric"],
                                    bits=self._meta["bits"], path=index_path,
                                    durability=self._durability,
                                    **self._meta["index_options"])
            else:
                raise storage.StoreCorruptedError(
                    f"{index_path}: the vector index of this collection is missing")
            if self._index.dim != self._meta["dim"] or self._index.metric != self._meta["metric"]:
                raise storage.StoreCorruptedError(
                    f"{index_path}: index has dim={self._index.dim}, metric={self._index.metric!r}"
                    f" but {path / DB_FILE} says dim={self._meta['dim']}, "
                    f"metric={self._meta['metric']!r}")
            self._read_only = read_only
            if not read_only:
                self._reconcile()
            live = self._index.ids
            self._next_rowid = max(self._store.max_rowid(),
                                   int(live.max()) if len(live) else -1) + 1
        except BaseException:
            if hasattr(self, "_store"):
                self._store.close()
            if hasattr(self, "_index"):
                self._index.close()
            self._release_lock()
            raise

    def _checked_meta(self, given: dict[str, Any]) -> dict[str, Any]:
        db = self._path / DB_FILE
        try:
            meta = self._store.meta() if self._store.has_schema() else {}
        except Exception as exc:  # sqlite3.DatabaseError: not a database, corrupted
            raise storage.StoreCorruptedError(f"{db}: not a readable SQLite database ({exc})") from None
        if not meta:
            raise storage.StoreCorruptedError(
                f"{db}: holds no collection (its creation was interrupted?); delete "
                f"{str(self._path)!r} and create the collection again")
        if meta.get("format") != FORMAT_NAME:
            raise storage.StoreCorruptedError(f"{db}: not a vecpress collection database")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise storage.StoreCorruptedError(
                f"{db}: collection format version {version!r} is newer than this vecpress "
                f"supports ({FORMAT_VERSION}); upgrade vecpress to open it")
        stored = {"dim": meta["dim"], "bits": meta["bits"], "metric": meta["metric"],
                  **meta.get("index_options", {})}
        for name, value in given.items():
            if value is None:
                continue
            if name == "metric" and isinstance(value, str):
                value = METRIC_ALIASES.get(value.lower(), value)
            if name not in stored:
                raise ValueError(
                    f"{name}={value!r}: the collection at {str(self._path)!r} was created "
                    f"without {name} (the Index default applies); leave it out to open it")
            if stored[name] != value:
                raise ValueError(
                    f"{name}={value!r} does not match the collection at {str(self._path)!r}, "
                    f"created with {name}={stored.get(name)!r}; leave {name} out to open it "
                    f"as it is, or use a new path")
        return meta

    def _stored_relevance(self, meta: dict[str, Any]) -> RelevanceParams:
        if RELEVANCE_META_KEY not in meta:
            return DEFAULT_PARAMS
        return RelevanceParams.from_json(meta[RELEVANCE_META_KEY], self._path / DB_FILE)

    def _reconcile(self) -> None:
        """Make the Index hold exactly the vectors SQLite refers to (after a crash)."""
        in_index = self._index.ids
        in_sql = self._store.rowids()
        orphans = np.setdiff1d(in_index, in_sql)
        if len(orphans):
            self._index.remove(orphans)
        missing = np.setdiff1d(in_sql, in_index)
        if len(missing):  # cannot follow from a crash (vectors are written first)
            warnings.warn(f"{len(missing)} documents of {self._path} had no vector in the index "
                          f"(was the index directory replaced?); they were removed",
                          RuntimeWarning, stacklevel=3)
            with self._store.transaction() as conn:
                self._store.delete_rowids(conn, missing.tolist())

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def metric(self) -> str:
        return self._index.metric

    @property
    def bits(self) -> int:
        return self._index.bits

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def index(self) -> Index:
        """The underlying :class:`Index` (int64 ids = ``docs.rowid``); do not write to it."""
        return self._index

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return (f"Collection(dim={self.dim}, metric={self.metric!r}, bits={self.bits}, "
                f"count={len(self)}{where}{', read_only=True' if self._read_only else ''})")

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the write lock and close the database; the object is unusable afterwards."""
        with self._writing, self._rw.write():
            self._read_only = True
            self._index.close()
            self._store.close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_writable(self) -> None:
        if self._read_only:
            raise PermissionError("this collection is read-only (opened with read_only=True or "
                                  "closed); open it with Collection.open(path) to write")

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[str] | None, vectors: Any, texts: Sequence[str | None] | None = None,
               metadatas: Sequence[dict | None] | None = None) -> list[str]:
        """Insert or replace documents; returns their ids (new uuid4 hex ids when ``ids`` is None).

        Everything is validated before anything is written; when the call returns the
        documents are committed (for a persistent collection: durable as ``durability``
        says). Metadata is JSON data (a dict of str, int, float, bool, None, lists and dicts)
        nested at most :data:`~vecpress.core.validate.MAX_NESTING` (32) levels deep.
        """
        matrix = as_matrix(vectors, self.dim, "vectors")
        n = len(matrix)
        ids = _checked_ids(ids, n)
        texts = _checked_texts(texts, n)
        metas = _checked_list(metadatas, n, "metadatas")
        meta_json = [_metadata_json(m, f"metadatas[{i}]") for i, m in enumerate(metas)]
        if self.metric == "cosine":
            zero = np.nonzero(~np.any(matrix, axis=1))[0]
            if len(zero):
                raise ValueError(f"vectors row {int(zero[0])} is all zeros; cosine similarity "
                                 f"needs non-zero vectors")
        with self._writing:
            self._check_writable()
            old = self._store.rowids_of(ids)
            rowids = np.arange(self._next_rowid, self._next_rowid + n, dtype=np.int64)
            # the slow part (encoding, the vector files) while searches go on: the new rows
            # have no document yet, so searches skip them
            self._index.add(matrix, ids=rowids, upkeep=False)
            self._next_rowid += n
            with self._rw.write():  # the commit point: searches wait for this part only
                self._clear_cache()
                try:
                    with self._store.transaction() as conn:
                        if old:
                            self._store.delete_rowids(conn, old.values())
                        self._store.insert(conn, [(int(r), i, t, m) for r, i, t, m
                                                  in zip(rowids, ids, texts, meta_json)])
                except BaseException:
                    self._drop_vectors(rowids)  # nothing refers to them: never committed
                    raise
                if old:
                    self._drop_vectors(np.fromiter(old.values(), dtype=np.int64,
                                                   count=len(old)))
            self._upkeep()
        return ids

    def delete(self, ids: Sequence[str] | None = None, where: Any = None) -> int:
        """Delete documents by id, by filter, or both (those matching both); returns the count.
        Unknown ids are ignored."""
        if ids is None and where is None:
            raise ValueError("delete needs ids=... or where=...; to delete everything call clear()")
        node = filters_module.parse(where)
        if ids is None and node is None:
            raise ValueError(f"where={where!r} has no conditions, so it would delete every "
                             f"document; to delete everything call clear()")
        if ids is not None:
            ids = _checked_id_list(ids)
        with self._writing, self._rw.write():
            self._check_writable()
            if ids is not None:
                found = self._store.rowids_of(ids)
                rowids = np.sort(np.fromiter(found.values(), dtype=np.int64, count=len(found)))
                if node is not None and len(rowids):
                    rowids = rowids[np.isin(rowids, self._matching(node))]
            else:
                rowids = self._matching(node)
            if len(rowids) == 0:
                return 0
            self._clear_cache()
            with self._store.transaction() as conn:
                self._store.delete_rowids(conn, rowids.tolist())
            self._drop_vectors(rowids)
            self._upkeep(searches_held=True)
        return len(rowids)

    def clear(self) -> None:
        """Delete every document."""
        with self._writing, self._rw.write():
            self._check_writable()
            self._clear_cache()
            with self._store.transaction() as conn:
                self._store.delete_all(conn)
            live = self._index.ids
            if len(live):
                self._drop_vectors(live)
            self._upkeep(searches_held=True)

    def _drop_vectors(self, rowids: np.ndarray) -> None:
        """Remove vectors no document refers to any more. A failure here leaves only vectors
        that nothing finds (searches join with SQLite) and that the next open removes."""
        present = np.asarray(rowids, dtype=np.int64)
        present = present[self._index.contains(present)] if len(present) else present
        if len(present):  # tombstones ride on the next commit: a crash leaves orphans, which
            self._index.remove(present, upkeep=False, durable=False)  # _reconcile removes

    def _upkeep(self, *, searches_held: bool = False) -> None:
        """The Index's merges, compaction and refits after a write. Merges keep row numbers and
        run beside searches; a compaction renumbers the rows that cached filter masks point
        at, so it runs while no search does (``searches_held``: the caller holds them off)."""
        if not self._index.compaction_due:
            self._index.maintain(compact=False)
        elif searches_held:
            self._index.maintain()
            self._clear_cache()
        else:
            with self._rw.write():
                self._index.maintain()
                self._clear_cache()

    # ------------------------------------------------------------------ reads
    def count(self, where: Any = None) -> int:
        """Number of documents (matching ``where``, if given)."""
        node = filters_module.parse(where)
        with self._rw.read():
            if node is None:
                return self._store.count()
            return len(self._matching(node))

    def get(self, ids: Sequence[str] | None = None, *, where: Any = None,
            limit: int | None = None, offset: int = 0,
            include_vectors: bool = False) -> list[Hit]:
        """Documents by id (in the order given; unknown ids are left out) and/or by filter (in
        insertion order, ``limit``/``offset`` paging). ``score`` is ``None``."""
        node = filters_module.parse(where)
        if limit is not None:
            limit = as_positive_int(limit, "limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        with self._rw.read():
            end = None if limit is None else offset + limit
            if ids is not None:
                ids = _checked_id_list(ids)
                found = self._store.by_id(ids)
                rows = [(found[i][0], i, found[i][1], found[i][2]) for i in dict.fromkeys(ids)
                        if i in found]
                if node is not None:
                    allowed = set(self._matching(node).tolist())
                    rows = [r for r in rows if r[0] in allowed]
                rows = rows[offset:end]
            elif node is not None:
                rowids = self._matching(node)[offset:end].tolist()
                docs = self._store.by_rowid(rowids)
                rows = [(r, *docs[r]) for r in rowids if r in docs]
            else:
                rows = self._store.select(limit=limit, offset=offset)
            hits = [Hit(i, None, t, json.loads(m)) for _, i, t, m in rows]
            if include_vectors and hits:
                self._attach_vectors(hits, [r[0] for r in rows])
        return hits

    def search(self, vector: Any = None, k: int = 10, where: Any = None, *,
               mode: str = "dense", query_text: str | None = None, alpha: float = 0.5,
               fusion: str = "rrf", fetch_k: int | None = None, oversample: int | None = None,
               nprobe: int | None = None, include_vectors: bool = False,
               relevance: bool = False, min_relevance: float | None = None) -> SearchResults:
        """The best ``k`` documents, best first; only documents matching ``where`` are scored.

        Modes:
            ``"dense"``: vector search (quantized scan + exact rerank); ``score`` is the metric's
                score (cosine similarity in [-1, 1] by default; see :func:`relevance_score`).
            ``"text"``: full-text search of ``query_text`` (its words ORed, FTS5 BM25, Porter
                stemming); ``score`` is ``-bm25`` (higher is better). ``vector`` is not needed.
            ``"hybrid"``: both, over ``fetch_k`` candidates each (default ``max(4k, 40)``), fused
                by ``fusion``: ``"rrf"`` scores ``alpha / (60 + dense rank) + (1 - alpha) /
                (60 + text rank)``; ``"weighted"`` scores ``alpha * dense + (1 - alpha) * text``
                with the dense scores min-max scaled over the candidates and BM25 divided by its
                maximum.

        Returns ``k`` hits whenever ``k`` documents match the filter (dense and hybrid) or match
        the filter and a word of ``query_text`` (text). ``k`` and ``fetch_k`` larger than the
        number of documents act as that number (nothing is sized by them). ``oversample`` and
        ``nprobe`` (lists scanned, once the index is partitioned) override the index's
        defaults for this search: see :meth:`Index.search`.

        Relevance (dense mode): ``relevance=True`` sets each hit's ``relevance``, a calibrated
        score in [0, 1] that one threshold serves for every query (see
        :mod:`vecpress.core.relevance` and :meth:`calibrate`), and the result's ``stats``
        (the query's score statistics over the collection). ``min_relevance`` keeps only the
        hits at or above it: at most ``k``, possibly none ("nothing relevant").
        """
        k = as_positive_int(k, "k")
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode={mode!r} is unknown; use one of {', '.join(SEARCH_MODES)}")
        if min_relevance is not None:
            min_relevance = _checked_relevance(min_relevance, "min_relevance")
        if not isinstance(relevance, bool):
            raise TypeError(f"relevance must be True or False, got {relevance!r}")
        relevance = relevance or min_relevance is not None
        if relevance and mode != "dense":
            raise ValueError(f"relevance and min_relevance apply to mode='dense' (calibrated "
                             f"vector scores), but mode={mode!r}; drop them or search densely")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is unknown; use 'rrf' or 'weighted'")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if fetch_k is not None:
            fetch_k = as_positive_int(fetch_k, "fetch_k")
        query = None
        if mode != "text":
            if vector is None:
                raise ValueError(f"mode={mode!r} needs a query vector")
            query = self._query_vector(vector)
        match = None
        if mode != "dense":
            if not isinstance(query_text, str):
                raise ValueError(f"mode={mode!r} needs query_text, a string")
            match = fts_query(query_text)
        node = filters_module.parse(where)
        with self._rw.read():
            k = self._at_most_documents(k)
            if mode == "dense":
                ranked = self._dense(query, k, node, oversample, nprobe)
            elif mode == "text":
                ranked = self._text(match, k, node)
            else:
                fetch_k = self._at_most_documents(fetch_k or max(4 * k, 40))
                ranked = self._hybrid(query, match, k, node, fetch_k, alpha, fusion, oversample,
                                      nprobe)
            if not relevance:
                return SearchResults(self._hits(ranked, include_vectors))
            ranked, values, stats = self._with_relevance(query, ranked, min_relevance)
            hits = self._hits(ranked, include_vectors)
            for hit, value in zip(hits, values):
                hit.relevance = value
            return SearchResults(hits, stats)

    @property
    def relevance_params(self) -> RelevanceParams:
        """The parameters of the relevance mapping: the defaults, or those of the last
        :meth:`calibrate` / :meth:`set_relevance_params` (stored with the collection)."""
        return self._relevance

    def set_relevance_params(self, params: RelevanceParams | None) -> None:
        """Store relevance parameters with the collection (``None``: back to the defaults)."""
        if params is not None and not isinstance(params, RelevanceParams):
            raise TypeError(f"params must be a RelevanceParams or None, got "
                            f"{type(params).__name__}")
        with self._writing:
            self._check_writable()
            self._store.set_meta(RELEVANCE_META_KEY, None if params is None
                                 else params.to_json())
            self._relevance = DEFAULT_PARAMS if params is None else params

    def calibrate(self, queries: Any, relevant_ids: Sequence[Sequence[str]], *, k: int = 10,
                  where: Any = None, oversample: int | None = None,
                  nprobe: int | None = None) -> RelevanceParams:
        """Fit the relevance mapping to labelled queries and store it with the collection.

        ``queries`` is a ``(q, dim)`` array; ``relevant_ids[i]`` the ids of the documents
        relevant to query ``i`` (ids not stored are ignored; an empty list marks an off-topic
        query, whose right answer is nothing). Each answerable query's top ``k`` hits are
        labelled relevant or not and fit the mapping's first factor; when off-topic queries
        are given too, the gate is fitted on all queries, otherwise the current gate is kept
        (see :func:`vecpress.core.relevance.calibrated_params`). A handful of queries (tens)
        is enough. Returns the parameters, now :attr:`relevance_params`.
        """
        matrix = as_matrix(queries, self.dim, "queries")
        labels_of = _checked_relevant_ids(relevant_ids, len(matrix))
        k = as_positive_int(k, "k")
        self._check_writable()
        searches = []
        for vector, relevant in zip(matrix, labels_of):
            hits = self.search(vector, k, where, oversample=oversample, nprobe=nprobe,
                               relevance=True)
            searches.append(([h.score for h in hits], hits.stats,
                             [h.id in relevant for h in hits], bool(relevant)))
        params = relevance_module.calibrated_params(searches, self.metric, self._relevance)
        self.set_relevance_params(params)
        return params

    def max_marginal_relevance_search(self, vector: Any, k: int = 4, fetch_k: int = 20,
                                      lambda_mult: float = 0.5, where: Any = None, *,
                                      oversample: int | None = None,
                                      nprobe: int | None = None,
                                      include_vectors: bool = False) -> list[Hit]:
        """``k`` documents chosen from the ``fetch_k`` best (exactly reranked) by maximal marginal
        relevance on their exact vectors: ``lambda_mult`` 1 is pure relevance, 0 pure diversity.
        Hits come in selection order; ``score`` is the dense score."""
        k = as_positive_int(k, "k")
        fetch_k = as_positive_int(fetch_k, "fetch_k")
        if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)) \
                or not 0 <= lambda_mult <= 1:
            raise ValueError(f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}")
        query = self._query_vector(vector)
        node = filters_module.parse(where)
        with self._rw.read():
            candidates = self._dense(query, self._at_most_documents(max(k, fetch_k)), node,
                                     oversample, nprobe)
            if not candidates:
                return []
            rowids = [r for r, _, _ in candidates]
            vectors = self._vectors(rowids, "maximal marginal relevance")
            chosen = maximal_marginal_relevance(query[0], vectors, k, float(lambda_mult))
            hits = self._hits([candidates[i] for i in chosen], False)
            if include_vectors:
                for hit, i in zip(hits, chosen):
                    hit.vector = vectors[i]
            return hits

    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            info = dict(self._index.stats())
            info["documents"] = self._store.count()
            if self._path is not None:
                info["db_bytes"] = sum(p.stat().st_size for p in self._path.glob(DB_FILE + "*"))
            return info

    def save(self, path: str | Path) -> None:
        """Write a copy of this collection into a new or empty directory (reopen it with
        :meth:`Collection.open`): a consistent backup of the database beside a compacted copy
        of the index. Codes and originals are copied, never re-encoded, and every index option
        is kept."""
        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"path={str(target)!r} exists and is not an empty directory; "
                                  f"save into a new directory")
        with self._rw.read():
            target.mkdir(parents=True, exist_ok=True)
            self._store.backup(target / DB_FILE)
            self._index.save(target / INDEX_DIR)

    def refresh(self) -> None:
        """Read-only collections: catch up with vectors written since opening (only what the
        writer appended is read, unless it compacted the index; see ``Index.refresh``)."""
        if self._path is None or not self._read_only or self._lock is not None:
            return
        with self._rw.write():
            self._index.refresh()
            self._relevance = self._stored_relevance(self._store.meta())
            self._clear_cache()

    # ------------------------------------------------------------------ internals: search
    def _query_vector(self, vector: Any) -> np.ndarray:
        query = as_matrix(vector, self.dim, "vector", allow_1d=True)
        if len(query) != 1:
            raise ValueError(f"vector must be one query vector of shape ({self.dim},), got shape "
                             f"{np.shape(vector)}")
        return query

    def _at_most_documents(self, k: int) -> int:
        """``k``, or the number of documents when fewer exist (counted in SQLite only when
        ``k`` exceeds the Index size: a read-only view's Index may lag the database)."""
        bound = len(self._index)
        if k > bound:
            bound = max(bound, self._store.count())
        return min(k, bound)

    def _matching(self, node: filters_module.Filter) -> np.ndarray:
        """Sorted row ids of the documents matching a filter (cached until the next write)."""
        return self._filter_entry(node)[0]

    def _filter_entry(self, node: filters_module.Filter) -> list:
        """``[sorted row ids, Index row mask or None]`` of a filter, from the cache if there."""
        key = repr(node)  # repr tells True, 1 and 1.0 apart; equality and hashing do not
        entry = self._cached(key)
        if entry is None:
            rowids = filters_module.evaluate(node, self._store.selected_rowids, self._universe)
            entry = self._remember(key, [rowids, None])
        return entry

    def _universe(self) -> np.ndarray:
        entry = self._cached("")
        if entry is None:
            entry = self._remember("", [self._store.rowids(), None])
        return entry[0]

    def _cached(self, key: str) -> list | None:
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
            return entry

    def _remember(self, key: str, entry: list) -> list:
        if self._cache_size:
            with self._cache_lock:
                self._cache[key] = entry
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return entry

    def _row_mask(self, entry: list) -> np.ndarray:
        """A boolean mask over the Index rows allowing the entry's row ids (kept with it)."""
        if entry[1] is not None:
            return entry[1]
        allowed = entry[0]
        row_ids = self._index.row_ids
        size = max(int(row_ids.max(initial=-1)), int(allowed.max())) + 1
        table = np.zeros(size, dtype=np.bool_)
        table[allowed] = True
        mask = table[np.maximum(row_ids, 0)] & (row_ids >= 0)
        entry[1] = mask
        return mask

    def _dense(self, query: np.ndarray, k: int, node: filters_module.Filter | None,
               oversample: int | None,
               nprobe: int | None = None) -> list[tuple[int, float, tuple]]:
        """``(rowid, score, (id, text, metadata JSON))``, best first, for documents that exist."""
        mask = None
        if node is not None:
            entry = self._filter_entry(node)
            if len(entry[0]) == 0:
                return []
            mask = self._row_mask(entry)
        # no search can return more rows than the index holds, so no request is sized past it
        limit = len(self._index)
        want = min(k, limit)
        if want == 0:
            return []
        while True:
            scores, ids = self._index.search(query, want, mask=mask, oversample=oversample,
                                             nprobe=nprobe)
            keep = ids[0] >= 0
            found_ids, found_scores = ids[0][keep], scores[0][keep]
            docs = self._store.by_rowid(found_ids.tolist())
            ranked = [(int(r), float(s), docs[int(r)]) for r, s in zip(found_ids, found_scores)
                      if int(r) in docs]
            # Vectors without a document exist only in a read-only view of a store being
            # written; ask for more until k documents are found or the index is exhausted.
            if len(ranked) >= k or len(found_ids) < want or want >= limit:
                return ranked[:k]
            want = min(2 * want, limit)

    def _text(self, match: str | None, k: int,
              node: filters_module.Filter | None) -> list[tuple[int, float, tuple]]:
        if match is None:
            return []
        allowed = None
        if node is not None:
            allowed = self._matching(node)
            if len(allowed) == 0:
                return []
        return [(r, s, (i, t, m))
                for r, s, i, t, m in self._store.text_search(match, k, allowed)]

    def _hybrid(self, query: np.ndarray, match: str | None, k: int,
                node: filters_module.Filter | None, fetch_k: int, alpha: float, fusion: str,
                oversample: int | None,
                nprobe: int | None = None) -> list[tuple[int, float, tuple]]:
        dense = self._dense(query, max(fetch_k, k), node, oversample, nprobe)
        text = self._text(match, max(fetch_k, k), node)
        docs = {r: d for r, _, d in dense}
        docs.update({r: d for r, _, d in text})
        fused = fuse_rankings(
            [(r, s) for r, s, _ in dense], [(r, s) for r, s, _ in text], k, alpha, fusion,
            dense_scores=lambda rowids, known: self._dense_scores(query[0], rowids, known),
            text_scores=lambda rowids: (self._store.text_scores(match, rowids)
                                        if match is not None else {}))
        return [(r, score, docs[r]) for r, score in fused]

    def _dense_scores(self, query: np.ndarray, rowids: list[int],
                      known: dict[int, float]) -> dict[int, float]:
        """Exact dense scores of ``rowids`` (from the kept vectors when not already known).

        Rows without a kept vector get the lowest score among the others (the floor): with
        ``rerank=False`` no vectors are kept, and a read-only view's Index lacks the rows
        written after it was opened (see :meth:`refresh`) although SQLite finds their text.
        """
        scores = dict(known)
        missing = [r for r in rowids if r not in scores]
        present = self._index.contains(missing) if missing else []
        held = [r for r, p in zip(missing, present) if p]
        if held:
            try:
                scores.update(zip(held, self._exact_scores(query, held)))
            except ValueError:  # no kept vectors (rerank=False): outside the dense top list
                pass
        floor = min(scores.values()) if scores else 0.0
        scores.update((r, floor) for r in missing if r not in scores)
        return scores

    def _exact_scores(self, query: np.ndarray, rowids: list[int]) -> list[float]:
        """The metric's score of ``query`` against the kept vectors of ``rowids``."""
        vectors = self._index.get(rowids)
        q = query.astype(np.float32)
        if self.metric == "cosine":
            q = q / np.linalg.norm(q)
        if self.metric == "l2":
            values = -np.sum((vectors - q) ** 2, axis=1)
        else:
            values = vectors @ q
        return values.astype(float).tolist()

    def _vectors(self, rowids: list[int], purpose: str) -> np.ndarray:
        try:
            return self._index.get(rowids)
        except ValueError as exc:
            raise ValueError(f"{purpose} needs the exact vectors: {exc}") from None

    def _attach_vectors(self, hits: list[Hit], rowids: list[int]) -> None:
        present = self._index.contains(rowids)  # (a lookup, not a scan of every id)
        wanted = [r for r, p in zip(rowids, present) if p]
        vectors = iter(self._vectors(wanted, "include_vectors") if wanted else [])
        for hit, p in zip(hits, present):
            hit.vector = next(vectors) if p else None

    def _hits(self, ranked: list[tuple[int, float, tuple]], include_vectors: bool) -> list[Hit]:
        hits = [Hit(doc[0], score, doc[1], json.loads(doc[2])) for _, score, doc in ranked]
        if include_vectors and hits:
            self._attach_vectors(hits, [r for r, _, _ in ranked])
        return hits

    def _clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._sample = None

    def _score_sample(self) -> ScoreSample:
        """The rows a query's score statistics come from, drawn after each write."""
        with self._cache_lock:
            sample = self._sample
        if sample is None:
            sample = ScoreSample(self._index)  # (two threads may both draw it: same rows)
            with self._cache_lock:
                self._sample = sample
        return sample

    def _with_relevance(self, query: np.ndarray, ranked: list[tuple[int, float, tuple]],
                        min_relevance: float | None
                        ) -> tuple[list[tuple[int, float, tuple]], list[float], ScoreStats]:
        """``ranked`` with the relevance of each hit (those below ``min_relevance`` dropped:
        a suffix, since relevance rises with the score) and the query's statistics."""
        sample = self._score_sample()
        stats = relevance_module.score_stats(sample.scores(query[0]), sample.rows)
        params = self._relevance
        values = params.relevance([s for _, s, _ in ranked], stats, self.metric).tolist() \
            if ranked else []
        if min_relevance is not None:
            keep = [i for i, v in enumerate(values) if v >= min_relevance]
            ranked, values = [ranked[i] for i in keep], [values[i] for i in keep]
        return ranked, values, stats


# ---------------------------------------------------------------------- validation helpers


def _checked_relevance(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (a calibrated relevance), got "
                         f"{value!r}")
    return float(value)


def _checked_relevant_ids(relevant_ids: Any, n: int) -> list[set[str]]:
    if isinstance(relevant_ids, (str, bytes, dict)) or not hasattr(relevant_ids, "__iter__"):
        raise TypeError(f"relevant_ids must be a list with one list of ids per query, got "
                        f"{type(relevant_ids).__name__}")
    groups = list(relevant_ids)
    if len(groups) != n:
        raise ValueError(f"relevant_ids has {len(groups)} entries but there are {n} queries; "
                         f"pass one list of relevant ids per query")
    return [set(_checked_id_list(group)) for group in groups]


def _checked_ids(ids: Any, n: int) -> list[str]:
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    ids = _checked_id_list(ids)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but there are {n} vectors; pass one id "
                         f"per vector")
    if len(set(ids)) != n:
        seen: set[str] = set()
        repeated = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"ids repeats {repeated!r} within one call; ids in a batch must be "
                         f"distinct")
    return ids


def _checked_id_list(ids: Any) -> list[str]:
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"ids must be a list of strings, got {type(ids).__name__}"
                        + (f"; for one id pass [{ids!r}]" if isinstance(ids, str) else ""))
    ids = list(ids)
    for position, value in enumerate(ids):
        if not isinstance(value, str):
            raise TypeError(f"ids[{position}] must be a string, got {type(value).__name__} "
                            f"{value!r}")
        if not value:
            raise ValueError(f"ids[{position}] is an empty string; ids must be non-empty")
        _storable_text(value, f"ids[{position}]")
    return ids


def _checked_list(values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list with one entry per vector, got "
                        f"{type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} vectors")
    return values


def _checked_texts(texts: Any, n: int) -> list[str | None]:
    texts = _checked_list(texts, n, "texts")
    for position, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a string or None, got "
                            f"{type(text).__name__}")
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"texts[{position}] is not valid Unicode ({exc.reason})") from None
    return texts


def _storable_text(text: str, where: str) -> str:
    """``text`` if SQLite can store and match it: UTF-8 encodable, without NUL characters."""
    if "\x00" in text:
        raise ValueError(f"{where} contains a NUL character, which SQLite's JSON functions cut "
                         f"off; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is not valid Unicode ({exc.reason}: {text[exc.start:exc.end]!r})"
                         ) from None
    return text


def _json_value(value: Any, where: str, root: str, depth: int = 1) -> Any:
    """``value`` as plain JSON data (numpy scalars unwrapped, tuples as lists), or TypeError;
    ``depth`` is its nesting level within the metadata dict ``root`` (at most
    :data:`~vecpress.core.validate.MAX_NESTING`)."""
    if isinstance(value, str):
        return _storable_text(value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, (bool, str)):
            return _json_value(value, where, root, depth)
    if isinstance(value, int):
        if not -(2 ** 63) <= value < 2 ** 63:
            raise TypeError(f"{where} is an integer outside the 64-bit range JSON in SQLite "
                            f"holds: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}; JSON has no NaN or infinity")
        return value
    if isinstance(value, (list, tuple, dict)) and depth > MAX_NESTING:
        raise ValueError(f"{root} nests dicts and lists more than {MAX_NESTING} levels deep "
                         f"(vecpress.core.validate.MAX_NESTING); flatten it or store the deep "
                         f"part as a JSON string")
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]", root, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r} of type {type(key).__name__}; "
                                f"metadata keys must be strings")
            _storable_text(key, f"{where} key {key!r}")
            out[key] = _json_value(item, f"{where}[{key!r}]", root, depth + 1)
        return out
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r:.60}); metadata must be "
                    f"JSON: str, int, float, bool, None, lists and dicts of them")


def _metadata_json(metadata: Any, where: str) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(f"{where} must be a dict, got {type(metadata).__name__}")
    return json.dumps(_json_value(metadata, where, where), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"))
