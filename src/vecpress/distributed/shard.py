"""One shard, owning a :class:`~vecpress.Collection` directory, and :class:`ShardHost`, what a
Ray actor holds: one shard or several.

The classes are plain Python (Ray wraps ShardHost with ``ray.remote`` when a store starts its
actors), so ``import vecpress.distributed`` needs no Ray. A shard's constructor creates its
collection or opens it as it is on disk: when Ray restarts a killed actor it runs the constructor again, and
the collection reopens with every write it acknowledged (a write returns only once it is
durable, see ``Collection(durability=...)``), having dropped what a crash left half-done.

Every method is one call of Collection's public API, so a shard filters before it scores and
reranks its candidates exactly, as one collection does; the driver only merges.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..core.collection import Collection, Hit
from ..core.docstore import TextStatistics
from ..core.relevance import RelevanceParams
from .results import Ranked


#: how many search times a host keeps for :meth:`ShardHost.search_times`
SEARCH_TIMES_KEPT = 100_000


class Shard:
    """A Collection served by an actor (``settings``: dim, metric, bits, index_options)."""

    def __init__(self, path: str, settings: dict[str, Any], durability: str) -> None:
        self._collection = Collection(
            settings["dim"], path=Path(path), bits=settings["bits"], metric=settings["metric"],
            durability=durability, **settings["index_options"])

    def count(self, where: Any = None) -> int:
        return self._collection.count(where)

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str | None],
               metadatas: list[dict | None]) -> int:
        return len(self._collection.upsert(ids, vectors, texts, metadatas))

    def delete(self, ids: list[str] | None, where: Any) -> int:
        return self._collection.delete(ids=ids, where=where)

    def clear(self) -> None:
        self._collection.clear()

    def get(self, ids: list[str] | None, where: Any, limit: int | None, offset: int,
            include_vectors: bool) -> list[Hit]:
        return self._collection.get(ids, where=where, limit=limit, offset=offset,
                                    include_vectors=include_vectors)

    def search(self, queries: np.ndarray, k: int, where: Any, options: dict[str, Any],
               relevance: bool = False) -> list[Ranked]:
        """The best ``k`` of this shard for each row of ``queries`` (one or a batch the driver
        gathered), as columns (see :class:`Ranked`); with ``relevance``, each with the
        query's scores against this shard's sample of rows (the driver pools them)."""
        include_vectors = bool(options.get("include_vectors"))
        answers = [Ranked.of(self._collection.search(query, k, where, **options),
                             include_vectors) for query in queries]
        if relevance:
            for answer, query in zip(answers, queries):
                answer.sample, answer.rows = self._collection.sample_scores(query)
        return answers

    def relevance_params(self) -> RelevanceParams:
        """The relevance mapping of this shard's collection (the defaults unless set)."""
        return self._collection.relevance_params

    def set_relevance_params(self, params: RelevanceParams | None) -> None:
        """Store the store's relevance mapping in this shard's collection (durable: a
        restarted or reopened shard has it)."""
        self._collection.set_relevance_params(params)

    def text_statistics(self, query_text: str) -> TextStatistics:
        """This shard's BM25 statistics for ``query_text`` (the driver sums them)."""
        return self._collection.text_statistics(query_text)

    def text_search(self, query_text: str, k: int, where: Any, corpus: TextStatistics,
                    include_vectors: bool) -> Ranked:
        """The best ``k`` matches of ``query_text`` scored by BM25 with the statistics of the
        whole store (``corpus``), so that every shard scores as one collection would."""
        hits = self._collection.text_search(query_text, k, where, statistics=corpus,
                                            include_vectors=include_vectors)
        return Ranked.of(hits, include_vectors)

    def scores_of(self, ids: list[str], vector: np.ndarray | None, query_text: str | None,
                  corpus: TextStatistics | None) -> tuple[dict[str, float], dict[str, float]]:
        """Exact dense scores and BM25 scores (with the store's statistics ``corpus``) of
        documents by id, for the driver's weighted hybrid fusion: ``(dense, text)``; a
        document absent from ``text`` does not match ``query_text``."""
        return self._collection.scores_of(ids, vector, query_text, statistics=corpus)

    def stats(self) -> dict[str, Any]:
        return self._collection.stats()

    def close(self) -> None:
        self._collection.close()


class ShardHost:
    """What one Ray actor holds: one shard or several (``shards_per_actor``), each a
    :class:`Shard` with its own directory. A Ray call costs the driver about as much as a
    small shard's search, and every actor process wants CPU to take and answer a call, so
    fewer actors than shards make a fan-out cheaper on few cores; one shard per actor isolates
    faults best (a restart reopens every directory the actor holds)."""

    def __init__(self, paths: list[str], settings: dict[str, Any], durability: str) -> None:
        self._shards = [Shard(path, settings, durability) for path in paths]
        #: milliseconds of this actor's own work in its latest search calls (the driver's
        #: cost is a query's wall time minus its slowest actor's)
        self._search_ms: deque[float] = deque(maxlen=SEARCH_TIMES_KEPT)

    def call(self, method: str, items: list[tuple[int, tuple]]) -> list[Any]:
        """``method(*args)`` of this actor's shard number ``local`` for each ``(local, args)``
        of ``items``, in order."""
        if method.startswith("_") or not callable(getattr(Shard, method, None)):
            raise ValueError(f"{method!r} is not a shard method")
        start = time.perf_counter()
        try:
            return [getattr(self._shards[local], method)(*args) for local, args in items]
        finally:
            if method == "search":
                self._search_ms.append((time.perf_counter() - start) * 1000)

    def pid(self) -> int:
        """The process id of the actor (tests kill it)."""
        return os.getpid()

    def search_times(self) -> list[float]:
        """Milliseconds of the search calls since the last call (at most the latest
        :data:`SEARCH_TIMES_KEPT`), oldest first; the record starts again empty."""
        times = []
        while self._search_ms:
            times.append(self._search_ms.popleft())
        return times
