"""VecpressVectorStore inside real LlamaIndex pipelines: 200 WordNet glosses embedded with the
default local model (all-MiniLM-L6-v2), compared with the same pipeline on SimpleVectorStore;
insert / delete_ref_doc; async building and retrieval; reopening in a new process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.schema import QueryBundle  # noqa: E402
from llama_index.core.storage.kvstore import SimpleKVStore  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from vecpress.integrations.llama_index import VecpressVectorStore  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
N_DOCS = 200
QUERY_COUNT = 20
K = 5


def wordnet_glosses(limit: int) -> list[str]:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from benchmarks.datasets import load_wordnet_glosses
    finally:
        sys.path.remove(str(REPO_ROOT))
    try:
        return load_wordnet_glosses(limit)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def embed_model():
    from vecpress.embeddings import ModelLoadError, default_embedder
    from vecpress.embeddings.wrappers import as_llama_index_embedding

    try:
        model = as_llama_index_embedding(default_embedder())
    except (ImportError, ModelLoadError) as exc:
        pytest.skip(f"default embedder unavailable: {exc}")
    model.embeddings_cache = SimpleKVStore()  # each text is embedded once in this module
    return model


@pytest.fixture(scope="module")
def corpus(embed_model) -> tuple[list[Document], list[QueryBundle]]:
    glosses = wordnet_glosses(N_DOCS + QUERY_COUNT)
    documents = [
        Document(text=text, doc_id=f"wn-{i}",
                 metadata={"lemma": text.split(":")[0], "group": i % 4, "length": len(text)},
                 excluded_embed_metadata_keys=["group", "length"])
        for i, text in enumerate(glosses[:N_DOCS])
    ]
    # unseen definitions, embedded once (retrievers take the given embedding)
    queries = [QueryBundle(query, embedding=embed_model.get_query_embedding(query))
               for query in (text.split(": ", 1)[1] for text in glosses[N_DOCS:])]
    return documents, queries


def build(documents, embed_model, vector_store=None) -> VectorStoreIndex:
    context = StorageContext.from_defaults(vector_store=vector_store)
    return VectorStoreIndex.from_documents(documents, storage_context=context,
                                           embed_model=embed_model)


def ranked(retriever, queries) -> list[list[tuple[str, float]]]:
    return [[(hit.node.ref_doc_id, hit.score) for hit in retriever.retrieve(q)] for q in queries]


@pytest.fixture(scope="module")
def reference(corpus, embed_model) -> VectorStoreIndex:
    return build(corpus[0], embed_model)  # SimpleVectorStore


@pytest.fixture(scope="module")
def persisted(corpus, embed_model, tmp_path_factory):
    """A vecpress pipeline on disk, persisted with StorageContext.persist, then closed."""
    root = tmp_path_factory.mktemp("pipeline")
    store = VecpressVectorStore(path=root / "vecpress")
    index = build(corpus[0], embed_model, store)
    results = {
        "plain": ranked(index.as_retriever(similarity_top_k=K), corpus[1]),
        "filtered": ranked(index.as_retriever(similarity_top_k=K, filters=GROUP_FILTER), corpus[1]),
    }
    index.storage_context.persist(persist_dir=str(root / "storage"))
    store.close()
    return root, results


GROUP_FILTER = MetadataFilters(filters=[
    MetadataFilter(key="group", value=1),
    MetadataFilter(key="length", value=40, operator=FilterOperator.GT),
])


def overlap(found, expected) -> float:
    hits = sum(len({d for d, _ in f} & {d for d, _ in e}) for f, e in zip(found, expected))
    return hits / sum(len(e) for e in expected)


@pytest.mark.slow
def test_retrieval_matches_simple_vector_store(persisted, reference, corpus):
    _, results = persisted
    expected = ranked(reference.as_retriever(similarity_top_k=K), corpus[1])
    assert overlap(results["plain"], expected) >= 0.95
    for found, exact in zip(results["plain"], expected):
        scores = dict(exact)
        for doc_id, score in found:
            if doc_id in scores:  # kept originals are float16: scores agree to ~1e-3
                assert score == pytest.approx(scores[doc_id], abs=5e-3)
    filtered = ranked(reference.as_retriever(similarity_top_k=K, filters=GROUP_FILTER), corpus[1])
    assert overlap(results["filtered"], filtered) >= 0.95
    groups = {doc.doc_id: doc.metadata for doc in corpus[0]}
    for hits in results["filtered"]:
        assert len(hits) == K
        assert all(groups[d]["group"] == 1 and groups[d]["length"] > 40 for d, _ in hits)


@pytest.mark.slow
def test_insert_and_delete_ref_doc(corpus, embed_model):
    store = VecpressVectorStore()
    index = build(corpus[0][:40], embed_model, store)
    new = Document(text="zyzzyva: any of several tropical American weevils harmful to palms",
                   doc_id="zyzzyva", metadata={"lemma": "zyzzyva", "group": 9, "length": 0})
    index.insert(new)
    retriever = index.as_retriever(similarity_top_k=3)
    (top, *_) = retriever.retrieve("weevils that damage palm trees")  # embedded here
    assert top.node.ref_doc_id == "zyzzyva" and top.node.text == new.text
    assert len(store.client) == 41
    index.delete_ref_doc("zyzzyva")
    assert len(store.client) == 40
    assert all(hit.node.ref_doc_id != "zyzzyva"
               for hit in retriever.retrieve("weevils that damage palm trees"))
    only = index.as_retriever(similarity_top_k=3, filters=MetadataFilters(
        filters=[MetadataFilter(key="lemma", value=corpus[0][7].metadata["lemma"])]))
    assert [hit.node.ref_doc_id for hit in only.retrieve("anything")] == ["wn-7"]


@pytest.mark.slow
def test_async_pipeline(corpus, embed_model):
    documents, queries = corpus[0][:60], corpus[1][:5]

    async def scenario():
        store = VecpressVectorStore(bits=32)
        index = VectorStoreIndex.from_documents(
            documents, storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model, use_async=True)
        assert len(store.client) == len(documents)
        retriever = index.as_retriever(similarity_top_k=K)
        found = await asyncio.gather(*(retriever.aretrieve(q) for q in queries))
        assert [[h.node.node_id for h in hits] for hits in found] == \
            [[h.node.node_id for h in retriever.retrieve(q)] for q in queries]
        await index.adelete_ref_doc(documents[0].doc_id)
        assert len(store.client) == len(documents) - 1

    asyncio.run(scenario())


REOPEN_SCRIPT = textwrap.dedent("""
    import json, sys
    from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.vector_stores.types import MetadataFilters
    from vecpress.integrations.llama_index import VecpressVectorStore

    persist_dir, k = sys.argv[1], int(sys.argv[2])
    request = json.load(sys.stdin)
    vectors = dict(request["queries"])

    class QueriesOnly(BaseEmbedding):
        # knows the test queries' vectors and refuses to embed anything else
        def _get_query_embedding(self, query):
            return vectors[query]

        async def _aget_query_embedding(self, query):
            return vectors[query]

        def _get_text_embedding(self, text):
            raise AssertionError("a document was re-embedded after reopening")

    embed_model = QueriesOnly(model_name="queries-only")
    store = VecpressVectorStore.from_persist_dir(persist_dir)
    context = StorageContext.from_defaults(persist_dir=persist_dir, vector_store=store)
    index = load_index_from_storage(context, embed_model=embed_model)
    filters = MetadataFilters.model_validate(request["filters"])
    out = {}
    for name, retriever in (
        ("plain", index.as_retriever(similarity_top_k=k)),
        ("filtered", index.as_retriever(similarity_top_k=k, filters=filters)),
        ("from_vector_store", VectorStoreIndex.from_vector_store(
            store, embed_model=embed_model).as_retriever(similarity_top_k=k)),
    ):
        out[name] = [[(h.node.ref_doc_id, h.score) for h in retriever.retrieve(query)]
                     for query in vectors]
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_reopening_in_a_new_process_needs_no_embedding(persisted, corpus):
    root, results = persisted
    request = {"queries": [(q.query_str, q.embedding) for q in corpus[1]],
               "filters": GROUP_FILTER.model_dump(mode="json")}
    done = subprocess.run(
        [sys.executable, "-c", REOPEN_SCRIPT, str(root / "storage"), str(K)],
        input=json.dumps(request), capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reopened = json.loads(done.stdout.strip().splitlines()[-1])
    as_lists = {name: [[list(hit) for hit in hits] for hits in value]
                for name, value in results.items()}
    assert reopened["plain"] == as_lists["plain"]
    assert reopened["filtered"] == as_lists["filtered"]
    assert reopened["from_vector_store"] == as_lists["plain"]


@pytest.mark.slow
def test_example_runs_and_reopens_without_embedding(tmp_path, embed_model, capsys):
    import importlib.util

    try:
        from vecpress.wordnet import read_glosses

        read_glosses()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    spec = importlib.util.spec_from_file_location("llama_index_rag",
                                                  REPO_ROOT / "examples" / "llama_index_rag.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    arguments = ["--persist-dir", str(tmp_path / "storage"), "--limit", "60", "a boat"]
    example.main(arguments)
    first = capsys.readouterr().out
    assert "indexed 60 WordNet glosses" in first and "Question: a boat" in first
    example.main(arguments)
    second = capsys.readouterr().out
    assert "reopened" in second and "nothing re-embedded" in second
    assert second.split("Prompt for a chat model")[1] == first.split("Prompt for a chat model")[1]
