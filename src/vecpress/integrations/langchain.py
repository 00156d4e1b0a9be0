"""LangChain ``VectorStore`` backed by a vecpress :class:`~vecpress.Collection`.

A translation layer only: texts go through the LangChain ``Embeddings``, vectors and documents go
to the Collection, hits come back as ``Document`` objects. Search, filters and MMR are the
Collection's.
"""

from __future__ import annotations

import asyncio
import reprlib
import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from threading import Lock
from typing import Any, Callable

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    if (error.name or "").split(".")[0] != "langchain_core":
        raise
    raise ImportError('langchain-core is not installed; install it with '
                      '`pip install "vecpress[langchain]"`') from error

from ..core import filters as filters_module
from ..core.collection import INDEX_OPTIONS, Collection, Hit, relevance_score
from ..core.docstore import DB_FILE
from ..core.index import Index
from ..core.relevance import RAW_SCORE_KEY
from ..distributed.sharded import ShardedCollection
from ..embeddings.rerankers import CrossEncoderReranker, Reranker, make_reranker
from ..embeddings.wrappers import LangChainEmbedder, as_langchain_embeddings
from ..pipeline import search as pipeline_search

__all__ = ["VecpressVectorStore"]

#: texts per ``Embeddings.embed_documents`` call; a progress bar appears past one batch
DEFAULT_BATCH_SIZE = 256
#: documents per page when :meth:`VecpressVectorStore.save_local` copies a store
_FILTER_HELP = ("filter must be a metadata dict in the LangChain/Chroma dialect, e.g. "
                "{'source': 'a.txt'} or {'$and': [{'year': {'$gte': 2020}}, {'lang': {'$in': "
                "['en', 'fr']}}]} (operators $eq $ne $gt $gte $lt $lte $in $nin $exists "
                "$contains $and $or $not)")


class VecpressVectorStore(VectorStore):
    """vecpress vector store: compressed codes in RAM, exact rerank, SQLite documents.

    Setup:
        Install ``vecpress`` with the LangChain extra:

        .. code-block:: bash

            pip install -U "vecpress[langchain]"

    Key init args — indexing params:
        embedding: Embeddings
            Embedding model; also accepts a vecpress embedder such as
            ``vecpress.embeddings.SentenceTransformerEmbedder()``.
        dim: int | None
            Vector width. Optional: learned from the first batch of documents.
        bits: int
            Code size per dimension in RAM: 1-8 quantized (default 4), 16 float16, 32 exact.
        metric: str
            ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        rerank: bool
            Keep the original vectors (on disk for a persistent store) and re-score the best
            candidates exactly (default True; needed for MMR).
        reranker: str | Reranker | None
            A second stage after the search: ``"embed"`` (re-embed the candidates' texts:
            exact scores for a ``rerank=False`` store), ``"exact"``, or
            ``"cross-encoder:<model>"`` (text queries only). Default none.

    Key init args — storage params:
        path: str | Path | None
            Directory of a persistent store (alias ``persist_directory``). An existing store
            is reopened; a new or empty directory gets a new one; ``None`` keeps everything
            in memory.
        read_only: bool
            Open an existing store without the write lock (another process may write it).
        collection: Collection | ShardedCollection | None
            An open store to serve instead (for example a
            :class:`~vecpress.distributed.ShardedCollection` on Ray); then give no path,
            dimension or index options.

    Instantiate:
        .. code-block:: python

            from vecpress.integrations.langchain import VecpressVectorStore
            from langchain_openai import OpenAIEmbeddings

            vector_store = VecpressVectorStore(
                OpenAIEmbeddings(model="text-embedding-3-small"),
                path="./vecpress_db",  # or None for an in-memory store
                bits=4,
            )

    Add Documents:
        .. code-block:: python

            from langchain_core.documents import Document

            document_1 = Document(page_content="foo", metadata={"baz": "bar"})
            document_2 = Document(page_content="thud", metadata={"bar": "baz"})
            document_3 = Document(page_content="i will be deleted :(")

            documents = [document_1, document_2, document_3]
            ids = ["1", "2", "3"]
            vector_store.add_documents(documents=documents, ids=ids)

    Update Documents:
        .. code-block:: python

            updated_document = Document(page_content="qux", metadata={"bar": "baz"})
            vector_store.add_documents(documents=[updated_document], ids=["1"])

    Delete Documents:
        .. code-block:: python

            vector_store.delete(ids=["3"])
            vector_store.delete(filter={"bar": "baz"})

    Search:
        .. code-block:: python

            results = vector_store.similarity_search(query="thud", k=1)
            for doc in results:
                print(f"* {doc.page_content} [{doc.metadata}]")

        .. code-block:: none

            * thud [{'bar': 'baz'}]

    Search with filter:
        .. code-block:: python

            results = vector_store.similarity_search(
                query="thud", k=1, filter={"bar": {"$eq": "baz"}}
            )
            for doc in results:
                print(f"* {doc.page_content} [{doc.metadata}]")

        .. code-block:: none

            * thud [{'bar': 'baz'}]

        Filters run inside the search (before scoring): ``k`` documents come back whenever
        ``k`` documents match.

    Search with score:
        .. code-block:: python

            results = vector_store.similarity_search_with_score(query="qux", k=1)
            for doc, score in results:
                print(f"* [SIM={score:3f}] {doc.page_content} [{doc.metadata}]")

        .. code-block:: none

            * [SIM=0.832268] qux [{'bar': 'baz'}]

        Scores are higher-is-better everywhere: cosine similarity (``metric="cosine"``),
        inner product (``"ip"``) or minus the squared L2 distance (``"l2"``).

    Search with relevance (one threshold for every query):
        .. code-block:: python

            results = vector_store.similarity_search_with_relevance_scores(
                query="qux", k=4, score_threshold=0.05
            )  # possibly [] ("nothing relevant")
            retriever = vector_store.as_retriever(
                search_type="similarity_score_threshold",
                search_kwargs={"k": 4, "score_threshold": 0.05},
            )

        The relevance is vecpress's calibrated relevance in [0, 1] for every metric (see
        ``Collection.calibrate``); the raw score is in ``doc.metadata["vecpress_score"]``.

    Async:
        .. code-block:: python

            await vector_store.aadd_documents(documents=documents, ids=ids)
            await vector_store.adelete(ids=["3"])
            results = await vector_store.asimilarity_search(query="thud", k=1)
            results = await vector_store.asimilarity_search_with_score(query="qux", k=1)

    Use as Retriever:
        .. code-block:: python

            retriever = vector_store.as_retriever(
                search_type="mmr",
                search_kwargs={"k": 1, "fetch_k": 2, "lambda_mult": 0.5},
            )
            retriever.invoke("thud")

        .. code-block:: none

            [Document(id='2', metadata={'bar': 'baz'}, page_content='thud')]

    Save and load:
        .. code-block:: python

            vector_store.save_local("./vecpress_db")  # a copy; persistent stores save as they go
            vector_store = VecpressVectorStore.load_local("./vecpress_db", embeddings)

        Nothing is pickled: reopening a store from an untrusted source cannot run code.
    """

    def __init__(self, embedding: Embeddings, *, path: str | Path | None = None,
                 persist_directory: str | Path | None = None, dim: int | None = None,
                 bits: int | None = None, metric: str | None = None,
                 rerank: bool | None = None, read_only: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool | None = None,
                 reranker: str | Reranker | None = None,
                 collection: Collection | ShardedCollection | None = None,
                 **index_options: Any) -> None:
        native = not isinstance(embedding, Embeddings)  # a vecpress embedder knows dim, metric
        if collection is not None:
            _check_given_collection(collection, path=path, persist_directory=persist_directory,
                                    dim=dim, bits=bits, metric=metric, rerank=rerank,
                                    read_only=read_only, **index_options)
        self._embedding = _as_embeddings(embedding)
        if path is not None and persist_directory is not None and \
                Path(path) != Path(persist_directory):
            raise ValueError(f"path={str(path)!r} and persist_directory="
                             f"{str(persist_directory)!r} differ; give one of them")
        path = path if path is not None else persist_directory
        self._path = None if path is None else Path(path)
        if native:
            metric = embedding.metric if metric is None else metric
            dim = embedding.dim if dim is None else dim
        unknown = sorted(set(index_options) - set(INDEX_OPTIONS))
        if unknown:
            raise TypeError(f"VecpressVectorStore got unknown arguments {unknown}; vecpress "
                            f"options are dim, bits, metric, rerank, path, read_only, "
                            f"batch_size, show_progress, "
                            f"{', '.join(o for o in INDEX_OPTIONS if o != 'rerank')}")
        # options the user chose; the rest are the stored ones (existing store) or defaults
        self._options = {name: value for name, value in
                         {"bits": bits, "metric": metric, "rerank": rerank,
                          **index_options}.items() if value is not None}
        self._read_only = bool(read_only)
        self._show_progress = show_progress
        self._embedder = LangChainEmbedder(self._embedding, batch_size=batch_size)
        self._reranker = make_reranker(reranker, embedder=self._embedder)
        self._create_lock = Lock()
        self._collection: Collection | ShardedCollection | None = collection
        if collection is not None:
            self._path = collection.path
        elif self._path is not None and (self._path / DB_FILE).exists():
            self._collection = Collection(dim=dim, path=self._path, read_only=read_only,
                                          **self._options)
        elif read_only:
            raise FileNotFoundError(f"path={str(self._path)!r} holds no vecpress store; "
                                    f"read_only=True opens an existing one")
        elif dim is not None:
            self._collection = Collection(dim=dim, path=self._path, **self._options)
        else:
            # created at the first add, when the embeddings tell the dimension; what would
            # fail then fails now: the directory, and the options (an in-memory Index of a
            # stand-in width checks every one of them)
            _check_new_directory(self._path)
            truncate_dim = index_options.get("truncate_dim")
            stand_in = max(truncate_dim, 8) if isinstance(truncate_dim, int) else 8
            Index(stand_in, path=None, **{"metric": "cosine", "bits": 4, **self._options})

    # ------------------------------------------------------------------ engine access
    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def collection(self) -> Collection | ShardedCollection | None:
        """The underlying :class:`~vecpress.Collection` or sharded collection (``None`` until
        the first add when the dimension was not given)."""
        return self._collection

    @property
    def metric(self) -> str:
        if self._collection is not None:
            return self._collection.metric
        return str(self._options.get("metric", "cosine"))

    def _writable(self, dim: int) -> Collection:
        """The collection to add ``dim``-dimensional vectors to, created on first use."""
        with self._create_lock:
            if self._collection is None:
                self._collection = Collection(dim=dim, path=self._path, **self._options)
        self._check_dim(dim, "embeddings.embed_documents")
        return self._collection

    def _check_dim(self, dim: int, source: str) -> None:
        expected = self._collection.dim
        if dim != expected:
            raise ValueError(
                f"{source}: {dim}-dimensional vectors, but this store holds "
                f"{expected}-dimensional ones (it was built with another embedding model); "
                f"use the embeddings it was built with, or a new path")

    def _query_vector(self, query: str) -> np.ndarray:
        vector = self._embedder.embed_query(query)
        self._check_dim(len(vector), "embeddings.embed_query")
        return vector

    def _given_vector(self, embedding: Sequence[float]) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim != 1:
            raise ValueError(f"embedding must be one vector (a list of floats), got shape "
                             f"{vector.shape}")
        self._check_dim(len(vector), "embedding (the vector passed in)")
        return vector

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str | None] | None = None, batch_size: int | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed ``texts`` and store them; returns their ids.

        Texts are embedded ``batch_size`` at a time (default: the store's), with a progress
        bar past one batch, and written in one transaction once all are embedded. An id that
        is already stored is replaced; ``None`` entries of ``ids`` get new ids. Metadata must
        be JSON (str, int, float, bool, None, lists and dicts of them).
        """
        _no_extra(kwargs, "add_texts", ())
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] must be a string, got {type(text).__name__}")
        for name, values in (("metadatas", metadatas), ("ids", ids)):
            if values is not None and len(values) != len(texts):
                raise ValueError(f"{name} has {len(values)} entries but there are "
                                 f"{len(texts)} texts")
        if ids is not None and any(i is None for i in ids):
            ids = [uuid.uuid4().hex if i is None else i for i in ids]
        if not texts:
            return []
        if self._read_only:
            raise PermissionError("this store was opened with read_only=True")
        vectors = self._embedder.embed_documents(texts, batch_size=batch_size,
                                                 progress=self._progress(len(texts)))
        return self._writable(vectors.shape[1]).upsert(ids, vectors, texts, metadatas)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Store documents under their ``Document.id`` (or ``ids=``; new ids when both are
        ``None``). The documents passed in are not modified."""
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [document.id for document in documents]
        return self.add_texts([document.page_content for document in documents],
                              [document.metadata for document in documents], ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, *, filter: dict | None = None,
               **kwargs: Any) -> bool:
        """Delete documents by id and/or metadata filter (unknown ids are ignored).

        Deleting everything takes an explicit :meth:`clear`; ``delete()`` with neither ids nor
        filter raises ``ValueError``.
        """
        _no_extra(kwargs, "delete", ("filter",))
        if ids is None and filter is None:
            raise ValueError("delete needs ids=[...] or filter={...}; to delete every document "
                             "call clear()")
        where = _where(filter)
        if self._collection is not None:
            self._collection.delete(ids=ids, where=where)
        return True

    def clear(self) -> None:
        """Delete every document."""
        if self._collection is not None:
            self._collection.clear()

    # ------------------------------------------------------------------ reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if self._collection is None:
            return []
        return [_document(hit) for hit in self._collection.get(list(ids))]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` documents closest to ``query``. Keyword arguments: ``filter`` (metadata
        dict), ``oversample`` (rerank candidates per hit), ``nprobe`` (lists scanned, once
        the index is partitioned)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """``(document, score)`` pairs, best first; the score is higher-is-better (cosine
        similarity for ``metric="cosine"``)."""
        options = _search_options(kwargs, "similarity_search_with_score")
        if self._collection is None:
            return []
        return self._search(self._query_vector(query), k, **options, query=query)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k,
                                                                              **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        options = _search_options(kwargs, "similarity_search_with_score_by_vector")
        if self._collection is None:
            return []
        return self._search(self._given_vector(embedding), k, **options)

    def _search(self, vector: np.ndarray, k: int, where: Any, oversample: int | None,
                nprobe: int | None, query: str | None = None) -> list[tuple[Document, float]]:
        if self._reranker is None:
            hits = self._collection.search(vector, k, where=where, oversample=oversample,
                                           nprobe=nprobe)
        else:
            if query is None and isinstance(self._reranker, CrossEncoderReranker):
                raise ValueError("a cross-encoder reranker reads the question's text: use "
                                 "similarity_search(query) rather than a search by vector")
            hits = pipeline_search(self._collection, self._embedder, query or "", k,
                                   where=where, reranker=self._reranker, query_vector=vector,
                                   oversample=oversample, nprobe=nprobe)
        return [(_document(hit), hit.score) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return partial(relevance_score, metric=self.metric)

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        """``(document, relevance)`` pairs, best first: the Collection's calibrated relevance
        in [0, 1] (LangChain's ``score_threshold`` then means the same for every query), with
        the raw score in ``metadata["vecpress_score"]`` (a ``ShardedCollection`` pools its
        shards' statistics, see its ``search``). With a second-stage ``reranker`` the scores
        are the reranker's, mapped to [0, 1] as before (not calibrated)."""
        if self._reranker is not None:
            return super()._similarity_search_with_relevance_scores(query, k, **kwargs)
        options = _search_options(kwargs, "similarity_search_with_relevance_scores")
        if self._collection is None:
            return []
        hits = self._collection.search(self._query_vector(query), k, relevance=True,
                                       **options)
        return [(_document(hit, raw_score=True), hit.relevance) for hit in hits]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                      lambda_mult: float = 0.5,
                                      **kwargs: Any) -> list[Document]:
        """``k`` documents picked from the ``fetch_k`` closest for relevance and diversity
        (``lambda_mult`` 1: relevance only, 0: diversity only)."""
        options = _search_options(kwargs, "max_marginal_relevance_search")
        if self._collection is None:
            return []
        return self._mmr(self._query_vector(query), k, fetch_k, lambda_mult, **options)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4,
                                                fetch_k: int = 20, lambda_mult: float = 0.5,
                                                **kwargs: Any) -> list[Document]:
        options = _search_options(kwargs, "max_marginal_relevance_search_by_vector")
        if self._collection is None:
            return []
        return self._mmr(self._given_vector(embedding), k, fetch_k, lambda_mult, **options)

    def _mmr(self, vector: np.ndarray, k: int, fetch_k: int, lambda_mult: float, where: Any,
             oversample: int | None, nprobe: int | None) -> list[Document]:
        hits = self._collection.max_marginal_relevance_search(
            vector, k, fetch_k, lambda_mult, where=where, oversample=oversample, nprobe=nprobe)
        return [_document(hit) for hit in hits]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings,
                   metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                   **kwargs: Any) -> "VecpressVectorStore":
        """A store (in memory, or at ``path=``) holding ``texts``; other keyword arguments go
        to the constructor."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def load_local(cls, folder_path: str | Path, embeddings: Embeddings,
                   **kwargs: Any) -> "VecpressVectorStore":
        """Open the store saved at ``folder_path`` (``FileNotFoundError`` if there is none).

        No pickle is involved, so no ``allow_dangerous_deserialization`` flag exists."""
        if not (Path(folder_path) / DB_FILE).exists():
            raise FileNotFoundError(f"folder_path={str(folder_path)!r} holds no vecpress store "
                                    f"({DB_FILE} is missing)")
        return cls(embeddings, path=folder_path, **kwargs)

    def save_local(self, folder_path: str | Path) -> None:
        """Write a copy of this store to ``folder_path`` (a new or empty directory); open it
        with :meth:`load_local`. A persistent store is saved as it goes, so saving it to its
        own path does nothing."""
        target = Path(folder_path)
        if self._path is not None and target.resolve() == self._path.resolve():
            return
        source = self._collection
        if source is None:
            raise ValueError("this store is empty and its dimension is unknown yet; add "
                             "documents before save_local, or create it with path=...")
        if isinstance(source, ShardedCollection):
            raise TypeError("a sharded store is saved as it goes in its own directory "
                            f"({str(source.path)!r}); copy that directory while it is closed")
        _check_new_directory(target)
        source.save(target)

    def close(self) -> None:
        """Release the store (for a persistent one, its write lock)."""
        if self._collection is not None:
            self._collection.close()

    def __enter__(self) -> "VecpressVectorStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._collection!r}, embedding={self._embedding!r})"

    def _progress(self, n: int) -> bool | None:
        return False if n <= self._embedder.batch_size else self._show_progress

    # ------------------------------------------------------------------ async
    # One implementation per operation: the sync one, run in a worker thread so that the
    # event loop is never blocked by embedding, scanning or SQLite.
    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str | None] | None = None, **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add_texts, texts, metadatas, ids=ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add_documents, documents, **kwargs)

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.delete, ids, **kwargs)

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    async def asimilarity_search(self, query: str, k: int = 4,
                                 **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search, query, k, **kwargs)

    async def asimilarity_search_with_score(self, query: str, k: int = 4,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_with_score, query, k, **kwargs)

    async def asimilarity_search_with_relevance_scores(
            self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_with_relevance_scores, query, k,
                                       **kwargs)

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                           **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search_by_vector, embedding, k,
                                       **kwargs)

    async def amax_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                             lambda_mult: float = 0.5,
                                             **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.max_marginal_relevance_search, query, k, fetch_k,
                                       lambda_mult, **kwargs)

    async def amax_marginal_relevance_search_by_vector(
            self, embedding: list[float], k: int = 4, fetch_k: int = 20,
            lambda_mult: float = 0.5, **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.max_marginal_relevance_search_by_vector, embedding,
                                       k, fetch_k, lambda_mult, **kwargs)

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: Embeddings,
                          metadatas: list[dict] | None = None, *,
                          ids: list[str] | None = None,
                          **kwargs: Any) -> "VecpressVectorStore":
        return await asyncio.to_thread(partial(cls.from_texts, texts, embedding, metadatas,
                                               ids=ids, **kwargs))


# ---------------------------------------------------------------------- helpers


def _document(hit: Hit, raw_score: bool = False) -> Document:
    metadata = {**hit.metadata, RAW_SCORE_KEY: hit.score} if raw_score else hit.metadata
    return Document(id=hit.id, page_content=hit.text or "", metadata=metadata)


def _as_embeddings(embedding: Any) -> Embeddings:
    """LangChain ``Embeddings`` as given; a vecpress embedder wrapped into one."""
    if isinstance(embedding, Embeddings):
        return embedding
    if all(hasattr(embedding, name) for name in ("embed_documents", "embed_query", "dim",
                                                    "metric")):
        return as_langchain_embeddings(embedding)
    raise TypeError(f"embedding must be a LangChain Embeddings or a vecpress embedder, got "
                    f"{type(embedding).__name__}")


def _where(filter: Any) -> Any:
    """The Collection filter of a LangChain ``filter=`` argument (validated, or an error that
    says how to write it)."""
    if filter is None:
        return None
    if not isinstance(filter, dict):
        if callable(filter):
            detail = ("a function (InMemoryVectorStore style) cannot run inside the search, "
                      "which filters in SQLite before scoring")
        elif "llama_index" in type(filter).__module__:
            detail = ("LlamaIndex MetadataFilters belong to vecpress.integrations.llama_index; "
                      "write the same condition as a dict here")
        else:
            detail = f"got {type(filter).__name__}"
        raise TypeError(f"{_FILTER_HELP}; {detail}")
    try:
        return filters_module.parse(filter)
    except ValueError as exc:
        raise ValueError(f"invalid filter {reprlib.repr(filter)}: {exc}") from None


def _search_options(kwargs: dict[str, Any], method: str) -> dict[str, Any]:
    """``where``, ``oversample`` and ``nprobe`` for the Collection, checked before the query
    is embedded."""
    _no_extra(kwargs, method, ("filter", "oversample", "nprobe"))
    return {"where": _where(kwargs.get("filter")), "oversample": kwargs.get("oversample"),
            "nprobe": kwargs.get("nprobe")}


def _no_extra(kwargs: dict[str, Any], method: str, allowed: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepted = f"; it accepts {', '.join(allowed)}" if allowed else ""
        raise TypeError(f"{method}() got unexpected keyword arguments {unknown}{accepted}")


def _check_given_collection(collection: Any, **others: Any) -> None:
    """Refuse ``collection=`` that is not a store, or that comes with options of its own."""
    if not isinstance(collection, (Collection, ShardedCollection)):
        raise TypeError(f"collection must be a vecpress Collection or ShardedCollection, got "
                        f"{type(collection).__name__}")
    given = sorted(name for name, value in others.items() if value not in (None, False))
    if given:
        raise ValueError(f"collection=... is an open store: leave out {', '.join(given)} (they "
                         f"are the store's own)")


def _check_new_directory(path: Path | None) -> None:
    """Raise if a store cannot be created at ``path`` (the Collection makes the same checks
    when it creates the store; here they run before the first add needs it)."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory")
    if (path / DB_FILE).exists():
        raise FileExistsError(f"path={str(path)!r} already holds a vecpress store; open it with "
                              f"load_local, or choose a new or empty directory")
    if path.is_dir() and any(p.name != "LOCK" for p in path.iterdir()):
        raise FileExistsError(f"path={str(path)!r} is a non-empty directory that holds no "
                              f"vecpress store; choose a new or empty directory")
