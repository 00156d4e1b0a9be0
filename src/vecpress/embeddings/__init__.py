"""Embedding hooks: the :class:`Embedder` protocol and the sentence-transformers default.

Importing this package does not import sentence-transformers or torch; the model library is
loaded when an embedder is created.
"""

from .base import Embedder, iter_document_batches
from .sentence_transformers import (
    DEFAULT_MODEL,
    ModelLoadError,
    SentenceTransformerEmbedder,
    default_embedder,
)
from .wrappers import (
    LangChainEmbedder,
    LlamaIndexEmbedder,
    as_langchain_embeddings,
    as_llama_index_embedding,
)

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "LangChainEmbedder",
    "LlamaIndexEmbedder",
    "ModelLoadError",
    "SentenceTransformerEmbedder",
    "as_langchain_embeddings",
    "as_llama_index_embedding",
    "default_embedder",
    "iter_document_batches",
]
