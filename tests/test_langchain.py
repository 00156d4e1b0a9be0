"""The LangChain adapter: LangChain's standard vector store suite (in memory and on disk, sync
and async), then filters, MMR, relevance thresholds, persistence through a new process, errors,
and a retrieval chain over real WordNet glosses with the default local embedder."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from vecpress.integrations.langchain import VecpressVectorStore  # noqa: E402

# The standard suite's async tests are plain ``async def`` functions; pytest-asyncio runs them
# when marked. The mark on the sync tests is harmless and its warning is silenced.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning"),
]

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- LangChain's own suite


class TestInMemoryStandard(VectorStoreIntegrationTests):
    """In memory, dimension learned from the first batch."""

    @pytest.fixture()
    def vectorstore(self):
        store = VecpressVectorStore(self.get_embeddings())
        try:
            yield store
        finally:
            store.close()


class TestOnDiskStandard(VectorStoreIntegrationTests):
    """On disk (``persist_directory``, the Chroma spelling), dimension given up front."""

    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = VecpressVectorStore(self.get_embeddings(), persist_directory=tmp_path / "db",
                                    dim=6)
        try:
            yield store
        finally:
            store.close()


# ---------------------------------------------------------------------- test embeddings


class TableEmbeddings(Embeddings):
    """Looks texts up in a table of vectors: exact control over geometry, no model."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed_documents(self, texts):
        return [self.table[t].tolist() for t in texts]

    def embed_query(self, text):
        return self.table[text].tolist()


class CountingEmbeddings(DeterministicFakeEmbedding):
    """Records every call."""

    calls: list = []

    def embed_documents(self, texts):
        self.calls.append(("documents", list(texts)))
        return super().embed_documents(texts)

    def embed_query(self, text):
        self.calls.append(("query", text))
        return super().embed_query(text)


class SlowEmbeddings(DeterministicFakeEmbedding):
    """Blocks its thread, as a model or an HTTP call would."""

    def embed_query(self, text):
        time.sleep(0.3)
        return super().embed_query(text)


def fake(size: int = 16) -> DeterministicFakeEmbedding:
    return DeterministicFakeEmbedding(size=size)


def corpus(n: int = 120, size: int = 16):
    """Texts, metadata and their (fake) embeddings as a unit-norm float64 matrix."""
    texts = [f"document number {i}" for i in range(n)]
    metadatas = [{"i": i, "parity": "even" if i % 2 == 0 else "odd", "tens": i // 10,
                  "tags": ["a"] if i % 3 == 0 else ["b"]} for i in range(n)]
    vectors = np.array(fake(size).embed_documents(texts))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, metadatas, vectors


def brute_force(vectors, query, allowed, k):
    query = np.asarray(query) / np.linalg.norm(query)
    scores = vectors @ query
    order = [i for i in np.argsort(-scores, kind="stable") if allowed[i]]
    return order[:k], scores


@pytest.fixture(scope="module")
def filled():
    texts, metadatas, vectors = corpus()
    store = VecpressVectorStore.from_texts(texts, fake(), metadatas,
                                           ids=[f"d{i}" for i in range(len(texts))], bits=8)
    yield store, texts, metadatas, vectors
    store.close()


# ---------------------------------------------------------------------- documents and ids


def test_documents_round_trip_exactly():
    metadata = {"title": "Ünïcödé ✓", "n": 3, "x": 0.1, "flag": True, "none": None,
                "nested": {"list": [1, "two", 3.5, False], "empty": {}}, "empty": []}
    docs = [Document(id="α/1", page_content="héllo\nworld ✓", metadata=metadata),
            Document(id="2", page_content="", metadata={})]
    with VecpressVectorStore(fake()) as store:
        assert store.add_documents(docs) == ["α/1", "2"]
        assert store.get_by_ids(["2", "α/1", "missing"]) == [docs[1], docs[0]]
        found = store.similarity_search("héllo\nworld ✓", k=1)[0]
        assert found == docs[0] and type(found.metadata["n"]) is int


# valid Unicode (no lone surrogates); metadata without NUL, which the Collection refuses
# (SQLite's JSON functions cut there)
_TEXT = st.characters(blacklist_categories=("Cs",))
_META_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(_TEXT, max_size=30),
                          st.dictionaries(st.text(_META_TEXT, max_size=8), st.recursive(
                              st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                              | st.floats(allow_nan=False, allow_infinity=False)
                              | st.text(_META_TEXT),
                              lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(_META_TEXT, max_size=5), inner,
                                                max_size=3),
                              max_leaves=6), max_size=4)),
                min_size=1, max_size=6))
def test_documents_round_trip_property(items):
    docs = [Document(id=f"id-{i}", page_content=text, metadata=meta)
            for i, (text, meta) in enumerate(items)]
    with VecpressVectorStore(fake(8), bits=32) as store:
        store.add_documents(docs)
        assert store.get_by_ids([d.id for d in docs]) == docs


def test_ids_given_generated_mixed_and_replaced():
    with VecpressVectorStore(fake()) as store:
        ids = store.add_texts(["a", "b"], [{"v": 1}, {"v": 2}])
        assert len(set(ids)) == 2 and all(isinstance(i, str) and i for i in ids)
        mixed = store.add_documents([Document(id="x", page_content="c"),
                                     Document(page_content="d")])
        assert mixed[0] == "x" and mixed[1] not in ids
        # ids= takes precedence over Document.id; re-adding an id replaces the document
        assert store.add_documents([Document(id="ignored", page_content="e", metadata={"v": 5})],
                                   ids=[ids[0]]) == [ids[0]]
        assert store.get_by_ids([ids[0], "ignored"]) == [
            Document(id=ids[0], page_content="e", metadata={"v": 5})]
        assert len(store.collection) == 4
        with pytest.raises(ValueError, match="repeats"):
            store.add_texts(["f", "g"], ids=["same", "same"])
        with pytest.raises(ValueError, match="metadatas has 1 entries but there are 2 texts"):
            store.add_texts(["f", "g"], [{}])


def test_from_documents_and_afrom_texts(tmp_path):
    docs = [Document(id=str(i), page_content=f"t{i}", metadata={"i": i}) for i in range(5)]
    store = VecpressVectorStore.from_documents(docs, fake(), path=tmp_path / "a", bits=2)
    assert store.get_by_ids(["3"]) == [docs[3]] and store.collection.bits == 2
    store.close()
    other = asyncio.run(VecpressVectorStore.afrom_texts(["x", "y"], fake(), [{"k": 1}, {"k": 2}],
                                                        ids=["1", "2"]))
    assert [d.page_content for d in other.get_by_ids(["2", "1"])] == ["y", "x"]


def test_delete_by_ids_and_filter_and_clear():
    texts, metadatas, _ = corpus(30)
    with VecpressVectorStore(fake()) as store:
        store.add_texts(texts, metadatas, ids=[str(i) for i in range(30)])
        assert store.delete(["0", "1", "nope"]) is True
        store.delete(filter={"parity": "odd"})
        assert len(store.collection) == 14
        store.delete(["2", "5"], filter={"tens": 0})  # only those matching both
        assert store.get_by_ids(["2", "4"]) == [Document(id="4", page_content=texts[4],
                                                         metadata=metadatas[4])]
        with pytest.raises(ValueError, match="clear"):
            store.delete()
        store.clear()
        assert store.similarity_search("document number 4") == []


# ---------------------------------------------------------------------- filters


@pytest.mark.parametrize("where", [
    {"parity": "even"},
    {"i": {"$gte": 100}},
    {"$and": [{"parity": "odd"}, {"tens": {"$in": [2, 7]}}]},
    {"$or": [{"i": {"$lt": 3}}, {"tags": {"$contains": "a"}, "tens": 11}]},
    {"i": {"$nin": list(range(110))}},
    {"missing": {"$exists": False}, "i": {"$ne": 0, "$lte": 6}},
])
def test_filters_select_before_scoring(filled, where):
    store, texts, metadatas, vectors = filled
    allowed = np.array([_holds(m, where) for m in metadatas])
    query = "document number 55"
    top, _ = brute_force(vectors, fake().embed_query(query), allowed, 8)
    found = store.similarity_search(query, k=8, filter=where)
    # k results whenever k documents match: the filter runs inside the search
    assert len(found) == min(8, int(allowed.sum()))
    assert [d.id for d in found] == [f"d{i}" for i in top]
    assert all(_holds(d.metadata, where) for d in found)
    by_vector = store.similarity_search_by_vector(fake().embed_query(query), k=8, filter=where)
    assert by_vector == found
    retriever = store.as_retriever(search_kwargs={"k": 8, "filter": where})
    assert retriever.invoke(query) == found


def _holds(meta, where):
    """Plain-Python reading of the few dict filters used above."""
    for key, cond in where.items():
        if key == "$and":
            ok = all(_holds(meta, c) for c in cond)
        elif key == "$or":
            ok = any(_holds(meta, c) for c in cond)
        elif not isinstance(cond, dict):
            ok = meta.get(key) == cond
        else:
            value = meta.get(key)
            ops = {"$gte": lambda v, x: v is not None and v >= x,
                   "$lt": lambda v, x: v is not None and v < x,
                   "$lte": lambda v, x: v is not None and v <= x,
                   "$ne": lambda v, x: v != x, "$in": lambda v, x: v in x,
                   "$nin": lambda v, x: v not in x, "$exists": lambda v, x: (key in meta) == x,
                   "$contains": lambda v, x: isinstance(v, list) and x in v}
            ok = all(ops[op](value, x) for op, x in cond.items())
        if not ok:
            return False
    return True


def test_filter_in_wrong_dialect_is_a_clear_error(filled):
    store = filled[0]
    with pytest.raises(TypeError, match="InMemoryVectorStore style"):
        store.similarity_search("q", filter=lambda doc: True)
    with pytest.raises(ValueError, match=r"invalid filter.*\$regex"):
        store.similarity_search("q", filter={"i": {"$regex": "1.*"}})
    with pytest.raises(TypeError, match="metadata dict"):
        store.similarity_search("q", filter="parity == 'even'")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['where'\\]"):
        store.similarity_search("q", where={"parity": "even"})
    vector_stores = pytest.importorskip("llama_index.core.vector_stores")
    llama = vector_stores.MetadataFilters(filters=[vector_stores.MetadataFilter(key="i",
                                                                                value=1)])
    with pytest.raises(TypeError, match="llama_index"):
        store.similarity_search("q", filter=llama)


def test_deeply_nested_inputs_are_clear_errors(filled):
    store = filled[0]
    where: dict = {"parity": "even"}
    for _ in range(1000):
        where = {"$or": [where]}
    with pytest.raises(ValueError, match="invalid filter.*more than 32 levels") as caught:
        store.similarity_search("q", filter=where)
    assert len(str(caught.value)) < 1000
    metadata: dict = {"x": 1}
    for _ in range(1000):
        metadata = {"x": metadata}
    with VecpressVectorStore(fake()) as fresh:
        with pytest.raises(ValueError, match=r"metadatas\[1\] nests .* more than 32 levels"):
            fresh.add_texts(["a", "b"], [{}, metadata])
        assert fresh.collection is None or len(fresh.collection) == 0


def test_filter_is_checked_before_embedding():
    embeddings = CountingEmbeddings(size=4)
    embeddings.calls = []
    with VecpressVectorStore(embeddings, dim=4) as store:
        with pytest.raises(ValueError):
            store.similarity_search("q", filter={"$bogus": 1})
    assert embeddings.calls == []


# ---------------------------------------------------------------------- MMR


def mmr_table():
    """A query, three near-copies of one answer, and two distinct, slightly weaker answers."""
    rng = np.random.default_rng(0)
    base = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    query = base[0]
    near = [0.9 * base[0] + 0.436 * base[1] + 0.01 * rng.standard_normal(16) for _ in range(3)]
    other = [0.8 * base[0] + 0.6 * base[2], 0.8 * base[0] + 0.6 * base[3]]
    texts = ["copy 1", "copy 2", "copy 3", "other 1", "other 2"]
    table = dict(zip(texts, near + other))
    table["query"] = query
    return TableEmbeddings(table), texts


def test_mmr_prefers_diverse_documents():
    embeddings, texts = mmr_table()
    kinds = [{"kind": t.split()[0]} for t in texts]
    with VecpressVectorStore.from_texts(texts, embeddings, kinds, ids=texts, bits=8) as store:
        assert {d.id for d in store.similarity_search("query", k=3)} == {"copy 1", "copy 2",
                                                                          "copy 3"}
        diverse = store.max_marginal_relevance_search("query", k=3, fetch_k=5, lambda_mult=0.5)
        assert diverse[0].id.startswith("copy")
        assert {d.id for d in diverse[1:]} == {"other 1", "other 2"}
        # lambda_mult=1 is plain relevance
        plain = store.max_marginal_relevance_search("query", k=3, fetch_k=5, lambda_mult=1.0)
        assert plain == store.similarity_search("query", k=3)
        by_vector = store.max_marginal_relevance_search_by_vector(
            embeddings.embed_query("query"), k=3, fetch_k=5, lambda_mult=0.5)
        assert by_vector == diverse
        retriever = store.as_retriever(search_type="mmr",
                                       search_kwargs={"k": 3, "fetch_k": 5, "lambda_mult": 0.5})
        assert retriever.invoke("query") == diverse
        assert asyncio.run(retriever.ainvoke("query")) == diverse
        # with a filter, only matching documents are candidates
        copies = store.max_marginal_relevance_search("query", k=2, fetch_k=5,
                                                     filter={"kind": "copy"})
        assert len(copies) == 2 and all(d.id.startswith("copy") for d in copies)


def test_mmr_with_filter(filled):
    store, _, metadatas, _ = filled
    found = store.max_marginal_relevance_search("document number 7", k=5, fetch_k=20,
                                                filter={"parity": "odd"})
    assert len(found) == 5 and all(d.metadata["parity"] == "odd" for d in found)


# ---------------------------------------------------------------------- scores


def test_scores_are_similarities_and_relevance_in_unit_interval(filled):
    store, _, _, vectors = filled
    query = "document number 3"
    with_score = store.similarity_search_with_score(query, k=10)
    _, exact = brute_force(vectors, fake().embed_query(query), np.ones(len(vectors), bool), 10)
    scores = [s for _, s in with_score]
    assert scores == sorted(scores, reverse=True)  # higher is better
    assert with_score[0][0].id == "d3" and scores[0] == pytest.approx(1.0, abs=1e-3)
    for doc, score in with_score:  # cosine similarity
        assert score == pytest.approx(exact[int(doc.id[1:])], abs=2e-3)
    relevance = store.similarity_search_with_relevance_scores(query, k=10)
    assert [d.id for d, _ in relevance] == [d.id for d, _ in with_score]
    # the calibrated relevance of the Collection, the raw score kept in the metadata
    hits = store.collection.search(fake().embed_query(query), 10, relevance=True)
    for (doc, rel), (plain, sim), hit in zip(relevance, with_score, hits):
        assert 0.0 <= rel <= 1.0 and rel == pytest.approx(hit.relevance)
        assert doc.metadata == {**plain.metadata, "vecpress_score": sim}
    values = [r for _, r in relevance]
    assert values == sorted(values, reverse=True)


def test_relevance_threshold(filled):
    store = filled[0]
    query = "document number 3"
    relevance = store.similarity_search_with_relevance_scores(query, k=20)
    cut = (relevance[2][1] + relevance[3][1]) / 2
    kept = store.similarity_search_with_relevance_scores(query, k=20, score_threshold=cut)
    assert kept == relevance[:3]
    retriever = store.as_retriever(search_type="similarity_score_threshold",
                                   search_kwargs={"k": 20, "score_threshold": cut})
    assert retriever.invoke(query) == [d for d, _ in relevance[:3]]
    assert asyncio.run(store.asimilarity_search_with_relevance_scores(
        query, k=20, score_threshold=cut)) == kept
    assert store.similarity_search_with_relevance_scores(query, k=20, score_threshold=1.01) == []


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_scores_higher_is_better_for_every_metric(metric):
    texts, metadatas, vectors = corpus(40)
    with VecpressVectorStore.from_texts(texts, fake(), metadatas, metric=metric,
                                        bits=32) as store:
        hits = store.similarity_search_with_score("document number 9", k=5)
        scores = [s for _, s in hits]
        assert hits[0][0].page_content == "document number 9"
        assert scores == sorted(scores, reverse=True)
        relevance = store.similarity_search_with_relevance_scores("document number 9", k=5)
        assert all(0.0 <= r <= 1.0 for _, r in relevance)
        assert [r for _, r in relevance] == sorted((r for _, r in relevance), reverse=True)
        assert [d.metadata["vecpress_score"] for d, _ in relevance] == scores


# ---------------------------------------------------------------------- async


def test_async_methods_do_not_block_the_event_loop():
    with VecpressVectorStore.from_texts(["a", "b", "c"], SlowEmbeddings(size=8)) as store:
        ticks = []

        async def ticker():
            for _ in range(40):
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        async def main():
            task = asyncio.create_task(ticker())
            started = time.perf_counter()
            docs = await store.asimilarity_search("a", k=1)
            ended = time.perf_counter()
            task.cancel()
            return docs, started, ended

        docs, started, ended = asyncio.run(main())
        assert docs[0].page_content == "a" and ended - started >= 0.3
        assert sum(started <= t <= ended for t in ticks) >= 5


async def test_async_interface_matches_sync(filled):
    store = filled[0]
    q = "document number 21"
    assert await store.asimilarity_search(q, k=3) == store.similarity_search(q, k=3)
    assert await store.asimilarity_search_with_score(q, k=3) == \
        store.similarity_search_with_score(q, k=3)
    vector = fake().embed_query(q)
    assert await store.asimilarity_search_by_vector(vector, k=3, filter={"tens": 2}) == \
        store.similarity_search_by_vector(vector, k=3, filter={"tens": 2})
    assert await store.amax_marginal_relevance_search(q, k=3) == \
        store.max_marginal_relevance_search(q, k=3)
    assert await store.amax_marginal_relevance_search_by_vector(vector, k=3) == \
        store.max_marginal_relevance_search_by_vector(vector, k=3)
    assert await store.aget_by_ids(["d1"]) == store.get_by_ids(["d1"])
    assert await store.asearch(q, "similarity", k=2) == store.search(q, "similarity", k=2)


# ---------------------------------------------------------------------- embeddings


def test_dimension_comes_from_the_first_batch_without_a_dummy_call():
    embeddings = CountingEmbeddings(size=5)
    embeddings.calls = []
    store = VecpressVectorStore(embeddings, batch_size=2)
    assert store.collection is None and embeddings.calls == []
    assert store.similarity_search("q") == []  # empty: nothing to embed a query for
    store.add_texts(["t1", "t2", "t3", "t4", "t5"])
    assert embeddings.calls == [("documents", ["t1", "t2"]), ("documents", ["t3", "t4"]),
                                ("documents", ["t5"])]
    assert store.collection.dim == 5 and store.embeddings is embeddings


def test_large_inserts_show_a_progress_bar(capsys):
    pytest.importorskip("tqdm")
    with VecpressVectorStore(fake(4), batch_size=10, show_progress=True) as store:
        store.add_texts([f"t{i}" for i in range(5)])
        assert "embedding" not in capsys.readouterr().err  # one batch: no bar
        store.add_texts([f"t{i}" for i in range(35)])
        assert "embedding" in capsys.readouterr().err


def test_query_of_another_dimension_is_a_clear_error(tmp_path):
    VecpressVectorStore.from_texts(["a", "b"], fake(6), path=tmp_path / "db").close()
    with VecpressVectorStore.load_local(tmp_path / "db", fake(7)) as store:
        with pytest.raises(ValueError, match="7-dimensional.*6-dimensional.*another embedding"):
            store.similarity_search("a")
        with pytest.raises(ValueError, match="7-dimensional.*6-dimensional"):
            store.add_texts(["c"])
        with pytest.raises(ValueError, match="3-dimensional"):
            store.similarity_search_by_vector([0.1, 0.2, 0.3])


def test_vecpress_embedder_is_accepted():
    class Tiny:
        dim, metric = 3, "ip"

        def embed_documents(self, texts, *, batch_size=None, progress=None):
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

        def embed_query(self, text):
            return np.array([len(text), 1.0, 0.0], dtype=np.float32)

    with VecpressVectorStore(Tiny(), bits=32) as store:
        assert isinstance(store.embeddings, Embeddings)
        assert store.collection.dim == 3 and store.collection.metric == "ip"
        store.add_texts(["aa", "aaaa"])
        assert store.similarity_search("aaaaa", k=1)[0].page_content == "aaaa"


# ---------------------------------------------------------------------- paths and options


def test_path_that_holds_something_else(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds no vecpress store"):
        VecpressVectorStore(fake(), path=tmp_path / "notes")
    with pytest.raises(FileExistsError, match="holds no vecpress"):
        VecpressVectorStore(fake(), path=tmp_path / "notes", dim=16)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        VecpressVectorStore(fake(), path=tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        VecpressVectorStore.load_local(tmp_path / "nothing", fake())
    with pytest.raises(FileNotFoundError):
        VecpressVectorStore(fake(), path=tmp_path / "nothing", read_only=True)
    assert list((tmp_path / "notes").iterdir()) == [tmp_path / "notes" / "todo.txt"]


def test_bad_options_fail_at_construction(tmp_path):
    with pytest.raises(TypeError, match="collection_name"):
        VecpressVectorStore(fake(), collection_name="x")
    with pytest.raises(ValueError, match="bits"):
        VecpressVectorStore(fake(), bits=9)
    with pytest.raises(ValueError, match="metric"):
        VecpressVectorStore(fake(), path=tmp_path / "db", metric="hamming")
    assert not (tmp_path / "db").exists()
    with pytest.raises(ValueError, match="differ"):
        VecpressVectorStore(fake(), path=tmp_path / "a", persist_directory=tmp_path / "b")
    with pytest.raises(TypeError, match="LangChain Embeddings"):
        VecpressVectorStore("text-embedding-3-small")


def test_reopen_checks_options_and_read_only(tmp_path):
    VecpressVectorStore.from_texts(["a", "b"], fake(), path=tmp_path / "db", bits=2).close()
    with pytest.raises(ValueError, match="bits=4 does not match"):
        VecpressVectorStore(fake(), path=tmp_path / "db", bits=4)
    with VecpressVectorStore(fake(), path=tmp_path / "db", read_only=True) as reader:
        assert reader.collection.bits == 2
        assert reader.similarity_search("a", k=1)[0].page_content == "a"
        with pytest.raises(PermissionError):
            reader.add_texts(["c"])


# ---------------------------------------------------------------------- persistence


CHILD = textwrap.dedent("""
    import json, sys
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from vecpress.integrations.langchain import VecpressVectorStore
    out = {}
    for name in sys.argv[1:]:
        store = VecpressVectorStore.load_local(name, DeterministicFakeEmbedding(size=16))
        hits = store.similarity_search_with_score("document number 42", k=5,
                                                  filter={"parity": "even"})
        out[name] = {"hits": [[d.id, d.page_content, d.metadata, s] for d, s in hits],
                     "docs": [d.model_dump() for d in store.get_by_ids(["d0", "d7", "x"])],
                     "mmr": [d.id for d in store.max_marginal_relevance_search("document number 42", k=3)]}
        store.close()
    print(json.dumps(out))
""")


def snapshot(store):
    hits = store.similarity_search_with_score("document number 42", k=5,
                                              filter={"parity": "even"})
    return {"hits": [[d.id, d.page_content, d.metadata, s] for d, s in hits],
            "docs": [d.model_dump() for d in store.get_by_ids(["d0", "d7", "x"])],
            "mmr": [d.id for d in store.max_marginal_relevance_search("document number 42",
                                                                      k=3)]}


@pytest.mark.slow
def test_persistence_round_trip_through_a_new_process(tmp_path):
    texts, metadatas, _ = corpus(200)
    ids = [f"d{i}" for i in range(200)]
    persistent = VecpressVectorStore.from_texts(texts, fake(), metadatas, ids=ids,
                                                path=tmp_path / "persistent")
    persistent.delete(["d1"])
    persistent.add_texts(["replaced"], [{"parity": "even", "i": -7}], ids=["d7"])
    in_memory = VecpressVectorStore.from_texts(texts, fake(), metadatas, ids=ids, bits=2)
    in_memory.save_local(tmp_path / "saved")
    persistent.save_local(tmp_path / "persistent")  # its own path: nothing to do
    expected = {str(tmp_path / "persistent"): snapshot(persistent),
                str(tmp_path / "saved"): snapshot(in_memory)}
    persistent.close()
    in_memory.close()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", CHILD, *expected], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name, want in expected.items():
        assert [h[:3] for h in got[name]["hits"]] == [h[:3] for h in want["hits"]]
        np.testing.assert_allclose([h[3] for h in got[name]["hits"]],
                                   [h[3] for h in want["hits"]], atol=1e-6)
        assert got[name]["docs"] == want["docs"] and got[name]["mmr"] == want["mmr"]
    assert got[str(tmp_path / "persistent")]["docs"][1]["page_content"] == "replaced"
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))


def test_save_local_refuses_an_occupied_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a").write_text("")
    with VecpressVectorStore.from_texts(["a"], fake()) as store:
        with pytest.raises(FileExistsError):
            store.save_local(tmp_path / "x")
    with pytest.raises(ValueError, match="empty"):
        VecpressVectorStore(fake()).save_local(tmp_path / "y")


# ---------------------------------------------------------------------- a real chain


@pytest.fixture(scope="module")
def glosses_store():
    datasets = pytest.importorskip("benchmarks.datasets")
    pytest.importorskip("sentence_transformers")
    try:
        texts = datasets.load_wordnet_glosses(200)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from vecpress.embeddings import default_embedder
    from vecpress.embeddings.wrappers import as_langchain_embeddings

    embeddings = as_langchain_embeddings(default_embedder())
    metadatas = [{"lemma": t.split(":", 1)[0], "row": i} for i, t in enumerate(texts)]
    store = VecpressVectorStore.from_texts(texts, embeddings, metadatas)
    yield store
    store.close()


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


@pytest.mark.slow
@pytest.mark.parametrize("question, lemma", [
    ("surgery to flatten the belly", "abdominoplasty"),
    ("prisoners broke out of jail", "break"),
    ("the aircraft touched down on the runway", "landing"),
    ("saying goodbye before leaving", "farewell"),
])
def test_retrieval_chain_over_wordnet_glosses(glosses_store, question, lemma):
    from langchain_core.runnables import RunnableLambda

    retriever = glosses_store.as_retriever(search_kwargs={"k": 4})
    chain = retriever | RunnableLambda(format_docs)
    context = chain.invoke(question)
    assert isinstance(context, str) and context.count("\n\n") == 3
    assert any(block.startswith(f"{lemma}:") for block in context.split("\n\n")), context
    docs = retriever.invoke(question)
    assert [d.page_content for d in docs] == context.split("\n\n")
    assert all(d.id and d.metadata["lemma"] == d.page_content.split(":", 1)[0] for d in docs)
    mmr = glosses_store.as_retriever(search_type="mmr", search_kwargs={"k": 4, "fetch_k": 20})
    assert len({d.id for d in mmr.invoke(question)}) == 4


@pytest.mark.slow
def test_retrieval_chain_async_with_filter(glosses_store):
    from langchain_core.runnables import RunnableLambda

    retriever = glosses_store.as_retriever(search_kwargs={"k": 3,
                                                          "filter": {"row": {"$lt": 100}}})
    chain = retriever | RunnableLambda(format_docs)
    context = asyncio.run(chain.ainvoke("the aircraft touched down on the runway"))
    docs = asyncio.run(retriever.ainvoke("the aircraft touched down on the runway"))
    assert len(docs) == 3 and all(d.metadata["row"] < 100 for d in docs)
    assert context == format_docs(docs)


def test_is_a_langchain_vector_store():
    assert issubclass(VecpressVectorStore, VectorStore)
    assert math.isclose(VecpressVectorStore(fake())._select_relevance_score_fn()(0.5), 0.75)


def test_save_local_does_not_overwrite_a_store(tmp_path):
    VecpressVectorStore.from_texts(["a"], fake(), path=tmp_path / "db").close()
    with VecpressVectorStore.from_texts(["b"], fake()) as store:
        with pytest.raises(FileExistsError, match="already holds a vecpress store"):
            store.save_local(tmp_path / "db")
    with VecpressVectorStore.load_local(tmp_path / "db", fake()) as reopened:
        assert [d.page_content for d in reopened.similarity_search("a")] == ["a"]


@pytest.mark.parametrize("reranker", ["embed", "exact"])
def test_reranker_option_returns_exact_order(reranker):
    """A 1-bit store with a second-stage reranker returns exact cosine scores, best first, and
    (nearly) the exact top 5 from its candidates."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    embeddings = DeterministicFakeEmbedding(size=32)
    texts = [f"document number {i}" for i in range(300)]
    store = VecpressVectorStore(embeddings, bits=1, rerank=reranker == "exact",
                                reranker=reranker, oversample=40)
    store.add_texts(texts, ids=[str(i) for i in range(300)])
    vectors = np.array(embeddings.embed_documents(texts))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for query in ("document number 7", "something else entirely"):
        q = np.array(embeddings.embed_query(query))
        exact = vectors @ (q / np.linalg.norm(q))
        hits = store.similarity_search_with_score(query, k=5)
        found = [int(doc.id) for doc, _ in hits]
        scores = [score for _, score in hits]
        np.testing.assert_allclose(scores, exact[found], atol=2e-3)  # rescored exactly
        assert scores == sorted(scores, reverse=True)
        assert found[0] == int(np.argmax(exact))
        assert len(set(found) & set(np.argsort(-exact)[:5].tolist())) >= 4


def test_cross_encoder_reranker_needs_query_text(monkeypatch):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from vecpress.embeddings import rerankers

    monkeypatch.setattr(rerankers.CrossEncoderReranker, "__init__",
                        lambda self, *a, **k: None)  # no model weights offline
    store = VecpressVectorStore(DeterministicFakeEmbedding(size=8), reranker=rerankers.CrossEncoderReranker())
    store.add_texts(["a", "b"])
    with pytest.raises(ValueError, match="similarity_search"):
        store.similarity_search_by_vector([0.1] * 8, k=1)


def test_nprobe_reaches_a_partitioned_index_and_is_checked():
    """``nprobe`` passes through the search methods to the Collection: probing every list of
    a partitioned store returns the exact neighbours, and a bad value names the argument."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    texts = [f"text {i}" for i in range(300)]
    store = VecpressVectorStore(_TableEmbeddings(texts, vectors), dim=16, partitions=4)
    store.add_texts(texts, ids=[str(i) for i in range(300)])
    assert store.collection._index.stats()["lists"] == 4
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [str(i) for i in np.argsort(-(unit @ unit[7]))[:5]]
    found = store.similarity_search_by_vector(vectors[7].tolist(), k=5, nprobe=4,
                                              oversample=1000)
    assert [doc.id for doc in found] == expected
    with pytest.raises(ValueError, match="nprobe"):
        store.similarity_search("text 7", k=5, nprobe=0)
    assert len(store.max_marginal_relevance_search("text 7", k=3, nprobe=4)) == 3


class _TableEmbeddings(Embeddings):
    """The given vector of each known text."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.table = dict(zip(texts, vectors))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t].tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text].tolist()
