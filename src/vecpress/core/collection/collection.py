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
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import filters as filters_module
from .. import relevance as relevance_module
from .. import storage
from ..docstore import DB_FILE, TextStatistics, fts_phrases, fts_query
from ..index import Index
from ..relevance import CANDIDATES, DEFAULT_PARAMS, RelevanceParams, ScoreSample
from ..validate import as_durability, as_matrix, as_positive_int
from .opening import INDEX_DIR, RELEVANCE_META_KEY, _Opening
from .results import Hit, SearchResults
from .rwlock import _ReadWriteLock
from .search import _Search, checked_search_options, maximal_marginal_relevance
from .validation import (_checked_id_list, _checked_ids, _checked_list, _checked_relevant_ids,
                         _checked_texts, _metadata_json)

INDEX_OPTIONS = ("rerank", "codec", "oversample", "rerank_dtype", "truncate_dim", "seed",
                 "query_bits", "partitions")


class Collection(_Opening, _Search):
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
        k, relevance, min_relevance, fetch_k = checked_search_options(
            k, mode, relevance, min_relevance, fusion, alpha, fetch_k)
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
                # with relevance, rank at least the candidates its features read (then cut
                # to k), so that a hit's relevance does not depend on k
                ranked = self._dense(query, max(k, CANDIDATES) if relevance else k, node,
                                     oversample, nprobe)
            elif mode == "text":
                ranked = self._text(match, k, node)
            else:
                fetch_k = self._at_most_documents(fetch_k or max(4 * k, 40))
                ranked = self._hybrid(query, match, k, node, fetch_k, alpha, fusion, oversample,
                                      nprobe)
            if not relevance:
                return SearchResults(self._hits(ranked, include_vectors))
            ranked, values, stats = self._with_relevance(query, ranked, k, min_relevance)
            hits = self._hits(ranked, include_vectors)
            for hit, value in zip(hits, values):
                hit.relevance = value
            return SearchResults(hits, stats)

    # ------------------------------------------------------------------ scores for a merger
    # A caller that merges several collections (a sharded store's driver) needs each one's
    # BM25 statistics, its text matches scored with the statistics of the union, and the
    # exact scores of given documents: these three give it that without reading internals.
    def text_statistics(self, query_text: str) -> TextStatistics:
        """BM25's corpus statistics for the words of ``query_text``: ``(rows, tokens, [rows
        matching each word])`` (rows without text count, as in FTS5's ``bm25()``). Summed
        over several collections they are the statistics of their union (see
        :meth:`text_search`)."""
        if not isinstance(query_text, str):
            raise TypeError(f"query_text must be a string, got {type(query_text).__name__}")
        with self._rw.read():
            return self._store.text_statistics(fts_phrases(query_text))

    def text_search(self, query_text: str, k: int = 10, where: Any = None, *,
                    statistics: TextStatistics | None = None,
                    include_vectors: bool = False) -> list[Hit]:
        """The best ``k`` documents matching a word of ``query_text`` (and ``where``), scored
        by BM25 with ``statistics`` (:meth:`text_statistics`, or their sums over several
        collections: each document then gets the score it has in their union); without
        ``statistics``, this collection's own: ``search(mode="text")``. Ties by row id."""
        if statistics is None:
            return list(self.search(k=k, where=where, mode="text", query_text=query_text,
                                    include_vectors=include_vectors))
        k = as_positive_int(k, "k")
        phrases = fts_phrases(query_text)
        node = filters_module.parse(where)
        with self._rw.read():
            allowed = None if node is None else self._matching(node)
            if not phrases or (allowed is not None and len(allowed) == 0):
                return []
            found = self._store.text_search_with(phrases, k, allowed, statistics)
            return self._hits([(r, s, (i, t, m)) for r, s, i, t, m in found], include_vectors)

    def scores_of(self, ids: Sequence[str], vector: Any = None, query_text: str | None = None,
                  *, statistics: TextStatistics | None = None
                  ) -> tuple[dict[str, float], dict[str, float]]:
        """The scores of documents by id, as hybrid fusion weighs them: ``(dense, text)``.

        ``dense``: the exact score of ``vector`` against each document's kept vector (a
        document without one gets the lowest of the others, as in ``search(mode="hybrid")``).
        ``text``: the BM25 score for ``query_text`` with ``statistics`` (see
        :meth:`text_search`; default this collection's own) of each document that matches;
        one that does not is absent. Unknown ids are left out of both."""
        ids = _checked_id_list(ids)
        query = None if vector is None else self._query_vector(vector)
        with self._rw.read():
            by_row = {rowid: doc_id for doc_id, rowid in self._store.rowids_of(ids).items()}
            dense: dict[str, float] = {}
            if query is not None and by_row:
                scores = self._dense_scores(query[0], list(by_row), {})
                dense = {by_row[r]: float(s) for r, s in scores.items()}
            text: dict[str, float] = {}
            if query_text is not None and by_row:
                if statistics is None:
                    match = fts_query(query_text)
                    found = {} if match is None else self._store.text_scores(match, by_row)
                else:
                    found = {r: s for r, s, *_ in self._store.text_search_with(
                        fts_phrases(query_text), len(by_row), np.array(sorted(by_row)),
                        statistics)}
                text = {by_row[r]: float(s) for r, s in found.items()}
            return dense, text

    def sample_scores(self, vector: Any) -> tuple[np.ndarray, int]:
        """The exact scores of ``vector`` against this collection's seeded sample of rows,
        and how many rows that sample stands for: what ``search(..., relevance=True)`` takes
        its statistics from. A merger of several collections pools them."""
        query = self._query_vector(vector)
        with self._rw.read():
            sample = self._score_sample()
            return sample.scores(query[0]), sample.rows

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
