"""``ShardedCollection``: a :class:`~vecpress.Collection` spread over Ray actors, one per shard
(or several shards per actor, ``shards_per_actor``: a call then carries every shard's work).

**Routing.** A document lives on the shard :func:`~vecpress.distributed.layout.shard_of` its id
names (a stable hash written in the root manifest), so an upsert, a get or a delete by id
reaches only the shards that own those ids; a search or a filtered read reaches every shard.

**Exact merge.** Each shard runs its own Collection search (filter first, quantized scan, exact
rerank from the kept originals) and returns its best ``k`` with exact scores. The driver keeps
the best ``k`` of those on ``(score, id)``. The global top ``k`` is the union of each shard's
top ``k`` restricted to that shard, so the dense result is the one a single Collection over the
same documents returns, given the same candidates (always with exact codes ``bits=32``; with
quantized codes each shard's scan finds its own candidates, and the benchmark measures both).
MMR and hybrid fusion run in the driver over the merged candidates, with Collection's own
functions. Text search first sums every shard's BM25 statistics for the query's words (rows,
tokens, rows matching each word), then each shard scores its matches with those sums, so a
document gets the BM25 score it has in one collection holding every shard's documents.

**Faults.** A call that meets a dead or restarting shard is sent again until ``timeout``
seconds have passed (Ray restarts the actor from its directory, ``max_restarts``); every
operation is idempotent, so a retry never changes the result. After the deadline it raises
:class:`ShardUnavailableError` naming the shard (see :mod:`.fanout`). A search never returns
partial results unless ``allow_partial=True`` asks for them; the result then says which shards
are missing.

**Answers and merge** (:mod:`.results`): a shard answers a search with flat columns (ids,
exact scores, texts, metadata); the driver merges them with one ``lexsort`` on
``(-score, id)`` and builds Hits for the final ``k`` only. Threads that search at once share
shard calls (:mod:`.batching`).

**Writes across shards are not one transaction.** Each shard commits its part; when one shard
fails, the others' parts stay written and the error names the failing shard. Running the same
upsert again completes it (upserts replace).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..core import filters as filters_module
from ..core import storage
from ..core import relevance as relevance_module
from ..core.collection import (INDEX_OPTIONS, Collection, Hit, _checked_id_list, _checked_ids,
                               _checked_list, _checked_relevant_ids, _checked_texts,
                               _metadata_json, checked_search_options, fuse_rankings,
                               maximal_marginal_relevance)
from ..core.docstore import fts_phrases
from ..core.relevance import CANDIDATES, DEFAULT_PARAMS, RelevanceParams
from ..core.validate import as_durability, as_matrix, as_positive_int
from . import layout
from .batching import QueryBatcher
from .fanout import ShardUnavailableError, call_shards, ray_module  # noqa: F401 (re-exported)
from .results import Ranked, SearchResult, merge_ranked, merged_stats, pooled_stats
from .shard import ShardHost

#: seconds a call waits for a dead or restarting shard before ShardUnavailableError
DEFAULT_TIMEOUT = 60.0
#: documents per shard call of an upsert (bounds the objects Ray holds for one call)
DEFAULT_UPSERT_BATCH = 8192
#: threads per shard actor: searches run in parallel inside a shard (Collection is thread-safe)
SHARD_CONCURRENCY = 4


class ShardedCollection:
    """Documents spread over ``shards`` Ray actors, each owning a Collection directory, with
    :class:`~vecpress.Collection`'s API (upsert, get, delete, search with ``where=`` and
    ``mode=``, MMR, len, stats, close).

    Args:
        dim: vector dimension (needed to create; checked when opening).
        path: the root directory (new or empty to create; a sharded store to open).
        shards: number of shards when creating (1 to 1024; default 2); checked when opening.
        bits, metric, **index_options: as for :class:`~vecpress.Collection`, the same for
            every shard (stored in the root manifest).
        durability: ``"full"`` or ``"process"``, as for Collection (a setting of this open).
        timeout: seconds a call waits for a dead or restarting shard before
            :class:`ShardUnavailableError` (also the bound on one shard's answer).
        max_restarts: how many times Ray restarts a shard actor that dies (``-1``: always).
        actor_options: more ``ray.remote`` options of the shard actors (``num_cpus``,
            ``resources``, ``scheduling_strategy``, ...). By default an actor reserves no CPU,
            so any number of shards fit on a small cluster.
        shards_per_actor: shards one actor holds (a setting of this open; default 1). A
            search costs one Ray call per actor, so fewer actors make the fan-out cheaper
            on few cores; one shard per actor isolates faults best.

    Ray is initialised on first use if ``ray.init`` was not called (a local cluster).
    """

    def __init__(self, dim: int | None = None, path: str | Path | None = None, *,
                 shards: int | None = None, bits: int | None = None, metric: str | None = None,
                 durability: str = "full", timeout: float = DEFAULT_TIMEOUT,
                 max_restarts: int = -1, actor_options: dict[str, Any] | None = None,
                 shards_per_actor: int = 1, **index_options: Any) -> None:
        ray = ray_module()
        if path is None:
            raise TypeError("path is required: each shard keeps its collection on disk under "
                            "it (ShardedCollection(dim, path=..., shards=...))")
        unknown = set(index_options) - set(INDEX_OPTIONS)
        if unknown:
            raise TypeError(f"unknown ShardedCollection arguments {sorted(unknown)}; index "
                            f"options are {', '.join(INDEX_OPTIONS)}")
        self._durability = as_durability(durability)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= 86400:
            raise ValueError(f"timeout must be a number of seconds in (0, 86400], got "
                             f"{timeout!r}")
        self._timeout = float(timeout)
        self._max_restarts = max_restarts
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) \
                or max_restarts < -1:
            raise ValueError(f"max_restarts must be an integer >= -1 (-1: always restart), "
                             f"got {max_restarts!r}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict of ray.remote options, got "
                            f"{type(actor_options).__name__}")
        if shards is not None:
            shards = layout.as_shard_count(shards)
        per_actor = as_positive_int(shards_per_actor, "shards_per_actor")
        self._path = Path(path)
        self._closed = False
        self._batcher = QueryBatcher(self._ranked_batch)
        self._params: RelevanceParams | None = None
        self._lock: storage.DirectoryLock | None = None
        if layout.holds_store(self._path):
            manifest = self._open_root(dim, shards, bits, metric, index_options)
        else:
            manifest = self._create_root(dim, shards, bits, metric, index_options)
        self._manifest = manifest
        self._names: list[str] = manifest["shards"]
        settings = {name: manifest[name] for name in ("dim", "metric", "bits", "index_options")}
        options = {"num_cpus": 0, **(actor_options or {}), "max_restarts": max_restarts,
                   "max_task_retries": 0, "max_concurrency": SHARD_CONCURRENCY}
        #: (actor number, number of the shard in that actor) of every shard
        self._placement = [(s // per_actor, s % per_actor) for s in range(len(self._names))]
        try:
            server = ray.remote(ShardHost).options(**options)
            # absolute: an actor's working directory is not the driver's
            root = self._path.absolute()
            self._actors = [server.remote([str(root / name) for name in
                                           self._names[start:start + per_actor]],
                                          settings, self._durability)
                            for start in range(0, len(self._names), per_actor)]
            self._call_all("count")  # every shard opened
        except BaseException:
            self._stop_actors()
            self._release_lock()
            raise

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> "ShardedCollection":
        """Reattach to the sharded store at ``path`` (``FileNotFoundError`` if there is none);
        ``kwargs`` as for the constructor (settings given must match the stored ones)."""
        layout.read_root(Path(path))  # the clear error before any actor starts
        return cls(path=path, **kwargs)

    # ------------------------------------------------------------------ create / open
    def _create_root(self, dim: int | None, shards: int | None, bits: int | None,
                     metric: str | None, index_options: dict[str, Any]) -> dict[str, Any]:
        if dim is None:
            raise TypeError("dim is required to create a sharded collection: "
                            "ShardedCollection(dim, path=..., shards=...)")
        # an in-memory Collection checks dim, bits, metric and every index option
        probe = Collection(dim, bits=bits, metric=metric, **index_options)
        try:
            manifest = layout.new_manifest(2 if shards is None else shards, probe.dim,
                                           probe.metric, probe.bits, index_options)
        finally:
            probe.close()
        path = self._path
        self._lock = storage.lock_new_directory(path, "sharded vecpress collection")
        try:
            layout.create_root(path, manifest)
        except BaseException:
            self._release_lock()
            raise
        return manifest

    def _open_root(self, dim: int | None, shards: int | None, bits: int | None,
                   metric: str | None, index_options: dict[str, Any]) -> dict[str, Any]:
        self._lock = storage.DirectoryLock(self._path)
        try:
            manifest = layout.read_root(self._path)
            layout.check_settings(manifest, self._path, {
                "dim": dim, "bits": bits, "shards": shards, "metric": metric, **index_options})
        except BaseException:
            self._release_lock()
            raise
        return manifest

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._manifest["dim"]

    @property
    def metric(self) -> str:
        return self._manifest["metric"]

    @property
    def bits(self) -> int:
        return self._manifest["bits"]

    @property
    def path(self) -> Path:
        return self._path

    @property
    def shards(self) -> list[str]:
        """The shard names, in routing order."""
        return list(self._names)

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return (f"ShardedCollection(dim={self.dim}, metric={self.metric!r}, bits={self.bits}, "
                f"shards={len(self._names)}, path={str(self._path)!r})")

    def __enter__(self) -> "ShardedCollection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every shard's collection (everything durable), stop the actors and release
        the root directory. Idempotent; the object is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        try:  # a shard that is down has nothing unwritten: every write it took is durable
            call_shards(self._actors, self._placement, self._names, "close",
                        {s: () for s in range(len(self._names))}, timeout=self._timeout,
                        max_restarts=self._max_restarts, allow_partial=True)
        finally:
            self._stop_actors()
            self._release_lock()

    def _actor_of(self, shard: int) -> Any:
        """The actor holding shard number ``shard``."""
        return self._actors[self._placement[shard][0]]

    def _stop_actors(self) -> None:
        ray = ray_module()
        for actor in getattr(self, "_actors", []):
            ray.kill(actor, no_restart=True)
        self._actors = []

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[str] | None, vectors: Any,
               texts: Sequence[str | None] | None = None,
               metadatas: Sequence[dict | None] | None = None, *,
               batch_size: int = DEFAULT_UPSERT_BATCH) -> list[str]:
        """Insert or replace documents (as :meth:`Collection.upsert`); returns their ids.

        Everything is validated here before any shard is written. The documents are sent to
        their shards ``batch_size`` per shard call, every shard at once; when the call returns
        every shard has committed its part."""
        matrix = as_matrix(vectors, self.dim, "vectors")
        n = len(matrix)
        ids = _checked_ids(ids, n)
        texts = _checked_texts(texts, n)
        metas = _checked_list(metadatas, n, "metadatas")
        for i, m in enumerate(metas):
            _metadata_json(m, f"metadatas[{i}]")
        batch_size = as_positive_int(batch_size, "batch_size")
        if self.metric == "cosine":
            zero = np.nonzero(~np.any(matrix, axis=1))[0]
            if len(zero):
                raise ValueError(f"vectors row {int(zero[0])} is all zeros; cosine similarity "
                                 f"needs non-zero vectors")
        self._check_open()
        parts = layout.route(ids, len(self._names))
        largest = max(len(p) for p in parts)
        for start in range(0, largest, batch_size):
            calls = {}
            for s, positions in enumerate(parts):
                chunk = positions[start:start + batch_size]
                if len(chunk):
                    calls[s] = ([ids[i] for i in chunk], matrix[chunk],
                                [texts[i] for i in chunk], [metas[i] for i in chunk])
            self._call("upsert", calls)
        return ids

    def add_texts(self, texts: Iterable[str], embedder: Any,
                  metadatas: Iterable[dict | None] | None = None,
                  ids: Iterable[str] | None = None, *, total: int | None = None,
                  write_batch: int = 4096, progress: bool | None = None) -> list[str]:
        """Embed ``texts`` with ``embedder`` (a vecpress embedder) and upsert them, a
        ``write_batch`` at a time, with a progress bar (see :func:`vecpress.pipeline.add_texts`)."""
        from ..pipeline import add_texts

        return add_texts(self, embedder, texts, metadatas, ids, total=total,
                         write_batch=write_batch, progress=progress)

    def ingest_dataset(self, dataset: Any, embedder_factory: Callable[[], Any] | None = None,
                       **options: Any) -> int:
        """Embed a ``ray.data.Dataset`` of texts in parallel Ray Data actors and upsert it, a
        batch at a time; returns the rows written. See
        :func:`vecpress.distributed.ingest.ingest_dataset` for the options (needs
        ``ray[data]``)."""
        from .ingest import ingest_dataset

        self._check_open()
        return ingest_dataset(self, dataset, embedder_factory, **options)

    def delete(self, ids: Sequence[str] | None = None, where: Any = None) -> int:
        """Delete documents by id, by filter, or both (as :meth:`Collection.delete`); returns
        the count (a retried shard call may count fewer: it deleted them the first time)."""
        if ids is None and where is None:
            raise ValueError("delete needs ids=... or where=...; to delete everything call clear()")
        node = filters_module.parse(where)
        if ids is None and node is None:
            raise ValueError(f"where={where!r} has no conditions, so it would delete every "
                             f"document; to delete everything call clear()")
        self._check_open()
        if ids is None:
            calls = {s: (None, where) for s in range(len(self._names))}
        else:
            ids = _checked_id_list(ids)
            calls = {s: ([ids[i] for i in positions], where)
                     for s, positions in enumerate(layout.route(ids, len(self._names)))
                     if len(positions)}
        return sum(self._call("delete", calls).values())

    def clear(self) -> None:
        """Delete every document of every shard."""
        self._check_open()
        self._call_all("clear")

    # ------------------------------------------------------------------ reads
    def count(self, where: Any = None) -> int:
        """Number of documents (matching ``where``, if given)."""
        filters_module.parse(where)
        return sum(self._call_all("count", where))

    def get(self, ids: Sequence[str] | None = None, *, where: Any = None,
            limit: int | None = None, offset: int = 0,
            include_vectors: bool = False) -> list[Hit]:
        """Documents by id (in the order given; unknown ids left out) and/or by filter.
        Without ids, documents come shard by shard (``shard-0000`` first), each shard's in
        insertion order, and ``limit``/``offset`` page through that order."""
        self._check_open()
        filters_module.parse(where)
        if limit is not None:
            limit = as_positive_int(limit, "limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        if ids is not None:
            ids = _checked_id_list(ids)
            calls = {s: ([ids[i] for i in positions], where, None, 0, include_vectors)
                     for s, positions in enumerate(layout.route(ids, len(self._names)))
                     if len(positions)}
            found = {hit.id: hit for hits in self._call("get", calls).values() for hit in hits}
            ordered = [found[i] for i in dict.fromkeys(ids) if i in found]
            return ordered[offset:None if limit is None else offset + limit]
        counts = self._call_all("count", where)
        calls, skip, wanted = {}, offset, limit
        for s, count in enumerate(counts):
            if skip >= count:
                skip -= count
                continue
            take = count - skip if wanted is None else min(count - skip, wanted)
            calls[s] = (None, where, take, skip, include_vectors)
            skip = 0
            if wanted is not None:
                wanted -= take
                if wanted == 0:
                    break
        pages = self._call("get", calls)
        return [hit for s in sorted(pages) for hit in pages[s]]

    def search(self, vector: Any = None, k: int = 10, where: Any = None, *,
               mode: str = "dense", query_text: str | None = None, alpha: float = 0.5,
               fusion: str = "rrf", fetch_k: int | None = None, oversample: int | None = None,
               nprobe: int | None = None, include_vectors: bool = False,
               relevance: bool = False, min_relevance: float | None = None,
               allow_partial: bool = False) -> SearchResult:
        """The best ``k`` documents over every shard, best first (as :meth:`Collection.search`;
        ties broken by id). ``allow_partial=True`` returns what the shards that answered
        found, marked ``partial``, instead of waiting for or failing on a missing shard.

        ``relevance`` and ``min_relevance`` (dense mode) as in :meth:`Collection.search`: the
        query's statistics pool every shard's sample of rows in proportion to its size
        (:func:`~vecpress.distributed.results.pooled_stats`), so a hit's relevance is the one
        a single Collection gives it, up to sampling (exactly, up to ``SAMPLE_ROWS`` rows);
        the mapping's parameters are :attr:`relevance_params` (see :meth:`calibrate`)."""
        k, relevance, min_relevance, fetch_k = checked_search_options(
            k, mode, relevance, min_relevance, fusion, alpha, fetch_k)
        query = None if mode == "text" and vector is None else self._query_vector(vector, mode)
        if mode != "dense" and not isinstance(query_text, str):
            raise ValueError(f"mode={mode!r} needs query_text, a string")
        filters_module.parse(where)
        passes = {"oversample": oversample, "nprobe": nprobe, "include_vectors": include_vectors}
        if mode == "dense":
            found = self._ranked(query, k, where, passes, allow_partial, relevance)
            if min_relevance is None:
                return found
            return SearchResult([h for h in found if h.relevance >= min_relevance],
                                found.missing_shards, found.stats)
        corpus = self._corpus(query_text, allow_partial)
        if mode == "text":
            text = self._text_ranked(query_text, k, where, corpus, include_vectors, allow_partial)
            return SearchResult(text, sorted(set(text.missing_shards + corpus[3])))
        pool = fetch_k or max(4 * k, 40)
        dense = self._ranked(query, pool, where, passes, allow_partial)
        text = self._text_ranked(query_text, pool, where, corpus, include_vectors, allow_partial)
        hits = {hit.id: hit for hit in text}
        hits.update({hit.id: hit for hit in dense})

        def dense_scores(keys: list[str], known: dict[str, float]) -> dict[str, float]:
            scores = dict(known)
            scores.update(self._scores_of([i for i in keys if i not in known], query)[0])
            floor = min(scores.values(), default=0.0)  # no kept vector: the lowest, as Collection
            return {i: scores.get(i, floor) for i in keys}

        fused = fuse_rankings(
            [(h.id, h.score) for h in dense], [(h.id, h.score) for h in text], k, alpha, fusion,
            dense_scores=dense_scores,
            text_scores=lambda keys: self._scores_of(keys, None, query_text, corpus)[1])
        result = [Hit(key, score, hits[key].text, hits[key].metadata, hits[key].vector)
                  for key, score in fused]
        if include_vectors and any(hit.vector is None for hit in result):
            kept = {hit.id: hit.vector for hit in self.get([h.id for h in result],
                                                           include_vectors=True)}
            for hit in result:
                hit.vector = kept.get(hit.id) if hit.vector is None else hit.vector
        missing = set(dense.missing_shards + text.missing_shards + corpus[3])
        return SearchResult(result, sorted(missing))

    @property
    def relevance_params(self) -> RelevanceParams:
        """The parameters of the relevance mapping: the defaults, or those of the last
        :meth:`calibrate` / :meth:`set_relevance_params` (every shard stores them, so a
        reopened store has them; ``shard-0000``'s are read)."""
        return self._relevance_params()

    def set_relevance_params(self, params: RelevanceParams | None) -> None:
        """Store relevance parameters in every shard (``None``: back to the defaults). Not one
        transaction: after an error naming a shard, set them again."""
        if params is not None and not isinstance(params, RelevanceParams):
            raise TypeError(f"params must be a RelevanceParams or None, got "
                            f"{type(params).__name__}")
        self._params = None  # read again from shard-0000 if a shard fails below
        self._call_all("set_relevance_params", params)
        self._params = DEFAULT_PARAMS if params is None else params

    def calibrate(self, queries: Any, relevant_ids: Sequence[Sequence[str]], *, k: int = 10,
                  where: Any = None, oversample: int | None = None,
                  nprobe: int | None = None) -> RelevanceParams:
        """Fit the relevance mapping to labelled queries and store it in every shard (as
        :meth:`Collection.calibrate`, same arguments). Every query is searched over all
        shards at once (one call per actor for them all) with the pooled statistics of
        ``search(..., relevance=True)``; the fit runs here, on the driver, with
        :func:`~vecpress.core.relevance.calibrated_params`. So the parameters are one
        Collection's over the same documents, up to the pooled sample (exactly, up to
        ``SAMPLE_ROWS`` documents, with exact codes). Returns them."""
        matrix = as_matrix(queries, self.dim, "queries")
        labels_of = _checked_relevant_ids(relevant_ids, len(matrix))
        k = as_positive_int(k, "k")
        filters_module.parse(where)
        self._check_open()
        options = {"oversample": oversample, "nprobe": nprobe, "include_vectors": False}
        found = self._ranked_batch(_batch_key(k, where, options, False, True),
                                   [(query, where) for query in matrix])
        searches = [([h.score for h in hits], hits.stats, [h.id in relevant for h in hits],
                     bool(relevant)) for hits, relevant in zip(found, labels_of)]
        params = relevance_module.calibrated_params(searches, self.metric,
                                                    self._relevance_params())
        self.set_relevance_params(params)
        return params

    def max_marginal_relevance_search(self, vector: Any, k: int = 4, fetch_k: int = 20,
                                      lambda_mult: float = 0.5, where: Any = None, *,
                                      oversample: int | None = None, nprobe: int | None = None,
                                      include_vectors: bool = False,
                                      allow_partial: bool = False) -> SearchResult:
        """``k`` documents chosen by maximal marginal relevance among the ``fetch_k`` best of
        every shard (as :meth:`Collection.max_marginal_relevance_search`)."""
        k = as_positive_int(k, "k")
        fetch_k = as_positive_int(fetch_k, "fetch_k")
        if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)) \
                or not 0 <= lambda_mult <= 1:
            raise ValueError(f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}")
        query = self._query_vector(vector, "dense")
        filters_module.parse(where)
        options = {"oversample": oversample, "nprobe": nprobe, "include_vectors": True}
        candidates = self._ranked(query, max(k, fetch_k), where, options, allow_partial)
        if not candidates:
            return candidates
        vectors = np.stack([hit.vector for hit in candidates])
        chosen = maximal_marginal_relevance(query, vectors, k, float(lambda_mult))
        hits = [candidates[i] for i in chosen]
        if not include_vectors:
            for hit in hits:
                hit.vector = None
        return SearchResult(hits, candidates.missing_shards)

    def stats(self) -> dict[str, Any]:
        """The store's figures over every shard (see
        :func:`~vecpress.distributed.results.merged_stats`: sizes and counts summed,
        ``ram_bytes_per_vector`` over all vectors) and each shard's own
        ``Collection.stats()`` under ``"shards"``."""
        per_shard = self._call_all("stats")
        info: dict[str, Any] = {"dim": self.dim, "metric": self.metric, "bits": self.bits,
                                **merged_stats(per_shard)}
        info["shards"] = {name: s for name, s in zip(self._names, per_shard)}
        return info

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this sharded collection is closed; open it again with "
                               "ShardedCollection.open(path)")

    def _query_vector(self, vector: Any, mode: str) -> np.ndarray:
        if vector is None:
            raise ValueError(f"mode={mode!r} needs a query vector")
        query = as_matrix(vector, self.dim, "vector", allow_1d=True)
        if len(query) != 1:
            raise ValueError(f"vector must be one query vector of shape ({self.dim},), got "
                             f"shape {np.shape(vector)}")
        return query[0]

    def _ranked(self, query: np.ndarray | None, k: int, where: Any, options: dict[str, Any],
                allow_partial: bool, relevance: bool = False) -> SearchResult:
        """Every shard's best ``k`` dense hits merged on ``(score, id)``: the global best ``k``
        (with ``relevance``, each hit's and the query's statistics). Threads searching at once
        share shard calls (see :class:`QueryBatcher`)."""
        return self._batcher.submit(_batch_key(k, where, options, allow_partial, relevance),
                                    (query, where))

    def _ranked_batch(self, key: tuple, requests: list[tuple[np.ndarray, Any]]
                      ) -> list[SearchResult]:
        """:meth:`_ranked` for queries sharing ``key`` (:func:`_batch_key`): one call per
        actor for them all."""
        k, _, options, allow_partial, relevance = key
        queries = np.stack([query for query, _ in requests])
        # with relevance, rank the candidates its terms read, then cut to k (as a Collection)
        fetch = max(k, CANDIDATES) if relevance else k
        calls = {s: (queries, fetch, requests[0][1], dict(options), relevance)
                 for s in range(len(self._names))}
        answers = self._call("search", calls, allow_partial=allow_partial)
        missing = self._missing(answers)
        results = []
        for i in range(len(requests)):
            found = [shard_answers[i] for shard_answers in answers.values()]
            result = merge_ranked(found, fetch, missing)
            if relevance:
                result.stats = pooled_stats(found, [h.score for h in result])
                del result[k:]
                values = self._relevance_params().relevance(
                    [h.score for h in result], result.stats, self.metric).tolist() \
                    if result else []
                for hit, value in zip(result, values):
                    hit.relevance = value
            results.append(result)
        return results

    def _relevance_params(self) -> RelevanceParams:
        """The shards' relevance mapping (``shard-0000``'s, read once)."""
        if self._params is None:
            self._params = self._call("relevance_params", {0: ()})[0]
        return self._params

    def _corpus(self, query_text: str, allow_partial: bool
                ) -> tuple[int, int, list[int], list[str]]:
        """The BM25 statistics of the whole store for ``query_text`` (each shard's summed),
        and the shards that did not answer (``allow_partial``)."""
        calls = {s: (query_text,) for s in range(len(self._names))}
        answers = self._call("text_statistics", calls, allow_partial=allow_partial)
        words = len(fts_phrases(query_text))
        rows = sum(a[0] for a in answers.values())
        tokens = sum(a[1] for a in answers.values())
        hits = [sum(a[2][i] for a in answers.values()) for i in range(words)]
        return rows, tokens, hits, self._missing(answers)

    def _text_ranked(self, query_text: str, k: int, where: Any,
                     corpus: tuple[int, int, list[int], list[str]], include_vectors: bool,
                     allow_partial: bool) -> SearchResult:
        """Every shard's best ``k`` text hits, scored with the store's statistics, merged."""
        calls = {s: (query_text, k, where, corpus[:3], include_vectors)
                 for s in range(len(self._names))}
        return self._merged(self._call("text_search", calls, allow_partial=allow_partial), k)

    def _merged(self, answers: dict[int, Ranked], k: int) -> SearchResult:
        return merge_ranked(answers.values(), k, self._missing(answers))

    def _missing(self, answers: dict[int, Any]) -> list[str]:
        return [name for s, name in enumerate(self._names) if s not in answers]

    def _scores_of(self, ids: list[str], query: np.ndarray | None,
                   query_text: str | None = None,
                   corpus: tuple[int, int, list[int], list[str]] | None = None
                   ) -> tuple[dict[str, float], dict[str, float]]:
        statistics = None if corpus is None else corpus[:3]
        calls = {s: ([ids[i] for i in positions], query, query_text, statistics)
                 for s, positions in enumerate(layout.route(ids, len(self._names)))
                 if len(positions)}
        dense: dict[str, float] = {}
        text: dict[str, float] = {}
        for shard_dense, shard_text in self._call("scores_of", calls).values():
            dense.update(shard_dense)
            text.update(shard_text)
        return dense, text

    def _call_all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every shard; their answers in shard order."""
        answers = self._call(method, {s: args for s in range(len(self._names))})
        return [answers[s] for s in range(len(self._names))]

    def _call(self, method: str, calls: dict[int, tuple], *,
              allow_partial: bool = False) -> dict[int, Any]:
        """``method(*args)`` on the shards ``calls`` names, all at once (see
        :func:`~vecpress.distributed.fanout.call_shards`); an error once closed."""
        self._check_open()
        return call_shards(self._actors, self._placement, self._names, method, calls,
                           timeout=self._timeout,
                           max_restarts=self._max_restarts, allow_partial=allow_partial)


def _batch_key(k: int, where: Any, options: dict[str, Any], allow_partial: bool,
               relevance: bool) -> tuple:
    """What dense searches must share to go to the shards in one call (``where`` by its
    parsed form, so equal filters written differently share too); ``_ranked_batch`` unpacks
    it."""
    return (k, repr(filters_module.parse(where)), tuple(sorted(options.items())),
            allow_partial, relevance)
