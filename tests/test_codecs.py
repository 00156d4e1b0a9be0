"""Kernels and codecs against numpy references: packing, popcount, top-k, the RaBitQ estimator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vecpress.core import kernels
from vecpress.core.codecs import RaBitQCodec, RowFilter, SegmentCodec, allocate_bits, make_codec

from conftest import clustered_vectors, random_vectors, reference_scores, rounding_bound


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), dim=st.integers(1, 200), n=st.integers(1, 6), data=st.data())
def test_pack_unpack_round_trip(bits, dim, n, data):
    levels = data.draw(arrays(np.uint8, (n, dim), elements=st.integers(0, (1 << bits) - 1)))
    words = (dim + 63) // 64
    planes = kernels.pack_planes(levels, bits, words)
    assert planes.shape == (n, bits, words)
    np.testing.assert_array_equal(kernels.unpack_planes(planes, dim), levels)
    np.testing.assert_array_equal(kernels.pack_planes_parallel(levels, bits, words), planes)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20))
def test_plane_scan_popcount_matches_integer_dot_product(words):
    """A 1-bit code scanned against a 1-bit query counts the common set bits."""
    codes = np.array(words, dtype=np.uint64).reshape(-1, 1, 1)
    query = np.array([[[0xF0F0F0F0F0F0F0F0]]], dtype=np.uint64)  # (queries, words, query bits)
    factors = np.ones((len(words), 1), dtype=np.float32)
    heap_s = np.empty((1, 1, len(words)), np.float32)
    heap_r = np.empty((1, 1, len(words)), np.int64)
    none = np.zeros(1, np.int64)
    one, zero = np.ones(1), np.zeros(1)
    spans, offsets = np.array([[0, len(words)]], np.int64), np.array([0, 1], np.int64)
    kernels.scan_planes_parallel(codes, factors, none, False, np.zeros(1, np.bool_), False,
                                 none, False, spans, offsets, query, one, zero, zero, zero, 0.0,
                                 False, -1, zero, heap_s, heap_r)
    expected = [bin(w & 0xF0F0F0F0F0F0F0F0).count("1") for w in words]
    got = dict(zip(heap_r.ravel().tolist(), heap_s.ravel().tolist()))
    assert [got[i] for i in range(len(words))] == expected


@settings(max_examples=40, deadline=None)
@given(scores=arrays(np.float32, st.integers(1, 300),
                     elements=st.floats(-1e6, 1e6, width=32, allow_nan=False)),
       k=st.integers(1, 50))
def test_heap_top_k_equals_sorting(scores, k):
    """Exact float32 codes with dim 1 turn the scan into a pure top-k selection."""
    codec = make_codec("float32", 1, 32, "ip")
    codes, factors = codec.encode(scores[:, None])
    got_s, got_r = codec.scan(codec.scan_layout(codes), factors, np.ones((1, 1), np.float32), k,
                              RowFilter(n_rows=len(scores)))
    expected = np.sort(scores)[::-1][:k]
    np.testing.assert_array_equal(got_s[0][: len(expected)], expected)
    np.testing.assert_array_equal(scores[got_r[0][: len(expected)]], expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), queries=st.integers(1, 3), chunks=st.integers(1, 3),
       capacity=st.integers(1, 40), k=st.integers(1, 50))
def test_merged_heaps_are_the_best_k_best_first(data, queries, chunks, capacity, k):
    """Merging per-chunk heaps gives each query's best ``k`` scores best first, each with a
    row that holds it (distinct rows; ties in any order), -1 rows for unfilled slots. A few
    small heaps go through ``kernels.sorted_heaps``, which keeps ties in slot order exactly
    as numpy's stable sort does."""
    from vecpress.core.codecs.scanning import _sort_heaps

    scores = data.draw(arrays(np.float32, (queries, chunks, capacity), elements=st.one_of(
        st.sampled_from([-np.inf, 0.0, 0.5, 1.0]), st.floats(-10, 10, width=32))))
    rows = np.arange(scores.size, dtype=np.int64).reshape(scores.shape)
    flat_s, flat_r = scores.reshape(queries, -1), rows.reshape(queries, -1)
    order = np.argsort(-flat_s, axis=1, kind="stable")[:, :min(k, flat_s.shape[1])]
    want_s = np.take_along_axis(flat_s, order, axis=1)
    want_r = np.where(np.isfinite(want_s), np.take_along_axis(flat_r, order, axis=1), -1)
    got_s, got_r = _sort_heaps(scores, rows, k)
    np.testing.assert_array_equal(got_s, want_s)
    assert got_s.dtype == np.float32 and got_r.dtype == np.int64
    for q in range(queries):
        found = got_r[q][got_r[q] >= 0]
        assert len(set(found.tolist())) == len(found)
        np.testing.assert_array_equal(scores.ravel()[found], got_s[q][got_r[q] >= 0])
        assert ((got_r[q] < 0) == ~np.isfinite(got_s[q])).all()
    exact_s, exact_r = kernels.sorted_heaps(flat_s, flat_r, k)
    np.testing.assert_array_equal(exact_s, want_s)
    np.testing.assert_array_equal(exact_r, want_r)
    assert kernels.sorted_heaps(flat_s, flat_r, 0)[0].shape == (queries, 0)


def _anisotropic(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered vectors with a decaying spectrum, like sentence embeddings."""
    return (clustered_vectors(n, dim, seed=seed) * np.linspace(2.0, 0.1, dim)).astype(np.float32)


def _codec_and_data(name: str, bits: int, metric: str, seed: int, dim: int = 192):
    """A codec with data to encode: RaBitQ on 96-d clusters, SAQ fitted on ``dim``-d
    anisotropic clusters (enough rows for its PCA, so segments get different bit counts)."""
    if name == "rabitq":
        return RaBitQCodec(96, bits, metric), clustered_vectors(2000, 96, seed=seed), \
            clustered_vectors(5, 96, seed=100 + seed)
    codec = SegmentCodec(dim, bits, metric)
    data = _anisotropic(2000, dim, seed)
    codec.fit(data)
    return codec, data, _anisotropic(5, dim, 100 + seed)


@pytest.mark.parametrize("name, dim", [("rabitq", 96), ("saq", 192), ("saq", 832)])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_kernel_scan_agrees_with_numpy_estimator(bits, metric, name, dim):
    """The numba scan equals the numpy estimator up to the query quantization error. SAQ at
    192 dimensions has segments of one word each, at 832 of three (the last of one), which
    the scan scores by different loops."""
    codec, data, queries = _codec_and_data(name, bits, metric, bits, dim)
    if name == "saq":
        assert (codec.seg_words.max() == 1) == (dim <= 384)
    codes, factors = codec.encode(data)
    scores, rows = codec.scan(codec.scan_layout(codes), factors, queries, 50, RowFilter(n_rows=len(data)))
    reference = codec.estimate(codes, factors, queries)
    steps = codec.query_step(queries)
    for q in range(len(queries)):
        bound = rounding_bound(codec, codes, factors, steps[q])
        factor = 2 if metric == "l2" else 1
        diff = np.abs(scores[q] - reference[q, rows[q]])
        assert (diff <= factor * bound[rows[q]] + 1e-3 * np.abs(reference[q, rows[q]]) + 1e-4).all()


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), dim=st.integers(1, 450), n=st.integers(1, 5), data=st.data())
def test_segment_pack_unpack_round_trip(bits, dim, n, data):
    codec = SegmentCodec(dim, bits, "ip")
    seg_bits = np.array(data.draw(st.lists(st.integers(0, 8), min_size=codec.n_segments,
                                           max_size=codec.n_segments)), dtype=np.int64)
    codec._set_allocation(seg_bits, np.ones(codec.n_segments))
    tops = np.repeat((1 << seg_bits) - 1, np.diff(codec.seg_starts))
    levels = (data.draw(arrays(np.uint8, (n, dim))) % (tops + 1)).astype(np.uint8)
    row_words = int((seg_bits * codec.seg_words).sum())
    codes = kernels.pack_segments(levels, codec.seg_starts, seg_bits, codec.plane_at, row_words)
    back = kernels.unpack_segments(codes, codec.seg_starts, seg_bits, codec.plane_at, dim)
    np.testing.assert_array_equal(back, levels)
    # every word of a row belongs to exactly one plane, the sign planes first
    used = np.concatenate([codec.plane_at[s, b] + np.arange(codec.seg_words[s])
                           for s in range(codec.n_segments) for b in range(seg_bits[s])]
                          or [np.zeros(0, np.int64)])
    np.testing.assert_array_equal(np.sort(used), np.arange(row_words))
    tops_at = [codec.plane_at[s, seg_bits[s] - 1] for s in range(codec.n_segments) if seg_bits[s]]
    assert tops_at == sorted(tops_at) and all(t < codec.sign_word_count for t in tops_at)


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
       bits=st.integers(1, 8), data=st.data())
def test_bit_allocation_is_the_cheapest_exact_spend(weights, bits, data):
    """The dynamic programme equals brute force over every allocation with the same spend."""
    import itertools

    weights = np.array(weights)
    words = np.array(data.draw(st.lists(st.integers(1, 2), min_size=len(weights),
                                        max_size=len(weights))))
    budget = bits * int(words.sum())
    got = allocate_bits(weights, words, budget, SegmentCodec.RELATIVE_ERROR)
    assert (got * words).sum() == budget
    cost = lambda a: sum(w * SegmentCodec.RELATIVE_ERROR[b] for w, b in zip(weights, a))
    best = min(cost(a) for a in itertools.product(range(9), repeat=len(weights))
               if (np.array(a) * words).sum() == budget)
    assert cost(got) <= best + 1e-9 * max(1.0, best)


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(1, 8), n_queries=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_prepared_queries_equal_their_numpy_steps(bits, n_queries, seed):
    """``kernels.prepare_queries`` (one call per scan) gives what the scan's query steps give
    in numpy: the quantized planes, per-segment sums, the dithered weighted sign-pass query
    at the rows' sign words, its sum, and the prune margin of every query."""
    from vecpress.core.codecs import _quantize_query

    codec = SegmentCodec(192, bits, "ip")
    codec.fit(_anisotropic(1500, 192, 5))
    rotated = codec.rotate(clustered_vectors(n_queries, 192, seed=seed))
    got = kernels.prepare_queries(
        rotated, codec.seg_starts, codec._dim_weight, codec._coded_dims, codec.sign_query_words,
        codec.dither, codec.query_bits, codec.words, codec.sign_sigma, codec._rounding_scale,
        codec.PRUNE_EPSILON)
    planes, step, low, seg_sums, sign_planes, sign_step, sign_low, sign_sum, bound = got
    quantized = _quantize_query(rotated, codec.query_bits, codec.words)
    weighted = rotated.astype(np.float64) * codec._dim_weight
    signs = _quantize_query(weighted, 4, codec.words, dither=codec.dither)
    coded = rotated[:, codec._coded_dims].astype(np.float64)
    np.testing.assert_array_equal(planes, quantized["planes"])
    np.testing.assert_array_equal(step, quantized["step"])
    np.testing.assert_array_equal(low, quantized["low"])
    np.testing.assert_allclose(seg_sums, np.add.reduceat(
        rotated.astype(np.float64), codec.seg_starts[:-1], axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sign_planes, signs["planes"][:, codec.sign_query_words, :])
    np.testing.assert_array_equal(sign_step, signs["step"])
    np.testing.assert_array_equal(sign_low, signs["low"])
    np.testing.assert_allclose(sign_sum, weighted.sum(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bound, codec.PRUNE_EPSILON * np.sqrt(
        codec.sign_sigma ** 2 * (coded ** 2).sum(axis=1)
        + (0.5 * signs["step"] * codec._rounding_scale) ** 2), rtol=1e-12)


def test_segment_factors_round_trip_through_float16():
    """Per-segment factors come back within float16 precision of the exact ones, also for
    rows with nothing in some segments (and a zero row, whose factors are all 0)."""
    from vecpress.core.codecs import _pack_relative

    codec = SegmentCodec(192, 4, "ip")
    data = _anisotropic(1500, 192, 3)
    codec.fit(data)
    rotated = codec.rotate(data - codec.centroid)
    rotated[:5, :64] = 0.0  # nothing in the first principal segment
    rotated[5] = 0.0
    _, x_dot, r_sq, sign_dot = kernels.encode_segments(
        rotated, codec.seg_starts, codec.seg_bits, codec.N_SCALES, codec.plane_at,
        codec.bits * codec.words)
    seg_factor = np.where(x_dot > 0, r_sq / np.where(x_dot > 0, x_dot, 1.0), 0.0)
    weighted = sign_dot @ codec.seg_weight
    sign_factor = np.where(weighted > 0, r_sq[:, codec.seg_bits > 0].sum(axis=1)
                           / np.maximum(weighted, 1e-30), 0.0)
    factors = np.zeros((len(data), codec.factor_count), np.float32)
    factors[:, 0] = sign_factor
    _pack_relative(seg_factor, sign_factor, factors[:, 1:])
    got, got_sign = codec.decode_factors(factors)
    assert (got[:5, 0] == 0).all() and (got[5] == 0).all() and got_sign[5] == 0
    np.testing.assert_allclose(got, seg_factor, rtol=2e-3, atol=1e-6 * seg_factor.max())
    np.testing.assert_allclose(got_sign, sign_factor, rtol=1e-6)


@settings(max_examples=6, deadline=None)
@given(bits=st.integers(1, 8), dim=st.sampled_from([100, 192]),
       metric=st.sampled_from(["ip", "l2"]), fit_rows=st.sampled_from([0, 300, 1100]),
       seed=st.integers(0, 2**16))
def test_coded_factors_store_only_coded_segments_and_decode_the_same(bits, dim, metric,
                                                                     fit_rows, seed):
    """With ``coded_factors`` a row stores the ratios of the segments up to the last coded
    one only; decoded factors, the numpy estimate and the scan are those of the layout with
    every segment (the one older stores have), fitted or not."""
    data = _anisotropic(1100, dim, seed % 97)
    queries = _anisotropic(4, dim, seed % 97 + 1)
    wide = SegmentCodec(dim, bits, metric, seed=seed)
    narrow = SegmentCodec(dim, bits, metric, seed=seed, coded_factors=True)
    if fit_rows:
        wide.fit(data[:fit_rows])
        narrow.fit(data[:fit_rows])
    codes, factors = wide.encode(data[:300])
    narrow_codes, narrow_factors = narrow.encode(data[:300])
    np.testing.assert_array_equal(narrow_codes, codes)
    coded = np.nonzero(wide.seg_bits)[0]
    slots = int(coded.max()) + 1
    assert narrow.ratio_slots == slots and wide.ratio_slots == wide.n_segments
    assert narrow.factor_count == 1 + -(-slots // 2) + (metric == "l2") <= wide.factor_count
    assert "coded_factors" not in wide.params() and narrow.params()["coded_factors"] is True
    for got, want in zip(narrow.decode_factors(narrow_factors), wide.decode_factors(factors)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(narrow_factors[:, 0], factors[:, 0])
    if metric == "l2":
        np.testing.assert_array_equal(narrow_factors[:, -1], factors[:, -1])
    np.testing.assert_array_equal(narrow.estimate(narrow_codes, narrow_factors, queries),
                                  wide.estimate(codes, factors, queries))
    flt = RowFilter(n_rows=300)
    got = narrow.scan(narrow.scan_layout(narrow_codes), narrow_factors, queries, 7, flt)
    want = wide.scan(wide.scan_layout(codes), factors, queries, 7, flt)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_segment_codes_beat_plain_rabitq_on_anisotropic_data():
    """Where variance is uneven (as in sentence embeddings), spending bits by variance and
    scaling segments apart estimates inner products better at the same code size."""
    data, queries = _anisotropic(4000, 256, 1), _anisotropic(200, 256, 2)
    truth = queries.astype(np.float64) @ data.T.astype(np.float64)
    errors = {}
    for name in ("rabitq", "saq"):
        codec = make_codec(name, 256, 2, "ip")
        codec.fit(data)
        codes, factors = codec.encode(data)
        errors[name] = np.sqrt(np.mean((codec.estimate(codes, factors, queries) - truth) ** 2))
        assert codes.nbytes == len(data) * 2 * 256 // 8
    assert errors["saq"] < 0.8 * errors["rabitq"]


def test_one_bit_estimator_is_unbiased():
    """Averaged over random rotations, the 1-bit estimate of <o, q> has no bias."""
    rng = np.random.default_rng(7)
    dim = 64
    o = rng.standard_normal(dim).astype(np.float32)
    q = (o + 1.5 * rng.standard_normal(dim)).astype(np.float32)
    truth = float(o @ q)
    estimates = []
    for seed in range(400):
        codec = RaBitQCodec(dim, 1, "ip", seed=seed)
        codec.fit(o[None])  # one row: centroid stays at zero
        codes, factors = codec.encode(o[None])
        estimates.append(codec.estimate(codes, factors, q[None])[0, 0])
    estimates = np.array(estimates)
    standard_error = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) < 4 * standard_error
    assert estimates.std() > 0  # the estimate really depends on the rotation


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_estimator_error_within_rabitq_bound(bits):
    """|estimate - truth| <= |r| |q| sqrt(1 - c^2) / c * eps0 / sqrt(dim - 1) for nearly all pairs,
    where c is the cosine between a code and its vector (the RaBitQ bound, eps0 = 5)."""
    dim = 128
    data = random_vectors(1000, dim, seed=bits)
    queries = random_vectors(20, dim, seed=50 + bits)
    codec = RaBitQCodec(dim, bits, "ip")
    codes, factors = codec.encode(data)
    estimate = codec.estimate(codes, factors, queries)
    truth = queries.astype(np.float64) @ data.T.astype(np.float64)
    residual = codec.rotate(data - codec.centroid).astype(np.float64)
    x = codec.decode_levels(codes).astype(np.float64)
    cos = (x * residual).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(residual, axis=1)
    bound = (np.linalg.norm(residual, axis=1)[None, :] * np.linalg.norm(queries, axis=1)[:, None]
             * np.sqrt(1 - cos ** 2) / cos * 5.0 / np.sqrt(dim - 1))
    violations = (np.abs(estimate - truth) > bound).mean()
    assert violations < 1e-3
    # more bits, tighter codes: the mean cosine grows with the bit width
    assert cos.mean() > {1: 0.75, 2: 0.9, 4: 0.98, 8: 0.999}[bits]


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_byte_codecs_decode_close_to_input(name):
    data = random_vectors(300, 48, seed=3)
    codec = make_codec(name, 48, 8, "ip")
    codes, factors = codec.encode(data)
    decoded = codec.decode(codes, factors)
    peak = np.abs(data).max(axis=1, keepdims=True)
    error = np.abs(decoded - data)
    if name == "int8":
        # symmetric absmax scaling: at most half a step of peak / 127
        assert (error <= peak * (0.5 / 127) * (1 + 1e-5)).all()
    else:
        # e4m3 has 3 mantissa bits (half-ulp relative error 2^-4); below 2^-6 (in units of
        # peak / 448) values are subnormal with a fixed step of 2^-9
        step_floor = peak / 448 * 2.0 ** -10
        assert (error <= np.maximum(np.abs(data) * 2.0 ** -4, step_floor) * (1 + 1e-5)).all()


@pytest.mark.parametrize("name,bits", [("int8", 8), ("fp8", 8), ("rabitq", 4), ("saq", 4)])
def test_scan_respects_row_filter(name, bits):
    data = random_vectors(500, 32, seed=11)
    codec = make_codec(name, 32, bits, "ip")
    codes, factors = codec.encode(data)
    allowed = np.zeros(500, bool)
    allowed[::7] = True
    query = random_vectors(2, 32, seed=12)
    by_mask = codec.scan(codec.scan_layout(codes), factors, query, 10, RowFilter(n_rows=500, mask=allowed))
    by_rows = codec.scan(codec.scan_layout(codes), factors, query, 10,
                         RowFilter(n_rows=500, rows=np.nonzero(allowed)[0]))
    for scores, rows in (by_mask, by_rows):
        assert allowed[rows].all()
    np.testing.assert_array_equal(by_mask[1], by_rows[1])


def test_exact_codec_equals_reference():
    data = random_vectors(3000, 40, seed=5)
    queries = random_vectors(4, 40, seed=6)
    for metric in ("ip", "l2"):
        codec = make_codec("float32", 40, 32, metric)
        codes, factors = codec.encode(data)
        scores, rows = codec.scan(codec.scan_layout(codes), factors, queries, 15, RowFilter(n_rows=len(data)))
        reference = reference_scores(data, queries, metric)
        expected = np.argsort(-reference, axis=1, kind="stable")[:, :15]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(reference, rows, 1), rtol=1e-4,
                                   atol=1e-3)


@pytest.mark.parametrize("name,bits", [("rabitq", 1), ("rabitq", 2), ("rabitq", 4),
                                       ("rabitq", 8), ("int8", 8), ("saq", 1), ("saq", 4)])
@pytest.mark.parametrize("n_queries", [1, 3])
def test_parallel_and_serial_scans_agree(monkeypatch, name, bits, n_queries):
    from vecpress.core import codecs

    data = random_vectors(3000, 40, seed=21)
    queries = random_vectors(n_queries, 40, seed=22)
    codec = make_codec(name, 40, bits, "ip")
    codes, factors = codec.encode(data)
    mask = np.random.default_rng(0).random(3000) < 0.5
    results = []
    for threshold in (10**12, 0):  # serial, then parallel with several chunks
        monkeypatch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS", threshold)
        monkeypatch.setattr(codecs.scanning, "PARALLEL_MIN_ROWS_ONE_QUERY", threshold)
        monkeypatch.setattr(codecs.scanning, "_chunk_count", lambda n: 5)
        results.append(codec.scan(codec.scan_layout(codes), factors, queries, 20, RowFilter(n_rows=3000, mask=mask)))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)


# (1-bit RaBitQ codes are their own top plane: nothing to prune)
@pytest.mark.parametrize("name,bits", [("rabitq", 2), ("rabitq", 4), ("rabitq", 8),
                                       ("saq", 1), ("saq", 2), ("saq", 4), ("saq", 8)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_top_plane_pruning_keeps_the_best_candidates(monkeypatch, bits, metric, name):
    """Skipping rows by the sign-plane bound changes (almost) nothing in the best candidates,
    and a bound too large to skip anything gives exactly the full scan."""
    if name == "rabitq":
        codec = RaBitQCodec(64, bits, metric)
        data, queries = clustered_vectors(6000, 64, seed=30 + bits), clustered_vectors(20, 64, seed=40 + bits)
    else:
        codec = SegmentCodec(192, bits, metric)
        data, queries = _anisotropic(6000, 192, 30 + bits), _anisotropic(20, 192, 40 + bits)
        codec.fit(data)
    codes, factors = codec.encode(data)
    flt = RowFilter(n_rows=len(data))
    pruned_s, pruned_r = codec.scan(codec.scan_layout(codes), factors, queries, 30, flt)
    monkeypatch.setattr(type(codec), "PRUNE_EPSILON", 1e12)
    full_s, full_r = codec.scan(codec.scan_layout(codes), factors, queries, 30, flt)
    reference = codec.estimate(codes, factors, queries)
    overlap = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(pruned_r, full_r)])
    assert overlap >= 0.98
    # the unpruned scan's K-th score matches the numpy estimator's K-th best (up to rounding)
    kth = np.sort(reference, axis=1)[:, -30]
    assert np.allclose(full_s[:, -1], kth, rtol=0.05, atol=0.05 * np.abs(kth).max())


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
def test_pruned_scan_past_its_first_window_keeps_the_full_scans_best(monkeypatch, masked):
    """Past the first window of bounded rows (65,536) the scan scores rows as their bound
    beats the heap, in prefetched batches: it keeps the unpruned scan's best candidates with
    the same scores, and only allowed rows."""
    codec = SegmentCodec(128, 4, "ip")
    data, queries = _anisotropic(150_000, 128, 61), _anisotropic(12, 128, 62)
    codec.fit(data[:20_000])
    codes, factors = codec.encode(data)
    mask = np.random.default_rng(63).random(len(data)) < 0.5 if masked else None
    flt = RowFilter(n_rows=len(data), mask=mask)
    pruned_s, pruned_r = codec.scan(codec.scan_layout(codes), factors, queries, 30, flt)
    monkeypatch.setattr(type(codec), "PRUNE_EPSILON", 1e12)
    monkeypatch.setattr(type(codec), "RERANKED_PRUNE_EPSILON", 1e12)
    full_s, full_r = codec.scan(codec.scan_layout(codes), factors, queries, 30, flt)
    overlap = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(pruned_r, full_r)])
    assert overlap >= 0.98
    for q in range(len(queries)):
        full = dict(zip(full_r[q].tolist(), full_s[q].tolist()))
        shared = [(s, full[r]) for r, s in zip(pruned_r[q].tolist(), pruned_s[q].tolist())
                  if r in full]
        assert shared and all(a == b for a, b in shared)
    if masked:
        assert mask[pruned_r].all()


@pytest.mark.parametrize("dim", [1, 7, 64, 384])
def test_random_rotation_is_orthogonal_and_seeded(dim):
    from vecpress.core.codecs import random_rotation

    rotation = random_rotation(dim, seed=3)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(dim), atol=2e-6)
    np.testing.assert_array_equal(rotation, random_rotation(dim, seed=3))
    if dim > 1:
        assert not np.allclose(rotation, random_rotation(dim, seed=4))


@pytest.mark.parametrize("dim", [1, 7, 130])
def test_large_rotations_by_qr_match_gram_schmidt(dim, monkeypatch):
    """From LAPACK_ROTATION_DIM the rotation is a QR: the same matrix as the Gram-Schmidt of
    the same seeded Gaussian rows, up to float32 rounding."""
    from vecpress.core.codecs import rabitq

    small = rabitq.random_rotation(dim, seed=5)
    monkeypatch.setattr(rabitq, "LAPACK_ROTATION_DIM", 1)
    large = rabitq.random_rotation(dim, seed=5)
    np.testing.assert_allclose(large, small, atol=1e-6)
    np.testing.assert_allclose(large @ large.T, np.eye(dim), atol=2e-6)


def test_sign_plane_error_is_measured_at_fit_and_bounds_fresh_rows():
    """The fit measures how far the sign-plane (1-bit) estimate strays from the full one; on
    rows and queries it never saw, 3 of those standard errors cover all but a few pairs, and
    the measured spread survives a save (state arrays) and load."""
    codec = SegmentCodec(192, 4, "ip")
    codec.fit(_anisotropic(3000, 192, 7))
    assert codec.sign_sigma != SegmentCodec.DEFAULT_SIGN_SIGMA
    data, queries = _anisotropic(1500, 192, 8), _anisotropic(60, 192, 9)
    codes, factors = codec.encode(data)
    full = codec.estimate(codes, factors, queries) - (queries @ codec.centroid)[:, None]
    levels = codec.decode_levels(codes).astype(np.float64)
    weights = np.repeat(codec.seg_weight, np.diff(codec.seg_starts))
    coded = np.repeat(codec.seg_bits > 0, np.diff(codec.seg_starts))
    signs = np.where(levels >= 0, 0.5, -0.5) * weights * coded
    rotated = codec.rotate(queries).astype(np.float64)
    sign_estimate = (rotated @ signs.T) * factors[:, 0][None, :]
    reach = 3 * codec.sign_sigma * np.linalg.norm(rotated[:, coded], axis=1)[:, None] * factors[:, 0]
    assert ((full - sign_estimate) > reach).mean() < 0.01
    copy = SegmentCodec(192, 4, "ip")
    copy.load_state(codec.state_arrays())
    assert copy.sign_sigma == codec.sign_sigma
    np.testing.assert_array_equal(copy.seg_bits, codec.seg_bits)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 30), data=st.data())
def test_tiled_layout_round_trip_in_pieces(width, data):
    """Rows written into tiles in several appends read back as written, and equal one
    tiling of all rows (the in-RAM layout of segment codes)."""
    from vecpress.core.codecs import tile_codes

    n_sign = data.draw(st.integers(0, width))
    n = data.draw(st.integers(1, 700))
    codes = data.draw(arrays(np.uint64, (n, width)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    tiles = np.zeros((-(-n // kernels.TILE_ROWS), kernels.TILE_ROWS * width), np.uint64)
    for a, b in zip([0] + cuts, cuts + [n]):
        kernels.write_tiles(tiles, a, codes[a:b], n_sign)
    np.testing.assert_array_equal(tiles, tile_codes(codes, n_sign))
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=50)), dtype=np.int64)
    np.testing.assert_array_equal(kernels.read_tiles(tiles, rows, n_sign, width), codes[rows])
    # the first tile holds sign word i of its rows side by side, for each i
    first = min(n, kernels.TILE_ROWS)
    sign_block = tiles[0, :n_sign * kernels.TILE_ROWS].reshape(n_sign, kernels.TILE_ROWS)
    np.testing.assert_array_equal(sign_block[:, :first], codes[:first, :n_sign].T)


def _numpy_quantized(rotated, bits, dither=None):
    """Reference for the query quantization kernel: levels by numpy, planes unpacked."""
    low = rotated.min(axis=1)
    top = (1 << bits) - 1
    step = (rotated.max(axis=1) - low) / top
    step[step == 0] = 1.0
    scaled = (rotated - low[:, None]) / step[:, None]
    levels = np.clip(np.rint(scaled) if dither is None else np.floor(scaled + dither), 0, top)
    return levels.astype(np.uint8), step.astype(np.float64), low.astype(np.float64)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 200), st.sampled_from([4, 6, 8]),
       st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_query_quantization_kernel_matches_numpy(n, dim, bits, dtype, dither, seed):
    from vecpress.core.codecs import _quantize_query

    rng = np.random.default_rng(seed)
    rotated = (rng.standard_normal((n, dim)) * rng.choice([1e-3, 1.0, 50.0])).astype(dtype)
    if dim > 3:
        rotated[0, :3] = rotated[0, 3]  # ties
    if n > 1:
        rotated[1] = 0.25  # a constant row: step 1
    offsets = rng.random(dim) if dither else None
    words = (dim + 63) // 64
    got = _quantize_query(rotated, bits, words, dither=offsets)
    levels, step, low = _numpy_quantized(rotated, bits, offsets)
    assert got["planes"].shape == (n, words, bits)
    unpacked = kernels.unpack_planes(np.ascontiguousarray(got["planes"].transpose(0, 2, 1)), dim)
    np.testing.assert_array_equal(unpacked, levels)
    np.testing.assert_array_equal(got["step"], step)
    np.testing.assert_array_equal(got["low"], low)


def test_dithered_query_rounding_is_unbiased():
    """Rounding up with probability equal to the fraction leaves no bias (the deterministic
    rounding of the sign pass did: it pulled near neighbours' 1-bit estimates down)."""
    from vecpress.core.codecs import _quantize_query

    rng = np.random.default_rng(0)
    query = rng.standard_normal((1, 128)).astype(np.float32)
    errors = []
    for _ in range(2000):
        q = _quantize_query(query, 4, 2, dither=rng.random(128))
        levels = kernels.unpack_planes(np.ascontiguousarray(q["planes"].transpose(0, 2, 1)), 128)
        back = q["low"][0] + q["step"][0] * levels[0]
        errors.append(back - query[0])
        assert (np.abs(errors[-1]) < q["step"][0] * (1 + 1e-6)).all()
    mean = np.mean(errors, axis=0)
    step = q["step"][0]
    assert np.abs(mean).max() < 0.05 * step  # std of a mean of 2000 is < 0.012 step
