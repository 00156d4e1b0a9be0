"""Shared test data and the brute-force numpy reference every search is compared with."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 20,
                      spread: float = 0.35) -> np.ndarray:
    """Anisotropic clustered data, closer to real embeddings than isotropic noise."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.2, dim).astype(np.float32)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * scales
    labels = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * scales * spread
    return (centres[labels] + noise + 0.5).astype(np.float32)


def reference_scores(data: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Exact higher-is-better scores (q, n) in float64."""
    data = data.astype(np.float64)
    queries = queries.astype(np.float64)
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        return -(((queries[:, None, :] - data[None, :, :]) ** 2).sum(axis=2))
    return queries @ data.T


def reference_topk(data: np.ndarray, queries: np.ndarray, k: int, metric: str,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, row numbers) by brute force; rows outside ``allowed`` excluded."""
    scores = reference_scores(data, queries, metric)
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def rounding_bound(codec, codes: np.ndarray, factors: np.ndarray, step: float) -> np.ndarray:
    """Largest change of each row's estimate (``rabitq``, ``saq``) when the query moves by half
    a quantization step per dimension."""
    x_abs = np.abs(codec.decode_levels(codes)).astype(np.float64)
    if codec.name == "rabitq":
        return np.abs(factors[:, 0]) * x_abs.sum(axis=1) * step / 2
    seg_factor, _ = codec.decode_factors(factors)
    per_seg = np.add.reduceat(x_abs, codec.seg_starts[:-1], axis=1)
    return (np.abs(seg_factor) * per_seg).sum(axis=1) * step / 2


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth))
    return hits / truth.size


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
