"""k-means for the partitioned index: train centroids, assign rows to their nearest list, rank
the lists for queries.

``metric`` is the codecs' internal metric: ``"ip"`` (vectors already normalised when the user
asked for cosine) uses spherical k-means, centroids of unit norm, nearest = largest inner
product; ``"l2"`` uses Lloyd's k-means, nearest = smallest squared distance. Inner products go
through BLAS (numpy's matmul) one block of rows at a time, so assigning 10M rows never holds
more than one block of scores (at most ``_BLOCK_FLOATS``); the nearest centroid of each row
and the clusters' sums are numba kernels.
"""

from __future__ import annotations

import operator

import numpy as np

from . import kernels

METRICS = ("ip", "l2")
#: rows per block of inner products, at most (8k and 16k rows ran alike; 1k was slower)
_BLOCK_ROWS = 8_192
#: scores per block, at most (32 MB of float32): fewer rows per block when there are many lists
_BLOCK_FLOATS = 1 << 23
#: rounds of the k-means++-style seeding: each round draws a share of the centroids at once
_SEED_ROUNDS = 16
#: rows per list the seeding looks at, at most (a random subset of a larger sample): seeding
#: all of 64k rows for 1,024 lists took as long as 10 iterations
_SEED_ROWS_PER_LIST = 16
#: relative size of the nudge that splits the largest cluster into two
_SPLIT = 1e-3
#: rows per list of the random subset the first half of the rounds run on, when the sample
#: holds at least _COARSE_FACTOR times as many: early rounds only place the centroids roughly.
#: On 1M synthetic vectors (512 lists, 256 sample rows a list) 10 rounds on 64 rows a list
#: then 10 on all found 0.910 / 0.963 / 0.991 of the true top 10 in the 4 / 16 / 64 nearest
#: lists, 20 rounds on all 0.910 / 0.965 / 0.992, for 15.3 against 18.5 CPU s (see #14 notes)
_COARSE_ROWS_PER_LIST = 64
_COARSE_FACTOR = 4


def train_centroids(sample: np.ndarray, n_lists: int, metric: str, *, seed: int = 0,
                    iterations: int = 10) -> np.ndarray:
    """``n_lists`` centroids (n_lists, dim) float32 of the rows of ``sample`` (n, dim).

    Starts from ``n_lists`` rows drawn with ``seed`` k-means++-style (see :func:`_seeds`),
    then ``iterations`` rounds of: assign each row to its nearest centroid, move each centroid
    to the mean of its rows (and back onto the unit sphere for ``"ip"``). A centroid left
    without rows takes half of the largest cluster: that cluster's centroid is nudged apart
    into two. The first half of the rounds run on a random subset of
    ``_COARSE_ROWS_PER_LIST`` rows a list when the sample is at least ``_COARSE_FACTOR``
    times larger. The same arguments give the same centroids.
    """
    _check_metric(metric)
    rows = _checked_rows(sample, "sample")
    n_lists = _checked_int(n_lists, "n_lists", 1)
    iterations = _checked_int(iterations, "iterations", 0)
    seed = _checked_int(seed, "seed", 0)
    if n_lists > len(rows):
        raise ValueError(f"n_lists={n_lists} exceeds the number of sample rows ({len(rows)})")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    for start in range(0, len(rows), _BLOCK_ROWS):
        _float_block(rows, start, _BLOCK_ROWS, "sample")  # NaN or infinity: a ValueError
    rng = np.random.default_rng(seed)
    centroids = rows[_seeds(rows, n_lists, rng)]
    if metric == "ip":
        centroids = _on_sphere(centroids, centroids)
    coarse = _COARSE_ROWS_PER_LIST * n_lists
    subset = None
    if len(rows) >= _COARSE_FACTOR * coarse:
        subset = rows[np.sort(rng.choice(len(rows), coarse, replace=False))]
    labels = np.empty(len(rows), dtype=np.int32)
    for round_number in range(iterations):
        part = subset if subset is not None and 2 * round_number < iterations else rows
        _nearest(part, centroids, _shift(centroids, metric), labels[:len(part)], "sample")
        sums = np.zeros(centroids.shape, dtype=np.float64)
        counts = np.zeros(n_lists, dtype=np.int64)
        kernels.cluster_sums(part, labels[:len(part)], sums, counts)
        filled = counts > 0
        moved = centroids.astype(np.float64)
        moved[filled] = sums[filled] / counts[filled, None]
        _split_largest(moved, counts, rng, metric)
        centroids = (_on_sphere(moved, centroids) if metric == "ip"
                     else moved.astype(np.float32))
    return np.ascontiguousarray(centroids, dtype=np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The nearest centroid (int32 list number, the lowest on ties) of each row of
    ``vectors`` (n, dim); rows are read one block at a time (a memory map stays on disk)."""
    _check_metric(metric)
    rows = _checked_rows(vectors, "vectors")
    centroids = _checked_centroids(centroids, rows.shape[1])
    labels = np.empty(len(rows), dtype=np.int32)
    _nearest(rows, centroids, _shift(centroids, metric), labels, "vectors")
    return labels


def rank_lists(queries: np.ndarray, centroids: np.ndarray, metric: str, n: int) -> np.ndarray:
    """The ``n`` nearest lists of each query, nearest first: (q, n) int32 list numbers."""
    _check_metric(metric)
    queries = _checked_rows(queries, "queries")
    centroids = _checked_centroids(centroids, queries.shape[1])
    n = _checked_int(n, "n", 1)
    if n > len(centroids):
        raise ValueError(f"n={n} exceeds the number of lists ({len(centroids)})")
    shift = _shift(centroids, metric)
    out = np.empty((len(queries), n), dtype=np.int32)
    step = _block_rows(len(centroids))
    for start in range(0, len(queries), step):
        block = _float_block(queries, start, step, "queries")
        out[start:start + len(block)] = ranked(block, centroids, shift, n)
    return out


def centroid_shift(centroids: np.ndarray, metric: str) -> np.ndarray:
    """What :func:`ranked` subtracts from each centroid's inner product (zeros for "ip",
    half the squared norm for "l2"), computed once per set of centroids."""
    _check_metric(metric)
    return _shift(np.ascontiguousarray(centroids, dtype=np.float32), metric)


def ranked(queries: np.ndarray, centroids: np.ndarray, shift: np.ndarray, n: int) -> np.ndarray:
    """:func:`rank_lists` without its checks, for a search's few float32 queries against
    centroids already checked (finite, float32) and their :func:`centroid_shift`."""
    scores = queries @ centroids.T
    scores -= shift
    if 4 * n >= scores.shape[1]:  # most of the lists: one sort
        return np.argsort(-scores, axis=1, kind="stable")[:, :n].astype(np.int32)
    line = np.arange(len(scores))[:, None]
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    return top[line, np.argsort(-scores[line, top], axis=1, kind="stable")].astype(np.int32)


# --------------------------------------------------------------------------- helpers


def _seeds(rows: np.ndarray, n_lists: int, rng: np.random.Generator) -> np.ndarray:
    """Row numbers of ``n_lists`` starting centroids, drawn k-means++-style: a row is drawn
    with a probability proportional to its squared distance to the nearest centroid drawn
    before, so that far-apart groups each get one, and of ``_seed_trials`` such draws the one
    that brings the rows closest to their centroids is kept (greedy k-means++: plain draws
    put two seeds in one of 12 blobs about one time in five). Exact k-means++ takes one
    pass over the rows per centroid; here each of ``_SEED_ROUNDS`` rounds draws its share of
    the centroids at once (weighted sampling without replacement: the smallest
    ``exponential / weight`` keys), each with its own trials. Seeds come from a random subset
    of at most ``_SEED_ROWS_PER_LIST`` rows per list."""
    if len(rows) > _SEED_ROWS_PER_LIST * n_lists:
        subset = np.sort(rng.choice(len(rows), _SEED_ROWS_PER_LIST * n_lists, replace=False))
        return subset[_seeds(rows[subset], n_lists, rng)]
    n = len(rows)
    sq_norms = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    nearest = np.full(n, np.inf)
    chosen = [int(rng.integers(n))]
    _closer(rows, sq_norms, chosen, nearest)
    per_round = -(-(n_lists - 1) // _SEED_ROUNDS)
    trials = _seed_trials(n_lists)
    while len(chosen) < n_lists:
        wanted = min(per_round, n_lists - len(chosen))
        drawn = min(n, wanted * trials)
        with np.errstate(divide="ignore"):
            keys = rng.exponential(size=n) / np.maximum(nearest, 0.0)
        candidates = np.argpartition(keys, drawn - 1)[:drawn]
        candidates = candidates[np.argsort(keys[candidates], kind="stable")]
        gains = _gains(rows, sq_norms, candidates, nearest)
        fresh = []
        for slot in range(wanted):  # slot j's trials: the j-th, (j + wanted)-th, ... draws
            own = np.arange(slot, drawn, wanted)
            fresh.append(int(candidates[own[np.argmax(gains[own])]]))
        chosen.extend(fresh)
        _closer(rows, sq_norms, fresh, nearest)
    return np.array(chosen, dtype=np.int64)


def _seed_trials(n_lists: int) -> int:
    """Draws per seed: 2 + ln(k) as in greedy k-means++, but at most 4 (each trial costs one
    more pass over the rows per round)."""
    return min(4, 2 + int(np.log(n_lists)))


def _closer(rows: np.ndarray, sq_norms: np.ndarray, fresh: list[int],
            nearest: np.ndarray) -> None:
    """Lower ``nearest`` (squared distance to the nearest seed) to the new seeds ``fresh``."""
    centres, centre_sq = rows[fresh], sq_norms[fresh]
    step = _block_rows(len(fresh))
    for start in range(0, len(rows), step):
        kernels.lower_nearest(rows[start:start + step] @ centres.T, sq_norms[start:start + step],
                              centre_sq, nearest[start:start + step])


def _gains(rows: np.ndarray, sq_norms: np.ndarray, candidates: np.ndarray,
           nearest: np.ndarray) -> np.ndarray:
    """How much each candidate seed alone would lower the sum of ``nearest``."""
    centres, centre_sq = rows[candidates], sq_norms[candidates]
    gains = np.zeros(len(candidates))
    step = _block_rows(len(candidates))
    for start in range(0, len(rows), step):
        kernels.seed_gains(rows[start:start + step] @ centres.T, sq_norms[start:start + step],
                           centre_sq, nearest[start:start + step], gains)
    return gains


def _nearest(rows: np.ndarray, centroids: np.ndarray, shift: np.ndarray, labels: np.ndarray,
             name: str) -> None:
    """Fill ``labels`` (see ``kernels.nearest_of_scores``), block by block."""
    step = _block_rows(len(centroids))
    scores = np.empty((min(step, len(rows)), len(centroids)), dtype=np.float32)
    best = np.empty(len(scores), dtype=np.float32)
    for start in range(0, len(rows), step):
        block = _float_block(rows, start, step, name)
        out = scores[:len(block)]
        np.matmul(block, centroids.T, out=out)
        kernels.nearest_of_scores(out, shift, labels[start:start + len(block)], best)


def _block_rows(n_lists: int) -> int:
    return max(1, min(_BLOCK_ROWS, _BLOCK_FLOATS // n_lists))


def _float_block(rows: np.ndarray, start: int, step: int, name: str) -> np.ndarray:
    block = np.ascontiguousarray(rows[start:start + step], dtype=np.float32)
    if not np.isfinite(block).all():
        raise ValueError(f"{name} holds NaN or infinity (in rows {start}..."
                         f"{start + len(block) - 1})")
    return block


def _shift(centroids: np.ndarray, metric: str) -> np.ndarray:
    """What the nearest-centroid kernel subtracts from each inner product."""
    if metric == "l2":
        return (0.5 * np.einsum("ij,ij->i", centroids, centroids)).astype(np.float32)
    return np.zeros(len(centroids), dtype=np.float32)


def _on_sphere(moved: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Rows of ``moved`` scaled to unit norm; a zero row keeps its ``previous`` direction."""
    norms = np.linalg.norm(moved, axis=1)
    zero = norms == 0
    out = moved / np.where(zero, 1.0, norms)[:, None]
    if zero.any():
        kept = np.linalg.norm(previous[zero], axis=1)
        out[zero] = previous[zero] / np.maximum(kept, 1e-30)[:, None]
    return out.astype(np.float32)


def _split_largest(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator,
                   metric: str) -> None:
    """Give each empty cluster half of the then largest one: the two centroids become the
    largest one's plus and minus a small random nudge, which the next assignment turns into
    a cut of its rows by a hyperplane through the centroid. For ``"ip"`` the nudge is
    orthogonal to the centroid, so both stay the same distance from the origin."""
    for empty in np.flatnonzero(counts == 0):
        largest = int(np.argmax(counts))
        if counts[largest] < 2:
            return
        centre = centroids[largest].copy()
        nudge = rng.standard_normal(centroids.shape[1])
        norm_sq = float(centre @ centre)
        if metric == "ip" and norm_sq > 0:
            nudge -= (nudge @ centre) / norm_sq * centre
        size = float(np.linalg.norm(nudge))
        if size == 0:
            continue
        nudge *= _SPLIT * max(np.sqrt(norm_sq), 1e-6) / size
        centroids[empty] = centre + nudge
        centroids[largest] = centre - nudge
        counts[empty] = counts[largest] // 2
        counts[largest] -= counts[empty]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; choose one of {list(METRICS)}")


def _checked_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def _checked_rows(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a 2-d array of real numbers (not copied: a memory map stays one)."""
    rows = array if isinstance(array, np.ndarray) else np.asarray(array)
    if rows.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (rows, dim), got shape {rows.shape}")
    if rows.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {rows.dtype}")
    if rows.shape[1] == 0:
        raise ValueError(f"{name} has no dimensions")
    return rows


def _checked_centroids(centroids: np.ndarray, dim: int) -> np.ndarray:
    centroids = _checked_rows(centroids, "centroids")
    if len(centroids) == 0:
        raise ValueError("centroids is empty: at least one list is needed")
    if centroids.shape[1] != dim:
        raise ValueError(f"centroids have dim {centroids.shape[1]}, the rows have dim {dim}")
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if not np.isfinite(centroids).all():
        raise ValueError("centroids hold NaN or infinity")
    return centroids


__all__ = ["METRICS", "assign", "centroid_shift", "rank_lists", "ranked", "train_centroids"]
