"""Collection search against brute-force references: dense (exact and quantized) under random
filters in both dialects, text (BM25 as FTS5 defines it), hybrid fusion, MMR; persistence,
configuration checks and bad input."""

from __future__ import annotations

import functools
import json
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecpress import Collection, Hit
from vecpress.core.collection import relevance_score
from vecpress.core.storage import StoreCorruptedError

from collection_model import (bm25_scores, dense_scores, holds, langchain_filters, llama_filters,
                              mmr_reference, random_metadata, to_langchain, to_llama)
from conftest import clustered_vectors

K = 10


def build(n: int, dim: int, metric: str, bits: int, seed: int = 0, path=None):
    rng = np.random.default_rng(seed)
    vectors = clustered_vectors(n, dim, seed=seed)
    metadatas = [random_metadata(rng) for _ in range(n)]
    col = Collection(dim, path=path, bits=bits, metric=metric)
    ids = [f"doc-{i}" for i in range(n)]
    for start in range(0, n, 250):  # several batches, as real ingestion does
        col.upsert(ids[start:start + 250], vectors[start:start + 250],
                   texts=[f"text {i}" for i in range(start, min(n, start + 250))],
                   metadatas=metadatas[start:start + 250])
    return col, vectors, metadatas


@functools.lru_cache(maxsize=None)
def exact_corpus(metric: str):
    return build(600, 16, metric, bits=32, seed=1)


@functools.lru_cache(maxsize=None)
def quantized_corpus():
    return build(3000, 48, "cosine", bits=4, seed=2)


def reference_hits(vectors, metadatas, query, metric, node, k):
    scores = dense_scores(vectors, query, metric)
    allowed = np.array([node is None or holds(m, node) for m in metadatas])
    order = [i for i in np.argsort(-scores, kind="stable") if allowed[i]]
    return order[:k], scores, int(allowed.sum())


def check_exact(col, vectors, metadatas, metric, node, where, query):
    hits = col.search(query, k=K, where=where)
    top, scores, n_allowed = reference_hits(vectors, metadatas, query, metric, node, K)
    assert len(hits) == min(K, n_allowed)
    rows = [int(h.id.split("-")[1]) for h in hits]
    for hit, row in zip(hits, rows):
        assert node is None or holds(metadatas[row], node)
        assert hit.score == pytest.approx(scores[row], abs=1e-4)
        assert hit.metadata == metadatas[row] and hit.text == f"text {row}"
    # same scores as the reference top-k: equal ids up to exact ties
    np.testing.assert_allclose([h.score for h in hits], scores[top], atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=langchain_filters, seed=st.integers(0, 2**16))
def test_exact_dense_search_with_dict_filters_equals_reference(metric, node, seed):
    col, vectors, metadatas = exact_corpus(metric)
    query = np.random.default_rng(seed).standard_normal(16).astype(np.float32) + 0.5
    check_exact(col, vectors, metadatas, metric, node, to_langchain(node, seed), query)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=llama_filters, seed=st.integers(0, 2**16))
def test_exact_dense_search_with_llama_filters_equals_reference(node, seed):
    col, vectors, metadatas = exact_corpus("cosine")
    query = np.random.default_rng(seed).standard_normal(16).astype(np.float32) + 0.5
    check_exact(col, vectors, metadatas, "cosine", node, to_llama(node), query)


def test_unfiltered_exact_search_equals_reference():
    col, vectors, metadatas = exact_corpus("l2")
    for seed in range(5):
        query = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
        check_exact(col, vectors, metadatas, "l2", None, None, query)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=langchain_filters, seed=st.integers(0, 2**16))
def test_quantized_dense_search_reaches_recall_floor_and_returns_k(node, seed):
    col, vectors, metadatas = quantized_corpus()
    rng = np.random.default_rng(seed)
    found = expected = 0
    for _ in range(3):
        query = vectors[rng.integers(len(vectors))] + 0.3 * rng.standard_normal(48).astype(np.float32)
        hits = col.search(query, k=K, where=to_langchain(node))
        top, scores, n_allowed = reference_hits(vectors, metadatas, query, "cosine", node, K)
        assert len(hits) == min(K, n_allowed)  # k hits whenever k match, at any selectivity
        rows = [int(h.id.split("-")[1]) for h in hits]
        assert all(holds(metadatas[r], node) for r in rows)
        # scores are exact (reranked on float16 originals), whatever the code size
        np.testing.assert_allclose([h.score for h in hits], scores[rows], atol=2e-3)
        found += len(set(rows) & set(top))
        expected += len(top)
    # 4-bit codes with the default oversampling rerank ~99% of the true top 10 on this data;
    # the floor leaves room for unlucky filtered subsets
    assert expected == 0 or found / expected >= 0.8


def test_quantized_recall_over_many_queries():
    col, vectors, metadatas = quantized_corpus()
    rng = np.random.default_rng(5)
    node = ("lte", "n", 2)
    where = {"n": {"$lte": 2}}
    found = 0
    for _ in range(50):
        query = vectors[rng.integers(len(vectors))] + 0.3 * rng.standard_normal(48).astype(np.float32)
        top, _, _ = reference_hits(vectors, metadatas, query, "cosine", node, K)
        found += len({int(h.id.split("-")[1]) for h in col.search(query, k=K, where=where)} & set(top))
    assert found / (50 * K) >= 0.95


@pytest.mark.parametrize("n_match", [1, 9, 10, 11, 40])
def test_selective_filters_return_k_hits(n_match):
    rng = np.random.default_rng(n_match)
    n = 5000
    vectors = rng.standard_normal((n, 32)).astype(np.float32)
    chosen = set(rng.choice(n, n_match, replace=False).tolist())
    col = Collection(32, bits=2)
    col.upsert([str(i) for i in range(n)], vectors,
               metadatas=[{"rare": i in chosen} for i in range(n)])
    query = rng.standard_normal(32).astype(np.float32)
    hits = col.search(query, k=K, where={"rare": True})
    scores = dense_scores(vectors, query, "cosine")
    expected = sorted(chosen, key=lambda i: -scores[i])[:K]
    assert len(hits) == min(K, n_match)
    assert [int(h.id) for h in hits] == expected  # few rows: every allowed row is scored exactly
    assert col.search(query, k=K, where={"rare": "no such value"}) == []


# ---------------------------------------------------------------------- text and hybrid

CORPUS = [
    "red fish swim in the blue sea",
    "a red red rose",
    "blue sky over the green hill",
    "the cat sat on the mat",
    "a dog and a cat",
    "green tea with lemon",
    "fish and chips",
    "the sea is deep and blue and cold",
]


def text_corpus(metric="cosine"):
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((len(CORPUS), 8)).astype(np.float32)
    col = Collection(8, bits=32, metric=metric)
    col.upsert([f"t{i}" for i in range(len(CORPUS))], vectors, texts=CORPUS,
               metadatas=[{"i": i, "even": i % 2 == 0} for i in range(len(CORPUS))])
    return col, vectors


@pytest.mark.parametrize("query", ["red fish", "blue sea", "cat", "green lemon tea", "deep"])
def test_text_search_is_fts5_bm25(query):
    col, _ = text_corpus()
    expected = bm25_scores(CORPUS, query)
    order = sorted(expected, key=lambda i: (-expected[i], i))
    hits = col.search(None, k=len(CORPUS), mode="text", query_text=query)
    assert [h.id for h in hits] == [f"t{i}" for i in order]
    np.testing.assert_allclose([h.score for h in hits], [expected[i] for i in order], rtol=1e-6)
    assert all(h.text == CORPUS[int(h.id[1:])] for h in hits)


def test_text_search_hand_checked():
    col, _ = text_corpus()
    # "red" appears twice in doc 1 (a short doc), once in doc 0
    assert [h.id for h in col.search(None, k=2, mode="text", query_text="red")] == ["t1", "t0"]
    # Porter stemming: "cats" finds "cat"; words are ORed; punctuation and FTS syntax are words
    assert {h.id for h in col.search(None, k=5, mode="text", query_text="Cats!")} == {"t3", "t4"}
    assert col.search(None, k=5, mode="text", query_text='NEAR(" NOT * ^') == []
    assert {h.id for h in col.search(None, k=5, mode="text", query_text='"AND"*')} == {
        f"t{i}" for i, t in enumerate(CORPUS) if " and " in t}
    assert col.search(None, k=5, mode="text", query_text="...") == []
    # filters apply before ranking: k hits among the matching documents
    hits = col.search(None, k=2, mode="text", query_text="blue sea", where={"even": False})
    assert [h.id for h in hits] == ["t7"]


def ranks(ranked_ids):
    return {r: i + 1 for i, r in enumerate(ranked_ids)}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_hybrid_rrf_equals_reference(alpha):
    col, vectors = text_corpus()
    query = vectors[2] + 0.5 * vectors[0]
    text = "blue sea fish"
    dense = dense_scores(vectors, query, "cosine")
    dense_rank = ranks(list(np.argsort(-dense, kind="stable")))
    bm25 = bm25_scores(CORPUS, text)
    text_rank = ranks(sorted(bm25, key=lambda i: (-bm25[i], i)))
    fused = {i: alpha / (60 + dense_rank[i]) + ((1 - alpha) / (60 + text_rank[i])
                                                 if i in text_rank else 0.0)
             for i in range(len(CORPUS))}
    expected = sorted(fused, key=lambda i: (-fused[i], i))[:5]
    hits = col.search(query, k=5, mode="hybrid", query_text=text, alpha=alpha)
    assert [h.id for h in hits] == [f"t{i}" for i in expected]
    np.testing.assert_allclose([h.score for h in hits], [fused[i] for i in expected], rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_hybrid_weighted_equals_reference(alpha):
    col, vectors = text_corpus("ip")
    query = vectors[5] - vectors[1]
    text = "red fish"
    dense = dense_scores(vectors, query, "ip")
    bm25 = bm25_scores(CORPUS, text)
    d = (dense - dense.min()) / (dense.max() - dense.min())
    t = np.array([bm25.get(i, 0.0) for i in range(len(CORPUS))])
    t = t / t.max()
    fused = alpha * d + (1 - alpha) * t
    expected = sorted(range(len(CORPUS)), key=lambda i: (-fused[i], i))[:4]
    hits = col.search(query, k=4, mode="hybrid", query_text=text, alpha=alpha,
                      fusion="weighted", fetch_k=8)
    assert [h.id for h in hits] == [f"t{i}" for i in expected]
    np.testing.assert_allclose([h.score for h in hits], fused[expected], rtol=1e-5)


def test_hybrid_with_filter_and_no_text_match():
    col, vectors = text_corpus()
    hits = col.search(vectors[3], k=3, mode="hybrid", query_text="zzz", where={"even": True})
    dense = dense_scores(vectors, vectors[3], "cosine")
    expected = [i for i in np.argsort(-dense) if i % 2 == 0][:3]
    assert [h.id for h in hits] == [f"t{i}" for i in expected]


def test_text_statistics_and_scores_of_let_parts_score_as_their_union():
    """Two collections holding halves of CORPUS: the sums of their BM25 statistics make each
    half score its documents as the whole corpus does (the reference); scores_of gives the
    exact dense scores and those BM25 scores of documents by id."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((len(CORPUS), 8)).astype(np.float32)
    halves = []
    for parity in (0, 1):
        rows = [i for i in range(len(CORPUS)) if i % 2 == parity]
        part = Collection(8, bits=32)
        part.upsert([f"t{i}" for i in rows], vectors[rows], texts=[CORPUS[i] for i in rows],
                     metadatas=[{"i": i} for i in rows])
        halves.append((part, rows))
    for query in ["red fish", "blue sea deep", "cat", "zzz", "..."]:
        parts = [part.text_statistics(query) for part, _ in halves]
        words = [len([w for w in CORPUS[i].split()]) for i in range(len(CORPUS))]
        terms = list(dict.fromkeys(query.lower().replace(".", " ").split()))
        assert sum(p[0] for p in parts) == len(CORPUS) and sum(p[1] for p in parts) == sum(words)
        assert [sum(p[2][j] for p in parts) for j in range(len(terms))] == \
            [sum(t in CORPUS[i].split() for i in range(len(CORPUS))) for t in terms]
        union = (sum(p[0] for p in parts), sum(p[1] for p in parts),
                 [sum(p[2][j] for p in parts) for j in range(len(terms))])
        expected = bm25_scores(CORPUS, query)
        for part, rows in halves:
            mine = sorted((i for i in rows if i in expected), key=lambda i: (-expected[i], i))
            hits = part.text_search(query, 10, statistics=union)
            assert [h.id for h in hits] == [f"t{i}" for i in mine]
            np.testing.assert_allclose([h.score for h in hits], [expected[i] for i in mine],
                                       rtol=1e-9)
            assert [h.id for h in part.text_search(query, 10, {"i": {"$gte": 4}},
                                                   statistics=union)] == \
                [f"t{i}" for i in mine if i >= 4]
            own = part.search(k=10, mode="text", query_text=query) if mine else []
            assert [(h.id, h.score) for h in part.text_search(query, 10)] == \
                [(h.id, h.score) for h in own]
            ids = [f"t{i}" for i in rows] + ["absent"]
            dense, text = part.scores_of(ids, vectors[3], query, statistics=union)
            reference = dense_scores(vectors, vectors[3], "cosine")
            assert set(dense) == {f"t{i}" for i in rows}
            assert all(abs(dense[f"t{i}"] - reference[i]) < 1e-6 for i in rows)
            assert text == pytest.approx({f"t{i}": expected[i] for i in mine}, rel=1e-9)
    with pytest.raises(TypeError, match="query_text"):
        halves[0][0].text_statistics(None)


@pytest.mark.parametrize("lambda_mult", [0.0, 0.25, 0.5, 1.0])
def test_mmr_equals_reference(lambda_mult):
    col, vectors, metadatas = exact_corpus("cosine")
    query = vectors[7] + 0.1
    node = ("gte", "n", 0)
    top, scores, _ = reference_hits(vectors, metadatas, query, "cosine", node, 30)
    chosen = mmr_reference(query, vectors[top], 6, lambda_mult)
    hits = col.max_marginal_relevance_search(query, k=6, fetch_k=30, lambda_mult=lambda_mult,
                                             where={"n": {"$gte": 0}})
    assert [h.id for h in hits] == [f"doc-{top[i]}" for i in chosen]
    np.testing.assert_allclose([h.score for h in hits], scores[[top[i] for i in chosen]],
                               atol=1e-5)
    if lambda_mult == 1.0:
        assert [h.id for h in hits] == [h.id for h in col.search(query, k=6, where={"n": {"$gte": 0}})]


def test_mmr_skips_duplicates():
    base = np.eye(8, dtype=np.float32)[:5]  # orthogonal: unrelated to each other
    vectors = np.concatenate([base, base + 1e-3])  # every document twice
    col = Collection(8, bits=4)
    col.upsert([f"v{i}" for i in range(10)], vectors)
    query = base[0] + 0.4 * base[1:].sum(axis=0)
    hits = col.max_marginal_relevance_search(query, k=5, fetch_k=10, lambda_mult=0.5)
    assert len({int(h.id[1:]) % 5 for h in hits}) == 5
    plain = col.search(query, k=2)
    assert {int(h.id[1:]) % 5 for h in plain} == {0}


# ---------------------------------------------------------------------- documents


def test_upsert_replaces_get_delete_clear():
    col = Collection(3, bits=32)
    col.upsert(["a", "b", "c"], np.eye(3), texts=["alpha", "beta", None],
               metadatas=[{"v": 1}, None, {"v": 3}])
    assert len(col) == 3 and col.count() == 3
    col.upsert(["b"], [[1.0, 1.0, 0.0]], texts=["beta two"], metadatas=[{"v": 2}])
    assert len(col) == 3 and len(col.index) == 3
    got = col.get(["c", "missing", "b"], include_vectors=True)
    assert [(h.id, h.text, h.metadata, h.score) for h in got] == [
        ("c", None, {"v": 3}, None), ("b", "beta two", {"v": 2}, None)]
    np.testing.assert_allclose(got[1].vector, np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)
    assert col.search(None, k=3, mode="text", query_text="beta")[0].id == "b"
    assert [h.id for h in col.search([1.0, 1.0, 0.0], k=1)] == ["b"]
    assert [h.id for h in col.get(where={"v": {"$gte": 2}})] == ["c", "b"]  # insertion order
    assert [h.id for h in col.get(limit=1, offset=1)] == ["c"]
    assert col.delete(ids=["a", "zzz"]) == 1
    assert col.delete(ids=["b", "c"], where={"v": 3}) == 1
    assert [h.id for h in col.get()] == ["b"]
    col.clear()
    assert len(col) == 0 and len(col.index) == 0
    assert col.search([1.0, 0.0, 0.0], k=3) == []
    ids = col.upsert(None, np.eye(3)[:2])
    assert len(set(ids)) == 2 and len(col) == 2


def test_bad_input_is_rejected_before_anything_is_written():
    col = Collection(3, bits=32)
    col.upsert(["keep"], [[1.0, 0.0, 0.0]], metadatas=[{"x": 1}])
    v = [[0.0, 1.0, 0.0]]
    with pytest.raises(TypeError, match=r"metadatas\[0\]\['bad'\]"):
        col.upsert(["n"], v, metadatas=[{"bad": {1, 2}}])
    with pytest.raises(TypeError, match=r"metadatas\[0\]\['outer'\]\['inner'\]\[1\]"):
        col.upsert(["n"], v, metadatas=[{"outer": {"inner": [1, object()]}}])
    with pytest.raises(TypeError, match="keys must be strings"):
        col.upsert(["n"], v, metadatas=[{1: "x"}])
    with pytest.raises(TypeError, match="NaN"):
        col.upsert(["n"], v, metadatas=[{"f": float("nan")}])
    with pytest.raises(TypeError, match="must be a dict"):
        col.upsert(["n"], v, metadatas=["x"])
    with pytest.raises(TypeError, match=r"ids\[0\] must be a string"):
        col.upsert([3], v)
    with pytest.raises(TypeError, match="for one id pass"):
        col.upsert("n", v)
    with pytest.raises(ValueError, match="repeats 'n'"):
        col.upsert(["n", "n"], v * 2)
    with pytest.raises(ValueError, match="dimension 2"):
        col.upsert(["n"], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="all zeros"):
        col.upsert(["n"], [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        col.upsert(["n"], [[np.nan, 0.0, 0.0]])
    with pytest.raises(ValueError, match="texts has 2 entries"):
        col.upsert(["n"], v, texts=["a", "b"])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        col.upsert(["n"], v, texts=[3])
    with pytest.raises(ValueError, match="mode="):
        col.search(v[0], mode="sparse")
    with pytest.raises(ValueError, match="needs query_text"):
        col.search(v[0], mode="hybrid")
    with pytest.raises(ValueError, match="needs a query vector"):
        col.search(None)
    with pytest.raises(ValueError, match="alpha"):
        col.search(v[0], mode="hybrid", query_text="x", alpha=2)
    with pytest.raises(ValueError, match="k must be at least 1"):
        col.search(v[0], k=0)
    with pytest.raises(ValueError, match="one query vector"):
        col.search(np.ones((2, 3)))
    with pytest.raises(ValueError, match="clear"):
        col.delete()
    assert [(h.id, h.metadata) for h in col.get()] == [("keep", {"x": 1})]
    assert len(col.index) == 1
    # numpy scalars and tuples are accepted as their JSON equivalents
    col.upsert(["np"], v, metadatas=[{"i": np.int64(3), "f": np.float32(0.5), "t": (1, "a"),
                                      "b": np.bool_(True)}])
    assert col.get(["np"])[0].metadata == {"i": 3, "f": 0.5, "t": [1, "a"], "b": True}


def test_relevance_score():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 16))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    cos = float(a @ b)
    expected = (1 + cos) / 2
    assert relevance_score(cos, "cosine") == pytest.approx(expected)
    assert relevance_score(cos, "ip") == pytest.approx(expected)
    assert relevance_score(-float(((a - b) ** 2).sum()), "l2") == pytest.approx(expected)
    assert relevance_score(1.0, "cosine") == 1.0 and relevance_score(-1.0, "cosine") == 0.0
    assert relevance_score(-100.0, "l2") == 0.0 and relevance_score(5.0, "ip") == 1.0
    values = relevance_score(np.linspace(-1, 1, 9), "cosine")
    assert np.all(np.diff(values) > 0)
    with pytest.raises(ValueError):
        relevance_score(0.5, "hamming")


# ---------------------------------------------------------------------- persistence


def test_reopen_persists_everything(tmp_path):
    path = tmp_path / "store"
    col, vectors, metadatas = build(500, 16, "cosine", bits=4, seed=3, path=path)
    col.delete(ids=[f"doc-{i}" for i in range(0, 500, 7)])
    col.upsert(["doc-1"], vectors[2:3], texts=["replaced"], metadatas=[{"new": True}])
    query = vectors[10]
    before = col.search(query, k=K, where={"n": {"$gte": 1}})
    text_before = col.search(None, k=5, mode="text", query_text="text 11")
    count = len(col)
    col.close()
    with pytest.raises(PermissionError):
        col.upsert(["x"], vectors[:1])
    with pytest.raises(RuntimeError, match="closed"):
        col.search(query, k=1)

    again = Collection(path=path)
    assert len(again) == count and len(again.index) == count
    assert again.search(query, k=K, where={"n": {"$gte": 1}}) == before
    assert again.search(None, k=5, mode="text", query_text="text 11") == text_before
    assert again.get(["doc-1"])[0].text == "replaced"
    assert again.get(["doc-7"]) == []
    again.upsert(["late"], vectors[:1])
    again.close()
    third = Collection.open(path)
    assert len(third) == count + 1
    third.close()


def test_open_checks_configuration(tmp_path):
    path = tmp_path / "store"
    Collection(8, path=path, bits=32, metric="ip").close()
    with pytest.raises(ValueError, match="dim=16 does not match.*dim=8"):
        Collection(16, path=path)
    with pytest.raises(ValueError, match="bits=4 does not match"):
        Collection(8, path=path, bits=4)
    with pytest.raises(ValueError, match="metric='cosine' does not match"):
        Collection(8, path=path, metric="cosine")
    with pytest.raises(ValueError, match="created without seed"):
        Collection(8, path=path, seed=3)
    col = Collection(8, path=path, metric="dot")  # aliases are normalised
    assert (col.dim, col.bits, col.metric) == (8, 32, "ip")
    with pytest.raises(RuntimeError, match="read_only=True"):
        Collection.open(path)  # one writer at a time
    col.close()
    with pytest.raises(FileNotFoundError):
        Collection.open(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError):
        Collection(8, path=tmp_path / "other")
    with pytest.raises(TypeError, match="dim is required"):
        Collection(path=tmp_path / "new")
    with pytest.raises(TypeError, match="unknown Collection arguments"):
        Collection(8, bitz=3)


def test_newer_format_version_fails_clearly(tmp_path):
    path = tmp_path / "store"
    Collection(4, path=path).close()
    with sqlite3.connect(path / "docs.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (json.dumps(99),))
    with pytest.raises(StoreCorruptedError, match="version 99 is newer"):
        Collection.open(path)


def test_crash_leftovers_are_reconciled_on_open(tmp_path):
    """Vectors without a document (a write interrupted before its SQLite commit, or after it
    before the old vectors were removed) are removed when the collection is opened."""
    path = tmp_path / "store"
    col = Collection(4, path=path, bits=32)
    col.upsert(["a", "b"], np.eye(4)[:2])
    col.index.add(np.eye(4)[2:4], ids=[100, 101])  # as if the SQLite commit never happened
    col.close()
    again = Collection.open(path)
    assert len(again.index) == 2 and len(again) == 2
    assert [h.id for h in again.search(np.eye(4)[2], k=4)] == ["a", "b"] or \
        {h.id for h in again.search(np.eye(4)[2], k=4)} == {"a", "b"}
    again.upsert(["c"], np.eye(4)[2:3])
    assert again.search(np.eye(4)[2], k=1)[0].id == "c"
    again.close()


def test_read_only_second_reader(tmp_path):
    path = tmp_path / "store"
    writer = Collection(4, path=path, bits=32)
    writer.upsert(["a", "b"], np.eye(4)[:2], metadatas=[{"g": 1}, {"g": 2}])
    reader = Collection.open(path, read_only=True)
    assert len(reader) == 2
    assert [h.id for h in reader.search(np.eye(4)[1], k=1, where={"g": 2})] == ["b"]
    with pytest.raises(PermissionError):
        reader.upsert(["c"], np.eye(4)[2:3])
    writer.upsert(["c"], np.eye(4)[2:3], metadatas=[{"g": 3}])
    writer.delete(ids=["a"])
    # SQLite is live, the index is the snapshot taken at open: deleted documents never show,
    # new vectors appear after refresh()
    assert {h.id for h in reader.search(np.eye(4)[0], k=3)} == {"b"}
    reader.refresh()
    assert {h.id for h in reader.search(np.eye(4)[0], k=3)} == {"b", "c"}
    reader.close()
    writer.close()


def test_hit_is_a_plain_dataclass():
    hit = Hit("a", 0.5, "t", {"k": 1})
    assert (hit.id, hit.score, hit.text, hit.metadata, hit.vector) == ("a", 0.5, "t", {"k": 1}, None)


@pytest.mark.parametrize("options", [{"bits": 4}, {"bits": 1, "rerank": False, "seed": 7},
                                     {"bits": 32, "metric": "l2"}])
def test_save_copies_documents_codes_and_options(tmp_path, options):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    source = Collection(16, **options)
    ids = [f"doc-{i}" for i in range(300)]
    source.upsert(ids, vectors, texts=[f"text {i}" for i in range(300)],
                  metadatas=[{"n": i} for i in range(300)])
    source.delete(ids[:50])
    source.save(tmp_path / "copy")
    with pytest.raises(FileExistsError):
        source.save(tmp_path / "copy")
    copy = Collection.open(tmp_path / "copy")
    assert len(copy) == len(source) == 250
    assert copy.index.stats()["codec"] == source.index.stats()["codec"]
    for query in vectors[:5]:
        want = source.search(query, k=7, where={"n": {"$gte": 100}})
        got = copy.search(query, k=7, where={"n": {"$gte": 100}})
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)
    assert [r.text for r in copy.get(ids[60:63])] == [r.text for r in source.get(ids[60:63])]
    copy.close()


@pytest.mark.parametrize("empty", [{}, {"$and": []}])
def test_delete_with_an_empty_filter_is_refused(empty):
    collection = Collection(4, bits=32)
    collection.upsert(["a", "b"], np.eye(2, 4, dtype=np.float32))
    try:
        parsed_as_nothing = collection.count(where=empty) == 2
    except ValueError:
        parsed_as_nothing = False  # a malformed filter is already an error
    if parsed_as_nothing:
        with pytest.raises(ValueError, match="clear()"):
            collection.delete(where=empty)
    assert len(collection) == 2


def test_delete_with_empty_llama_index_filters_is_refused():
    from llama_index.core.vector_stores import MetadataFilters

    collection = Collection(4, bits=32)
    collection.upsert(["a", "b"], np.eye(2, 4, dtype=np.float32))
    with pytest.raises(ValueError, match="clear()"):
        collection.delete(where=MetadataFilters(filters=[]))
    assert len(collection) == 2
