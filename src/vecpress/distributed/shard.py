"""One shard: the object a Ray actor holds, owning a :class:`~vecpress.Collection` directory.

The class is plain Python (Ray wraps it with ``ray.remote`` when a store starts its actors), so
``import vecpress.distributed`` needs no Ray. Its constructor creates the shard's collection or
opens it as it is on disk: when Ray restarts a killed actor it runs the constructor again, and
the collection reopens with every write it acknowledged (a write returns only once it is
durable, see ``Collection(durability=...)``), having dropped what a crash left half-done.

Every method is one Collection call (or two), so a shard filters before it scores and reranks
its candidates exactly, as one collection does; the driver only merges.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..core.collection import Collection, Hit
from ..core import filters as filters_module
from ..core.docstore import fts_phrases
from ..core.relevance import ScoreSample
from .results import Ranked


#: how many search times a shard keeps for :meth:`Shard.search_times`
SEARCH_TIMES_KEPT = 100_000


class Shard:
    """A Collection served by one actor (``settings``: dim, metric, bits, index_options)."""

    def __init__(self, path: str, settings: dict[str, Any], durability: str) -> None:
        self._collection = Collection(
            settings["dim"], path=Path(path), bits=settings["bits"], metric=settings["metric"],
            durability=durability, **settings["index_options"])
        #: milliseconds of this shard's own work in its latest searches (the driver's cost is
        #: a query's wall time minus its slowest shard's)
        self._search_ms: deque[float] = deque(maxlen=SEARCH_TIMES_KEPT)
        #: the rows a query's relevance statistics come from, drawn after each write
        self._sample: ScoreSample | None = None

    def pid(self) -> int:
        """The process id of the actor (tests kill it)."""
        return os.getpid()

    def count(self, where: Any = None) -> int:
        return self._collection.count(where)

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str | None],
               metadatas: list[dict | None]) -> int:
        self._sample = None
        return len(self._collection.upsert(ids, vectors, texts, metadatas))

    def delete(self, ids: list[str] | None, where: Any) -> int:
        self._sample = None
        return self._collection.delete(ids=ids, where=where)

    def clear(self) -> None:
        self._sample = None
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
        start = time.perf_counter()
        try:
            include_vectors = bool(options.get("include_vectors"))
            answers = [Ranked.of(self._collection.search(query, k, where, **options),
                                 include_vectors) for query in queries]
            if relevance:
                sample = self._score_sample()
                for answer, query in zip(answers, queries):
                    answer.sample, answer.rows = sample.scores(query), sample.rows
            return answers
        finally:
            self._search_ms.append((time.perf_counter() - start) * 1000)

    def _score_sample(self) -> ScoreSample:
        sample = self._sample
        if sample is None:  # (two threads may both draw it: the same rows)
            sample = self._sample = ScoreSample(self._collection.index)
        return sample

    def relevance_params(self) -> Any:
        """The relevance mapping of this shard's collection (the defaults unless set)."""
        return self._collection.relevance_params

    def search_times(self) -> list[float]:
        """Milliseconds of the search calls since the last call (at most the latest
        :data:`SEARCH_TIMES_KEPT`), oldest first; the record starts again empty."""
        times = []
        while self._search_ms:
            times.append(self._search_ms.popleft())
        return times

    def text_statistics(self, query_text: str) -> tuple[int, int, list[int]]:
        """This shard's BM25 statistics for ``query_text``: ``(rows, tokens, [rows matching
        each of its words])``; the driver sums them over the shards."""
        return self._collection._store.text_statistics(fts_phrases(query_text))  # noqa: SLF001

    def text_search(self, query_text: str, k: int, where: Any,
                    corpus: tuple[int, int, list[int]], include_vectors: bool) -> Ranked:
        """The best ``k`` matches of ``query_text`` scored by BM25 with the statistics of the
        whole store (``corpus``), so that every shard scores as one collection would."""
        collection = self._collection
        phrases = fts_phrases(query_text)
        allowed = self._allowed(where)
        if not phrases or (allowed is not None and len(allowed) == 0):
            return Ranked.of([], False)
        found = collection._store.text_search_with(phrases, k, allowed, corpus)  # noqa: SLF001
        hits = collection._hits([(r, s, (i, t, m)) for r, s, i, t, m in found],  # noqa: SLF001
                                include_vectors)
        return Ranked.of(hits, include_vectors)

    def _allowed(self, where: Any) -> np.ndarray | None:
        node = filters_module.parse(where)
        return None if node is None else self._collection._matching(node)  # noqa: SLF001

    def scores_of(self, ids: list[str], vector: np.ndarray | None, query_text: str | None,
                  corpus: tuple[int, int, list[int]] | None
                  ) -> tuple[dict[str, float], dict[str, float]]:
        """Exact dense scores and BM25 scores (with the store's statistics ``corpus``, see
        :meth:`text_search`) of documents by id,
        for the driver's weighted hybrid fusion: ``(dense, text)``; a document absent from
        ``text`` does not match ``query_text``. Reads the Collection's internals the way its
        own weighted fusion does, so both give the same numbers."""
        collection = self._collection
        rowids = collection._store.rowids_of(ids)  # noqa: SLF001 (one reader of internals)
        by_row = {rowid: doc_id for doc_id, rowid in rowids.items()}
        dense: dict[str, float] = {}
        if vector is not None and by_row:
            query = collection._query_vector(vector)  # noqa: SLF001
            scores = collection._dense_scores(query[0], list(by_row), {})  # noqa: SLF001
            dense = {by_row[r]: float(s) for r, s in scores.items()}
        text: dict[str, float] = {}
        if query_text is not None and corpus is not None and by_row:
            found = collection._store.text_search_with(  # noqa: SLF001
                fts_phrases(query_text), len(by_row), np.array(sorted(by_row)), corpus)
            text = {by_row[r]: float(s) for r, s, *_ in found}
        return dense, text

    def stats(self) -> dict[str, Any]:
        return self._collection.stats()

    def close(self) -> None:
        self._collection.close()
