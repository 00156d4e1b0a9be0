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

from ..core.collection import Hit


@dataclass
class Ranked:
    """One shard's hits for one query, best first, as columns (``vectors`` only if asked)."""

    ids: np.ndarray  # object array of str, (n,): a fixed-width str array would drop trailing NULs
    scores: np.ndarray  # float64, (n,)
    texts: list[str | None]
    metadatas: list[dict[str, Any]]
    vectors: list[np.ndarray | None] | None = None  # a document may have no kept vector

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


class SearchResult(list):
    """The hits of a search, best first (a ``list`` of :class:`~vecpress.core.collection.Hit`).

    ``partial`` is True only when ``allow_partial=True`` was given and some shards did not
    answer; ``missing_shards`` names them.
    """

    def __init__(self, hits: Iterable[Hit] = (), missing_shards: Sequence[str] = ()) -> None:
        super().__init__(hits)
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
