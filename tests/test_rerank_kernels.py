"""The rerank's kernels against numpy: exact scores read by address over mixed blocks, and
the candidates put in row order and cut to the best k."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress.core import kernels
from vecpress.core.columns import _Blocks


def _blocks(sizes: list[int], halves: list[bool], dim: int, seed: int) -> tuple[_Blocks, np.ndarray]:
    """Blocks of the given row counts (float16 where ``halves``) and their rows as float64."""
    rng = np.random.default_rng(seed)
    blocks, parts = _Blocks(), []
    for size, half in zip(sizes, halves):
        block = rng.standard_normal((size, dim)).astype(np.float16 if half else np.float32)
        blocks.append(block)
        parts.append(block.astype(np.float64))
    return blocks, np.concatenate(parts) if parts else np.zeros((0, dim))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6),
       halves=st.lists(st.booleans(), min_size=6, max_size=6),
       picks=st.integers(1, 40), n_queries=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_exact_scores_over_blocks_match_numpy(sizes, halves, picks, n_queries, seed) -> None:
    dim = 13
    blocks, whole = _blocks(sizes, halves, dim, seed)
    if not len(whole):
        return
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.integers(0, len(whole), picks)).astype(np.int64)  # repeats allowed
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    query_of = rng.integers(0, n_queries, picks).astype(np.int64)
    dots, squares = blocks.frozen().exact_scores(rows, queries, query_of)
    expected = np.einsum("jd,jd->j", whole[rows], queries[query_of].astype(np.float64))
    np.testing.assert_allclose(dots, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(squares, (whole[rows] ** 2).sum(axis=1), rtol=1e-9)


def test_exact_scores_refuse_rows_outside_the_blocks() -> None:
    blocks, _ = _blocks([4, 3], [True, False], 5, 0)
    queries = np.ones((1, 5), np.float32)
    with pytest.raises(IndexError, match="outside the 7 kept"):
        blocks.exact_scores(np.array([2, 7]), queries, np.zeros(2, np.int64))
    with pytest.raises(IndexError):
        blocks.exact_scores(np.array([-1, 2]), queries, np.zeros(2, np.int64))


def test_a_snapshot_keeps_its_blocks_after_appends() -> None:
    blocks, whole = _blocks([3], [False], 4, 1)
    snapshot = blocks.frozen()
    blocks.append(np.ones((2, 4), np.float32))
    queries = np.ones((1, 4), np.float32)
    dots, _ = snapshot.exact_scores(np.arange(3), queries, np.zeros(3, np.int64))
    np.testing.assert_allclose(dots, whole.sum(axis=1), rtol=1e-6)
    with pytest.raises(IndexError):  # the snapshot has 3 rows, not the 5 appended since
        snapshot.exact_scores(np.array([4]), queries, np.zeros(1, np.int64))
    dots, _ = blocks.frozen().exact_scores(np.array([4]), queries, np.zeros(1, np.int64))
    assert dots[0] == 4.0


@settings(max_examples=80, deadline=None)
@given(n_queries=st.integers(1, 4), width=st.integers(1, 12), k=st.integers(1, 15),
       seed=st.integers(0, 2**16))
def test_candidates_in_row_order_and_the_best_k_match_numpy(n_queries, width, k, seed) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.integers(-1, 50, (n_queries, width)).astype(np.int64)
    flat, query_of, slot = kernels.candidates_by_row(rows)
    q_ref, s_ref = np.nonzero(rows >= 0)
    order = np.argsort(rows[q_ref, s_ref], kind="stable")
    np.testing.assert_array_equal(flat, rows[q_ref, s_ref][order])
    np.testing.assert_array_equal(query_of, q_ref[order])
    np.testing.assert_array_equal(slot, s_ref[order])
    exact = rng.integers(-3, 3, len(flat)).astype(np.float64)  # ties on purpose
    scores, best_rows = kernels.best_candidates(rows, query_of, slot, exact, k)
    full = np.full(rows.shape, -np.inf)
    full[query_of, slot] = exact
    best = np.argsort(-full, axis=1, kind="stable")[:, :k]
    line = np.arange(n_queries)[:, None]
    np.testing.assert_array_equal(scores, full[line, best].astype(np.float32))
    np.testing.assert_array_equal(best_rows, rows[line, best])
