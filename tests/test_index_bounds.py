"""Index under hostile arguments and awkward numbers, its id lookups, and its search snapshots."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress import Index
from vecpress.core.columns import _IdColumn
from vecpress.core.index import MAX_PADDED_K

from conftest import random_vectors, reference_topk


# ---------------------------------------------------------------------- bounded requests


@pytest.mark.parametrize("bits", [4, 32])
def test_huge_k_and_oversample_cost_what_the_index_holds(bits):
    index = Index(16, bits=bits)
    data = random_vectors(200, 16, seed=3)
    index.add(data)
    index.search(data[:2], k=10)  # (numba's first compile would count otherwise)
    tracemalloc.start()
    try:
        scores, found = index.search(data[:2], k=10**9, oversample=10**9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20  # a few arrays of 200 rows, not of 10**9
    assert found.shape == (2, MAX_PADDED_K)
    for q in range(2):  # every row, best first, then padding
        assert sorted(found[q, :200].tolist()) == list(range(200))
        assert (found[q, 200:] == -1).all() and np.isneginf(scores[q, 200:]).all()
        assert (np.diff(scores[q, :200]) <= 1e-6).all()


def test_k_beyond_the_padding_limit_is_the_row_count():
    index = Index(8, bits=32)
    index.add(random_vectors(MAX_PADDED_K + 50, 8))
    _, found = index.search(random_vectors(1, 8, seed=1), k=10**6)
    assert found.shape == (1, MAX_PADDED_K + 50) and (found >= 0).all()


# ---------------------------------------------------------------------- numbers


def test_cosine_normalises_huge_and_tiny_rows_instead_of_zeroing_them():
    index = Index(8, metric="cosine", bits=32)
    rng = np.random.default_rng(0)
    direction = rng.standard_normal((3, 8)).astype(np.float32)
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    index.add(np.vstack([unit[0] * 1e20, unit[1] * 1e-25, unit[2]]))
    np.testing.assert_allclose(index.get([0, 1, 2]), unit, atol=1e-6)
    scores, found = index.search(unit[0] * 3e30, k=1)
    assert found[0, 0] == 0 and abs(scores[0, 0] - 1.0) < 1e-5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6), dim=st.integers(1, 40),
       scale=st.sampled_from([1e-40, 1e-25, 1e-3, 1.0, 1e18, 1e30, 3e38]),
       zero_at=st.none() | st.integers(0, 5))
def test_cosine_normalisation_matches_a_float64_reference_at_any_scale(seed, rows, dim, scale,
                                                                      zero_at):
    """The cosine normalisation against numpy in float64, from subnormal values to float32's
    largest; an all-zero row is refused by its number."""
    from vecpress.core.index import _normalized

    rng = np.random.default_rng(seed)
    vectors = (rng.uniform(-1, 1, (rows, dim)) * scale).astype(np.float32)
    vectors[np.abs(vectors).max(axis=1) == 0, 0] = np.float32(scale) or 1.0  # (underflowed rows)
    if zero_at is not None and zero_at < rows:
        vectors[zero_at] = 0.0
        with pytest.raises(ValueError, match=f"row {zero_at} is all zeros"):
            _normalized(vectors, "vectors")
        return
    wide = vectors.astype(np.float64)
    expected = wide / np.linalg.norm(wide, axis=1, keepdims=True)
    np.testing.assert_allclose(_normalized(vectors, "vectors"), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_values_float16_cannot_hold_are_refused_before_writing(tmp_path, metric):
    index = Index(4, metric=metric, bits=4, path=tmp_path / "s")
    index.add(np.ones((2, 4), np.float32))
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    with pytest.raises(ValueError, match="rerank_dtype='float32'"):
        index.add(np.array([[1.0, 70_000.0, 0.0, 0.0]], np.float32))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == files and len(index) == 2
    exact = Index(4, metric=metric, bits=4, rerank_dtype="float32")
    exact.add(np.array([[1.0, 70_000.0, 0.0, 0.0]], np.float32))
    assert np.isfinite(exact.search(np.ones(4, np.float32), k=1)[0]).all()


def test_scores_that_would_overflow_float32_are_refused():
    index = Index(4, metric="ip", bits=32)
    with pytest.raises(ValueError, match="overflow float32"):
        index.add(np.full((1, 4), 1e19, np.float32))
    assert len(index) == 0


# ---------------------------------------------------------------------- id lookups


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 60), min_size=1, max_size=8, unique=True)),
    st.tuples(st.just("remove"), st.integers(0, 10**6))), max_size=40),
    st.integers(1, 6))
def test_unordered_ids_are_found_through_table_and_tail(steps, tail_rows):
    """Ids in any order, re-added and removed, with a tiny tail so the table is rebuilt often:
    every lookup equals a dict from id to its newest live row."""
    column = _IdColumn()
    column.TAIL_ROWS = tail_rows
    newest: dict[int, int] = {}
    for kind, value in steps:
        if kind == "add":
            ids = np.array(value, dtype=np.int64)
            replaced = [newest[i] for i in value if i in newest]
            start = column.size
            column.extend(ids)
            column.remove(np.array(replaced, dtype=np.int64))
            newest.update((i, start + n) for n, i in enumerate(value))
        elif newest:
            victim = sorted(newest)[value % len(newest)]
            column.remove(np.array([newest.pop(victim)]))
        probe = np.arange(-2, 64, dtype=np.int64)
        rows, found = column.rows_of(probe)
        assert found.tolist() == [int(i) in newest for i in probe]
        assert rows[found].tolist() == [newest[int(i)] for i in probe[found]]


def test_explicit_ascending_ids_need_no_table():
    column = _IdColumn(np.array([5, 9, 40], dtype=np.int64))
    column.extend(np.array([41, 100], dtype=np.int64))
    rows, found = column.rows_of(np.array([9, 100, 6], dtype=np.int64))
    assert rows[:2].tolist() == [1, 4] and found.tolist() == [True, True, False]
    assert column.nbytes == 5 * 8  # the ids only, no sorted copy


def test_index_lookups_after_compaction_with_replacements():
    index = Index(6, bits=32)
    data = random_vectors(3000, 6, seed=5)
    ids = np.random.default_rng(1).permutation(10_000)[:3000]
    index.add(data, ids=ids)
    index.remove(ids[::2])
    index.compact()
    again = random_vectors(10, 6, seed=6)
    index.add(again, ids=ids[1:20:2])  # replace live ones
    live = set(ids[1::2].tolist())
    assert index.contains(ids).tolist() == [int(i) in live for i in ids]
    np.testing.assert_allclose(index.get(ids[1:20:2]),
                               again / np.linalg.norm(again, axis=1, keepdims=True), atol=1e-6)


# ---------------------------------------------------------------------- snapshots


def test_a_snapshot_does_not_change_when_the_index_does():
    index = Index(8, bits=4)
    data = random_vectors(3000, 8, seed=8)
    index.add(data[:2000])
    snap = index._snapshot()
    before = (snap.codes.copy(), snap.factors.copy(), snap.ids.all().copy())
    index.add(data[2000:])
    index.remove(np.arange(0, 2000, 3))
    index.compact()
    assert snap.ids.size == 2000 and snap.ids.removed is None
    np.testing.assert_array_equal(snap.codes, before[0])
    np.testing.assert_array_equal(snap.factors, before[1])
    np.testing.assert_array_equal(snap.ids.all(), before[2])
    assert snap.originals.rows >= 2000


def test_search_equals_the_reference_after_concurrent_style_mutations():
    """A search after many publishes equals brute force over the live vectors."""
    index = Index(12, metric="ip", bits=32)
    data = random_vectors(500, 12, seed=9)
    index.add(data)
    index.remove(np.arange(0, 500, 7))
    live = np.setdiff1d(np.arange(500), np.arange(0, 500, 7))
    queries = random_vectors(5, 12, seed=10)
    _, found = index.search(queries, k=5)
    expected = live[reference_topk(data[live], queries, 5, "ip")[1]]
    np.testing.assert_array_equal(found, expected)


def test_a_stored_oversample_is_bounded_like_a_loaded_one():
    with pytest.raises(ValueError, match="oversample=5000 is above 1024"):
        Index(8, oversample=5000)
    assert Index(8, oversample=1024).oversample == 1024


def test_deferred_removals_ride_on_the_next_commit_or_on_close(tmp_path):
    path = tmp_path / "s"
    index = Index(8, bits=32, path=path)
    index.add(random_vectors(20, 8))
    index.remove([3, 4], durable=False)
    assert 3 not in index and len(index) == 18  # gone from searches at once
    assert len(Index.load(path, read_only=True)) == 20  # not committed yet
    index.add(random_vectors(1, 8, seed=2))  # the next commit carries them
    assert len(Index.load(path, read_only=True)) == 19
    index.remove([5], durable=False)
    index.close()  # ... or close does
    reopened = Index.load(path, read_only=True)
    assert len(reopened) == 18 and 5 not in reopened and 3 not in reopened
