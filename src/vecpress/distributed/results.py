"""What shards send back and how the driver merges it.

A shard answers a search with a :class:`Ranked`: its hits as flat columns (ids as one string
array, exact scores as one float array, then texts, metadata and optional vectors), cheap to
serialise and cheap to merge. The driver merges the shards' columns with one ``lexsort`` on
``(-score, id)`` (best score first, ties broken by id, as one Collection does) and builds
:class:`~vecpress.core.collection.Hit` objects only for the ``k`` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.collection import Hit, SearchResults
from ..core.index import ram_bytes_per_vector
from ..core.relevance import SAMPLE_ROWS, SAMPLE_SEED, ScoreStats, score_stats

#: ``stats()`` keys that add up over the shards
SUMMED_STATS = ("documents", "count", "rows", "deleted", "ram_bytes", "ram_fixed_bytes",
                "ram_reserved_bytes", "disk_bytes", "db_bytes", "segments", "lists")
#: ``stats()`` keys every shard shares (settings of the store), reported once
SHARED_STATS = ("codec", "rerank", "oversample", "code_bytes", "nprobe")


@dataclass
class Ranked:
    """One shard's hits for one query, best first, as columns (``vectors`` only if asked)."""

    ids: np.ndarray  # object array of str, (n,): a fixed-width str array would drop trailing NULs
    scores: np.ndarray  # float64, (n,)
    texts: list[str | None]
    metadatas: list[dict[str, Any]]
    vectors: list[np.ndarray | None] | None = None  # a document may have no kept vector
    #: with ``relevance``: the query's scores against the shard's seeded sample of rows
    #: (:class:`~vecpress.core.relevance.ScoreSample`) and how many rows the shard holds
    sample: np.ndarray | None = None
    rows: int = 0

    @classmethod
    def of(cls, hits: Sequence[Hit], include_vectors: bool) -> "Ranked":
        """The columns of ``hits`` (a Collection search's result)."""
        vectors = [h.vector for h in hits] if include_vectors else None
        ids = np.empty(len(hits), dtype=object)
        ids[:] = [h.id for h in hits]
        return cls(ids,
                   np.array([h.score for h in hits], dtype=np.float64),
                   [h.text for h in hits], [h.metadata for h in hits], vectors)

    def __len__(self) -> int:
        return len(self.ids)


class SearchResult(SearchResults):
    """The hits of a search, best first (a ``list`` of :class:`~vecpress.core.collection.Hit`),
    with ``stats`` as :class:`~vecpress.core.collection.SearchResults` has them.

    ``partial`` is True only when ``allow_partial=True`` was given and some shards did not
    answer; ``missing_shards`` names them.
    """

    def __init__(self, hits: Iterable[Hit] = (), missing_shards: Sequence[str] = (),
                 stats: ScoreStats | None = None) -> None:
        super().__init__(list(hits), stats)
        self.missing_shards = list(missing_shards)

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


def merge_ranked(answers: Iterable[Ranked], k: int, missing: Sequence[str] = ()
                 ) -> SearchResult:
    """The best ``k`` hits of every shard's answer on ``(score, id)``: the global best ``k``
    (each shard's best ``k`` holds every one of its documents in the global best ``k``)."""
    parts = [a for a in answers if len(a)]
    if not parts:
        return SearchResult([], missing)
    ids = np.concatenate([a.ids for a in parts])
    scores = np.concatenate([a.scores for a in parts])
    order = np.lexsort((ids, -scores))[:k]  # the last key sorts first
    owner = np.repeat(np.arange(len(parts)), [len(a) for a in parts])
    offset = np.cumsum([0] + [len(a) for a in parts])
    hits = []
    for i in order.tolist():
        part = parts[owner[i]]
        j = i - offset[owner[i]]
        vector = None if part.vectors is None else part.vectors[j]
        hits.append(Hit(ids[i], float(scores[i]), part.texts[j], part.metadatas[j], vector))
    return SearchResult(hits, missing)


def merged_stats(per_shard: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One store's ``stats()`` from its shards': the :data:`SUMMED_STATS` summed, the
    :data:`SHARED_STATS` once (when every shard has the same value), and
    ``ram_bytes_per_vector`` over every vector of every shard (the count-weighted mean of
    the shards', computed as one Index computes it)."""
    info: dict[str, Any] = {}
    for key in SUMMED_STATS:
        values = [s[key] for s in per_shard if key in s]
        if values:
            info[key] = sum(int(v) for v in values)
    for key in SHARED_STATS:
        values = [s.get(key) for s in per_shard]
        if values and all(key in s for s in per_shard) and all(v == values[0] for v in values):
            info[key] = values[0]
    if "ram_bytes" in info:
        info["ram_bytes_per_vector"] = ram_bytes_per_vector(
            info["ram_bytes"], info.get("ram_fixed_bytes", 0), info.get("count", 0))
    return info


def pooled_stats(answers: Sequence[Ranked], candidates: Sequence[float] = ()) -> ScoreStats:
    """One query's score statistics over the whole store from the shards' samples: each shard
    gives a share of :data:`~vecpress.core.relevance.SAMPLE_ROWS` in proportion to its rows
    (a seeded draw from its sample), so the pool samples the store as one Collection's sample
    does. When the store holds at most ``SAMPLE_ROWS`` rows every shard's sample is all of its
    rows and the statistics are exactly one Collection's."""
    rows = sum(a.rows for a in answers)
    target = min(SAMPLE_ROWS, rows)
    rng = np.random.default_rng(SAMPLE_SEED)
    pool = []
    for a in answers:
        if a.sample is None or not len(a.sample) or not rows:
            continue
        share = min(len(a.sample), int(round(target * a.rows / rows)))
        picked = a.sample if share == len(a.sample) else \
            a.sample[np.sort(rng.choice(len(a.sample), size=share, replace=False))]
        pool.append(np.asarray(picked, dtype=np.float64))
    return score_stats(np.concatenate(pool) if pool else np.zeros(0), rows, candidates)
