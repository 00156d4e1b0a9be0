"""The LlamaIndex face of a vecpress embedder; imported only by ``as_llama_index_embedding``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr


class VecpressEmbedding(BaseEmbedding):
    """A vecpress :class:`~vecpress.embeddings.Embedder` as a LlamaIndex ``BaseEmbedding``."""

    _embedder: Any = PrivateAttr()

    @classmethod
    def from_embedder(cls, embedder: Any) -> "VecpressEmbedding":
        batch_size = getattr(embedder, "batch_size", None)
        fields: dict[str, Any] = {"model_name": str(getattr(embedder, "model_name", type(embedder).__name__))}
        if isinstance(batch_size, int) and 0 < batch_size <= 2048:
            fields["embed_batch_size"] = batch_size
        model = cls(**fields)
        model._embedder = embedder
        return model

    @property
    def embedder(self) -> Any:
        return self._embedder

    @classmethod
    def class_name(cls) -> str:
        return "VecpressEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_query(query).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_documents([text], progress=False)[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed_documents(list(texts), progress=False).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
