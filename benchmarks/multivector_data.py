"""Token embeddings of WordNet glosses for the multi-vector benchmark, cached under ``.cache/``.

The base set and the held-out gloss queries are those of :func:`benchmarks.datasets.load_embeddings`
(same seed, same split), so single-vector figures on the same texts come from the existing cache.
Each text's all-MiniLM-L6-v2 token embeddings are stored raw (float16, not normalised, special
tokens kept and flagged), so the benchmark can measure both choices the embedder offers.

    HF_HUB_OFFLINE=1 python -m benchmarks.multivector_data     # builds the cache (minutes)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.datasets import CACHE_DIR, _fingerprint

N_BASE = 20_000
N_GLOSS_QUERIES = 500
N_LABELLED_QUERIES = 200


@dataclass
class TokenSet:
    """Token matrices of many texts: rows ``offsets[i]:offsets[i+1]`` of ``tokens`` are text ``i``."""

    tokens: np.ndarray   # (total tokens, dim) float16, raw model output
    offsets: np.ndarray  # (texts + 1,) int64
    special: np.ndarray  # (total tokens,) bool: [CLS] / [SEP]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def matrices(self, *, normalize: bool = True, special_tokens: bool = True) -> list[np.ndarray]:
        """float32 matrix per text, as :class:`SentenceTransformerTokenEmbedder` would return it."""
        out = []
        for i in range(len(self)):
            start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
            matrix = np.asarray(self.tokens[start:stop], dtype=np.float32)
            if not special_tokens:
                kept = matrix[~self.special[start:stop]]
                matrix = kept if len(kept) else matrix[:1]
            if normalize:
                matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            out.append(np.ascontiguousarray(matrix, dtype=np.float32))
        return out


def embed_tokens(texts: list[str], name: str, *, cache_dir: Path = CACHE_DIR, batch_size: int = 64) -> TokenSet:
    """Raw token embeddings of ``texts`` (computed once, cached as one ``.npz``)."""
    path = Path(cache_dir) / f"tokens-all-MiniLM-L6-v2__{name}__{len(texts)}__{_fingerprint(chr(10).join(texts))}.npz"
    if path.is_file():
        with np.load(path) as data:
            return TokenSet(data["tokens"], data["offsets"], data["special"])
    from vecpress.embeddings.token_embedders import SentenceTransformerTokenEmbedder

    embedder = SentenceTransformerTokenEmbedder(normalize=False, special_tokens=True)
    model = embedder._sentence._model
    special_ids = embedder._special_ids
    chunks, flags, lengths = [], [], []
    started = time.perf_counter()
    for start in range(0, len(texts), 1024):
        outputs = model.encode(texts[start:start + 1024], batch_size=batch_size, output_value=None,
                               show_progress_bar=False)
        for features in outputs:
            mask = features["attention_mask"].cpu().numpy().astype(bool)
            chunks.append(features["token_embeddings"].cpu().float().numpy()[mask].astype(np.float16))
            flags.append(np.isin(features["input_ids"].cpu().numpy()[mask], special_ids))
            lengths.append(int(mask.sum()))
        print(f"{name}: {start + len(outputs)}/{len(texts)} texts, {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    tokens, special = np.concatenate(chunks), np.concatenate(flags)
    partial = path.with_name(path.name + f".{os.getpid()}.partial.npz")
    np.savez(partial, tokens=tokens, offsets=offsets, special=special)
    os.replace(partial, path)
    return TokenSet(tokens, offsets, special)


def load_token_benchmark(n_base: int = N_BASE, n_gloss_queries: int = N_GLOSS_QUERIES,
                         n_labelled: int = N_LABELLED_QUERIES):
    """``(base_texts, base single vectors, base tokens, gloss query texts, their single vectors,
    their tokens, labelled queries, their tokens)``."""
    from benchmarks.datasets import load_embeddings
    from benchmarks.wordnet_queries import labelled_queries

    base, queries, base_texts, query_texts = load_embeddings(n_base, n_gloss_queries, seed=0, progress=False)
    labelled = labelled_queries(base_texts, n_labelled, progress=False)
    query_tokens = embed_tokens(query_texts, "wordnet-gloss-queries")
    labelled_tokens = embed_tokens(labelled.texts, "wordnet-lemma-queries")
    base_tokens = embed_tokens(base_texts, "wordnet-glosses")
    return base_texts, base, base_tokens, query_texts, queries, query_tokens, labelled, labelled_tokens


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vecpress.embeddings.sentence_transformers import prefer_passive_openmp

    prefer_passive_openmp()
    data = load_token_benchmark()
    print(f"base tokens: {data[2].tokens.shape}, gloss queries: {data[5].tokens.shape}, "
          f"labelled queries: {data[7].tokens.shape}")
