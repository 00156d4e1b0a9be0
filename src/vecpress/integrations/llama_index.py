"""LlamaIndex vector store over a vecpress :class:`~vecpress.Collection`.

A translation layer: LlamaIndex nodes become Collection documents (id, embedding, text, and the
node's serialised form in the metadata, as ``node_to_metadata_dict`` writes it), and a
``VectorStoreQuery`` becomes one Collection search. Filtering, scoring, text search, hybrid
fusion and MMR all happen in the Collection.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import reprlib
import shutil
import stat
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    if (error.name or "").split(".")[0] != "llama_index":
        raise
    raise ImportError(
        "vecpress.integrations.llama_index needs llama-index-core; install it with "
        '`pip install "vecpress[llama-index]"` (or `pip install llama-index-core`)'
    ) from error

from ..core import filters as filters_module
from ..core.collection import INDEX_OPTIONS, Collection, Hit
from ..distributed.sharded import ShardedCollection
from ..core.docstore import DB_FILE
from ..core.index import METRIC_ALIASES
from ..core.relevance import RAW_SCORE_KEY
from ..core.storage import StoreCorruptedError
from ..embeddings.rerankers import make_reranker
from ..embeddings.wrappers import LlamaIndexEmbedder
from ..pipeline import search as pipeline_search

#: metadata key holding the node id, so that ``VectorStoreQuery.node_ids`` is a metadata filter
NODE_ID_KEY = "_node_id"
#: metadata key ``node_to_metadata_dict`` writes the node's source document id to
REF_DOC_ID_KEY = "ref_doc_id"
#: what ``persist`` writes: a small JSON file naming the collection directory, which lies in
#: the same directory as the pointer (``"path"`` is a plain name: no separators, no ``..``)
POINTER_FORMAT = "vecpress-llama-index-store"
POINTER_VERSION = 1
#: largest pointer file read (a pointer is a few hundred bytes)
MAX_POINTER_BYTES = 1 << 20
#: LlamaIndex's naming of a persisted vector store: ``<namespace>__vector_store.json``
DEFAULT_PERSIST_DIR = "./storage"
DEFAULT_NAMESPACE = "default"
PERSIST_FNAME = "vector_store.json"
NAMESPACE_SEP = "__"

_MODES = {
    VectorStoreQueryMode.DEFAULT: "dense",
    VectorStoreQueryMode.TEXT_SEARCH: "text",
    VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.MMR: "mmr",
}
_QUERY_KWARGS = {"mmr_threshold", "mmr_prefetch_k", "mmr_prefetch_factor", "oversample",
                 "nprobe", "min_relevance"}
#: nodes per Collection write in ``add`` (and per page when ``persist`` copies a store);
#: large batches amortise the per-write cost of the index
DEFAULT_BATCH_SIZE = 16_384
DEFAULT_MMR_THRESHOLD = 0.5
DEFAULT_MMR_PREFETCH_FACTOR = 4.0


class VecpressVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store kept as compressed codes in RAM, originals and text on disk.

    Setup:
        ``pip install "vecpress[llama-index,sentence-transformers]"``

    Key init args:
        path: directory of the store; ``None`` keeps it in memory (``persist`` writes a copy).
            A directory that already holds a store is opened; otherwise the store is created
            there (with the first ``add`` unless ``dim`` is given).
        dim: embedding width; learned from the first added node when not given.
        bits: code bits per dimension (1-8; 16 or 32 is exact); default 4.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        read_only: open an existing ``path`` without the write lock (another process may be
            writing it).
        batch_size: nodes written per Collection transaction in ``add``.
        hybrid_fusion: how HYBRID mode fuses dense and text ranks: ``"rrf"`` (default) or
            ``"weighted"``.
        **index_options: passed to the :class:`~vecpress.Index` (``rerank``, ``oversample``,
            ``codec``, ``rerank_dtype``, ``truncate_dim``, ``seed``, ``query_bits``).

    Instantiate:
        .. code-block:: python

            from llama_index.core import StorageContext, VectorStoreIndex
            from vecpress.integrations.llama_index import VecpressVectorStore

            vector_store = VecpressVectorStore(path="./vecpress_store")
            storage_context = StorageContext.from_defaults(vector_store=vector_store)
            index = VectorStoreIndex.from_documents(
                documents, storage_context=storage_context, embed_model=embed_model)

    Add / delete:
        .. code-block:: python

            index.insert(document)                  # -> vector_store.add(nodes)
            index.delete_ref_doc(document.doc_id)   # -> vector_store.delete(ref_doc_id)
            vector_store.delete_nodes(node_ids=["..."], filters=filters)

    Search with filter:
        .. code-block:: python

            from llama_index.core.vector_stores import MetadataFilters, MetadataFilter

            filters = MetadataFilters(filters=[MetadataFilter(key="year", operator=">=", value=2020)])
            retriever = index.as_retriever(similarity_top_k=5, filters=filters)

    Search modes: ``vector_store_query_mode="default" | "mmr" | "text_search" | "hybrid"``
    (``alpha``: 1 is dense only, 0 text only; MMR takes ``vector_store_kwargs=
    {"mmr_threshold": 0.5, "mmr_prefetch_factor": 4}``).

    Scores: higher is better; cosine similarity for DEFAULT and MMR (as ``SimpleVectorStore``),
    BM25 for TEXT_SEARCH, the fused score for HYBRID.

    Calibrated relevance: with ``relevance_scores=True`` a DEFAULT query's
    ``NodeWithScore.score`` is vecpress's calibrated relevance in [0, 1] (one threshold means
    the same for every query; see ``Collection.calibrate``) and the raw score is in
    ``node.metadata["vecpress_score"]`` (kept out of the LLM and embedding text), so
    ``SimilarityPostprocessor(similarity_cutoff=0.05)`` drops what is not relevant, possibly
    everything. ``vector_store_kwargs={"min_relevance": 0.05}`` filters inside the store.

    Reopen (no re-embedding):
        .. code-block:: python

            vector_store = VecpressVectorStore(path="./vecpress_store")
            index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed_model)

    Second-stage rerank: ``reranker="embed"`` with ``embed_model=...`` re-embeds the
    candidates' texts (exact scores for a store created with ``rerank=False``); ``"exact"``
    and ``"cross-encoder:<model>"`` work too (not for MMR).

    Async: every method has an ``a``-prefixed twin that runs it in a worker thread.
    """

    stores_text: bool = True
    is_embedding_query: bool = True

    path: Optional[str] = Field(default=None, description="store directory; None = in memory")
    dim: Optional[int] = Field(default=None, description="embedding width (learned if None)")
    bits: Optional[int] = Field(default=None, description="code bits per dimension (default 4)")
    metric: Optional[str] = Field(default=None, description="cosine (default), ip or l2")
    read_only: bool = False
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0, description="nodes per write")
    hybrid_fusion: str = Field(default="rrf", description="rrf or weighted")
    relevance_scores: bool = Field(default=False, description="DEFAULT queries score nodes "
                                   "by calibrated relevance in [0, 1] (raw score in metadata)")
    index_options: Dict[str, Any] = Field(default_factory=dict)

    _collection: Optional[Collection | ShardedCollection] = PrivateAttr(default=None)
    _embedder: Any = PrivateAttr(default=None)
    _reranker: Any = PrivateAttr(default=None)
    _create_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        dim: int | None = None,
        bits: int | None = None,
        metric: str | None = None,
        read_only: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        hybrid_fusion: str = "rrf",
        relevance_scores: bool = False,
        collection: Collection | ShardedCollection | None = None,
        index_options: dict[str, Any] | None = None,
        reranker: Any = None,
        embed_model: Any = None,
        **more_index_options: Any,
    ) -> None:
        if hybrid_fusion not in ("rrf", "weighted"):
            raise ValueError(f"hybrid_fusion must be 'rrf' or 'weighted', got {hybrid_fusion!r}")
        if metric is not None and str(metric).lower() not in METRIC_ALIASES:
            raise ValueError(f"metric must be 'cosine', 'ip' or 'l2', got {metric!r}")
        options = {**(index_options or {}), **more_index_options}
        unknown = set(options) - set(INDEX_OPTIONS)
        if unknown:
            raise TypeError(f"unknown VecpressVectorStore arguments {sorted(unknown)}; index "
                            f"options are {', '.join(INDEX_OPTIONS)}")
        if collection is not None:
            if not isinstance(collection, (Collection, ShardedCollection)):
                raise TypeError(f"collection must be a vecpress Collection or "
                                f"ShardedCollection, got {type(collection).__name__}")
            if path is not None or dim is not None or bits is not None or metric is not None \
                    or options:
                raise ValueError("pass either collection=... or path/dim/bits/metric/index "
                                 "options, not both")
            path = None if collection.path is None else str(collection.path)
            dim, bits, metric = collection.dim, collection.bits, collection.metric
        super().__init__(
            path=None if path is None else os.fspath(path), dim=dim, bits=bits, metric=metric,
            read_only=read_only, batch_size=batch_size, hybrid_fusion=hybrid_fusion,
            relevance_scores=relevance_scores, index_options=options,
        )
        # a second stage after the search: "embed" (re-embeds the candidates' texts with
        # embed_model; exact scores for a rerank=False store), "exact", "cross-encoder:<model>"
        if reranker == "embed" and embed_model is None:
            raise ValueError('reranker="embed" re-embeds the candidates: pass embed_model=... '
                             "(the embedding model of the index)")
        self._embedder = None if embed_model is None else LlamaIndexEmbedder(embed_model)
        self._reranker = make_reranker(reranker, embedder=self._embedder)
        if collection is not None:
            self._collection = collection
        elif read_only or dim is not None or _holds_collection(self.path):
            self._collection = self._open_collection(dim)

    @classmethod
    def class_name(cls) -> str:
        return "VecpressVectorStore"

    @classmethod
    def from_dict(cls, data: Dict[str, Any], **kwargs: Any) -> "VecpressVectorStore":
        """Rebuild from :meth:`to_dict` (reopening ``path``, if any)."""
        data = {**data, **kwargs}
        for constant in ("class_name", "stores_text", "is_embedding_query"):
            data.pop(constant, None)
        return cls(**data)

    @property
    def client(self) -> Collection | ShardedCollection | None:
        """The vecpress :class:`~vecpress.Collection` (``None`` until the first ``add`` when
        the store was created without ``dim``)."""
        return self._collection

    def close(self) -> None:
        """Release the store directory (its write lock); the object is unusable afterwards."""
        if self._collection is not None:
            self._collection.close()

    # ------------------------------------------------------------------ writes
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Add (or replace, by node id) nodes that carry embeddings; returns their ids."""
        _no_kwargs("add", add_kwargs)
        nodes = list(nodes)
        if not nodes:
            return []
        width = self._checked_embeddings(nodes)
        rows = {node.node_id: _node_row(node) for node in nodes}  # a repeated id: last one wins
        collection = self._writable(width)
        ids = list(rows)
        for start in range(0, len(ids), self.batch_size):
            batch = [rows[i] for i in ids[start:start + self.batch_size]]
            collection.upsert([r[0] for r in batch], [r[1] for r in batch],
                              texts=[r[2] for r in batch], metadatas=[r[3] for r in batch])
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ``ref_doc_id``."""
        _no_kwargs("delete", delete_kwargs)
        if not isinstance(ref_doc_id, str):
            raise TypeError(f"ref_doc_id must be a string, got {type(ref_doc_id).__name__}")
        if self._collection is not None:
            self._collection.delete(where={REF_DOC_ID_KEY: ref_doc_id})

    def delete_nodes(self, node_ids: Optional[List[str]] = None,
                     filters: Optional[MetadataFilters] = None, **delete_kwargs: Any) -> None:
        """Delete the nodes among ``node_ids`` (all when ``None``) that match ``filters``."""
        _no_kwargs("delete_nodes", delete_kwargs)
        if node_ids is None and filters_module.parse(filters) is None:
            raise ValueError("delete_nodes needs node_ids=... or non-empty filters=...; to delete "
                             "every node call clear()")
        if self._collection is not None:
            self._collection.delete(ids=_id_list(node_ids, "node_ids"), where=filters)

    def clear(self) -> None:
        """Delete every node."""
        if self._collection is not None:
            self._collection.clear()

    # ------------------------------------------------------------------ reads
    def get_nodes(self, node_ids: Optional[List[str]] = None,
                  filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        """Nodes by id (in the order given, unknown ids left out) and/or by filter; all nodes
        when neither is given. Nodes come back without embeddings."""
        node_ids = _id_list(node_ids, "node_ids")
        filters_module.parse(filters)  # a malformed filter is an error even on an empty store
        if self._collection is None:
            return []
        return [_to_node(hit) for hit in self._collection.get(node_ids, where=filters)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Run a ``VectorStoreQuery`` (modes DEFAULT, MMR, TEXT_SEARCH, HYBRID)."""
        mode, call = _search_call(query, kwargs, self.relevance_scores)
        if self._collection is None:
            filters_module.parse(call["where"])  # a malformed filter is an error here too
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if mode == "mmr":
            hits = self._collection.max_marginal_relevance_search(**call)
        elif self._reranker is not None:
            if call.pop("min_relevance", None) is not None:
                raise ValueError("min_relevance filters by the calibrated relevance of the "
                                 "vector search, which a second-stage reranker replaces; "
                                 "filter on the reranker's scores instead")
            call.pop("relevance", None)  # the reranker's scores are returned as they are
            options = {name: value for name, value in call.items()
                       if name not in ("vector", "k", "where", "mode", "query_text")}
            vector = call.get("vector")
            hits = pipeline_search(self._collection, self._embedder, query.query_str or "",
                                   call["k"], where=call["where"], reranker=self._reranker,
                                   mode=mode, query_vector=None if vector is None else
                                   np.asarray(vector, dtype=np.float32), **options)
        else:
            hits = self._collection.search(**call)
        if call.get("relevance"):
            return VectorStoreQueryResult(nodes=[_to_node(hit, raw_score=True) for hit in hits],
                                          similarities=[float(hit.relevance) for hit in hits],
                                          ids=[hit.id for hit in hits])
        return VectorStoreQueryResult(nodes=[_to_node(hit) for hit in hits],
                                      similarities=[float(hit.score) for hit in hits],
                                      ids=[hit.id for hit in hits])

    # ------------------------------------------------------------------ async: the sync
    # methods in a worker thread (the Collection lets searches run in parallel)
    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(self, node_ids: Optional[List[str]] = None,
                            filters: Optional[MetadataFilters] = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aget_nodes(self, node_ids: Optional[List[str]] = None,
                         filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_path: str = os.path.join(DEFAULT_PERSIST_DIR, PERSIST_FNAME),
                fs: Any = None) -> None:
        """Write ``persist_path``: a small JSON file naming the store directory, which always
        lies beside it (the pointer holds its plain name, so a persist directory can be moved
        and never sends a reader elsewhere).

        A store whose ``path`` is a directory directly inside the persist directory is already
        on disk (every write is durable when it returns), so only the pointer is written. Any
        other store (in memory, or with a ``path`` elsewhere) is first saved
        (``Collection.save``: codes and originals copied, not re-encoded), replacing any earlier
        copy, to the directory ``persist_path`` with the suffix ``.vecpress``
        (``storage/default__vector_store.vecpress`` for ``StorageContext.persist("storage")``);
        the store itself stays where it was, as ``SimpleVectorStore`` does. To persist a large
        store without copying it, create it inside the persist directory, e.g.
        ``VecpressVectorStore(path="storage/default__vector_store.vecpress")``.
        """
        _check_local(fs)
        if isinstance(self._collection, ShardedCollection):
            raise TypeError("a sharded store is saved as it goes in its own directory "
                            f"({str(self._collection.path)!r}); reopen it with "
                            "ShardedCollection.open(path) instead of persisting it")
        pointer = Path(persist_path)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if self.path is not None and _lies_in(Path(self.path), pointer.parent):
            target = Path(self.path)
        else:
            target = _copy_target(pointer)
            self._copy_to(target)
        record = {
            "format": POINTER_FORMAT,
            "format_version": POINTER_VERSION,
            "path": target.name,
            "batch_size": self.batch_size,
            "hybrid_fusion": self.hybrid_fusion,
        }
        partial = pointer.with_name(pointer.name + f".{os.getpid()}.partial")
        partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(partial, pointer)

    @classmethod
    def from_persist_path(cls, persist_path: str, fs: Any = None, *,
                          read_only: bool = False) -> "VecpressVectorStore":
        """Open what :meth:`persist` wrote (or a store directory given directly).

        The pointer is untrusted input: it is read without following a symbolic link, only if
        it is a regular file of at most 1 MiB, and the directory it names must be a plain name
        beside it that is not a symbolic link; anything else is a
        :class:`~vecpress.core.storage.StoreCorruptedError` naming the file and the rule.
        """
        _check_local(fs)
        pointer = Path(persist_path)
        if pointer.is_dir() and not pointer.is_symlink():
            return cls(path=pointer, read_only=read_only)
        data = _read_pointer(pointer)
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{pointer} is not a vecpress store pointer "
                             f"({reprlib.repr(str(exc))}); was it written by another vector "
                             f"store?") from None
        if not isinstance(record, dict) or record.get("format") != POINTER_FORMAT:
            raise ValueError(f"{pointer} was not written by VecpressVectorStore.persist (a "
                             f"SimpleVectorStore file? load it with SimpleVectorStore)")
        if not isinstance(record.get("format_version"), int) \
                or record["format_version"] > POINTER_VERSION:
            raise ValueError(f"{pointer} has format version "
                             f"{reprlib.repr(record.get('format_version'))}; "
                             f"this vecpress reads up to {POINTER_VERSION}: upgrade vecpress")
        target = pointer.parent / _store_name(record.get("path"), pointer)
        # an empty directory is what persisting a store that never had a node leaves
        if not (target / DB_FILE).exists() and not (target.is_dir() and not any(target.iterdir())):
            raise FileNotFoundError(f"{pointer} names the store directory {str(target)!r}, which "
                                    f"holds no vecpress store (moved or deleted?)")
        return cls(path=target, read_only=read_only,
                   batch_size=record.get("batch_size", DEFAULT_BATCH_SIZE),
                   hybrid_fusion=record.get("hybrid_fusion", "rrf"))

    @classmethod
    def from_persist_dir(cls, persist_dir: str = DEFAULT_PERSIST_DIR,
                         namespace: str = DEFAULT_NAMESPACE, fs: Any = None, *,
                         read_only: bool = False) -> "VecpressVectorStore":
        """Open the store ``StorageContext.persist(persist_dir)`` wrote for ``namespace``."""
        name = f"{namespace}{NAMESPACE_SEP}{PERSIST_FNAME}"
        return cls.from_persist_path(os.path.join(persist_dir, name), fs, read_only=read_only)

    # ------------------------------------------------------------------ internals
    def _open_collection(self, dim: int | None) -> Collection:
        return Collection(dim=dim, path=self.path, bits=self.bits, metric=self.metric,
                          read_only=self.read_only, **self.index_options)

    def _writable(self, width: int) -> Collection:
        if self._collection is None:
            with self._create_lock:  # two first adds in parallel (async_add) make one store
                if self._collection is None:
                    self._collection = self._open_collection(width)
        if self._collection.dim != width:
            raise ValueError(f"the nodes' embeddings have {width} dimensions but this store holds "
                             f"{self._collection.dim}-dimensional vectors; embed with the model "
                             f"the store was built with")
        return self._collection

    def _checked_embeddings(self, nodes: list[BaseNode]) -> int:
        width = None
        for position, node in enumerate(nodes):
            if not isinstance(node, BaseNode):
                raise TypeError(f"nodes[{position}] must be a LlamaIndex node, got "
                                f"{type(node).__name__}")
            if node.embedding is None:
                raise ValueError(f"nodes[{position}] (id {node.node_id!r}) has no embedding; "
                                 f"VectorStoreIndex embeds nodes before adding them, or set "
                                 f"node.embedding yourself")
            if width is None:
                width = len(node.embedding)
            elif len(node.embedding) != width:
                raise ValueError(f"nodes[{position}] (id {node.node_id!r}) has a "
                                 f"{len(node.embedding)}-dimensional embedding, nodes[0] a "
                                 f"{width}-dimensional one")
        return width

    def _copy_to(self, target: Path) -> None:
        """Save the in-memory collection to ``target``, replacing what is there."""
        fresh = target.with_name(target.name + f".{os.getpid()}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        if self._collection is None:  # nothing added yet: an empty directory opens as a new store
            fresh.mkdir(parents=True)
        else:
            self._collection.save(fresh)  # codes and originals copied, not re-encoded
        old = target.with_name(target.name + f".{os.getpid()}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(fresh, target)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- helpers


def _holds_collection(path: str | None) -> bool:
    return path is not None and (Path(path) / DB_FILE).exists()


def _node_row(node: BaseNode) -> tuple[str, list[float], str, dict[str, Any]]:
    metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    metadata[NODE_ID_KEY] = node.node_id
    return node.node_id, node.embedding, node.get_content(metadata_mode=MetadataMode.NONE), metadata


def _to_node(hit: Hit, raw_score: bool = False) -> BaseNode:
    node = metadata_dict_to_node(hit.metadata, text=hit.text)
    if raw_score:  # beside the relevance, out of what the LLM and the embedder read
        node.metadata[RAW_SCORE_KEY] = hit.score
        for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
            if RAW_SCORE_KEY not in excluded:
                excluded.append(RAW_SCORE_KEY)
    return node


def _no_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"VecpressVectorStore.{method} takes no options {sorted(kwargs)}")


def _id_list(ids: Any, name: str) -> list[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{name} must be a list of strings, got {type(ids).__name__}")
    return list(ids)


def _restricted(filters: Any, doc_ids: Any, node_ids: Any) -> Any:
    """``filters`` ANDed with ``ref_doc_id in doc_ids`` and ``node id in node_ids``.

    An empty list restricts nothing: ``VectorStoreIndex.as_retriever`` passes
    ``node_ids=[]`` for stores that keep their own text (its node table is empty then).
    """
    parts = []
    for key, ids, name in ((REF_DOC_ID_KEY, doc_ids, "doc_ids"), (NODE_ID_KEY, node_ids, "node_ids")):
        ids = _id_list(ids, name)
        if ids:
            parts.append(MetadataFilter(key=key, operator=FilterOperator.IN, value=ids))
    if not parts:
        return filters
    if filters is not None:
        parts.append(filters)
    return MetadataFilters(filters=parts)


def _search_call(query: VectorStoreQuery, kwargs: dict[str, Any],
                 relevance_scores: bool = False) -> tuple[str, dict[str, Any]]:
    """The Collection method (``"mmr"`` or a search mode) and its arguments for ``query``;
    every field that the mode cannot honour is an error."""
    unknown = set(kwargs) - _QUERY_KWARGS
    if unknown:
        raise TypeError(f"unknown query options {sorted(unknown)}; VecpressVectorStore.query takes "
                        f"{', '.join(sorted(_QUERY_KWARGS))}")
    mode_name = getattr(query.mode, "value", query.mode)  # the dataclass keeps plain strings
    mode = _MODES.get(mode_name)
    if mode is None:
        raise ValueError(f"query mode {mode_name!r} is not supported by VecpressVectorStore; use "
                         f"one of {', '.join(m.value for m in _MODES)}")
    k = query.similarity_top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"similarity_top_k must be a positive integer, got {k!r}")
    for name in ("output_fields", "embedding_field"):
        if getattr(query, name) is not None:
            raise ValueError(f"VectorStoreQuery.{name} is not supported by VecpressVectorStore; "
                             f"leave it None (nodes always come back whole)")
    mmr_threshold = kwargs.get("mmr_threshold", query.mmr_threshold)
    misplaced = {
        "alpha": (query.alpha, ("hybrid",)),
        "sparse_top_k": (query.sparse_top_k, ("hybrid",)),
        "hybrid_top_k": (query.hybrid_top_k, ("hybrid",)),
        "mmr_threshold": (mmr_threshold, ("mmr",)),
        "mmr_prefetch_k": (kwargs.get("mmr_prefetch_k"), ("mmr",)),
        "mmr_prefetch_factor": (kwargs.get("mmr_prefetch_factor"), ("mmr",)),
        "oversample": (kwargs.get("oversample"), ("dense", "hybrid", "mmr")),
        "nprobe": (kwargs.get("nprobe"), ("dense", "hybrid", "mmr")),
        "min_relevance": (kwargs.get("min_relevance"), ("dense",)),
    }
    for name, (value, modes) in misplaced.items():
        if value is not None and mode not in modes:
            raise ValueError(f"{name} applies to mode {' / '.join(m.upper() for m in modes)} "
                             f"only, but the query mode is {mode_name!r}")
    if mode != "text" and query.query_embedding is None:
        raise ValueError(f"mode {mode_name!r} needs query.query_embedding (the query's "
                         f"vector, computed by the retriever's embed_model)")
    if mode in ("text", "hybrid") and not isinstance(query.query_str, str):
        raise ValueError(f"mode {mode_name!r} needs query.query_str, the query text")
    where = _restricted(query.filters, query.doc_ids, query.node_ids)
    call: dict[str, Any] = {"where": where}
    if mode != "text":
        call["vector"] = query.query_embedding
        call["oversample"] = kwargs.get("oversample")
        call["nprobe"] = kwargs.get("nprobe")
    if mode == "mmr":
        call["k"] = k
        call["lambda_mult"] = DEFAULT_MMR_THRESHOLD if mmr_threshold is None else mmr_threshold
        fetch_k = kwargs.get("mmr_prefetch_k")
        if fetch_k is None:
            factor = kwargs.get("mmr_prefetch_factor", DEFAULT_MMR_PREFETCH_FACTOR)
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
                raise ValueError(f"mmr_prefetch_factor must be a number >= 1, got {factor!r}")
            fetch_k = math.ceil(k * factor)
        elif "mmr_prefetch_factor" in kwargs:
            raise ValueError("give mmr_prefetch_k or mmr_prefetch_factor, not both")
        call["fetch_k"] = fetch_k
        return mode, call
    call["mode"] = mode
    call["k"] = k
    if mode == "dense" and (relevance_scores or kwargs.get("min_relevance") is not None):
        call["relevance"] = True
        call["min_relevance"] = kwargs.get("min_relevance")
    if mode in ("text", "hybrid"):
        call["query_text"] = query.query_str
    if mode == "hybrid":
        call["alpha"] = 0.5 if query.alpha is None else query.alpha
        # LlamaIndex: similarity_top_k dense and sparse_top_k text candidates, hybrid_top_k
        # results (default similarity_top_k); without either, the Collection's default pool
        if query.hybrid_top_k is not None or query.sparse_top_k is not None:
            call["k"] = query.hybrid_top_k or k
            call["fetch_k"] = max(k, query.sparse_top_k or k)
    return mode, call


def _check_local(fs: Any) -> None:
    if fs is None:
        return
    protocol = getattr(fs, "protocol", None)
    protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    if not {"file", "local"} & set(protocols):
        raise ValueError(f"VecpressVectorStore persists to a local directory; the filesystem "
                         f"{type(fs).__name__} (protocol {protocol!r}) is not supported")


def _copy_target(pointer: Path) -> Path:
    return pointer.with_suffix(".vecpress") if pointer.suffix else \
        pointer.with_name(pointer.name + ".vecpress")


def _lies_in(store: Path, directory: Path) -> bool:
    """Whether ``store`` is a real directory (not a symbolic link) directly in ``directory``."""
    if store.is_symlink():
        return False
    return store.resolve().parent == directory.resolve()


def _read_pointer(pointer: Path) -> bytes:
    """The bytes of a pointer file: not through a symbolic link, a regular file, <= 1 MiB."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(pointer, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"persist_path={str(pointer)!r} does not exist; write it "
                                f"with VecpressVectorStore.persist(...) or "
                                f"StorageContext.persist(...)") from None
    except OSError:
        if pointer.is_symlink():
            raise StoreCorruptedError(f"{pointer}: is a symbolic link; a store pointer must be "
                                      f"a regular file (links are not followed)") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StoreCorruptedError(f"{pointer}: is not a regular file; a store pointer is "
                                      f"the small JSON file VecpressVectorStore.persist writes")
        data = handle.read(MAX_POINTER_BYTES + 1)
    if len(data) > MAX_POINTER_BYTES:
        raise StoreCorruptedError(f"{pointer}: is larger than {MAX_POINTER_BYTES} bytes; a store "
                                  f"pointer is a small JSON file")
    return data


def _store_name(name: Any, pointer: Path) -> str:
    """The store directory a pointer names: a plain name beside it, not a symbolic link."""
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "\x00" not in name
             and "/" not in name and "\\" not in name and (os.name != "nt" or ":" not in name)
             and not os.path.isabs(name) and Path(name).name == name)
    if not plain:
        raise StoreCorruptedError(
            f"{pointer}: \"path\" is {str(name)[:100]!r}; it must be the plain name of a "
            f"directory beside the pointer (no separators, no '..', not absolute)")
    if (pointer.parent / name).is_symlink():
        raise StoreCorruptedError(f"{pointer}: \"path\" names {name!r}, a symbolic link; the "
                                  f"store directory must be a real directory beside the pointer")
    return name
