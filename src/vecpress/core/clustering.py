"""Temporary numpy k-means (replaced by the numba version on branch wt-K)."""

from __future__ import annotations

import numpy as np


def _scores(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    ip = vectors @ centroids.T
    if metric == "l2":
        return 2 * ip - np.einsum("ij,ij->i", centroids, centroids)[None, :]
    return ip


def assign(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    out = np.empty(len(vectors), np.int32)
    for lo in range(0, len(vectors), 16384):
        out[lo:lo + 16384] = _scores(vectors[lo:lo + 16384], centroids, metric).argmax(axis=1)
    return out


def rank_lists(queries: np.ndarray, centroids: np.ndarray, metric: str, n: int) -> np.ndarray:
    scores = _scores(queries, centroids, metric)
    return np.argsort(-scores, axis=1, kind="stable")[:, :n].astype(np.int32)


def train_centroids(sample: np.ndarray, n_lists: int, metric: str, *, seed: int = 0,
                    iterations: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(len(sample), n_lists, replace=False)].astype(np.float32)
    for _ in range(iterations):
        labels = assign(sample, centroids, metric)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, labels, sample)
        counts = np.bincount(labels, minlength=n_lists)
        full = counts > 0
        centroids[full] = (sums[full] / counts[full, None]).astype(np.float32)
        if metric == "ip":
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids
