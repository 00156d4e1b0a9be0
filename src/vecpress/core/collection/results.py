"""What a :class:`~vecpress.core.collection.Collection` search returns: :class:`Hit`,
:class:`SearchResults`, and the map of a dense score to [0, 1] the framework adapters use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..index import METRIC_ALIASES
from ..relevance import ScoreStats


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
