"""A LlamaIndex retriever over a :class:`~vecpress.multivector.MultiVectorCollection`.

LlamaIndex's vector stores take one embedding per node, so late interaction comes in as a
``BaseRetriever``: the query string is embedded by the store's token embedder, searched by
MaxSim, and hits become ``NodeWithScore`` objects. Filters are LlamaIndex ``MetadataFilters``
(or LangChain-style dicts), applied before scoring.

    from vecpress.integrations.llama_index_multivector import VecpressMultiVectorRetriever
    retriever = VecpressMultiVectorRetriever(store, similarity_top_k=4)
    nodes = retriever.retrieve("how do I reset my password?")
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    if (error.name or "").split(".")[0] != "llama_index":
        raise
    raise ImportError(
        "vecpress.integrations.llama_index_multivector needs llama-index-core; install it with "
        '`pip install "vecpress[llama-index]"` (or `pip install llama-index-core`)') from error

from ..core.validate import as_positive_int


class VecpressMultiVectorRetriever(BaseRetriever):
    """Late-interaction retrieval from a ``MultiVectorCollection`` (which needs an ``embedder``).

    Args:
        store: the ``MultiVectorCollection``.
        similarity_top_k: nodes returned.
        filters: ``MetadataFilters`` or a dict, as ``Collection.search``'s ``where``.
        candidates: documents reranked by exact MaxSim (``None``: the store's default).
    """

    def __init__(self, store: Any, similarity_top_k: int = 4, filters: Any = None,
                 candidates: int | None = None, **kwargs: Any) -> None:
        self._store = store
        self._top_k = as_positive_int(similarity_top_k, "similarity_top_k")
        self._filters = filters
        self._candidates = None if candidates is None else as_positive_int(candidates, "candidates")
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._store.search_text(query_bundle.query_str, k=self._top_k, where=self._filters,
                                       candidates=self._candidates)
        return [NodeWithScore(node=TextNode(id_=hit.id, text=hit.text or "", metadata=hit.metadata),
                              score=hit.score) for hit in hits]
