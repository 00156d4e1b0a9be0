"""Bulk ingest with Ray Data: a dataset of texts, embedded in parallel actors, routed to shards.

For corpora that take hours to embed on one machine: Ray Data streams the dataset through
``concurrency`` embedding actors (each loads the model once), and the driver upserts each
embedded batch as it comes, which sends every shard its part (see
:meth:`ShardedCollection.upsert`). Memory stays bounded by Ray Data's streaming window, never
by the corpus. Needs ``ray[data]`` (pyarrow, pandas).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..embeddings.base import progress_bar
from ..core.validate import as_positive_int

VECTOR_COLUMN = "__vecpress_vector"


class _Embed:
    """The per-actor embedding step: one embedder per actor, built by ``factory``."""

    def __init__(self, factory: Callable[[], Any], text_column: str) -> None:
        self._embedder = factory()
        self._text_column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch[self._text_column]]
        vectors = np.asarray(self._embedder.embed_documents(texts), dtype=np.float32)
        if vectors.shape[0] != len(texts):
            raise RuntimeError(f"the embedder returned {vectors.shape[0]} vectors for "
                               f"{len(texts)} texts")
        return {**batch, VECTOR_COLUMN: vectors}


def _default_embedder() -> Any:
    from ..embeddings import default_embedder

    return default_embedder()


def ingest_dataset(store: Any, dataset: Any, embedder_factory: Callable[[], Any] | None = None,
                   *, text_column: str = "text", id_column: str | None = "id",
                   metadata_columns: Sequence[str] = (), embed_batch: int = 256,
                   write_batch: int = 4096, concurrency: int = 2, num_cpus: float = 1,
                   progress: bool | None = None) -> int:
    """Embed ``dataset``'s ``text_column`` in ``concurrency`` Ray Data actors and upsert the
    rows into ``store`` (a :class:`~vecpress.distributed.ShardedCollection`, or anything with
    its ``upsert``); returns the number of rows written.

    Args:
        dataset: a ``ray.data.Dataset`` with a text column, optionally an id column (string
            ids; new ids when ``id_column`` is None) and metadata columns.
        embedder_factory: a picklable callable returning an embedder (``embed_documents``),
            run once in each actor (default: vecpress's default sentence-transformers model).
        embed_batch: texts per model call; ``write_batch``: rows per ``upsert``.
        num_cpus: CPUs each embedding actor reserves.
        progress: a progress bar over the rows written (``None``: when stderr is a terminal).
    """
    columns = set(dataset.columns())
    for name, column in (("text_column", text_column), ("id_column", id_column),
                         *((f"metadata_columns[{i}]", c) for i, c in enumerate(metadata_columns))):
        if column is not None and column not in columns:
            raise ValueError(f"{name}={column!r} is not a column of the dataset "
                             f"({', '.join(sorted(columns))})")
    embed_batch = as_positive_int(embed_batch, "embed_batch")
    write_batch = as_positive_int(write_batch, "write_batch")
    concurrency = as_positive_int(concurrency, "concurrency")
    embedded = dataset.map_batches(
        _Embed, fn_constructor_args=(embedder_factory or _default_embedder, text_column),
        batch_size=embed_batch, concurrency=concurrency, num_cpus=num_cpus,
        batch_format="numpy")
    written = 0
    with progress_bar(None, enabled=progress, desc="ingesting") as bar:
        for batch in embedded.iter_batches(batch_size=write_batch, batch_format="numpy"):
            texts = [str(t) for t in batch[text_column]]
            ids = None if id_column is None else [str(i) for i in batch[id_column]]
            metadatas = None
            if metadata_columns:
                metadatas = [{c: _plain(batch[c][row]) for c in metadata_columns}
                             for row in range(len(texts))]
            store.upsert(ids, batch[VECTOR_COLUMN], texts, metadatas)
            written += len(texts)
            bar.update(len(texts))
    return written


def _plain(value: Any) -> Any:
    """A dataset cell as JSON data (numpy scalars and arrays to Python)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
