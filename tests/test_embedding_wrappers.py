"""LangChain / LlamaIndex embedders as vecpress embedders, and the reverse wrappers."""

import asyncio
import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from vecpress.embeddings import (
    Embedder,
    LangChainEmbedder,
    LlamaIndexEmbedder,
    as_langchain_embeddings,
    as_llama_index_embedding,
    iter_document_batches,
)

langchain_core = pytest.importorskip("langchain_core")
from langchain_core.embeddings import Embeddings  # noqa: E402

TEXTS = [f"text number {i} about {topic}" for i, topic in enumerate(["cats", "dogs", "banks", "rivers"] * 5)]


def hashed_vector(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    seed = int.from_bytes(digest[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).tolist()


class RecordingEmbeddings(Embeddings):
    """A LangChain Embeddings that records every call; vectors are a pure function of the text."""

    def __init__(self, dim: int = 12) -> None:
        self.dim = dim
        self.document_calls: list[list[str]] = []
        self.query_calls: list[str] = []

    def embed_documents(self, texts):
        self.document_calls.append(list(texts))
        return [hashed_vector(t, self.dim) for t in texts]

    def embed_query(self, text):
        self.query_calls.append(text)
        return hashed_vector("query:" + text, self.dim)


def reference(texts, dim=12):
    return np.array([hashed_vector(t, dim) for t in texts], dtype=np.float32)


def test_langchain_embedder_batches_and_learns_dim_from_the_first_real_batch():
    inner = RecordingEmbeddings(dim=12)
    embedder = LangChainEmbedder(inner, batch_size=6)
    assert embedder.dim is None
    assert inner.document_calls == [] and inner.query_calls == []  # no dummy text to learn the width
    out = embedder.embed_documents(TEXTS)
    assert embedder.dim == 12
    assert [len(call) for call in inner.document_calls] == [6, 6, 6, 2]
    assert [t for call in inner.document_calls for t in call] == TEXTS
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference(TEXTS))
    assert isinstance(embedder, Embedder)


def test_langchain_embedder_query_and_explicit_dim():
    inner = RecordingEmbeddings(dim=5)
    embedder = LangChainEmbedder(inner, dim=5, metric="ip")
    query = embedder.embed_query("hello")
    assert query.shape == (5,) and query.dtype == np.float32
    np.testing.assert_array_equal(query, np.float32(hashed_vector("query:hello", 5)))
    assert inner.query_calls == ["hello"] and embedder.metric == "ip"


def test_width_mismatch_is_an_error_naming_both_widths():
    with pytest.raises(RuntimeError, match="returned 12-dimensional.*8-dimensional"):
        LangChainEmbedder(RecordingEmbeddings(dim=12), dim=8).embed_documents(["a"])
    embedder = LangChainEmbedder(RecordingEmbeddings(dim=12))
    embedder.embed_query("learns 12")
    embedder.embeddings.dim = 7
    with pytest.raises(RuntimeError, match="returned 7-dimensional"):
        embedder.embed_documents(["b"])


def test_ragged_or_wrong_count_output_is_an_error():
    class Ragged(RecordingEmbeddings):
        def embed_documents(self, texts):
            return [[1.0, 2.0], [1.0]][: len(texts)]

    class Short(RecordingEmbeddings):
        def embed_documents(self, texts):
            return super().embed_documents(texts)[:-1]

    with pytest.raises(RuntimeError, match="unequal length"):
        LangChainEmbedder(Ragged()).embed_documents(["a", "b"])
    with pytest.raises(RuntimeError, match=r"for 3 texts"):
        LangChainEmbedder(Short()).embed_documents(["a", "b", "c"])


def test_bad_arguments_raise_before_any_call():
    with pytest.raises(TypeError, match="embeddings must be a LangChain Embeddings"):
        LangChainEmbedder(object())
    with pytest.raises(ValueError, match="dim"):
        LangChainEmbedder(RecordingEmbeddings(), dim=0)
    with pytest.raises(ValueError, match="metric"):
        LangChainEmbedder(RecordingEmbeddings(), metric="dot")
    with pytest.raises(ValueError, match="batch_size"):
        LangChainEmbedder(RecordingEmbeddings(), batch_size=0)
    inner = RecordingEmbeddings()
    with pytest.raises(TypeError, match="texts must be a sequence"):
        LangChainEmbedder(inner).embed_documents("one string")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        LangChainEmbedder(inner).embed_documents(["a", 3])
    assert inner.document_calls == []
    with pytest.raises(TypeError, match="embedder must be a vecpress Embedder"):
        as_langchain_embeddings(object())


def test_empty_input_makes_no_call():
    inner = RecordingEmbeddings()
    out = LangChainEmbedder(inner, dim=12).embed_documents([])
    assert out.shape == (0, 12) and inner.document_calls == []


def test_streaming_helper_accepts_a_wrapper_whose_dim_is_learned():
    embedder = LangChainEmbedder(RecordingEmbeddings(dim=12), batch_size=4)
    parts = list(iter_document_batches(embedder, TEXTS, progress=False))
    assert [start for start, _ in parts] == list(range(0, len(TEXTS), 4))
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), reference(TEXTS))


def test_round_trip_returns_the_original_object():
    inner = RecordingEmbeddings()
    assert as_langchain_embeddings(LangChainEmbedder(inner)) is inner


def test_vecpress_embedder_as_langchain_embeddings():
    plain = _PlainEmbedder()
    lc = as_langchain_embeddings(plain)
    assert isinstance(lc, Embeddings)
    assert lc.embed_documents(["a", "b"]) == plain.embed_documents(["a", "b"]).tolist()
    assert lc.embed_query("q") == plain.embed_query("q").tolist()
    assert asyncio.run(lc.aembed_query("q")) == plain.embed_query("q").tolist()
    assert asyncio.run(lc.aembed_documents(["a"])) == plain.embed_documents(["a"]).tolist()


class _PlainEmbedder:
    """A vecpress Embedder written directly against the protocol."""

    dim = 6
    metric = "cosine"
    batch_size = 3

    def embed_documents(self, texts, *, batch_size=None, progress=None):
        return reference(list(texts), 6)

    def embed_query(self, text):
        return reference(["query:" + text], 6)[0]


def test_vecpress_embedder_as_llama_index_embedding_and_back():
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.embeddings.base import BaseEmbedding

    plain = _PlainEmbedder()
    li = as_llama_index_embedding(plain)
    assert isinstance(li, BaseEmbedding)
    assert li.embed_batch_size == 3
    docs = ["one", "two", "three", "four", "five"]
    assert li.get_text_embedding_batch(docs) == reference(docs, 6).tolist()
    assert li.get_query_embedding("q") == plain.embed_query("q").tolist()
    assert asyncio.run(li.aget_query_embedding("q")) == plain.embed_query("q").tolist()
    assert asyncio.run(li.aget_text_embedding_batch(docs)) == reference(docs, 6).tolist()

    back = LlamaIndexEmbedder(li)
    assert back.dim is None and back.batch_size == 3
    np.testing.assert_array_equal(back.embed_documents(docs), reference(docs, 6))
    assert back.dim == 6
    np.testing.assert_array_equal(back.embed_query("q"), plain.embed_query("q"))
    assert as_llama_index_embedding(back) is li


def test_llama_index_mock_embedding_wrapped():
    pytest.importorskip("llama_index.core")
    from llama_index.core.embeddings import MockEmbedding

    embedder = LlamaIndexEmbedder(MockEmbedding(embed_dim=8), batch_size=2)
    out = embedder.embed_documents(["a", "b", "c"])
    assert out.shape == (3, 8) and embedder.dim == 8
    with pytest.raises(TypeError, match="embed_model must be a LlamaIndex BaseEmbedding"):
        LlamaIndexEmbedder(RecordingEmbeddings())


@pytest.mark.slow
def test_real_model_through_both_frameworks_matches_direct_use():
    pytest.importorskip("sentence_transformers")
    from vecpress.embeddings import default_embedder

    model = default_embedder()
    direct = model.embed_documents(TEXTS)
    through_langchain = LangChainEmbedder(as_langchain_embeddings(model), batch_size=7)
    through_llama = LlamaIndexEmbedder(as_llama_index_embedding(model))
    np.testing.assert_allclose(through_langchain.embed_documents(TEXTS), direct, atol=1e-6)
    np.testing.assert_allclose(through_llama.embed_documents(TEXTS), direct, atol=1e-6)
    np.testing.assert_allclose(through_llama.embed_query("cats"), model.embed_query("cats"), atol=1e-6)
    assert through_langchain.dim == through_llama.dim == 384
