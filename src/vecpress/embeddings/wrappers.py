"""Framework embedders as vecpress embedders, and the vecpress embedder handed to frameworks.

``LangChainEmbedder`` / ``LlamaIndexEmbedder`` wrap a LangChain ``Embeddings`` or a LlamaIndex
``BaseEmbedding`` so it can fill a :class:`~vecpress.Collection`; ``as_langchain_embeddings`` /
``as_llama_index_embedding`` go the other way. Neither direction imports a framework until it
is used, and wrapping twice gives back the original object.

A wrapped framework embedder does not announce its dimension, and embedding a dummy text to
learn it costs a model call (or an API call) and can be wrong for prompt-dependent models.
So ``dim`` is ``None`` until the first real batch comes back, unless it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import DEFAULT_BATCH_SIZE, check_batch_size, check_texts, progress_bar

_METRICS = ("cosine", "ip", "l2")

_LANGCHAIN_HINT = 'install it with `pip install "vecpress[langchain]"` (or `pip install langchain-core`)'
_LLAMA_INDEX_HINT = 'install it with `pip install "vecpress[llama-index]"` (or `pip install llama-index-core`)'


def _check_dim(dim: Any) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
    return int(dim)


def _check_metric(metric: Any) -> str:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, _METRICS))}, got {metric!r}")
    return metric


class _FrameworkEmbedder:
    """Shared batching, shape checks and dimension learning; subclasses make the two calls."""

    _framework = "framework"

    def __init__(self, dim: int | None, metric: str, batch_size: int) -> None:
        self._dim = _check_dim(dim)
        self.metric = _check_metric(metric)
        self.batch_size = check_batch_size(batch_size)

    @property
    def dim(self) -> int | None:
        """The vector width: as given, or learned from the first batch (``None`` before that)."""
        return self._dim

    def _embed_batch(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _embed_one_query(self, text: str) -> Any:
        raise NotImplementedError

    def _as_matrix(self, rows: Any, n: int, call: str) -> np.ndarray:
        try:
            matrix = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise RuntimeError(f"{call} returned vectors of unequal length or non-numbers: {error}") from error
        if n == 0 and matrix.size == 0:
            return np.empty((0, self._dim or 0), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != n or matrix.shape[1] == 0:
            raise RuntimeError(f"{call} returned shape {matrix.shape} for {n} texts, expected ({n}, dim)")
        self._learn_dim(matrix.shape[1], call)
        if not np.isfinite(matrix).all():
            raise RuntimeError(f"{call} returned NaN or infinite values")
        return np.ascontiguousarray(matrix)

    def _learn_dim(self, width: int, call: str) -> None:
        if self._dim is None:
            self._dim = int(width)
        elif width != self._dim:
            raise RuntimeError(
                f"{call} returned {width}-dimensional vectors, but this embedder is {self._dim}-dimensional "
                "(given as dim= or learned from an earlier batch)"
            )

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        texts = check_texts(texts, "texts")
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        if not texts:
            return np.empty((0, self._dim or 0), dtype=np.float32)
        parts = []
        with progress_bar(len(texts), enabled=progress, desc="embedding") as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                parts.append(self._as_matrix(self._embed_batch(batch), len(batch), self._documents_call))
                bar.update(len(batch))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def embed_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._as_matrix([self._embed_one_query(text)], 1, self._query_call)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._wrapped!r}, dim={self._dim}, metric={self.metric!r})"


class LangChainEmbedder(_FrameworkEmbedder):
    """A LangChain ``Embeddings`` object as a vecpress embedder.

    Args:
        embeddings: any ``langchain_core.embeddings.Embeddings`` (anything with
            ``embed_documents(list[str])`` and ``embed_query(str)``).
        dim: vector width if known; otherwise learned from the first embedded batch.
        metric: what the vectors are compared with: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        batch_size: texts per ``embed_documents`` call.
    """

    _documents_call = "embeddings.embed_documents"
    _query_call = "embeddings.embed_query"

    def __init__(
        self,
        embeddings: Any,
        dim: int | None = None,
        *,
        metric: str = "cosine",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        for method in ("embed_documents", "embed_query"):
            if not callable(getattr(embeddings, method, None)):
                raise TypeError(
                    f"embeddings must be a LangChain Embeddings (with {method}()), got {type(embeddings).__name__}"
                )
        super().__init__(dim, metric, batch_size)
        self.embeddings = embeddings

    @property
    def _wrapped(self) -> Any:
        return self.embeddings

    def _embed_batch(self, texts: list[str]) -> Any:
        return self.embeddings.embed_documents(texts)

    def _embed_one_query(self, text: str) -> Any:
        return self.embeddings.embed_query(text)


class LlamaIndexEmbedder(_FrameworkEmbedder):
    """A LlamaIndex ``BaseEmbedding`` as a vecpress embedder.

    Args:
        embed_model: any ``llama_index.core.embeddings.BaseEmbedding``.
        dim: vector width if known; otherwise learned from the first embedded batch.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        batch_size: texts per ``get_text_embedding_batch`` call; defaults to the model's
            own ``embed_batch_size``.
    """

    _documents_call = "embed_model.get_text_embedding_batch"
    _query_call = "embed_model.get_query_embedding"

    def __init__(
        self,
        embed_model: Any,
        dim: int | None = None,
        *,
        metric: str = "cosine",
        batch_size: int | None = None,
    ) -> None:
        for method in ("get_text_embedding_batch", "get_query_embedding"):
            if not callable(getattr(embed_model, method, None)):
                raise TypeError(
                    f"embed_model must be a LlamaIndex BaseEmbedding (with {method}()), "
                    f"got {type(embed_model).__name__}"
                )
        if batch_size is None:
            batch_size = getattr(embed_model, "embed_batch_size", None) or DEFAULT_BATCH_SIZE
        super().__init__(dim, metric, batch_size)
        self.embed_model = embed_model

    @property
    def _wrapped(self) -> Any:
        return self.embed_model

    def _embed_batch(self, texts: list[str]) -> Any:
        return self.embed_model.get_text_embedding_batch(texts, show_progress=False)

    def _embed_one_query(self, text: str) -> Any:
        return self.embed_model.get_query_embedding(text)


def as_langchain_embeddings(embedder: Any) -> Any:
    """A vecpress embedder as a ``langchain_core.embeddings.Embeddings``.

    A :class:`LangChainEmbedder` gives back the ``Embeddings`` it wraps.
    """
    if isinstance(embedder, LangChainEmbedder):
        return embedder.embeddings
    _check_embedder(embedder)
    try:
        from ._langchain import VecpressEmbeddings
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "langchain_core":
            raise
        raise ImportError(f"langchain-core is not installed; {_LANGCHAIN_HINT}") from error
    return VecpressEmbeddings(embedder)


def as_llama_index_embedding(embedder: Any) -> Any:
    """A vecpress embedder as a ``llama_index.core.embeddings.BaseEmbedding``.

    A :class:`LlamaIndexEmbedder` gives back the ``BaseEmbedding`` it wraps.
    """
    if isinstance(embedder, LlamaIndexEmbedder):
        return embedder.embed_model
    _check_embedder(embedder)
    try:
        from ._llama_index import VecpressEmbedding
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "llama_index":
            raise
        raise ImportError(f"llama-index-core is not installed; {_LLAMA_INDEX_HINT}") from error
    return VecpressEmbedding.from_embedder(embedder)


def _check_embedder(embedder: Any) -> None:
    for method in ("embed_documents", "embed_query"):
        if not callable(getattr(embedder, method, None)):
            raise TypeError(
                f"embedder must be a vecpress Embedder (with {method}()), got {type(embedder).__name__}"
            )
