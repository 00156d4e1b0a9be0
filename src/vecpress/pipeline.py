"""Text in, hits out: an embedder and a :class:`~vecpress.Collection` working together.

``add_texts`` is compress-on-insert as a stream: texts are embedded a model batch at a time and
written (quantized by the Index) every ``write_batch`` texts, so memory is bounded by one write
batch, never by the corpus; one progress bar covers the whole insert. ``search`` embeds the
question, runs the collection's search and hands the candidates to a reranker.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .core import activity
from .core.collection import Collection, Hit
from .embeddings.base import check_batch_size, progress_bar
from .embeddings.rerankers import ExactReranker, Reranker, make_reranker

#: texts per Collection.upsert: each write is one durable commit, so not too small; the first
#: one also fits the quantizer's centre, so it should be a fair sample of the corpus
DEFAULT_WRITE_BATCH = 1024
#: most texts embedded between two updates of the progress bar (the issue's "every 64 texts")
PROGRESS_STEP = 64


def check_embedder_fits(collection: Collection, embedder: Any) -> None:
    """``ValueError`` when the embedder's vectors cannot go into (or query) ``collection``."""
    dim = getattr(embedder, "dim", None)
    if dim is not None and dim != collection.dim:
        name = getattr(embedder, "model_name", type(embedder).__name__)
        raise ValueError(
            f"the collection holds {collection.dim}-dimensional vectors but the embedder "
            f"{name!r} makes {dim}-dimensional ones; use the embedder the collection was built "
            "with, or a new collection"
        )


def add_texts(
    collection: Collection,
    embedder: Any,
    texts: Iterable[str],
    metadatas: Iterable[Mapping[str, Any] | None] | None = None,
    ids: Iterable[str] | None = None,
    *,
    total: int | None = None,
    batch_size: int | None = None,
    write_batch: int = DEFAULT_WRITE_BATCH,
    progress: bool | None = None,
) -> list[str]:
    """Embed ``texts`` and upsert them into ``collection`` as a stream; returns their ids.

    ``texts``, ``metadatas`` and ``ids`` may be generators: they are consumed ``write_batch``
    at a time, and each batch is written (durably, for a persistent collection) before the
    next one is read. If a batch fails, the batches before it stay written.

    Args:
        total: number of texts, for the progress bar when ``texts`` has no ``len()``.
        batch_size: texts per model call (default: the embedder's ``batch_size``).
        write_batch: texts per ``Collection.upsert``.
        progress: show a progress bar (``None``: only when stderr is a terminal).
    """
    check_embedder_fits(collection, embedder)
    write_batch = check_batch_size(write_batch)
    if batch_size is not None:
        batch_size = check_batch_size(batch_size)
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single str")
    if total is None and hasattr(texts, "__len__"):
        total = len(texts)  # type: ignore[arg-type]
    text_iter = iter(texts)
    meta_iter = iter(metadatas) if metadatas is not None else None
    id_iter = iter(ids) if ids is not None else None
    written: list[str] = []
    with progress_bar(total, enabled=progress, desc="indexing") as bar:
        while True:
            batch = list(itertools.islice(text_iter, write_batch))
            if not batch:
                break
            batch_metas = _take(meta_iter, len(batch), "metadatas")
            batch_ids = _take(id_iter, len(batch), "ids")
            bar.set_postfix_str("embedding", refresh=False)
            vectors = _embed_with_progress(embedder, batch, batch_size, collection.dim, bar)
            bar.set_postfix_str("quantizing and writing")
            with activity.listening(bar.set_postfix_str):  # refit, compaction, lists: named
                written += collection.upsert(batch_ids, vectors, texts=batch, metadatas=batch_metas)
        bar.set_postfix_str("done")
    for name, rest in (("metadatas", meta_iter), ("ids", id_iter)):
        if rest is not None and next(rest, _END) is not _END:
            raise ValueError(f"{name} has more entries than texts ({len(written)}); the texts were written")
    return written


_END = object()


def _embed_with_progress(embedder: Any, batch: list[str], batch_size: int | None, dim: int,
                         bar: Any) -> np.ndarray:
    """``batch`` embedded :data:`PROGRESS_STEP` texts (or ``batch_size``, if smaller) at a time,
    the bar advanced after each step, so it moves at least every 64 texts."""
    step = min(batch_size or getattr(embedder, "batch_size", PROGRESS_STEP), PROGRESS_STEP)
    # texts of similar length side by side, as the model would sort a whole batch: little padding
    order = np.argsort([len(text) for text in batch], kind="stable")
    vectors = np.empty((len(batch), dim), dtype=np.float32)
    for start in range(0, len(batch), step):
        rows = order[start:start + step]
        part = [batch[row] for row in rows]
        embedded = np.asarray(embedder.embed_documents(part, batch_size=batch_size, progress=False),
                              dtype=np.float32)
        if embedded.shape != (len(part), dim):
            raise RuntimeError(f"embedder returned shape {embedded.shape} for {len(part)} texts, "
                               f"expected ({len(part)}, {dim})")
        vectors[rows] = embedded
        bar.update(len(part))
    return vectors


def _take(source: Any, n: int, name: str) -> list[Any] | None:
    if source is None:
        return None
    part = list(itertools.islice(source, n))
    if len(part) != n:
        raise ValueError(f"{name} has fewer entries than texts; pass one per text")
    return part


def search(
    collection: Collection,
    embedder: Any,
    query: str,
    k: int = 5,
    *,
    where: Any = None,
    reranker: Reranker | str | None = None,
    mode: str = "dense",
    query_vector: np.ndarray | None = None,
    **search_options: Any,
) -> list[Hit]:
    """The best ``k`` documents of ``collection`` for the question ``query``, best first.

    The collection's search (``mode`` dense, text or hybrid; ``where`` filters before scoring)
    fetches ``reranker.candidates(k)`` hits, and the reranker orders them and keeps ``k``; a hit's
    ``score`` is then the reranker's score.

    Args:
        reranker: ``None`` (default): no second stage beyond the Index's own exact rerank of
            its quantized candidates. Else a :class:`~vecpress.embeddings.rerankers.Reranker`,
            or ``"exact"`` (score the candidates with the kept original vectors; turns a text
            or hybrid ranking into a dense one), ``"embed"`` (re-embed the candidates' texts
            with ``embedder``; exact scores for a store without originals) or
            ``"cross-encoder:<model>"``.
        query_vector: the embedded query, if already known (skips ``embed_query``).
        **search_options: passed to :meth:`Collection.search` (``alpha``, ``fusion``,
            ``fetch_k``, ``oversample``).
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be str, got {type(query).__name__}")
    if reranker is not None:
        reranker = make_reranker(reranker, embedder=embedder, metric=collection.metric)
        if isinstance(reranker, ExactReranker) and reranker.metric is None:
            reranker = ExactReranker(collection.metric, fetch_factor=reranker.fetch_factor)
    needs_vectors = bool(getattr(reranker, "needs_vectors", False))
    if query_vector is None and (mode != "text" or needs_vectors):
        check_embedder_fits(collection, embedder)
        query_vector = embedder.embed_query(query)
    vector = None if mode == "text" else query_vector
    if reranker is None:  # the Index's own exact rerank of its quantized candidates
        return collection.search(vector, k, where, mode=mode, query_text=query, **search_options)
    try:
        hits = collection.search(vector, reranker.candidates(k), where, mode=mode, query_text=query,
                                 include_vectors=needs_vectors, **search_options)
    except ValueError as error:
        if needs_vectors and "exact vectors" in str(error):
            raise ValueError(
                f"{error}. This collection keeps no original vectors (created with rerank=False): "
                'search it with reranker="embed" (re-embeds the candidates) or another reranker'
            ) from None
        raise
    ranked = reranker.rerank(query, query_vector, hits, k)
    if needs_vectors:
        for hit in ranked:
            hit.vector = None
    return ranked


def warm_up(collection: Collection) -> threading.Thread:
    """Run one throw-away search in a background thread and return the (daemon) thread.

    The first search of a fresh process loads the numba kernels from their cache (a few
    hundred milliseconds); started right after opening a store, while the embedding model
    loads, this takes that wait off the first real question. Errors are ignored: the real
    search reports them.
    """

    def search_once() -> None:
        try:
            vector = np.random.default_rng(0).standard_normal(collection.dim).astype(np.float32)
            collection.search(vector, 1)
        except Exception:  # noqa: BLE001 - a warm-up only; the real search raises what matters
            pass

    thread = threading.Thread(target=search_once, name="vecpress-warm-up", daemon=True)
    thread.start()
    return thread
