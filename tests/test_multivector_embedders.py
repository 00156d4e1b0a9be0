"""Token embedders (sentence-transformers, any callable), real MiniLM tokens through the store
against brute-force MaxSim, and the LangChain / LlamaIndex retrievers."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from vecpress.embeddings.token_embedders import CallableTokenEmbedder, SentenceTransformerTokenEmbedder
from vecpress.multivector import MultiVectorCollection, maxsim_brute_force

DIM = 16


def hashed_tokens(texts: list[str]) -> list[np.ndarray]:
    """One row per word, a fixed random vector per word: deterministic and model-free."""
    out = []
    for text in texts:
        rows = [np.random.default_rng(zlib.crc32(w.lower().encode())).standard_normal(DIM)
                for w in text.split()] or [np.ones(DIM)]
        out.append(np.array(rows, dtype=np.float32))
    return out


def test_callable_embedder_checks_what_the_function_returns():
    embedder = CallableTokenEmbedder(hashed_tokens, dim=DIM, normalize=True)
    matrices = embedder.embed_documents(["a b c", "d"])
    assert [m.shape for m in matrices] == [(3, DIM), (1, DIM)]
    np.testing.assert_allclose(np.linalg.norm(matrices[0], axis=1), 1.0, rtol=1e-6)
    assert embedder.embed_query("x y").shape == (2, DIM)
    with pytest.raises(RuntimeError, match="returned 1 matrices for 2 texts"):
        CallableTokenEmbedder(lambda t: [np.ones((1, DIM))], dim=DIM).embed_documents(["a", "b"])
    with pytest.raises(ValueError, match=r"documents output \[0\] must have shape"):
        CallableTokenEmbedder(lambda t: [np.ones((2, DIM + 1))], dim=DIM).embed_documents(["a"])
    with pytest.raises(ValueError, match="NaN"):
        CallableTokenEmbedder(lambda t: [np.full((2, DIM), np.nan)], dim=DIM).embed_documents(["a"])
    with pytest.raises(TypeError, match="documents must be callable"):
        CallableTokenEmbedder("nope", dim=DIM)
    with pytest.raises(ValueError, match="dim"):
        CallableTokenEmbedder(hashed_tokens, dim=0)
    # separate query function (PyLate's is_query=True)
    queries = CallableTokenEmbedder(hashed_tokens, dim=DIM, queries=lambda t: [np.zeros((5, DIM))])
    assert queries.embed_query("a").shape == (5, DIM)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    return SentenceTransformerTokenEmbedder()


def test_sentence_transformer_tokens(minilm):
    texts = ["a cat", "a considerably longer sentence about dogs, cats and other animals"]
    together = minilm.embed_documents(texts)
    alone = [minilm.embed_documents([t])[0] for t in texts]
    for a, b in zip(together, alone):  # padding stripped: a batch changes nothing
        assert a.shape == b.shape and a.shape[1] == 384
        np.testing.assert_allclose(a, b, atol=2e-4)
    assert together[0].shape[0] == 4  # [CLS] a cat [SEP]
    np.testing.assert_allclose(np.linalg.norm(together[1], axis=1), 1.0, rtol=1e-5)
    plain = SentenceTransformerTokenEmbedder(special_tokens=False, normalize=False)
    assert plain.embed_documents(texts[:1])[0].shape[0] == 2
    # the kept tokens are the same contextual vectors, special tokens removed
    raw = SentenceTransformerTokenEmbedder(normalize=False).embed_documents(texts[:1])[0]
    np.testing.assert_allclose(plain.embed_documents(texts[:1])[0], raw[1:-1], atol=2e-4)
    assert minilm.embed_query("cats").shape[1] == 384


@pytest.mark.slow
def test_recall_on_real_minilm_tokens(minilm):
    """FDE candidates (20% of the documents) + exact MaxSim against brute-force MaxSim."""
    from vecpress.wordnet import read_glosses

    glosses = [g.text for g in read_glosses()][::300][:220]
    docs, queries = glosses[:200], glosses[200:]
    store = MultiVectorCollection(384, embedder=minilm)
    store.add_texts(docs, ids=[str(i) for i in range(len(docs))])
    matrices = [h.vector for h in store.get([str(i) for i in range(len(docs))], include_tokens=True)]
    tokens = np.concatenate(matrices)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in matrices])])
    recalls = []
    for text in queries:
        query = minilm.embed_query(text)
        _, truth = maxsim_brute_force(query, tokens, offsets, 10)
        hits = store.search(query, k=10, candidates=40)
        recalls.append(len({int(h.id) for h in hits} & set(truth.tolist())) / 10)
    assert np.mean(recalls) >= 0.9


def make_store() -> MultiVectorCollection:
    store = MultiVectorCollection(DIM, embedder=CallableTokenEmbedder(hashed_tokens, dim=DIM, normalize=True),
                                  fde={"repetitions": 8, "simhash_bits": 2, "projection_dim": 8})
    store.add_texts(["red apple pie", "green apple tart", "red car engine", "blue car wheel"],
                    metadatas=[{"kind": "food"}, {"kind": "food"}, {"kind": "car"}, {"kind": "car"}],
                    ids=["pie", "tart", "engine", "wheel"])
    return store


def test_langchain_retriever_with_filter():
    pytest.importorskip("langchain_core")
    from vecpress.integrations.langchain_multivector import VecpressMultiVectorRetriever

    store = make_store()
    retriever = VecpressMultiVectorRetriever(store=store, k=2)
    docs = retriever.invoke("red apple")
    assert docs[0].id == "pie" and docs[0].page_content == "red apple pie"
    assert docs[0].metadata["kind"] == "food" and docs[0].metadata["score"] > docs[1].metadata["score"]
    cars = VecpressMultiVectorRetriever(store=store, k=3, filter={"kind": "car"}).invoke("red apple")
    assert [d.id for d in cars] == ["engine", "wheel"]


def test_llama_index_retriever_with_filters():
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    from vecpress.integrations.llama_index_multivector import VecpressMultiVectorRetriever

    store = make_store()
    nodes = VecpressMultiVectorRetriever(store, similarity_top_k=1).retrieve("blue wheel")
    assert nodes[0].node.node_id == "wheel" and nodes[0].node.get_content() == "blue car wheel"
    filters = MetadataFilters(filters=[MetadataFilter(key="kind", value="food")])
    nodes = VecpressMultiVectorRetriever(store, similarity_top_k=5, filters=filters).retrieve("blue wheel")
    assert {n.node.node_id for n in nodes} == {"pie", "tart"}
    assert nodes[0].score >= nodes[1].score
