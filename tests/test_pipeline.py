"""Compress on insert: add_texts streams batches into a Collection with one progress bar."""

import contextlib
import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

import vecpress.pipeline as pipeline
from vecpress import Collection
from vecpress.pipeline import add_texts, check_embedder_fits

DIM = 16


def vector_of(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class HashEmbedder:
    """Vectors are a pure function of the text; every call is recorded."""

    dim = DIM
    metric = "cosine"
    batch_size = 5

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int | None]] = []

    def embed_documents(self, texts, *, batch_size=None, progress=None):
        self.calls.append((list(texts), batch_size))
        return np.stack([vector_of(t) for t in texts]) if texts else np.empty((0, DIM), np.float32)

    def embed_query(self, text):
        return vector_of(text)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_documents_land_with_their_vectors_texts_and_metadata(tmp_path):
    texts = [f"sentence {i}" for i in range(23)]
    metas = [{"n": i, "parity": i % 2} for i in range(23)]
    ids = [f"id-{i}" for i in range(23)]
    with Collection(dim=DIM, path=tmp_path / "store") as collection:
        returned = add_texts(collection, HashEmbedder(), texts, metas, ids, write_batch=10, progress=False)
        assert returned == ids
    with Collection.open(tmp_path / "store", read_only=True) as reopened:
        hits = reopened.get(ids, include_vectors=True)
        assert [h.id for h in hits] == ids
        assert [h.text for h in hits] == texts
        assert [h.metadata for h in hits] == metas
        reference = unit(np.stack([vector_of(t) for t in texts]))
        np.testing.assert_allclose(np.stack([h.vector for h in hits]), reference, atol=2e-3)  # float16 kept


def test_stream_is_consumed_one_write_batch_at_a_time():
    produced = []

    def texts():
        for i in range(25):
            produced.append(i)
            yield f"text {i}"

    collection = Collection(dim=DIM)
    upserts = []
    original = collection.upsert

    def recording_upsert(ids, vectors, texts=None, metadatas=None):
        upserts.append((len(produced), len(vectors)))
        return original(ids, vectors, texts, metadatas)

    collection.upsert = recording_upsert
    embedder = HashEmbedder()
    add_texts(collection, embedder, texts(), ({"i": i} for i in range(25)), write_batch=8, batch_size=3,
              progress=False)
    # each write happens after at most one more batch was read: memory is bounded by the batch
    assert upserts == [(8, 8), (16, 8), (24, 8), (25, 1)]
    # the model is called batch_size (at most 64) texts at a time, so the bar moves between
    # calls; each write batch is embedded whole before it is written
    assert [len(t) for t, _ in embedder.calls] == [3, 3, 2] * 3 + [1]
    assert all(batch_size == 3 for _, batch_size in embedder.calls)
    assert sorted(t for texts, _ in embedder.calls for t in texts) == sorted(f"text {i}" for i in range(25))
    assert len(collection) == 25


def test_one_progress_bar_for_the_whole_insert(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.done = total, 0

        def update(self, n):
            self.done += n

        def set_postfix_str(self, text, refresh=True):  # names the step: embedding, writing
            pass

    @contextlib.contextmanager
    def fake_progress_bar(total, *, enabled, desc):
        bar = Bar(total)
        bars.append((bar, enabled))
        yield bar

    monkeypatch.setattr(pipeline, "progress_bar", fake_progress_bar)
    add_texts(Collection(dim=DIM), HashEmbedder(), [f"t{i}" for i in range(30)], write_batch=7, progress=True)
    add_texts(Collection(dim=DIM), HashEmbedder(), (f"t{i}" for i in range(9)), total=9, write_batch=4)
    assert [(b.total, b.done, enabled) for b, enabled in bars] == [(30, 30, True), (9, 9, None)]


def test_tqdm_bar_is_drawn_once(capsys):
    pytest.importorskip("tqdm")
    add_texts(Collection(dim=DIM), HashEmbedder(), [f"t{i}" for i in range(12)], write_batch=5, progress=True)
    err = capsys.readouterr().err
    assert "indexing" in err and "12/12" in err
    assert err.count("| 0/12 ") == 1 and err.count("\n") == 1  # one bar, drawn to its end once


def test_reinserting_replaces(tmp_path):
    collection = Collection(dim=DIM)
    add_texts(collection, HashEmbedder(), ["a", "b"], ids=["x", "y"], progress=False)
    add_texts(collection, HashEmbedder(), ["c"], ids=["x"], progress=False)
    assert len(collection) == 2
    assert [h.text for h in collection.get(["x", "y"])] == ["c", "b"]


def test_errors():
    collection = Collection(dim=DIM)

    class Wide(HashEmbedder):
        dim = DIM + 1

    with pytest.raises(ValueError, match=f"holds {DIM}-dimensional.*makes {DIM + 1}-dimensional"):
        add_texts(collection, Wide(), ["a"])
    with pytest.raises(ValueError, match="metadatas has fewer entries"):
        add_texts(collection, HashEmbedder(), ["a", "b"], [{"x": 1}], progress=False)
    with pytest.raises(ValueError, match="ids has more entries than texts"):
        add_texts(collection, HashEmbedder(), ["a"], ids=["p", "q"], progress=False)
    with pytest.raises(TypeError, match="single str"):
        add_texts(collection, HashEmbedder(), "abc")
    with pytest.raises(ValueError, match="batch_size"):
        add_texts(collection, HashEmbedder(), ["a"], write_batch=0)

    class Liar(HashEmbedder):
        def embed_documents(self, texts, **options):
            return super().embed_documents(texts, **options)[:-1]

    with pytest.raises(RuntimeError, match="expected"):
        add_texts(Collection(dim=DIM), Liar(), ["a", "b"], progress=False)
    check_embedder_fits(collection, HashEmbedder())


def test_a_wrapped_framework_embedder_whose_dim_is_unknown_until_used():
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import Embeddings

    from vecpress.embeddings import LangChainEmbedder

    class Hashing(Embeddings):
        def embed_documents(self, texts):
            return [vector_of(t).tolist() for t in texts]

        def embed_query(self, text):
            return vector_of(text).tolist()

    embedder = LangChainEmbedder(Hashing())
    assert embedder.dim is None
    collection = Collection(dim=DIM)
    add_texts(collection, embedder, [f"w{i}" for i in range(10)], write_batch=4, progress=False)
    assert embedder.dim == DIM and len(collection) == 10
    hits = pipeline.search(collection, embedder, "w3", 1)
    assert hits[0].text == "w3"


def test_warm_up_runs_a_search_in_the_background_and_swallows_errors(tmp_path):
    from vecpress.pipeline import warm_up

    collection = Collection(dim=DIM, path=tmp_path / "s")
    add_texts(collection, HashEmbedder(), [f"t{i}" for i in range(40)], progress=False)
    calls = []
    original = collection.search
    collection.search = lambda *a, **k: calls.append(a) or original(*a, **k)
    thread = warm_up(collection)
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon and len(calls) == 1
    collection.search = original
    assert pipeline.search(collection, HashEmbedder(), "t7", 1)[0].text == "t7"
    collection.close()
    warm_up(collection).join(timeout=60)  # a closed collection: nothing raised
