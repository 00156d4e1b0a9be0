"""Rerankers: a second look at the best candidates of a search.

A :class:`Reranker` receives the first-stage hits of a search (``candidates(k)`` of them) and
returns the best ``k``, best first, each with the reranker's own score (higher is better):

- :class:`ExactReranker` (the default) scores candidates with the kept original vectors.
  A dense search of an Index with ``rerank=True`` already does this inside the Index, so there
  it only confirms the order; after a text or hybrid search it turns the candidates into a
  dense ranking.
- :class:`EmbeddingReranker` embeds the candidates' texts again. It needs no stored originals,
  so it gives exact scores for a store created with ``rerank=False`` (codes only, the least
  disk and RAM), at the price of embedding ``candidates(k)`` texts per query.
- :class:`CrossEncoderReranker` scores (query, text) pairs with a sentence-transformers
  ``CrossEncoder``: slower, usually more precise than any bi-encoder score.

:func:`vecpress.pipeline.search` runs a search and then a reranker over a Collection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .sentence_transformers import ModelLoadError, import_model_class

_METRICS = ("cosine", "ip", "l2")
DEFAULT_FETCH_FACTOR = 4


@runtime_checkable
class Reranker(Protocol):
    """Re-scores first-stage hits. Returned hits are new objects; the input is not changed."""

    #: whether the hits handed to :meth:`rerank` must carry their exact vectors
    needs_vectors: bool

    def candidates(self, k: int) -> int:
        """How many first-stage hits to fetch for a final top ``k``."""
        ...

    def rerank(self, query_text: str | None, query_vector: np.ndarray | None, hits: Sequence[Any],
               k: int) -> list[Any]:
        """The best ``k`` of ``hits`` by this reranker's score, best first."""
        ...


def _check_fetch_factor(fetch_factor: Any) -> int:
    if isinstance(fetch_factor, bool) or not isinstance(fetch_factor, int) or fetch_factor < 1:
        raise ValueError(f"fetch_factor must be a positive integer, got {fetch_factor!r}")
    return fetch_factor


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def similarity(query: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Higher-is-better scores of ``vectors`` (n, dim) for ``query`` (dim,), as the Index scores:
    cosine similarity, inner product, or minus the squared L2 distance."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    vectors = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.clip(vectors @ query, -1.0, 1.0)
    if metric == "ip":
        return vectors @ query
    return -np.sum((vectors - query) ** 2, axis=1)


class _FetchFactorReranker:
    """What every reranker here shares: ``fetch_factor`` first-stage hits per requested hit."""

    fetch_factor: int

    def candidates(self, k: int) -> int:
        return _check_k(k) * self.fetch_factor


def _ranked(hits: Sequence[Any], scores: np.ndarray, k: int) -> list[Any]:
    """The ``k`` best hits by ``scores`` (stable: ties keep the first-stage order), rescored."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return [dataclasses.replace(hits[i], score=float(scores[i])) for i in order]


class ExactReranker(_FetchFactorReranker):
    """Scores candidates with their kept original vectors (``hit.vector``).

    Args:
        metric: ``"cosine"``, ``"ip"`` or ``"l2"``; ``None`` (default) takes the collection's
            metric when used through :func:`vecpress.pipeline.search`.
        fetch_factor: first-stage candidates per requested hit. 1 suits a dense search (the
            Index already oversamples its quantized scan); raise it to re-rank a text or
            hybrid search's candidates by dense score.
    """

    needs_vectors = True

    def __init__(self, metric: str | None = None, *, fetch_factor: int = 1) -> None:
        if metric is not None and metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(map(repr, _METRICS))} or None, got {metric!r}")
        self.metric = metric
        self.fetch_factor = _check_fetch_factor(fetch_factor)

    def rerank(self, query_text: str | None, query_vector: np.ndarray | None, hits: Sequence[Any],
               k: int) -> list[Any]:
        k = _check_k(k)
        hits = list(hits)
        if not hits:
            return []
        if query_vector is None:
            raise ValueError("ExactReranker needs the query vector")
        if any(hit.vector is None for hit in hits):
            raise ValueError(
                "ExactReranker needs the hits' vectors (search with include_vectors=True); this store "
                "may keep no original vectors (rerank=False): use EmbeddingReranker instead"
            )
        scores = similarity(query_vector, np.stack([hit.vector for hit in hits]), self.metric or "cosine")
        return _ranked(hits, scores, k)

    def __repr__(self) -> str:
        return f"ExactReranker(metric={self.metric!r}, fetch_factor={self.fetch_factor})"


class EmbeddingReranker(_FetchFactorReranker):
    """Re-embeds the candidates' texts and scores them against the query with ``embedder``.

    Exact scores without storing the original vectors: pair it with a store created with
    ``rerank=False``. Hits without text cannot be re-embedded; they follow the others in their
    first-stage order.

    Args:
        embedder: a vecpress embedder; the one that built the store, or any other.
        fetch_factor: first-stage candidates per requested hit.
    """

    needs_vectors = False

    def __init__(self, embedder: Any, *, fetch_factor: int = DEFAULT_FETCH_FACTOR) -> None:
        if not callable(getattr(embedder, "embed_documents", None)):
            raise TypeError(f"embedder must be a vecpress Embedder, got {type(embedder).__name__}")
        self.embedder = embedder
        self.fetch_factor = _check_fetch_factor(fetch_factor)

    def rerank(self, query_text: str | None, query_vector: np.ndarray | None, hits: Sequence[Any],
               k: int) -> list[Any]:
        k = _check_k(k)
        hits = list(hits)
        with_text = [hit for hit in hits if hit.text is not None]
        without_text = [hit for hit in hits if hit.text is None]
        if not with_text:
            return hits[:k]
        if query_vector is None:
            if query_text is None:
                raise ValueError("EmbeddingReranker needs query_text or query_vector")
            query_vector = self.embedder.embed_query(query_text)
        vectors = self.embedder.embed_documents([hit.text for hit in with_text], progress=False)
        scores = similarity(query_vector, vectors, getattr(self.embedder, "metric", "cosine"))
        return (_ranked(with_text, scores, k) + without_text)[:k]

    def __repr__(self) -> str:
        return f"EmbeddingReranker({self.embedder!r}, fetch_factor={self.fetch_factor})"


_CROSS_ENCODER_HINT = (
    "cross-encoder weights come from the Hugging Face Hub: run once while online to cache them "
    "(then HF_HUB_OFFLINE=1 works), or pass the path of a local model directory"
)




class CrossEncoderReranker(_FetchFactorReranker):
    """Scores (query, candidate text) pairs with a sentence-transformers ``CrossEncoder``.

    The score is the model's output for the pair (e.g. a relevance probability for the
    ``cross-encoder/ms-marco-*`` models). Hits without text score ``-inf``.

    Args:
        model_name: Hugging Face id (e.g. ``"cross-encoder/ms-marco-MiniLM-L6-v2"``) or the path
            of a local model directory.
        device: torch device.
        batch_size: pairs per forward pass.
        max_length: truncate each pair to this many tokens (``None``: the model's limit).
        fetch_factor: first-stage candidates per requested hit.
    """

    needs_vectors = False

    def __init__(self, model_name: str, *, device: str = "cpu", batch_size: int = 32,
                 max_length: int | None = None, fetch_factor: int = DEFAULT_FETCH_FACTOR) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        self.model_name = model_name
        self.batch_size = batch_size
        self.fetch_factor = _check_fetch_factor(fetch_factor)
        CrossEncoder = import_model_class("CrossEncoder")
        try:
            self._model = CrossEncoder(model_name, device=device, max_length=max_length)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"could not load cross-encoder {model_name!r}: {error}\nTo fix: {_CROSS_ENCODER_HINT}."
            ) from error

    def score_pairs(self, query_text: str, texts: Sequence[str]) -> np.ndarray:
        """The model's score of each ``(query_text, text)`` pair, as float64."""
        if not texts:
            return np.empty(0)
        scores = self._model.predict([(query_text, text) for text in texts], batch_size=self.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim != 1:
            raise ValueError(
                f"cross-encoder {self.model_name!r} gives {scores.shape[-1]} scores per pair; a reranker "
                "needs a model with one output (a relevance score)"
            )
        return scores

    def rerank(self, query_text: str | None, query_vector: np.ndarray | None, hits: Sequence[Any],
               k: int) -> list[Any]:
        k = _check_k(k)
        if not isinstance(query_text, str):
            raise ValueError("CrossEncoderReranker needs the query text")
        hits = list(hits)
        if not hits:
            return []
        scores = np.full(len(hits), -np.inf)
        with_text = [i for i, hit in enumerate(hits) if hit.text is not None]
        scores[with_text] = self.score_pairs(query_text, [hits[i].text for i in with_text])
        return _ranked(hits, scores, k)

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.model_name!r}, fetch_factor={self.fetch_factor})"


def make_reranker(spec: Any, *, embedder: Any = None, metric: str | None = None) -> Reranker | None:
    """A reranker from a name or an instance, the form adapters and the command line accept.

    ``None``: no reranker (the Index's own exact rerank only); ``"exact"``:
    :class:`ExactReranker`; ``"embed"``: :class:`EmbeddingReranker` with ``embedder``;
    ``"cross-encoder:<model>"``: :class:`CrossEncoderReranker`; a :class:`Reranker` instance
    is returned as is.
    """
    if spec is None:
        return None
    if spec == "exact":
        return ExactReranker(metric)
    if spec == "embed":
        if embedder is None:
            raise ValueError('reranker="embed" needs an embedder')
        return EmbeddingReranker(embedder)
    if isinstance(spec, str) and spec.startswith("cross-encoder:"):
        return CrossEncoderReranker(spec.partition(":")[2])
    if isinstance(spec, Reranker):
        return spec
    raise ValueError(
        f'reranker={spec!r} is unknown; use "exact", "embed", "cross-encoder:<model name or path>" '
        "or a Reranker instance"
    )
