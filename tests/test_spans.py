"""Scans over spans (the lists of a partitioned index): each query scans only its own runs of
rows into one heap. Compared against the brute-force top-k of each codec's numpy estimate
restricted to the rows of the spans, as ``test_codecs`` compares flat scans."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress.core import codecs
from vecpress.core.codecs import RowFilter, make_codec

from conftest import clustered_vectors, rounding_bound

N_ROWS = 1500
#: (codec name, bits, dim): the default codec, RaBitQ, the byte codecs and exact float32
FAMILIES = [("saq", 4, 128), ("saq", 1, 128), ("rabitq", 4, 64), ("int8", 8, 48),
            ("fp8", 8, 48), ("float32", 32, 48)]


def _anisotropic(n: int, dim: int, seed: int) -> np.ndarray:
    return (clustered_vectors(n, dim, seed=seed) * np.linspace(2.0, 0.1, dim)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _store(name: str, bits: int, dim: int, metric: str, n: int = N_ROWS):
    """Codec, codes as scanned, factors, 3 queries, the numpy estimate (3, n) and a per-row
    tolerance (3, n) of the scan's scores against it."""
    codec = make_codec(name, dim, bits, metric)
    data = _anisotropic(n, dim, seed=7)
    queries = _anisotropic(3, dim, seed=8)
    codec.fit(data)
    codes, factors = codec.encode(data)
    if name in ("saq", "rabitq"):
        estimate = codec.estimate(codes, factors, queries)
        factor = 2 if metric == "l2" else 1
        steps = codec.query_step(queries)
        tolerance = np.stack([factor * rounding_bound(codec, codes, factors, step)
                              for step in steps])
    else:
        decoded = (codec.decode(codes, factors) if name in ("int8", "fp8")
                   else codes.astype(np.float64))
        ip = queries.astype(np.float64) @ decoded.astype(np.float64).T
        if metric == "l2":
            col = 1 if name in ("int8", "fp8") else 0
            q_sq = np.einsum("ij,ij->i", queries.astype(np.float64), queries.astype(np.float64))
            estimate = -(factors[:, col][None, :] + q_sq[:, None] - 2 * ip)
        else:
            estimate = ip
        tolerance = np.zeros_like(estimate)
    tolerance = tolerance + 1e-3 * np.abs(estimate) + 1e-4
    return codec, codec.scan_layout(codes), factors, queries, estimate, tolerance


@st.composite
def span_sets(draw, n_rows: int, n_queries: int):
    """(offsets, bounds): per query a sorted set of non-overlapping spans, tile-aligned or not,
    some of them empty."""
    bounds, offsets = [], [0]
    for _ in range(n_queries):
        if draw(st.booleans()):  # tile-aligned starts and stops, except a last stop at n_rows
            edges = [min(n_rows, 256 * t) for t in
                     draw(st.lists(st.integers(0, -(-n_rows // 256)), max_size=8))]
        else:
            edges = draw(st.lists(st.integers(0, n_rows), max_size=10))
        edges = sorted(edges)
        own = [(a, b) for a, b in zip(edges[::2], edges[1::2])]
        bounds.extend(own)
        offsets.append(offsets[-1] + len(own))
    return (np.array(offsets, np.int64),
            np.array(bounds, np.int64).reshape(-1, 2))


def _allowed_in_spans(offsets, bounds, q, n_rows, flt):
    inside = np.zeros(n_rows, bool)
    for start, stop in bounds[offsets[q]:offsets[q + 1]]:
        inside[start:stop] = True
    if flt.removed is not None:
        inside &= ~flt.removed
    if flt.mask is not None:
        inside &= flt.mask
    return inside


def _check_top_k(scores, rows, k, spans, flt, estimate, tolerance, complete=True):
    """Each query's rows lie in its spans and pass the filter, their scores match the estimate,
    and (``complete``) no allowed row of its spans was missed unless its estimate is within
    the tolerance of the K-th score (the brute-force top-k up to rounding ties)."""
    offsets, bounds = spans
    for q in range(len(scores)):
        allowed = _allowed_in_spans(offsets, bounds, q, flt.n_rows, flt)
        found = rows[q][rows[q] >= 0]
        assert len(found) == min(k, allowed.sum())
        assert len(set(found.tolist())) == len(found)
        assert allowed[found].all()
        assert np.isneginf(scores[q][len(found):]).all()
        diff = np.abs(scores[q][:len(found)] - estimate[q, found])
        assert (diff <= tolerance[q, found]).all()
        if complete and len(found) == k:
            missed = allowed.copy()
            missed[found] = False
            assert (estimate[q, missed] <= scores[q, k - 1] + tolerance[q, missed]).all()


def _row_filter(n_rows: int, seed: int, with_removed: bool, with_mask: bool) -> RowFilter:
    rng = np.random.default_rng(seed)
    return RowFilter(n_rows=n_rows,
                     removed=rng.random(n_rows) < 0.2 if with_removed else None,
                     mask=rng.random(n_rows) < 0.6 if with_mask else None)


def _same_top(a, b):
    """Two scans' results agree: equal scores, and equal rows apart from ties at the K-th."""
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    for s, ra, rb in zip(a[0], a[1], b[1]):
        clear = s > s[-1]
        assert set(ra[clear].tolist()) == set(rb[clear].tolist())


@pytest.mark.parametrize("name,bits,dim", FAMILIES)
@pytest.mark.parametrize("metric", ["ip", "l2"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), n_queries=st.sampled_from([1, 3]), k=st.integers(1, 40),
       seed=st.integers(0, 1000), with_removed=st.booleans(), with_mask=st.booleans())
def test_span_scan_is_the_top_k_of_the_rows_in_its_spans(name, bits, dim, metric, data,
                                                         n_queries, k, seed, with_removed,
                                                         with_mask):
    codec, codes, factors, queries, estimate, tolerance = _store(name, bits, dim, metric)
    spans = data.draw(span_sets(N_ROWS, n_queries))
    flt = _row_filter(N_ROWS, seed, with_removed, with_mask)
    queries, estimate, tolerance = queries[:n_queries], estimate[:n_queries], tolerance[:n_queries]
    with pytest.MonkeyPatch.context() as patch:
        # a bound too large to skip anything: the pruned scans' windows, seeds and spans all
        # run, and the result must be the exact top-k of the estimates
        if hasattr(type(codec), "PRUNE_EPSILON"):
            patch.setattr(type(codec), "PRUNE_EPSILON", 1e12)
        serial = codec.scan(codes, factors, queries, k, flt, spans=spans)
        _check_top_k(*serial, k, spans, flt, estimate, tolerance)
        patch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS", 0)
        patch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS_ONE_QUERY", 0)
        patch.setattr(codecs.scanning, "_chunk_count", lambda n: 3)
        _same_top(codec.scan(codes, factors, queries, k, flt, spans=spans), serial)
    # with pruning: still rows of the spans, scored right, and (almost) the same best rows
    pruned = codec.scan(codes, factors, queries, k, flt, spans=spans)
    _check_top_k(*pruned, k, spans, flt, estimate, tolerance, complete=False)


@pytest.mark.parametrize("name,bits,dim", FAMILIES)
def test_one_span_over_all_rows_equals_the_flat_scan(name, bits, dim):
    codec, codes, factors, queries, _, _ = _store(name, bits, dim, "ip")
    flt = _row_filter(N_ROWS, 3, True, True)
    spans = (np.arange(4, dtype=np.int64), np.tile(np.array([[0, N_ROWS]], np.int64), (3, 1)))
    flat = codec.scan(codes, factors, queries, 25, flt)
    by_spans = codec.scan(codes, factors, queries, 25, flt, spans=spans)
    np.testing.assert_array_equal(flat[1], by_spans[1])
    # (the exact codec scores a batch and one query through different BLAS kernels)
    np.testing.assert_allclose(flat[0], by_spans[0], rtol=1e-6 if name == "float32" else 0)


@pytest.mark.parametrize("name,bits", [("saq", 4), ("rabitq", 4)])
@pytest.mark.parametrize("n_queries", [1, 3])
def test_pruned_span_scans_keep_the_best_candidates(name, bits, n_queries):
    """Pruning by the sign-plane bound across 32 lists (across windows too) loses (almost)
    nothing against the unpruned span scan, serial or split in chunks."""
    dim = 128 if name == "saq" else 64
    codec, codes, factors, queries, _, _ = _store(name, bits, dim, "ip", n=16_000)
    queries = queries[:n_queries]
    rng = np.random.default_rng(5)
    offsets, bounds = [0], []
    for _ in range(n_queries):
        starts = np.sort(rng.choice(16_000 // 512 - 1, 24, replace=False)) * 512
        lengths = rng.integers(1, 500, 24)
        bounds.append(np.stack([starts, starts + lengths], axis=1))
        offsets.append(offsets[-1] + 24)
    spans = (np.array(offsets, np.int64), np.concatenate(bounds).astype(np.int64))
    flt = RowFilter(n_rows=16_000)
    pruned = codec.scan(codes, factors, queries, 30, flt, spans=spans)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(codec), "PRUNE_EPSILON", 1e12)
        full = codec.scan(codes, factors, queries, 30, flt, spans=spans)
        patch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS", 0)
        patch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS_ONE_QUERY", 0)
        patch.setattr(codecs.scanning, "_chunk_count", lambda n: 4)
        _same_top(codec.scan(codes, factors, queries, 30, flt, spans=spans), full)
    overlap = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(pruned[1], full[1])])
    assert overlap >= 0.98


def test_span_scan_across_the_seeding_window():
    """Spans totalling more than one seeding window (65,536 rows) of the segment scan: the
    windows run across spans and the result is the exact top-k of the estimates."""
    n = 150_000
    codec, codes, factors, queries, estimate, tolerance = _store("saq", 2, 64, "l2", n=n)
    starts = np.arange(0, n - 2_000, 5_000)
    bounds = np.stack([starts + 7, starts + 4_000], axis=1).astype(np.int64)
    spans = (np.array([0, len(bounds)], np.int64), bounds)
    flt = _row_filter(n, 9, True, False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(codec), "PRUNE_EPSILON", 1e12)
        got = codec.scan(codes, factors, queries[:1], 20, flt, spans=spans)
    _check_top_k(*got, 20, spans, flt, estimate[:1], tolerance[:1])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_chunks=st.integers(1, 9))
def test_split_spans_cuts_a_query_into_balanced_tile_aligned_chunks(data, n_chunks):
    spans = data.draw(span_sets(20_000, 1))
    bounds = spans[1]
    offsets, pieces = codecs._split_spans(bounds, n_chunks)
    assert offsets.shape == (n_chunks + 1,) and offsets[0] == 0 and offsets[-1] == len(pieces)
    # the same rows in the same order
    rows = np.concatenate([np.arange(a, b) for a, b in bounds] + [np.zeros(0, int)])
    pieces_rows = np.concatenate([np.arange(a, b) for a, b in pieces] + [np.zeros(0, int)])
    np.testing.assert_array_equal(rows, pieces_rows)
    # a chunk boundary inside a span falls on a tile boundary; chunks are near equal
    edges = set(bounds.ravel().tolist())
    total = len(rows)
    size = max(256, -(-(-(-total // n_chunks)) // 256) * 256)
    for c in range(n_chunks):
        own = pieces[offsets[c]:offsets[c + 1]]
        assert (own[:, 1] - own[:, 0]).sum() <= size + 256
        if len(own) and own[0, 0] not in edges:
            assert own[0, 0] % 256 == 0


def test_bad_spans_are_value_errors():
    codec, codes, factors, queries, _, _ = _store("saq", 4, 128, "ip")
    flt = RowFilter(n_rows=N_ROWS)
    q2 = queries[:2]

    def scan(spans, flt=flt):
        return codec.scan(codes, factors, q2, 5, flt, spans=spans)

    good = (np.array([0, 1, 2]), np.array([[0, 10], [5, 20]]))
    scan(good)
    with pytest.raises(ValueError, match="RowFilter.rows"):
        scan(good, RowFilter(n_rows=N_ROWS, rows=np.arange(10, dtype=np.int64)))
    with pytest.raises(ValueError, match="tuple"):
        scan(np.array([[0, 10]]))
    with pytest.raises(ValueError, match="offsets"):
        scan((np.array([0, 2]), np.array([[0, 10], [20, 30]])))  # one run for two queries
    with pytest.raises(ValueError, match="offsets"):
        scan((np.array([0, 1, 1]), np.array([[0, 10], [20, 30]])))  # ends before len(bounds)
    with pytest.raises(ValueError, match="bounds"):
        scan((np.array([0, 1, 2]), np.array([[0, 10, 3], [5, 20, 3]])))
    with pytest.raises(ValueError, match="n_rows"):
        scan((np.array([0, 1, 2]), np.array([[0, N_ROWS + 1], [5, 20]])))
    with pytest.raises(ValueError, match="n_rows"):
        scan((np.array([0, 1, 2]), np.array([[10, 5], [5, 20]])))
    with pytest.raises(ValueError, match="overlap"):
        scan((np.array([0, 2, 2]), np.array([[0, 10], [5, 20]])))
    with pytest.raises(ValueError, match="integer"):
        scan((np.array([0, 1, 2]), np.array([[0.0, 10.0], [5.0, 20.0]])))
    planned = codecs.PlannedSpans((np.array([0, 1, 2]), np.array([[0, 10], [5, N_ROWS]])))
    scan(planned)
    for reach_past in (np.array([[0, 10], [5, N_ROWS + 1]]), np.array([[0, N_ROWS + 1], [5, 9]])):
        with pytest.raises(ValueError, match=f"reach row {N_ROWS + 1}"):
            scan(codecs.PlannedSpans((np.array([0, 1, 2]), reach_past)))
    planned.extra = (np.array([0, 1, 2]), np.array([3, N_ROWS], np.int64))  # (a tail row)
    with pytest.raises(ValueError, match=f"reach row {N_ROWS + 1}"):
        scan(planned)
    exact = make_codec("float32", 8, 32, "ip")
    with pytest.raises(ValueError, match="overlap"):
        exact.scan(np.zeros((30, 8), np.float32), np.zeros((30, 0), np.float32),
                   np.ones((1, 8), np.float32), 3, RowFilter(n_rows=30),
                   spans=(np.array([0, 2]), np.array([[10, 20], [0, 5]])))


@settings(max_examples=50, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 1000)), max_size=8),
       extra=st.lists(st.integers(0, 10**6), max_size=8))
def test_span_extent_is_the_reach_and_row_count_numpy_gives(spans, extra):
    from vecpress.core import kernels

    bounds = np.array([[a, a + n] for a, n in spans], np.int64).reshape(-1, 2)
    rows = np.array(extra, np.int64)
    reach, count = kernels.span_extent(bounds, rows)
    assert reach == max([0, *bounds[:, 1].tolist(), *(rows + 1).tolist()])
    assert count == int((bounds[:, 1] - bounds[:, 0]).sum())
