"""k-means pieces for the partitioned index: the nearest centroid of each row from a block of
inner products (computed by BLAS in ``clustering.py``), and the sums of a clustering's rows.

Both metrics pick the centroid with the largest ``<x, c> - shift[c]``: ``shift = 0`` for
inner product, ``shift = |c|^2 / 2`` for L2 (``|x - c|^2 = |x|^2 - 2 (<x, c> - |c|^2 / 2)``,
and ``|x|^2`` is the same for every centroid).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def nearest_of_scores(scores, shift, labels, best):
    """For each row ``i`` of ``scores`` (rows, n_lists) of inner products, the list ``c`` with
    the largest ``scores[i, c] - shift[c]`` (the lowest number on ties) into ``labels[i]``,
    and that value into ``best[i]``."""
    n_lists = scores.shape[1]
    for i in range(scores.shape[0]):
        top = 0
        top_score = scores[i, 0] - shift[0]
        for c in range(1, n_lists):
            value = scores[i, c] - shift[c]
            if value > top_score:
                top_score = value
                top = c
        labels[i] = top
        best[i] = top_score


@njit(cache=True, nogil=True)
def cluster_sums(rows, labels, sums, counts):
    """Add each row (float32) to ``sums[labels[i]]`` (float64) and count it in ``counts``."""
    dim = rows.shape[1]
    for i in range(rows.shape[0]):
        c = labels[i]
        counts[c] += 1
        for d in range(dim):
            sums[c, d] += rows[i, d]


@njit(cache=True, nogil=True)
def lower_nearest(ips, sq_norms, centre_sq, nearest):
    """k-means++ seeding: lower ``nearest[i]`` (squared distance of row ``i`` to its nearest
    seed) to the seeds whose inner products with the rows are ``ips`` (rows, seeds)."""
    for i in range(ips.shape[0]):
        best = nearest[i]
        for c in range(ips.shape[1]):
            dist = sq_norms[i] + centre_sq[c] - 2.0 * ips[i, c]
            if dist < best:
                best = dist
        nearest[i] = best


@njit(cache=True, nogil=True)
def seed_gains(ips, sq_norms, centre_sq, nearest, gains):
    """k-means++ seeding: add to ``gains[c]`` how much candidate ``c`` alone would lower the
    rows' ``nearest`` squared distances (``ips`` as in :func:`lower_nearest`)."""
    for i in range(ips.shape[0]):
        for c in range(ips.shape[1]):
            dist = sq_norms[i] + centre_sq[c] - 2.0 * ips[i, c]
            if dist < nearest[i]:
                gains[c] += nearest[i] - dist
