"""A LangChain retriever over a :class:`~vecpress.multivector.MultiVectorCollection`.

LangChain's ``VectorStore`` interface has one vector per text and no place for token matrices,
so late interaction comes in as a ``BaseRetriever``: the query text is embedded by the
store's token embedder and searched by MaxSim; hits become ``Document`` objects.

    from vecpress.integrations.langchain_multivector import VecpressMultiVectorRetriever
    retriever = VecpressMultiVectorRetriever(store=store, k=4, filter={"source": "faq"})
    docs = retriever.invoke("how do I reset my password?")
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    if (error.name or "").split(".")[0] not in {"langchain_core", "pydantic"}:
        raise
    raise ImportError('langchain-core is not installed; install it with '
                      '`pip install "vecpress[langchain]"`') from error

from ..core.collection import Hit


class VecpressMultiVectorRetriever(BaseRetriever):
    """Late-interaction retrieval from a ``MultiVectorCollection`` (which needs an ``embedder``).

    Key init args:
        store: the ``MultiVectorCollection``.
        k: documents returned.
        filter: a metadata filter (LangChain-style dict, as ``Collection.search``'s ``where``).
        candidates: documents reranked by exact MaxSim (``None``: the store's default).

    ``Document.id`` is the store id; ``metadata["score"]`` the MaxSim score.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = Field(default=4, ge=1)
    filter: dict | None = None
    candidates: int | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        hits = self.store.search_text(query, k=kwargs.get("k", self.k), where=kwargs.get("filter", self.filter),
                                      candidates=kwargs.get("candidates", self.candidates))
        return [_document(hit) for hit in hits]


def _document(hit: Hit) -> Document:
    return Document(id=hit.id, page_content=hit.text or "", metadata={**hit.metadata, "score": hit.score})
