"""k-means for partitions (core/clustering.py) against numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress.core import clustering
from vecpress.core.clustering import assign, rank_lists, train_centroids


def _scores(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Higher-is-better float64 scores (n, n_lists): inner product or minus squared distance."""
    x = vectors.astype(np.float64)
    c = centroids.astype(np.float64)
    if metric == "ip":
        return x @ c.T
    return -(((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))


def _blobs(n_blobs: int, per_blob: int, dim: int, metric: str, seed: int):
    """Well-separated blobs (on the unit sphere for "ip"): rows and their blob numbers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim)) * 10.0
    if metric == "ip":
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_blobs), per_blob)
    spread = 0.02 if metric == "ip" else 0.5
    rows = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    if metric == "ip":
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    order = rng.permutation(len(rows))
    return rows[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), dim=st.integers(1, 40), n_lists=st.integers(1, 60),
       block=st.sampled_from([1, 7, 64, 8192]), dtype=st.sampled_from(["float32", "float64",
                                                                         "float16"]),
       seed=st.integers(0, 2**16))
def test_assign_is_the_brute_force_nearest_centroid(metric, n, dim, n_lists, block, dtype,
                                                     seed):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(dtype)
    centroids = rng.standard_normal((n_lists, dim)).astype(np.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clustering, "_BLOCK_ROWS", block)  # several blocks of rows
        labels = assign(vectors, centroids, metric)
    assert labels.dtype == np.int32 and labels.shape == (n,)
    scores = _scores(vectors.astype(np.float32), centroids, metric)
    best = scores.max(axis=1)
    got = scores[np.arange(n), labels]
    # the chosen centroid scores the best (up to float32 rounding); the same one unless tied
    assert (got >= best - 1e-4 * (1 + np.abs(best))).all()
    second = np.sort(scores, axis=1)[:, -2] if n_lists > 1 else np.full(n, -np.inf)
    clear = best - second > 1e-3 * (1 + np.abs(best))
    np.testing.assert_array_equal(labels[clear], scores.argmax(axis=1)[clear])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_on_separated_blobs_recovers_them(metric, seed):
    rows, blob = _blobs(12, 150, 32, metric, seed=seed)
    centroids = train_centroids(rows, 12, metric, seed=seed)
    labels = assign(rows, centroids, metric)
    for b in range(12):
        assert len(set(labels[blob == b].tolist())) == 1  # each blob in one list
    assert len(set(labels.tolist())) == 12  # and each in its own


def test_training_is_deterministic_for_a_seed():
    rows, _ = _blobs(20, 50, 16, "l2", seed=3)
    rows = rows + np.random.default_rng(0).standard_normal(rows.shape).astype(np.float32)
    for metric in ("ip", "l2"):
        a = train_centroids(rows, 30, metric, seed=7)
        b = train_centroids(rows.copy(), 30, metric, seed=7)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, train_centroids(rows, 30, metric, seed=8))


@pytest.mark.parametrize("iterations", [0, 1, 10])
def test_spherical_centroids_have_unit_norm(iterations):
    rows = np.random.default_rng(4).standard_normal((500, 24)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    centroids = train_centroids(rows, 40, "ip", iterations=iterations)
    assert centroids.shape == (40, 24) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)


def test_l2_centroids_are_the_means_of_their_rows():
    """After the last iteration's move, each centroid is the mean of the rows the previous
    assignment gave it: one more round leaves them where they are on converged data."""
    rows, _ = _blobs(6, 100, 8, "l2", seed=5)
    centroids = train_centroids(rows, 6, "l2", iterations=20)
    labels = assign(rows, centroids, "l2")
    means = np.stack([rows[labels == c].mean(axis=0) for c in range(6)])
    np.testing.assert_allclose(centroids, means, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_empty_clusters_take_half_of_the_largest(metric):
    """Seeds that all coincide leave every list but one empty after the first assignment:
    splitting the largest cluster gives each of them rows, and the blobs are found."""
    rows, blob = _blobs(4, 100, 16, metric, seed=10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clustering, "_seeds", lambda rows, n_lists, rng: np.zeros(n_lists, int))
        centroids = train_centroids(rows, 4, metric, iterations=10)
    labels = assign(rows, centroids, metric)
    assert (np.bincount(labels, minlength=4) == 100).all()
    for b in range(4):
        assert len(set(labels[blob == b].tolist())) == 1


def test_split_largest_halves_the_largest_cluster_around_its_centroid():
    centroids = np.arange(12, dtype=np.float64).reshape(4, 3)
    counts = np.array([0, 10, 3, 0])
    before = centroids.copy()
    clustering._split_largest(centroids, counts, np.random.default_rng(0), "l2")
    # list 0 took half of list 1 (10 rows), then list 3 half of list 0 (then the largest)
    assert counts.tolist() == [3, 5, 3, 2]
    split_first = (centroids[0] + centroids[3]) / 2
    np.testing.assert_allclose(split_first + centroids[1], 2 * before[1])
    assert 0 < np.linalg.norm(centroids[1] - before[1]) <= 2e-3 * np.linalg.norm(before[1])
    np.testing.assert_array_equal(centroids[2], before[2])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rank_lists_is_numpy_argsort(metric):
    rng = np.random.default_rng(8)
    queries = rng.standard_normal((37, 20)).astype(np.float32)
    centroids = rng.standard_normal((90, 20)).astype(np.float32)
    scores = _scores(queries, centroids, metric)
    for n in (1, 5, 90):
        ranked = rank_lists(queries, centroids, metric, n)
        assert ranked.dtype == np.int32 and ranked.shape == (37, n)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        got_scores = np.take_along_axis(scores, ranked.astype(np.int64), axis=1)
        np.testing.assert_allclose(got_scores, np.take_along_axis(scores, expected, axis=1),
                                   rtol=1e-5, atol=1e-5)
        assert (ranked == expected).mean() > 0.99  # the same lists (ties aside)


def test_bad_arguments_are_errors_naming_the_argument():
    rows = np.random.default_rng(9).standard_normal((50, 8)).astype(np.float32)
    centroids = rows[:5]
    with pytest.raises(ValueError, match="metric"):
        train_centroids(rows, 4, "cosine")
    with pytest.raises(ValueError, match="n_lists"):
        train_centroids(rows, 0, "ip")
    with pytest.raises(ValueError, match="n_lists"):
        train_centroids(rows, 51, "ip")
    with pytest.raises(TypeError, match="n_lists"):
        train_centroids(rows, 4.0, "ip")
    with pytest.raises(ValueError, match="iterations"):
        train_centroids(rows, 4, "ip", iterations=-1)
    with pytest.raises(ValueError, match="sample"):
        train_centroids(rows[0], 1, "ip")
    bad = rows.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="sample"):
        train_centroids(bad, 4, "l2")
    with pytest.raises(ValueError, match="vectors"):
        assign(bad, centroids, "l2")
    with pytest.raises(ValueError, match="centroids"):
        assign(rows, centroids[:, :7], "ip")
    with pytest.raises(ValueError, match="centroids"):
        assign(rows, centroids[:0], "ip")
    with pytest.raises(ValueError, match="centroids"):
        assign(rows, bad[:5], "ip")
    with pytest.raises(ValueError, match="metric"):
        assign(rows, centroids, "L2")
    with pytest.raises(ValueError, match="queries"):
        rank_lists(bad, centroids, "ip", 2)
    with pytest.raises(ValueError, match="n="):
        rank_lists(rows, centroids, "ip", 6)
    with pytest.raises(ValueError, match="n must"):
        rank_lists(rows, centroids, "ip", 0)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rounds_on_a_coarse_subset_first_still_find_the_blobs(metric):
    """With at least ``_COARSE_FACTOR`` x ``_COARSE_ROWS_PER_LIST`` rows a list the first half
    of the rounds runs on a subset: the blobs are still found, the last rounds use every row
    (L2 centroids are the means of their rows), and the result is reproducible."""
    per_list = clustering._COARSE_FACTOR * clustering._COARSE_ROWS_PER_LIST
    rows, blob = _blobs(6, per_list + 10, 16, metric, seed=12)
    centroids = train_centroids(rows, 6, metric, iterations=6)
    np.testing.assert_array_equal(centroids, train_centroids(rows, 6, metric, iterations=6))
    labels = assign(rows, centroids, metric)
    for b in range(6):
        assert len(set(labels[blob == b].tolist())) == 1
    assert len(set(labels.tolist())) == 6
    if metric == "l2":
        means = np.stack([rows[labels == c].mean(axis=0) for c in range(6)])
        np.testing.assert_allclose(centroids, means, rtol=1e-4, atol=1e-4)
