"""Index against the brute-force numpy reference: every metric and bit width, masks, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress import Index
from vecpress.core.segments import MERGE_FAN_IN
from vecpress.core.storage import StoreCorruptedError

from conftest import clustered_vectors, random_vectors, recall, reference_scores, reference_topk

METRICS = ["cosine", "ip", "l2"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("data_kind", ["random", "clustered"])
def test_exact_float32_equals_reference(metric, data_kind):
    make = random_vectors if data_kind == "random" else clustered_vectors
    data, queries = make(3000, 48, seed=1), make(25, 48, seed=2)
    index = Index(48, metric=metric, bits=32)
    ids = index.add(data)
    scores, found = index.search(queries, k=10)
    ref_scores, ref_rows = reference_topk(data, queries, 10, metric)
    np.testing.assert_array_equal(found, ids[ref_rows])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_float16_equals_reference_on_rounded_vectors(metric):
    data, queries = clustered_vectors(2000, 32, seed=3), clustered_vectors(10, 32, seed=4)
    index = Index(32, metric=metric, bits=16)
    index.add(data)
    stored = data / np.linalg.norm(data, axis=1, keepdims=True) if metric == "cosine" else data
    stored = stored.astype(np.float16).astype(np.float32)
    ref_scores = reference_scores(stored, queries, "ip" if metric == "cosine" else metric)
    if metric == "cosine":
        ref_scores /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = index.search(queries, k=8)
    np.testing.assert_allclose(scores, np.take_along_axis(ref_scores, found, 1), rtol=1e-3, atol=1e-3)
    # every returned row is at least as good as the best row not returned
    for q in range(len(queries)):
        rest = np.delete(ref_scores[q], found[q])
        assert scores[q, -1] >= rest.max() - 1e-3


def _segments(index: Index) -> list[tuple[int, int, bool, np.ndarray]]:
    """(first dim, end dim, coded?, per-row factor) of each independently scaled segment."""
    codec = index._codec
    if codec.name == "rabitq":
        return [(0, codec.dim, True, index._factors.view[:, 0].astype(np.float64))]
    seg_factor, _ = codec.decode_factors(index._factors.view)
    bounds = codec.seg_starts
    return [(int(bounds[s]), int(bounds[s + 1]), bool(codec.seg_bits[s] > 0), seg_factor[:, s])
            for s in range(codec.n_segments)]


def _guaranteed_recall_floor(index: Index, data, queries, k, candidates, metric) -> float:
    """Fraction of true top-k that the estimator's error bound guarantees a rerank returns.

    A true neighbour whose exact score beats the ``candidates``-th exact score by more than
    twice the worst-case estimation error must be among the scanned candidates. The error of
    each coded segment is RaBitQ's bound (eps0 = 5), an uncoded segment's is Cauchy-Schwarz,
    and rounding the query adds half a step per unit of |level|.
    """
    codec = index._codec
    prepared = data / np.linalg.norm(data, axis=1, keepdims=True) if metric == "cosine" else data
    qprep = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    residual = codec.rotate(prepared - codec.centroid).astype(np.float64)
    q_rot = codec.rotate(qprep - (codec.centroid if metric == "l2" else 0)).astype(np.float64)
    x = codec.decode_levels(index._codes.rows(np.arange(index._codes.size))).astype(np.float64)
    steps = codec.query_step(qprep)
    err = np.zeros((len(queries), len(data)))
    for a, b, coded, factor in _segments(index):
        r_norm = np.linalg.norm(residual[:, a:b], axis=1)[None]
        q_norm = np.linalg.norm(q_rot[:, a:b], axis=1)[:, None]
        if not coded:
            err += r_norm * q_norm
            continue
        xs = x[:, a:b]
        x_norm = np.linalg.norm(xs, axis=1)
        cos = np.where(r_norm[0] > 0, (xs * residual[:, a:b]).sum(1)
                       / np.maximum(x_norm * r_norm[0], 1e-30), 1.0)
        err += r_norm * q_norm * np.sqrt(1 - cos ** 2) / cos * 5.0 / np.sqrt(max(b - a - 1, 1))
        err += np.abs(factor)[None] * np.abs(xs).sum(1)[None] * steps[:, None] / 2
    if metric == "l2":
        err *= 2
    exact = reference_scores(data, queries, metric)
    order = np.argsort(-exact, axis=1)
    guaranteed = 0
    for q in range(len(queries)):
        cutoff = exact[q, order[q, min(candidates, len(data)) - 1]]
        top = order[q, :k]
        guaranteed += int((exact[q, top] > cutoff + 2 * err[q].max()).sum())
    return guaranteed / (k * len(queries))


def _anisotropic(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered vectors with a decaying spectrum, like sentence embeddings (PCA pays)."""
    return (clustered_vectors(n, dim, seed=seed) * np.linspace(2.0, 0.1, dim)).astype(np.float32)


@pytest.mark.parametrize("codec", ["rabitq", "saq"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("metric", METRICS)
def test_quantized_rerank_reaches_floor_from_error_bound(bits, metric, codec):
    dim, k = (64, 10) if codec == "rabitq" else (192, 10)
    make = clustered_vectors if codec == "rabitq" else _anisotropic
    data, queries = make(3000, dim, seed=bits), make(20, dim, seed=99)
    index = Index(dim, metric=metric, bits=bits, rerank=True, rerank_dtype="float32",
                  codec=codec)
    ids = index.add(data)
    if codec == "saq" and bits < 8:  # the fit found the spectrum and spent bits unevenly
        assert len(set(index._codec.seg_bits.tolist())) > 1
    scores, found = index.search(queries, k=k)
    _, truth = reference_topk(data, queries, k, metric)
    floor = _guaranteed_recall_floor(index, data, queries, k, k * index.oversample, metric)
    assert recall(found, ids[truth]) >= floor
    # reranked scores are the exact scores of the returned ids, best first
    exact = reference_scores(data, queries, metric)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, found, 1), rtol=1e-4, atol=1e-3)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("rerank", [True, False])
def test_a_reranking_index_prunes_its_scan_with_the_reranked_margin(rerank, monkeypatch,
                                                                   tmp_path):
    """With the exact rerank after it, the segment scan prunes with the codec's
    RERANKED_PRUNE_EPSILON (LISTS_PRUNE_EPSILON over some of the lists of a partitioned
    index); without it (its estimates are the answer) with PRUNE_EPSILON. The setting
    survives a refit (which works on a copy of the codec) and a reopen."""
    from vecpress.core import kernels
    from vecpress.core.codecs.saq import SegmentCodec

    margins = []
    real = kernels.prepare_queries

    def spy(*args):
        margins.append(args[-1])
        return real(*args)

    monkeypatch.setattr(kernels, "prepare_queries", spy)
    expected = SegmentCodec.RERANKED_PRUNE_EPSILON if rerank else SegmentCodec.PRUNE_EPSILON
    assert SegmentCodec.RERANKED_PRUNE_EPSILON < SegmentCodec.PRUNE_EPSILON
    data = _anisotropic(2500, 128, seed=4)
    index = Index(128, bits=4, rerank=rerank, path=tmp_path / "store")
    index.add(data[:500])
    index.add(data[500:])  # past the refit threshold: a new fit on a copy of the codec
    assert index._codec.fit_rows == (2500 if rerank else 500)
    index.search(data[:3], k=5)
    index.close()
    Index.load(tmp_path / "store").search(data[:3], k=5)
    assert margins == [expected, expected]
    if rerank:  # (lists need the kept originals) some of a partitioned index's lists:
        lists = Index(128, bits=4, partitions=8)  # narrower still; all of them: the flat one
        lists.add(data)
        margins.clear()  # (the lists' calibration searched too)
        lists.search(data[:3], k=5, nprobe=2)
        lists.search(data[:3], k=5, nprobe=8)
        assert margins == [SegmentCodec.LISTS_PRUNE_EPSILON, expected]
        assert SegmentCodec.LISTS_PRUNE_EPSILON < SegmentCodec.RERANKED_PRUNE_EPSILON


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_quantized_recall_on_clustered_data(bits):
    """A sanity floor on hard synthetic clusters (neighbours nearly tied), measured with a
    margin; the real-embedding figures live in benchmarks/."""
    data, queries = clustered_vectors(5000, 128, seed=5), clustered_vectors(50, 128, seed=6)
    _, truth = reference_topk(data, queries, 10, "cosine")
    index = Index(128, bits=bits)
    index.add(data)
    plain = Index(128, bits=bits, rerank=False)
    plain.add(data)
    assert recall(index.search(queries, 10)[1], truth) >= {1: 0.5, 4: 0.95, 8: 0.98}[bits]
    assert recall(plain.search(queries, 10)[1], truth) >= {1: 0.12, 4: 0.6, 8: 0.95}[bits]


@pytest.mark.parametrize("bits", [32, 4, 1])
def test_mask_returns_k_hits_when_k_allowed(bits):
    data, queries = clustered_vectors(4000, 32, seed=8), clustered_vectors(6, 32, seed=9)
    index = Index(32, bits=bits)
    ids = index.add(data)
    rng = np.random.default_rng(0)
    for fraction in (0.5, 0.05, 0.003):
        allowed = rng.random(len(data)) < fraction
        allowed_ids = ids[allowed]
        k = 10
        scores, found = index.search(queries, k=k, mask=set(allowed_ids.tolist()))
        expected_hits = min(k, allowed.sum())
        assert ((found >= 0).sum(axis=1) == expected_hits).all()
        assert np.isin(found[found >= 0], allowed_ids).all()
        if bits == 32 or allowed.sum() <= k * index.oversample:
            _, truth = reference_topk(data, queries, k, "cosine", allowed=allowed)
            np.testing.assert_array_equal(found[:, :expected_hits], ids[truth[:, :expected_hits]])


def test_boolean_row_mask_and_removed_rows():
    data = random_vectors(500, 16, seed=10)
    index = Index(16, bits=32)
    ids = index.add(data)
    index.remove(ids[:100])
    mask = np.zeros(len(index.row_ids), bool)
    mask[:200] = True  # half of these rows are removed: only ids 100..199 may come back
    _, found = index.search(data[:3], k=150, mask=mask)
    live = found[found >= 0]
    assert set(live.tolist()) <= set(range(100, 200))
    assert ((found >= 0).sum(axis=1) == 100).all()


def test_k_larger_than_count_pads_with_minus_one():
    index = Index(8, bits=4)
    index.add(random_vectors(3, 8))
    scores, found = index.search(random_vectors(2, 8, seed=1), k=5)
    assert found.shape == (2, 5)
    assert (found[:, 3:] == -1).all() and (found[:, :3] >= 0).all()
    assert np.isneginf(scores[:, 3:]).all()
    empty = Index(8)
    s, f = empty.search(random_vectors(1, 8), k=2)
    assert (f == -1).all() and np.isneginf(s).all()


def test_add_with_existing_id_replaces_it():
    data = random_vectors(50, 12, seed=11)
    index = Index(12, bits=32)
    index.add(data, ids=np.arange(50) * 10)
    new = random_vectors(2, 12, seed=12)
    index.add(new, ids=[30, 1000])
    assert len(index) == 51
    np.testing.assert_allclose(index.get([30])[0], new[0] / np.linalg.norm(new[0]), rtol=1e-6)
    _, found = index.search(new[:1], k=1)
    assert found[0, 0] == 30
    auto = index.add(random_vectors(1, 12, seed=13))
    assert auto[0] == 1001  # automatic ids continue after the largest id seen


def test_compaction_keeps_results(tmp_path):
    data, queries = clustered_vectors(1000, 24, seed=14), clustered_vectors(5, 24, seed=15)
    for path in (None, tmp_path / "store"):
        index = Index(24, bits=4, path=path)
        ids = index.add(data)
        index.remove(ids[::3])
        before = index.search(queries, k=7)
        index.compact()
        after = index.search(queries, k=7)
        np.testing.assert_array_equal(before[1], after[1])
        assert index.stats()["rows"] == len(index) == 1000 - len(ids[::3])
        index.close()


# ---------------------------------------------------------------------- persistence


@pytest.mark.parametrize("bits", [1, 4, 16, 32])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_save_load_round_trip(tmp_path, bits, metric):
    data, queries = clustered_vectors(800, 40, seed=16), clustered_vectors(6, 40, seed=17)
    index = Index(40, metric=metric, bits=bits)
    index.add(data[:500])
    index.add(data[500:])
    index.remove([3, 4, 5])
    expected = index.search(queries, k=9)
    index.save(tmp_path / "copy")
    loaded = Index.load(tmp_path / "copy")
    got = loaded.search(queries, k=9)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert len(loaded) == len(index) == 797
    assert loaded.stats()["bits"] == bits and loaded.metric == metric


def test_persistent_index_survives_reopen_and_continues(tmp_path):
    path = tmp_path / "store"
    data = random_vectors(300, 16, seed=18)
    index = Index(16, bits=2, path=path)
    for start in range(0, 300, 50):
        index.add(data[start:start + 50])
    index.remove(list(range(0, 300, 10)))
    expected = index.search(data[:5], k=4)
    index.close()
    reopened = Index.load(path)
    np.testing.assert_array_equal(reopened.search(data[:5], k=4)[1], expected[1])
    reopened.add(data[:1], ids=[0])
    assert len(reopened) == 271
    assert reopened.stats()["segments"] < MERGE_FAN_IN  # 6 of one size tier, 1 smaller
    reopened.add(data[100:150])
    reopened.add(data[150:200])
    assert reopened.stats()["segments"] == 1  # 8 of one tier (the small one between) merged
    reopened.close()


@pytest.mark.parametrize("metric", ["l2"])  # (ip / cosine: the codec test of coded_factors)
def test_store_with_every_segment_factor_reopens_and_answers_the_same(tmp_path, monkeypatch,
                                                                       metric):
    """A store written before ``coded_factors`` (factor ratios for every saq segment, no key
    in its config) reopens with that layout, answers as it did and as a store of the new
    (narrower) layout on the same rows, and keeps its layout through adds and a refit."""
    from vecpress.core.index import index as index_module

    data = clustered_vectors(4500, 384, seed=40) * np.linspace(2.0, 0.1, 384)
    queries = data[:12] + 0.05
    make_config = index_module._make_config
    monkeypatch.setattr(index_module, "_make_config",
                        lambda **kw: make_config(**{**kw, "coded_factors": False}))
    old = Index(384, bits=1, metric=metric, path=tmp_path / "old", partitions=None)
    monkeypatch.undo()
    new = Index(384, bits=1, metric=metric, path=tmp_path / "new", partitions=None)
    for index in (old, new):
        index.add(data[:1100])
        index.remove([5, 6])
    expected = old.search(queries, k=10)
    old.close()
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert "coded_factors" not in manifest["config"]
    assert "coded_factors" not in manifest["codec"]
    reopened = Index.load(tmp_path / "old")
    codec, new_codec = reopened._codec, new._codec
    assert not codec.coded_factors and new_codec.coded_factors
    np.testing.assert_array_equal(codec.seg_bits, new_codec.seg_bits)
    assert codec.coded_prefix < codec.n_segments  # (otherwise the layouts are the same)
    assert reopened._factors.view.shape[1] == 1 + 3 + (metric == "l2")
    assert new._factors.view.shape[1] == (1 + -(-new_codec.coded_prefix // 2)
                                         + (metric == "l2"))
    for got in (reopened.search(queries, k=10), new.search(queries, k=10)):
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    for index in (reopened, new):  # grows fourfold: the codec is refitted, every row re-encoded
        index.add(data[1100:])
        assert index._codec.fit_rows == len(index)
    assert not reopened._codec.coded_factors
    assert reopened._factors.view.shape[1] == 1 + 3 + (metric == "l2")
    for got in (reopened.search(queries, k=10), Index.load(tmp_path / "old", read_only=True).search(queries, 10)):
        np.testing.assert_array_equal(got[1], new.search(queries, k=10)[1])
    reopened.close()
    new.close()


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_empty_persistent_index_reopens_and_accepts_vectors(tmp_path, bits):
    path = tmp_path / "store"
    Index(8, bits=bits, path=path).close()
    reopened = Index.load(path)
    assert len(reopened) == 0
    assert (reopened.search(random_vectors(1, 8), k=2)[1] == -1).all()
    ids = reopened.add(random_vectors(5, 8))
    assert (reopened.search(random_vectors(5, 8), k=1)[1][:, 0] == ids).all()
    reopened.close()


def test_second_writer_is_refused_but_reader_allowed(tmp_path):
    path = tmp_path / "store"
    index = Index(8, path=path)
    index.add(random_vectors(10, 8))
    with pytest.raises(RuntimeError, match="read_only=True"):
        Index.load(path)
    reader = Index.load(path, read_only=True)
    assert len(reader) == 10
    with pytest.raises(PermissionError, match="read-only"):
        reader.add(random_vectors(1, 8))
    index.close()
    with pytest.raises(FileExistsError, match="Index.load"):
        Index(8, path=path)


def _segment_file(path: Path, part: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    return path / manifest["segments"][0]["files"][part]["file"]


@pytest.mark.parametrize("part", ["codes", "ids", "originals"])
def test_truncated_file_is_named_in_error(tmp_path, part):
    path = tmp_path / "store"
    with Index(16, path=path) as index:
        index.add(random_vectors(100, 16))
    target = _segment_file(path, part)
    target.write_bytes(target.read_bytes()[:-40])
    with pytest.raises(StoreCorruptedError, match=target.name):
        Index.load(path)


@pytest.mark.parametrize("part,verify", [("codes", True), ("factors", True),
                                         ("originals", "full")])
def test_flipped_byte_fails_checksum_naming_file(tmp_path, part, verify):
    path = tmp_path / "store"
    with Index(16, path=path) as index:
        index.add(random_vectors(100, 16))
    target = _segment_file(path, part)
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptedError, match=f"{target.name}.*checksum"):
        Index.load(path, verify=verify)
    if part == "originals":  # memory-mapped originals are only read in full when asked
        Index.load(path).close()


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "store"
    with Index(16, path=path):
        pass
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptedError, match="newer"):
        Index.load(path)


def test_no_pickle_in_store(tmp_path):
    path = tmp_path / "store"
    with Index(16, path=path) as index:
        index.add(random_vectors(20, 16))
    for file in path.glob("*.npy"):
        array = np.load(file, allow_pickle=False)  # would raise on object arrays
        assert array.dtype != object


# ---------------------------------------------------------------------- bad input


def _bad_calls():
    good = random_vectors(4, 8)
    return [
        ("dim mismatch", lambda i: i.add(random_vectors(4, 9)), ValueError, "dim=8"),
        ("nan", lambda i: i.add(np.full((2, 8), np.nan)), ValueError, "NaN"),
        ("inf", lambda i: i.add(np.full((2, 8), np.inf)), ValueError, "finite"),
        ("1-D add", lambda i: i.add(good[0]), ValueError, r"vectors\[None, :\]"),
        ("strings", lambda i: i.add(np.array([["a"] * 8])), TypeError, "numbers"),
        ("empty", lambda i: i.add(np.zeros((0, 8))), ValueError, "empty"),
        ("zero vector cosine", lambda i: i.add(np.zeros((1, 8))), ValueError, "all zeros"),
        ("ids length", lambda i: i.add(good, ids=[1, 2]), ValueError, "one id per vector"),
        ("duplicate ids", lambda i: i.add(good, ids=[1, 1, 2, 3]), ValueError, "repeats id 1"),
        ("negative ids", lambda i: i.add(good, ids=[-1, 1, 2, 3]), ValueError, "non-negative"),
        ("float ids", lambda i: i.add(good, ids=[0.5, 1, 2, 3]), TypeError, "integers"),
        ("k zero", lambda i: i.search(good, k=0), ValueError, "k must be at least 1"),
        ("k float", lambda i: i.search(good, k=2.5), TypeError, "k must be an integer"),
        ("query dim", lambda i: i.search(random_vectors(1, 3), k=1), ValueError, "dim=8"),
        ("unknown remove", lambda i: i.remove([12345]), KeyError, "12345"),
        ("bad mask", lambda i: i.search(good, mask=np.ones(10_000, bool)), ValueError, "mask"),
    ]


@pytest.mark.parametrize("name,call,error,message", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_input_raises_before_writing(tmp_path, name, call, error, message):
    path = tmp_path / "store"
    index = Index(8, bits=4, path=path)
    index.add(random_vectors(10, 8, seed=3))
    files_before = sorted(p.name for p in path.iterdir())
    manifest_before = (path / "manifest.json").read_bytes()
    with pytest.raises(error, match=message):
        call(index)
    assert sorted(p.name for p in path.iterdir()) == files_before
    assert (path / "manifest.json").read_bytes() == manifest_before
    assert len(index) == 10
    index.close()


def test_negative_ids_never_match_removed_rows():
    index = Index(8, bits=4)
    index.add(random_vectors(10, 8))
    index.remove([0])
    with pytest.raises(KeyError, match=r"\[-1\]"):
        index.remove([-1])
    assert len(index) == 9 and index.stats()["deleted"] == 1
    _, found = index.search(random_vectors(1, 8), k=10, mask=[-1, 3])
    assert found[0, 0] == 3 and (found[0, 1:] == -1).all()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"dim": 0}, ValueError, "dim must be at least 1"),
    ({"dim": 8, "bits": 9}, ValueError, "bits=9 is out of range"),
    ({"dim": 8, "bits": 0}, ValueError, "bits=0"),
    ({"dim": 8, "bits": "4"}, TypeError, "bits must be an integer"),
    ({"dim": 8, "metric": "manhattan"}, ValueError, "metric='manhattan'"),
    ({"dim": 8, "codec": "pq"}, ValueError, "codec='pq' is unknown"),
    ({"dim": 8, "codec": "int8", "bits": 4}, ValueError, "bits=8"),
    ({"dim": 8, "truncate_dim": 9}, ValueError, "truncate_dim=9 exceeds dim=8"),
    ({"dim": 8, "rerank_dtype": "int8"}, ValueError, "rerank_dtype"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Index(**kwargs)


def test_metric_aliases_and_named_codecs():
    data, queries = clustered_vectors(1500, 32, seed=20), clustered_vectors(10, 32, seed=21)
    _, truth = reference_topk(data, queries, 10, "ip")
    for codec in ("int8", "fp8"):
        index = Index(32, metric="dot", bits=8, codec=codec)
        ids = index.add(data)
        assert index.metric == "ip"
        assert recall(index.search(queries, 10)[1], ids[truth]) >= 0.99


def test_truncate_dim_codes_prefix_but_reranks_full_vectors():
    data, queries = clustered_vectors(2000, 64, seed=22), clustered_vectors(10, 64, seed=23)
    index = Index(64, bits=4, truncate_dim=32, oversample=10)
    ids = index.add(data)
    assert index.stats()["code_bytes"] == 4 * 8  # 4 planes of one 64-bit word for 32 dims
    scores, found = index.search(queries, 10)
    exact = reference_scores(data, queries, "cosine")
    np.testing.assert_allclose(scores, np.take_along_axis(exact, found, 1), atol=2e-3)
    _, truth = reference_topk(data, queries, 10, "cosine")
    assert recall(found, ids[truth]) >= 0.9


@pytest.mark.parametrize("bits,metric,code_bytes", [(1, "cosine", 48), (4, "cosine", 192),
                                                    (8, "ip", 384), (2, "l2", 96)])
def test_stats_ram_is_codes_plus_small_overhead(tmp_path, bits, metric, code_bytes):
    index = Index(384, bits=bits, metric=metric, path=tmp_path / "store")  # originals on disk
    index.add(random_vectors(1024, 384))  # four whole tiles of 256 rows
    stats = index.stats()
    per_vector = (stats["ram_bytes"] - stats["ram_fixed_bytes"]) / stats["count"]
    assert stats["code_bytes"] == code_bytes
    # the factors: for the default (saq) codec, one float32 plus a float16 ratio for each
    # segment up to the last coded one, two per float32 column, plus |r|^2 for L2; the ids
    # run consecutively, so they are implicit
    codec = index._codec
    assert codec.name == "saq" and codec.n_segments == 6
    slots = int(np.nonzero(codec.seg_bits)[0].max()) + 1
    factors = 1 + -(-slots // 2) + (metric == "l2")
    assert per_vector == code_bytes + 4 * factors
    assert per_vector <= code_bytes + 16 + 4 * (metric == "l2")
    index.add(random_vectors(1, 384), ids=[10**9])  # an id out of the run: ids become explicit
    stats = index.stats()
    assert stats["ram_bytes"] - stats["ram_fixed_bytes"] >= 1025 * (code_bytes + 4 * factors + 8)
    assert stats["disk_bytes"] > 1024 * 384 * 2  # float16 originals are on disk
    index.close()


@pytest.mark.parametrize("on_disk", [False, True])
def test_saq_codec_refits_as_the_index_grows(tmp_path, on_disk):
    """Small first batches give data-oblivious codes; once the index outgrows its fit fourfold
    it refits (PCA, bit allocation) from the kept originals and re-encodes every row, and the
    refitted index answers like a freshly built one, also after a reopen."""
    dim = 128
    data = _anisotropic(6000, dim, seed=11)
    queries = _anisotropic(30, dim, seed=12)
    path = tmp_path / "grown" if on_disk else None
    index = Index(dim, bits=2, path=path, rerank_dtype="float32")
    assert index._codec.name == "saq"
    ids = [index.add(data[:10])]
    assert index._codec.fit_rows == 10
    assert len(set(index._codec.seg_bits.tolist())) == 1  # too few rows for a PCA
    for start in range(10, len(data), 500):
        ids.append(index.add(data[start:start + 500]))
    ids = np.concatenate(ids)
    codec = index._codec
    assert 1024 <= codec.fit_rows <= len(data) and 4 * codec.fit_rows > len(data)
    assert len(set(codec.seg_bits.tolist())) > 1  # the refit found the spectrum
    fresh = Index(dim, bits=2, rerank_dtype="float32")
    fresh_ids = fresh.add(data)
    for one in (index, fresh):  # every row is encoded by the current fit (re-normalising the
        # kept unit vectors may move a coordinate across a rounding edge in a few rows)
        codes_now = one._codec.encode(one._code_vectors(
            one._originals.fetch(np.arange(len(data)))))[0]
        assert (one._codes.rows(np.arange(len(data))) == codes_now).all(axis=1).mean() > 0.99
    _, truth = reference_topk(data, queries, 10, "cosine")
    grown_recall = recall(index.search(queries, 10)[1], ids[truth])
    assert grown_recall >= recall(fresh.search(queries, 10)[1], fresh_ids[truth]) - 0.02
    assert grown_recall >= 0.95
    if on_disk:
        before = index.search(queries, 10)
        index.close()
        reopened = Index.load(path)
        assert reopened._codec.fit_rows == codec.fit_rows
        np.testing.assert_array_equal(reopened._codec.seg_bits, codec.seg_bits)
        after = reopened.search(queries, 10)
        np.testing.assert_array_equal(after[1], before[1])
        reopened.close()


def test_saq_codec_without_originals_keeps_its_first_fit():
    """rerank=False keeps no originals, so nothing can be re-encoded: the first fit stays."""
    data = _anisotropic(3000, 64, seed=13)
    index = Index(64, bits=4, rerank=False)
    index.add(data[:100])
    index.add(data[100:])
    assert index._codec.fit_rows == 100


def test_compaction_refits_the_codec_on_the_live_rows():
    data = _anisotropic(3000, 128, seed=14)
    index = Index(128, bits=4)
    ids = index.add(data)
    index.remove(ids[:2000])  # two thirds removed: compaction runs by itself
    assert len(index.row_ids) == 1000 and index._codec.fit_rows == 1000
    queries = _anisotropic(10, 128, seed=15)
    _, truth = reference_topk(data[2000:], queries, 10, "cosine")
    assert recall(index.search(queries, 10)[1], ids[2000:][truth]) >= 0.95


def test_failed_refit_keeps_the_old_fit_and_files(tmp_path, monkeypatch):
    """A refit that fails half-way (here: encoding raises) changes nothing: neither the codec
    in RAM nor the committed files."""
    from vecpress.core.codecs import SegmentCodec

    data = _anisotropic(1200, 64, seed=16)
    index = Index(64, bits=2, path=tmp_path / "store")
    ids = index.add(data[:200])
    fit_rows = index._codec.fit_rows
    real_encode = SegmentCodec.encode

    def failing(self, vectors):
        if self is not index._codec:  # the copy being refitted
            raise MemoryError("simulated")
        return real_encode(self, vectors)

    monkeypatch.setattr(SegmentCodec, "encode", failing)
    with pytest.warns(RuntimeWarning, match="refitting the codec or the lists failed"):
        new_ids = index.add(data[200:])  # 1200 rows >= 4 x 200: the refit runs and fails
    monkeypatch.setattr(SegmentCodec, "encode", real_encode)
    assert index._codec.fit_rows == fit_rows and len(index) == 1200  # the add itself stands
    after = index.search(data[:5], 5)
    index.close()
    reopened = Index.load(tmp_path / "store")
    assert reopened._codec.fit_rows == fit_rows
    assert set(reopened.ids.tolist()) == set(ids.tolist()) | set(new_ids.tolist())
    np.testing.assert_array_equal(reopened.search(data[:5], 5)[1], after[1])
    reopened.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 5), st.booleans(), st.integers(0, 30)),
    st.tuples(st.just("remove"), st.integers(0, 40))), max_size=25))
def test_id_column_matches_a_list_of_ids(steps):
    """Implicit (consecutive) and explicit ids, and removal flags, against a plain list."""
    from vecpress.core.columns import _IdColumn

    column, model, next_id = _IdColumn(), [], 0
    for step in steps:
        if step[0] == "add":
            _, n, consecutive, jump = step
            new = list(range(next_id, next_id + n)) if consecutive else [next_id + jump + 3 * i for i in range(n)]
            next_id = max(new) + 1
            column.extend(np.array(new, dtype=np.int64))
            model += new
        elif model:
            row = step[1] % len(model)
            column.remove(np.array([row]))
            model[row] = -1
        np.testing.assert_array_equal(column.all(), np.array(model, dtype=np.int64).reshape(-1))
        assert column.deleted == model.count(-1) and column.size == len(model)
        live = [i for i, v in enumerate(model) if v >= 0]
        np.testing.assert_array_equal(column.live_rows(), live)
        probe = np.array([v for v in model if v >= 0] + [next_id, -5], dtype=np.int64)
        rows, found = column.rows_of(probe)
        assert found.tolist() == [True] * len(live) + [False, False]
        assert rows[:len(live)].tolist() == live
    if steps and all(s[0] == "add" and s[2] for s in steps):
        assert column.nbytes == 0  # consecutive ids cost nothing
