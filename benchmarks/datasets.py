"""Real benchmark data: WordNet glosses embedded with the default vecpress embedder.

Run from the repository root to build the cache (a few minutes on two CPU cores):

    HF_HUB_OFFLINE=1 python -m benchmarks.datasets

Import from other benchmarks as ``from benchmarks.datasets import load_embeddings, ground_truth``.
(Run as a module: this file shares its name with the Hugging Face ``datasets`` package, and a
script's own folder comes first on ``sys.path``, where transformers would pick this file up.)
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/datasets.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from vecpress.wordnet import WORDNET_DIR, read_glosses

REPO_ROOT = Path(__file__).resolve().parent.parent
# VECPRESS_BENCH_CACHE moves it (e.g. to time a run on an empty cache, as CI has)
CACHE_DIR = Path(os.environ.get("VECPRESS_BENCH_CACHE") or REPO_ROOT / ".cache" / "embeddings")
CORPUS_NAME = "wordnet-glosses"
DEFAULT_MODEL_DIM = 384  # of vecpress's default embedder, all-MiniLM-L6-v2


def load_wordnet_glosses(limit: int | None = None, *,
                         wordnet_dir: Path | str = WORDNET_DIR) -> list[str]:
    """Glosses of every WordNet synset as ``"first lemma: gloss"``, deduplicated, in file order
    (nouns, then verbs, adjectives, adverbs): about 117k texts, read by :mod:`vecpress.wordnet`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    texts = [gloss.text for gloss in read_glosses(wordnet_dir)]
    return texts if limit is None else texts[:limit]


def _fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _embedding_cache_path(model_name: str, dim: int, texts: list[str], cache_dir: Path,
                          corpus_name: str = CORPUS_NAME) -> Path:
    # keyed by model, corpus and count; the text hash catches a changed parser with an equal count
    texts_hash = _fingerprint("\n".join(texts))
    return cache_dir / f"{_slug(model_name)}-{dim}d__{corpus_name}__{len(texts)}__{texts_hash}.npy"


def embed_corpus(
    texts: list[str],
    *,
    embedder=None,
    cache_dir: Path | str = CACHE_DIR,
    progress: bool | None = True,
    batch_size: int = 4096,
    corpus_name: str = CORPUS_NAME,
) -> np.ndarray:
    """float32 embeddings of ``texts`` (one row per text), computed once and cached as ``.npy``.

    Texts are embedded shortest first so each model batch pads little, and streamed into a
    memory-mapped file, so memory stays bounded by one batch. ``corpus_name`` goes into the
    cache file's name (the glosses and the labelled queries of ``benchmarks.wordnet_queries``
    are cached side by side).
    """
    from vecpress.embeddings import DEFAULT_MODEL, default_embedder, iter_document_batches

    if embedder is None:  # a cache hit then needs no model at all (saves loading torch)
        model_name, dim = DEFAULT_MODEL, DEFAULT_MODEL_DIM
    else:
        model_name, dim = getattr(embedder, "model_name", type(embedder).__name__), embedder.dim
    cache_dir = Path(cache_dir)
    path = _embedding_cache_path(model_name, dim, texts, cache_dir, corpus_name)
    if path.is_file():
        vectors = np.load(path, mmap_mode="r")
        if vectors.shape == (len(texts), dim) and vectors.dtype == np.float32:
            return vectors
    if embedder is None:
        embedder = default_embedder()
        if embedder.dim != dim:
            raise RuntimeError(f"the default model has {embedder.dim} dimensions, expected {dim}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    order = np.argsort([len(text) for text in texts], kind="stable")
    by_length = [texts[i] for i in order]
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(texts), embedder.dim))
    try:
        for start, batch in iter_document_batches(embedder, by_length, batch_size, progress=progress):
            out[order[start : start + len(batch)]] = batch
        out.flush()
        del out
        os.replace(partial, path)  # atomic: a half-written cache is never picked up
    finally:
        partial.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def load_embeddings(
    n_base: int,
    n_queries: int,
    seed: int = 0,
    *,
    embedder=None,
    cache_dir: Path | str = CACHE_DIR,
    progress: bool | None = True,
    corpus_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Embedded WordNet glosses split into a base set and held-out queries.

    Returns ``(base, queries, base_texts, query_texts)``: float32 arrays of shape
    ``(n_base, dim)`` and ``(n_queries, dim)`` and their texts. No query is in the base set.
    The split is a seeded shuffle: for one seed and ``n_queries`` the queries are the same
    whatever ``n_base`` is, and a smaller base is a prefix of a larger one.

    ``corpus_size`` draws from that many glosses spread evenly over the corpus (every part
    of speech) instead of all of them, so a small run on an empty cache embeds only those
    (about 60 s per 10k texts on 2 cores); their vectors are cut from the full cache when it
    exists.
    """
    for name, value in (("n_base", n_base), ("n_queries", n_queries)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if corpus_size is not None and (isinstance(corpus_size, bool)
                                    or not isinstance(corpus_size, (int, np.integer))
                                    or corpus_size < n_base + n_queries):
        raise ValueError(f"corpus_size must be an integer of at least n_base + n_queries = "
                         f"{n_base + n_queries}, or None, got {corpus_size!r}")
    texts = load_wordnet_glosses()
    if n_base + n_queries > len(texts):
        raise ValueError(
            f"n_base + n_queries = {n_base + n_queries} exceeds the {len(texts)} texts of the corpus"
        )
    if corpus_size is not None and corpus_size < len(texts):
        vectors, texts = _embedded_sample(texts, int(corpus_size), embedder, Path(cache_dir),
                                          progress)
    else:
        vectors = embed_corpus(texts, embedder=embedder, cache_dir=cache_dir, progress=progress)
    permutation = np.random.default_rng(seed).permutation(len(texts))
    query_rows = permutation[:n_queries]
    base_rows = permutation[n_queries : n_queries + n_base]
    base = np.ascontiguousarray(vectors[base_rows], dtype=np.float32)
    queries = np.ascontiguousarray(vectors[query_rows], dtype=np.float32)
    return base, queries, [texts[i] for i in base_rows], [texts[i] for i in query_rows]


def _embedded_sample(texts: list[str], size: int, embedder, cache_dir: Path,
                     progress: bool | None) -> tuple[np.ndarray, list[str]]:
    """``size`` texts spread evenly over ``texts`` and their vectors: rows of the full
    corpus's cached embeddings when that file exists, else embedded (and cached) alone."""
    rows = [(i * len(texts)) // size for i in range(size)]
    sample = [texts[i] for i in rows]
    if embedder is None:
        from vecpress.embeddings import DEFAULT_MODEL

        full = _embedding_cache_path(DEFAULT_MODEL, DEFAULT_MODEL_DIM, texts, cache_dir)
        if full.is_file():
            vectors = np.load(full, mmap_mode="r")
            if vectors.shape == (len(texts), DEFAULT_MODEL_DIM):
                return np.asarray(vectors[rows], dtype=np.float32), sample
    return embed_corpus(sample, embedder=embedder, cache_dir=cache_dir, progress=progress), sample


def release_model() -> None:
    """Drop the shared default embedder (and its model's memory) once the vectors are in hand,
    so that it does not weigh on the measurements that follow. Loaded again if needed."""
    import gc

    module = sys.modules.get("vecpress.embeddings.sentence_transformers")
    if module is not None:
        module.default_embedder.cache_clear()
    gc.collect()


def ground_truth(
    base: np.ndarray,
    queries: np.ndarray,
    k: int = 100,
    metric: str = "ip",
    *,
    cache_dir: Path | str | None = CACHE_DIR,
    block_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by float32 brute force: ``(scores, ids)``, each ``(n_queries, k)``, best first.

    ``metric`` is ``"ip"``, ``"cosine"`` or ``"l2"``; scores are higher-is-better (negated
    squared distance for ``"l2"``); ties go to the lower id. Results are cached next to the
    embeddings, keyed by a hash of the inputs; ``cache_dir=None`` skips the cache.
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"base and queries must be 2-d with equal widths, got {base.shape} and {queries.shape}")
    if metric not in ("ip", "cosine", "l2"):
        raise ValueError(f"metric must be 'ip', 'cosine' or 'l2', got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(base):
        raise ValueError(f"k must be an integer in [1, {len(base)}], got {k!r}")
    k = int(k)

    path = None
    if cache_dir is not None:
        key = _fingerprint(base.tobytes(), queries.tobytes(), str(base.shape), str(queries.shape))
        path = Path(cache_dir) / f"ground-truth__{key}__{metric}__k{k}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                return cached["scores"], cached["ids"]

    if metric == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    half_norms = 0.5 * np.einsum("ij,ij->i", base, base) if metric == "l2" else None
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block_size):
        block = base @ queries[start : start + block_size].T  # (n_base, block)
        block = np.ascontiguousarray(block.T)
        if half_norms is not None:
            block -= half_norms  # ranks as -||x - q||^2 / 2 does; exact scores below
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        ids[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
        scores[start : start + len(block)] = np.take_along_axis(top_scores, order, axis=1)
    if metric == "l2":
        query_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
        scores = (2.0 * scores - query_norms).astype(np.float32)  # -||x - q||^2

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial.npz")
        np.savez(partial, scores=scores, ids=ids)
        os.replace(partial, path)
    return scores, ids


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Embed the WordNet glosses once and cache them.")
    parser.add_argument("--base", type=int, default=100_000, help="base vectors for the ground truth")
    parser.add_argument("--queries", type=int, default=1_000, help="held-out query vectors")
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    texts = load_wordnet_glosses()
    print(f"{len(texts)} WordNet glosses parsed in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    vectors = embed_corpus(texts)
    print(f"embeddings {vectors.shape} {vectors.dtype} ready in {time.perf_counter() - started:.1f} s", flush=True)
    n_base = min(args.base, len(texts) - args.queries)
    base, queries, _, _ = load_embeddings(n_base, args.queries)
    started = time.perf_counter()
    ground_truth(base, queries, k=args.k)
    print(f"ground truth top-{args.k} for {n_base} base / {args.queries} queries in "
          f"{time.perf_counter() - started:.1f} s; cache: {CACHE_DIR}", flush=True)


if __name__ == "__main__":
    main()
