"""``MultiVectorCollection``: documents made of token matrices, searched by late interaction.

Layout of a persistent store::

    <path>/multivector.json   format, token dimension, FDE configuration + seed + fingerprint
    <path>/tokens.f16         every document's token rows, float16, append-only (tokens.py)
    <path>/fde/               a Collection: ids, text, metadata, filters, and the FDE of each
                              document in its quantized Index
    <path>/LOCK               held by the one process that writes

**Search** = MUVERA candidates, then exact MaxSim. The query's FDE is scanned against the
documents' FDE codes (the Index's quantized scan, under the filter's row mask) for
``candidates`` documents; their tokens are read from the memory-mapped token file and scored
exactly by MaxSim; the best ``k`` are returned with that score.

**One write, one commit.** An upsert validates everything, appends the documents' tokens (and
fsyncs them with ``durability="full"``), then upserts the documents into the Collection with
their token run (first row, row count) in a reserved metadata key. The Collection's commit is
the commit point: a crash before it leaves token rows nothing refers to; after it, the
document and its tokens are both there. Deletes and replacements are the Collection's; the
rows of a replaced or deleted document stay in the token file as unused space.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import storage
from ..core.collection import (Collection, Hit, _checked_id_list, _checked_ids, _checked_list,
                               _checked_texts, _metadata_json)
from ..core.storage import StoreCorruptedError
from ..core.validate import as_durability, as_matrix, as_positive_int
from .fde import FDEConfig, FDEEncoder
from .maxsim import maxsim_scores
from .tokens import TokenFile

FORMAT_NAME = "vecpress-multivector"
FORMAT_VERSION = 1
MANIFEST = "multivector.json"
TOKENS_FILE = "tokens.f16"
COLLECTION_DIR = "fde"
#: metadata key holding a document's token run ``[first row, rows]``; refused in user metadata
TOKENS_KEY = "_vecpress_tokens"
#: most tokens one document may have (a ColBERT passage has ~180, a ColPali page ~1,030)
MAX_TOKENS_PER_DOCUMENT = 1 << 16
MAX_MANIFEST_BYTES = 1 << 16
DEFAULT_CANDIDATES = 100


class MultiVectorCollection:
    """Documents with a string id, text, JSON metadata and a token matrix of any length,
    searched by late interaction (MaxSim) through MUVERA fixed-dimensional encodings.

    Args:
        dim: token dimension (needed to create; checked when opening).
        path: a directory, or ``None`` for an in-memory store. A directory holding a store is
            opened; a new or empty one gets a new store.
        bits: code size per FDE coordinate in the Index (default 4).
        fde: an :class:`FDEConfig` or a dict of its fields (``dim`` is filled in); the default
            (24 repetitions, 2 SimHash bits, 16-wide orthogonal projection, document buckets
            normalised and empty ones left empty, no final projection: 1,536 dimensions) was chosen by
            ``benchmarks/bench_multivector.py`` (see the README). Stores made with another
            configuration keep theirs (it is in the manifest).
        candidates: documents reranked by exact MaxSim per search (default 100; raise it for
            recall, lower it for speed). Overridable per search.
        embedder: a :class:`~vecpress.embeddings.token_embedders.TokenEmbedder`, used by
            :meth:`add_texts` and :meth:`search_text`.
        read_only / durability: as for :class:`~vecpress.Collection`.
        **index_options: passed to the FDE :class:`~vecpress.Index` (``codec``, ``seed``,
            ``partitions``, ...). Without ``partitions`` the FDE originals are not kept
            (``rerank=False``): the exact rerank is MaxSim on the tokens and the codes are
            scanned flat. With ``partitions="auto"`` or a list count the FDE originals are kept
            on disk as float16 (lists are trained from them; RAM is unchanged) and a search
            probes ``nprobe`` lists, then reranks the shortlist by exact FDE score and by MaxSim.
    """

    def __init__(self, dim: int | None = None, path: str | Path | None = None, *, bits: int | None = None,
                 fde: FDEConfig | dict | None = None, candidates: int = DEFAULT_CANDIDATES,
                 embedder: Any = None, read_only: bool = False, durability: str = "full",
                 **index_options: Any) -> None:
        self._durability = as_durability(durability)
        self.candidates = as_positive_int(candidates, "candidates")
        self.embedder = embedder
        self._path = None if path is None else Path(path)
        self._write_lock = threading.Lock()
        self._lock: storage.DirectoryLock | None = None
        if "rerank" in index_options:
            raise TypeError("rerank is not an option here: the exact rerank is MaxSim on the tokens")
        if self._path is not None and (self._path / MANIFEST).exists():
            self._open(dim, bits, fde, read_only, index_options)
        elif read_only:
            raise FileNotFoundError(f"path={str(path)!r} holds no multi-vector store ({MANIFEST} is missing)")
        else:
            self._create(dim, bits, fde, index_options)
        if embedder is not None and getattr(embedder, "dim", self.dim) != self.dim:
            raise ValueError(f"embedder makes {embedder.dim}-dimensional tokens but the store has dim={self.dim}")

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, **kwargs: Any) -> "MultiVectorCollection":
        """Open an existing store (``FileNotFoundError`` if there is none)."""
        if not (Path(path) / MANIFEST).exists():
            raise FileNotFoundError(f"path={str(path)!r} holds no multi-vector store ({MANIFEST} is missing)")
        return cls(path=path, read_only=read_only, **kwargs)

    # ------------------------------------------------------------------ create / open
    def _create(self, dim: int | None, bits: int | None, fde: Any, index_options: dict) -> None:
        if dim is None:
            raise TypeError("dim (the token dimension) is required to create a store: "
                            "MultiVectorCollection(dim, path=...)")
        config = _fde_config(fde, dim)
        self._encoder = FDEEncoder(config)
        sync = self._durability == "full"
        bits = 4 if bits is None else bits
        # an in-memory Collection validates bits and the index options before any file exists
        keep_fdes = _wants_lists(index_options)
        probe = Collection(config.output_dim, bits=bits, metric="ip", rerank=keep_fdes,
                           **index_options)
        if self._path is None:
            self._collection = probe
            self._tokens = _MemoryTokens(config.dim)
            self._read_only = False
            return
        probe.close()
        path = self._path
        self._lock = storage.lock_new_directory(path, "multi-vector store")
        try:
            manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                        "fde": config.to_dict(), "fde_fingerprint": self._encoder.fingerprint(),
                        "token_dtype": "float16"}
            _write_json(path / MANIFEST, manifest, sync=sync)
            self._tokens = TokenFile.create(path / TOKENS_FILE, config.dim, sync=sync)
            self._collection = Collection(config.output_dim, path=path / COLLECTION_DIR, bits=bits,
                                          metric="ip", rerank=keep_fdes,
                                          durability=self._durability, **index_options)
        except BaseException:
            self._release()
            raise
        self._read_only = False

    def _open(self, dim: int | None, bits: int | None, fde: Any, read_only: bool, index_options: dict) -> None:
        path = self._path
        if not read_only:
            self._lock = storage.DirectoryLock(path)
        try:
            manifest = _read_json(path / MANIFEST)
            if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
                raise StoreCorruptedError(f"{path / MANIFEST}: not a version-{FORMAT_VERSION} "
                                          f"{FORMAT_NAME} manifest")
            try:
                config = FDEConfig.from_dict(manifest.get("fde"))
            except (TypeError, ValueError) as exc:
                raise StoreCorruptedError(f"{path / MANIFEST}: bad FDE configuration ({exc})") from None
            if dim is not None and dim != config.dim:
                raise ValueError(f"dim={dim} but the store at {str(path)!r} holds {config.dim}-dimensional tokens")
            if fde is not None and _fde_config(fde, config.dim) != config:
                raise ValueError(f"fde={fde!r} differs from the store's {config}; omit fde when opening")
            self._encoder = FDEEncoder(config)
            if manifest.get("fde_fingerprint") != self._encoder.fingerprint():
                raise StoreCorruptedError(
                    f"{path / MANIFEST}: the FDE matrices drawn from seed {config.seed} differ from "
                    f"those the store was built with (altered manifest, or a numpy whose random "
                    f"stream changed); rebuild the store")
            sync = self._durability == "full"
            tokens_path = path / TOKENS_FILE
            self._collection = Collection(path=path / COLLECTION_DIR, bits=bits, read_only=read_only,
                                          durability=self._durability, **index_options)
            if self._collection.dim != config.output_dim or self._collection.metric != "ip":
                raise StoreCorruptedError(f"{path / COLLECTION_DIR}: dim/metric do not match the FDE "
                                          f"configuration in {MANIFEST}")
            if not tokens_path.exists() and not read_only and len(self._collection) == 0:
                TokenFile.create(tokens_path, config.dim, sync=sync).close()  # a crash while creating
            self._tokens = TokenFile(tokens_path, config.dim, read_only=read_only, sync=sync)
        except BaseException:
            if hasattr(self, "_collection"):
                self._collection.close()
            self._release()
            raise
        self._read_only = read_only

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Token dimension."""
        return self._encoder.config.dim

    @property
    def fde_config(self) -> FDEConfig:
        return self._encoder.config

    @property
    def collection(self) -> Collection:
        """The Collection of FDEs (documents, metadata, filters); read it, do not write it."""
        return self._collection

    @property
    def path(self) -> Path | None:
        return self._path

    def __len__(self) -> int:
        return len(self._collection)

    def __repr__(self) -> str:
        where = "in memory" if self._path is None else f"path={str(self._path)!r}"
        return (f"MultiVectorCollection(dim={self.dim}, {where}, documents={len(self)}, "
                f"fde_dim={self._encoder.output_dim})")

    def __enter__(self) -> "MultiVectorCollection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Make everything durable, release the write lock; the object is unusable afterwards."""
        with self._write_lock:
            if not self._read_only and self._path is not None:
                self._tokens.flush()
            self._read_only = True
            self._collection.close()
            self._tokens.close()
            self._release()

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[str] | None, tokens: Sequence[Any], texts: Sequence[str | None] | None = None,
               metadatas: Sequence[dict | None] | None = None) -> list[str]:
        """Insert or replace documents, each with a ``(tokens, dim)`` matrix (any number of rows
        from 1 to 65,536); returns their ids. Everything is validated before anything is written."""
        matrices = self._checked_matrices(tokens)
        n = len(matrices)
        ids = _checked_ids(ids, n)
        texts = _checked_texts(texts, n)
        metas = _checked_list(metadatas, n, "metadatas")
        for i, meta in enumerate(metas):
            _metadata_json(meta, f"metadatas[{i}]")  # the Collection's rules, checked before writing
            if isinstance(meta, dict) and TOKENS_KEY in meta:
                raise ValueError(f"metadatas[{i}] uses the reserved key {TOKENS_KEY!r}; rename it")
        fdes = self._encoder.encode_documents(matrices)
        with self._write_lock:
            self._check_writable()
            starts = self._tokens.append(matrices)
            stored = [dict(meta or {}, **{TOKENS_KEY: [int(start), len(matrix)]})
                      for meta, start, matrix in zip(metas, starts, matrices)]
            self._collection.upsert(ids, fdes, texts, stored)
        return ids

    def add_texts(self, texts: Sequence[str], metadatas: Sequence[dict | None] | None = None,
                  ids: Sequence[str] | None = None, *, batch_size: int | None = None) -> list[str]:
        """Embed ``texts`` with the store's token embedder and upsert them."""
        embedder = self._need_embedder("add_texts")
        texts = list(texts)
        return self.upsert(ids, embedder.embed_documents(texts, batch_size=batch_size), texts, metadatas)

    def delete(self, ids: Sequence[str] | None = None, where: Any = None) -> int:
        """Delete documents by id and/or filter (as :meth:`Collection.delete`); returns the count."""
        with self._write_lock:
            self._check_writable()
            return self._collection.delete(ids=ids, where=where)

    def clear(self) -> None:
        """Delete every document."""
        with self._write_lock:
            self._check_writable()
            self._collection.clear()

    def _check_writable(self) -> None:
        if self._read_only:
            raise PermissionError("this multi-vector store is read-only (opened with read_only=True "
                                  "or closed); open it with MultiVectorCollection.open(path) to write")

    def _checked_matrices(self, tokens: Any) -> list[np.ndarray]:
        if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
            raise TypeError("tokens must be a list with one (tokens, dim) matrix per document; "
                            "for one document pass [matrix]")
        if isinstance(tokens, (str, bytes, dict)) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a list of (tokens, {self.dim}) matrices, got {type(tokens).__name__}")
        matrices = []
        for i, matrix in enumerate(tokens):
            if hasattr(matrix, "detach"):  # torch
                matrix = matrix.detach().cpu().float().numpy()
            matrix = as_matrix(matrix, self.dim, f"tokens[{i}]")
            if len(matrix) > MAX_TOKENS_PER_DOCUMENT:
                raise ValueError(f"tokens[{i}] has {len(matrix)} rows; at most {MAX_TOKENS_PER_DOCUMENT} "
                                 f"tokens per document (split the document)")
            if np.abs(matrix).max() > np.finfo(np.float16).max:
                raise ValueError(f"tokens[{i}] has values beyond float16's range (65504), where "
                                 f"tokens are stored; normalise or rescale them")
            matrices.append(matrix)
        if not matrices:
            raise ValueError("tokens is empty: pass at least one document's token matrix")
        return matrices

    # ------------------------------------------------------------------ reads
    def search(self, query: Any, k: int = 10, where: Any = None, *, candidates: int | None = None,
               include_tokens: bool = False, nprobe: int | None = None) -> list[Hit]:
        """The ``k`` documents with the highest MaxSim to ``query`` (a ``(tokens, dim)`` matrix),
        best first, among those matching ``where``. ``score`` is the exact MaxSim (sum over query
        tokens of the best inner product with a document token), computed from the stored float16
        tokens for the ``candidates`` (default: the store's) documents whose FDE scores best.
        ``nprobe``: lists scanned in a partitioned store (default: the calibrated count)."""
        k = as_positive_int(k, "k")
        candidates = self.candidates if candidates is None else as_positive_int(candidates, "candidates")
        if hasattr(query, "detach"):
            query = query.detach().cpu().float().numpy()
        query = as_matrix(query, self.dim, "query", allow_1d=True)
        if len(query) > MAX_TOKENS_PER_DOCUMENT:
            raise ValueError(f"query has {len(query)} tokens; at most {MAX_TOKENS_PER_DOCUMENT}")
        fde = self._encoder.encode_queries([query])[0]
        if not fde.any():  # an all-zero query scores every document 0: any candidates will do
            fde[0] = np.float32(1e-30)
        shortlist = self._collection.search(fde, k=max(k, candidates), where=where, nprobe=nprobe)
        return self._rerank(query, shortlist, k, include_tokens)

    def search_text(self, text: str, k: int = 10, where: Any = None, *, candidates: int | None = None,
                    nprobe: int | None = None) -> list[Hit]:
        """Embed ``text`` with the store's token embedder, then :meth:`search`."""
        return self.search(self._need_embedder("search_text").embed_query(text), k, where,
                           candidates=candidates, nprobe=nprobe)

    def _rerank(self, query: np.ndarray, shortlist: list[Hit], k: int, include_tokens: bool) -> list[Hit]:
        if not shortlist:
            return []
        runs = np.array([_token_run(hit, self._tokens.path) for hit in shortlist], dtype=np.int64)
        tokens, offsets = self._tokens.read(runs[:, 0], runs[:, 1])
        scores = maxsim_scores(query, tokens, offsets)
        order = np.argsort(-scores, kind="stable")[:k]
        hits = []
        for i in order:
            hit = _public(shortlist[i])
            hit.score = float(scores[i])
            if include_tokens:
                hit.vector = np.asarray(tokens[offsets[i]:offsets[i + 1]], dtype=np.float32)
            hits.append(hit)
        return hits

    def get(self, ids: Sequence[str] | None = None, *, where: Any = None, limit: int | None = None,
            offset: int = 0, include_tokens: bool = False) -> list[Hit]:
        """Documents by id and/or filter (as :meth:`Collection.get`); with ``include_tokens``
        each hit's ``vector`` is its float32 token matrix."""
        if ids is not None:
            ids = _checked_id_list(ids)
        hits = self._collection.get(ids, where=where, limit=limit, offset=offset)
        if not include_tokens or not hits:
            return [_public(hit) for hit in hits]
        runs = np.array([_token_run(hit, self._tokens.path) for hit in hits], dtype=np.int64)
        tokens, offsets = self._tokens.read(runs[:, 0], runs[:, 1])
        out = []
        for i, hit in enumerate(hits):
            hit = _public(hit)
            hit.vector = np.asarray(tokens[offsets[i]:offsets[i + 1]], dtype=np.float32)
            out.append(hit)
        return out

    def count(self, where: Any = None) -> int:
        return self._collection.count(where)

    def refresh(self) -> None:
        """Read-only stores: catch up with what the writer committed since opening."""
        self._collection.refresh()

    def stats(self) -> dict[str, Any]:
        """The FDE Collection's stats plus the token file's: ``ram_bytes`` is the FDE codes (the
        tokens stay on disk) plus the fixed matrices, ``ram_fixed_bytes`` the codec's state and
        the encoder's drawn matrices (``fde_fixed_bytes``), ``token_rows`` counts rows
        including unused ones."""
        info = dict(self._collection.stats())
        encoder_bytes = self._encoder.fixed_bytes
        info["fde_fixed_bytes"] = encoder_bytes
        for key in ("ram_bytes", "ram_fixed_bytes"):
            if key in info:
                info[key] += encoder_bytes
        info["fde_dim"] = self._encoder.output_dim
        info["token_rows"] = self._tokens.rows
        info["token_disk_bytes"] = self._tokens.disk_bytes
        return info

    def _need_embedder(self, method: str) -> Any:
        if self.embedder is None:
            raise ValueError(f"{method} needs a token embedder: MultiVectorCollection(..., embedder="
                             f"SentenceTransformerTokenEmbedder()) or pass token matrices to "
                             f"{'upsert' if method == 'add_texts' else 'search'}")
        return self.embedder


def _wants_lists(index_options: dict) -> bool:
    """Whether the FDE index is to be partitioned, which needs its originals kept: only when
    ``partitions`` is given (the Index's own default, ``"auto"``, stays flat without them)."""
    return index_options.get("partitions") is not None


def _fde_config(fde: Any, dim: int) -> FDEConfig:
    if fde is None:
        return FDEConfig(dim=dim)
    if isinstance(fde, FDEConfig):
        if fde.dim != dim:
            raise ValueError(f"fde.dim={fde.dim} but dim={dim}")
        return fde
    if isinstance(fde, dict):
        unknown = set(fde) - set(FDEConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown fde options {sorted(unknown)}; use {sorted(FDEConfig.__dataclass_fields__)}")
        return FDEConfig(**{"dim": dim, **fde})
    raise TypeError(f"fde must be an FDEConfig, a dict of its fields or None, got {type(fde).__name__}")


def _token_run(hit: Hit, path: Path | None) -> tuple[int, int]:
    run = hit.metadata.get(TOKENS_KEY)
    if not (isinstance(run, list) and len(run) == 2 and all(type(v) is int for v in run)
            and run[0] >= 0 and 1 <= run[1] <= MAX_TOKENS_PER_DOCUMENT):
        # (the row count is bounded so that a crafted database cannot make a search gather
        # the whole token file once per candidate)
        raise StoreCorruptedError(f"{path}: document {hit.id!r} has no valid token run ({TOKENS_KEY})")
    return run[0], run[1]


def _public(hit: Hit) -> Hit:
    """The hit as users see it: the reserved token key left out of its metadata."""
    metadata = {key: value for key, value in hit.metadata.items() if key != TOKENS_KEY}
    return Hit(hit.id, hit.score, hit.text, metadata)


def _write_json(path: Path, data: dict, *, sync: bool) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with os.fdopen(storage.create_new_file(temporary), "wb") as handle:
        handle.write(json.dumps(data, sort_keys=True).encode("utf-8"))
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if sync:
        storage.fsync_dir(path.parent)


def _read_json(path: Path) -> dict:
    fd = storage.open_regular_file(path)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise StoreCorruptedError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreCorruptedError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StoreCorruptedError(f"{path}: not a JSON object")
    return data


class _MemoryTokens:
    """The token rows of an in-memory store (same interface as :class:`TokenFile`): a buffer
    that doubles when full, so readers keep a consistent array while a writer appends."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.path = None
        self._buffer = np.zeros((1024, dim), dtype=np.float16)
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def disk_bytes(self) -> int:
        return 0

    def append(self, matrices: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            rows = np.concatenate(matrices).astype(np.float16)
            starts = self._rows + np.concatenate([[0], np.cumsum([len(m) for m in matrices])[:-1]])
            end = self._rows + len(rows)
            if end > len(self._buffer):
                grown = np.zeros((max(end, 2 * len(self._buffer)), self.dim), dtype=np.float16)
                grown[:self._rows] = self._buffer[:self._rows]
                self._buffer = grown
            self._buffer[self._rows:end] = rows
            self._rows = end
            return starts.astype(np.int64)

    def read(self, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        view = self._buffer[:self._rows]
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.repeat(np.asarray(starts) - offsets[:-1], counts) + np.arange(offsets[-1])
        return view[rows], offsets

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
