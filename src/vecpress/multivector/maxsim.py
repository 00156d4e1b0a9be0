"""Exact late-interaction scores: MaxSim (Chamfer similarity) of a query against token sets."""

from __future__ import annotations

import numpy as np


def maxsim_scores(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``sum over query tokens q of max over document tokens p of <q, p>`` for every document.

    ``tokens`` holds the documents' token rows back to back (any float dtype, e.g. float16 read
    from disk); document ``i`` is rows ``offsets[i]:offsets[i+1]`` and has at least one row.
    One matrix product scores every (query token, document token) pair, then a segmented max
    per document. Returns float32 ``(documents,)``.
    """
    n = len(offsets) - 1
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    similarities = np.asarray(tokens, dtype=np.float32) @ np.asarray(query, dtype=np.float32).T
    best = np.maximum.reduceat(similarities, np.asarray(offsets[:-1], dtype=np.int64), axis=0)
    return best.sum(axis=1, dtype=np.float32)


def maxsim_brute_force(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, k: int,
                       block_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` documents by MaxSim: ``(scores, rows)``, best first. Scans the token
    rows in blocks of whole documents so memory stays bounded."""
    n = len(offsets) - 1
    scores = np.empty(n, dtype=np.float32)
    start = 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + block_rows, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        lo, hi = int(offsets[start]), int(offsets[stop])
        scores[start:stop] = maxsim_scores(query, tokens[lo:hi], offsets[start:stop + 1] - lo)
        start = stop
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top], top
