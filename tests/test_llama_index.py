"""VecpressVectorStore (LlamaIndex) method by method, against references.

The store runs with exact codes (``bits=32``) so its rankings can be compared exactly with
LlamaIndex's own ``SimpleVectorStore`` (flat filters, node ids) and with a brute-force numpy
model (nested filters, doc ids, MMR). Quantized behaviour is the Collection's business and is
tested there; here the question is whether every part of a query reaches the Collection.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import (  # noqa: E402
    Document,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores import SimpleVectorStore  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from vecpress import Collection  # noqa: E402
from vecpress.core.storage import StoreCorruptedError  # noqa: E402
from vecpress.integrations.llama_index import VecpressVectorStore  # noqa: E402

DIM = 24
N = 90
WORDS = ["apple", "river", "stone", "cloud", "ember", "maple", "harbor", "violet"]
CATS = ["news", "blog", "paper"]


def make_nodes(n: int = N, seed: int = 0) -> list[TextNode]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    nodes = []
    for i in range(n):
        metadata = {
            "cat": CATS[i % 3],
            "n": int(i % 11),
            "x": float(np.round(rng.uniform(0, 10), 3)),
            "tags": [WORDS[(i + j) % len(WORDS)] for j in range(i % 4)],
            "title": f"{WORDS[i % len(WORDS)].capitalize()} note {i}",
        }
        if i % 7 == 0:
            del metadata["cat"]
        if i % 9 == 0:
            metadata["title"] = ""
        text = f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]} number {i}"
        node = TextNode(text=text, id_=f"node-{i}", metadata=metadata,
                        embedding=vectors[i].tolist())
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc-{i // 6}")
        nodes.append(node)
    return nodes


NODES = make_nodes()
VECTORS = np.array([node.embedding for node in NODES], dtype=np.float64)
QUERIES = np.random.default_rng(99).standard_normal((6, DIM))


@pytest.fixture
def store() -> VecpressVectorStore:
    store = VecpressVectorStore(bits=32)
    store.add([node.model_copy() for node in NODES])
    return store


@pytest.fixture(scope="module")
def simple() -> SimpleVectorStore:
    reference = SimpleVectorStore()
    reference.add(NODES)
    return reference


def cosine(query: np.ndarray) -> np.ndarray:
    unit = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    return unit @ (query / np.linalg.norm(query))


def brute_force(query: np.ndarray, k: int, allowed) -> list[str]:
    scores = cosine(query)
    order = [i for i in np.argsort(-scores, kind="stable") if allowed(NODES[i])]
    return [NODES[i].node_id for i in order[:k]]


def run(store, query: VectorStoreQuery, **kwargs):
    return store.query(query, **kwargs)


# ---------------------------------------------------------------------- nodes round-trip


def test_flags_and_client(store):
    assert store.stores_text is True and store.is_embedding_query is True
    assert isinstance(store.client, Collection) and len(store.client) == N
    assert VecpressVectorStore.class_name() == "VecpressVectorStore"


def test_nodes_round_trip_text_metadata_relationships_and_id():
    node = TextNode(
        text="The quick brown fox.", id_="fox", start_char_idx=3, end_char_idx=23,
        metadata={"nested": {"a": [1, 2.5, "x"], "b": None}, "flag": True, "name": "fox"},
        excluded_llm_metadata_keys=["flag"], excluded_embed_metadata_keys=["nested"],
        embedding=[0.1] * 4 + [0.3] * 4,
    )
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="animals", metadata={"p": 1})
    node.relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id="before")
    node.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id="after")
    store = VecpressVectorStore(bits=32)
    store.add([node])
    (back,) = store.get_nodes(["fox"])
    assert back.node_id == "fox" and back.text == node.text and back.metadata == node.metadata
    assert back.ref_doc_id == "animals"
    assert back.relationships == node.relationships
    assert back.excluded_llm_metadata_keys == ["flag"]
    assert (back.start_char_idx, back.end_char_idx) == (3, 23)
    assert back.hash == node.hash and back.embedding is None
    hit = store.query(VectorStoreQuery(query_embedding=node.embedding, similarity_top_k=1))
    assert hit.ids == ["fox"] and hit.nodes[0].text == node.text
    assert hit.similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_documents_come_back_as_text_nodes_with_their_id():
    document = Document(text="a whole document", metadata={"k": "v"}, doc_id="d1",
                        embedding=[1.0, 0.0, 0.5])
    store = VecpressVectorStore(bits=32)
    store.add([document])
    (back,) = store.get_nodes()
    assert back.node_id == "d1" and back.text == "a whole document" and back.metadata == {"k": "v"}


def test_add_replaces_by_id_and_the_last_duplicate_wins(store):
    first, second = NODES[0].model_copy(), NODES[0].model_copy()
    first.text, second.text = "first", "second"
    assert store.add([first, second]) == ["node-0", "node-0"]
    assert len(store.client) == N
    assert store.get_nodes(["node-0"])[0].text == "second"


def test_add_in_batches_is_the_same_as_one_write():
    batched = VecpressVectorStore(bits=32, batch_size=7)
    assert batched.add(NODES) == [node.node_id for node in NODES]
    assert len(batched.client) == N
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=10)
    assert run(batched, query).ids == brute_force(QUERIES[0], 10, lambda node: True)


def test_bad_nodes_raise_before_anything_is_written(store):
    no_embedding = TextNode(text="x", id_="plain")
    with pytest.raises(ValueError, match="has no embedding"):
        store.add([NODES[1], no_embedding])
    wrong_width = TextNode(text="x", id_="narrow", embedding=[1.0, 2.0])
    with pytest.raises(ValueError, match="2-dimensional embedding"):
        store.add([NODES[1], wrong_width])
    with pytest.raises(ValueError, match="24-dimensional vectors"):
        store.add([wrong_width])
    with pytest.raises(TypeError, match="LlamaIndex node"):
        store.add(["text"])
    assert len(store.client) == N and store.get_nodes(["plain", "narrow"]) == []
    assert store.add([]) == []


def test_constructor_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        VecpressVectorStore(metric="hamming")
    with pytest.raises(ValueError, match="hybrid_fusion"):
        VecpressVectorStore(hybrid_fusion="max")
    with pytest.raises(TypeError, match="unknown VecpressVectorStore arguments"):
        VecpressVectorStore(rerank_mode="x")
    with pytest.raises(ValueError):
        VecpressVectorStore(batch_size=0)
    with pytest.raises(ValueError, match="not both"):
        VecpressVectorStore(collection=Collection(dim=4), bits=4)
    with pytest.raises(FileNotFoundError):
        VecpressVectorStore(path=tmp_path / "nothing", read_only=True)


def test_lazy_store_has_no_client_until_the_first_add():
    store = VecpressVectorStore()
    assert store.client is None
    assert store.get_nodes() == []
    result = store.query(VectorStoreQuery(query_embedding=[1.0, 2.0], similarity_top_k=3))
    assert result.ids == [] and result.nodes == [] and result.similarities == []
    store.delete("anything")
    store.clear()
    store.add([TextNode(text="t", id_="a", embedding=[1.0, 2.0])])
    assert store.client.dim == 2
    wrapped = VecpressVectorStore(collection=store.client)
    assert wrapped.client is store.client and [n.node_id for n in wrapped.get_nodes()] == ["a"]


# ---------------------------------------------------------------------- dense search and filters


FLAT_FILTERS = [
    MetadataFilter(key="cat", value="news"),
    MetadataFilter(key="cat", value="news", operator=FilterOperator.NE),
    MetadataFilter(key="n", value=5, operator=FilterOperator.GT),
    MetadataFilter(key="n", value=5, operator=FilterOperator.GTE),
    MetadataFilter(key="x", value=3.5, operator=FilterOperator.LT),
    MetadataFilter(key="x", value=3.5, operator=FilterOperator.LTE),
    MetadataFilter(key="title", value="M", operator=FilterOperator.GT),
    MetadataFilter(key="cat", value=["blog", "paper"], operator=FilterOperator.IN),
    MetadataFilter(key="n", value=[1, 2, 3], operator=FilterOperator.IN),
    MetadataFilter(key="cat", value=["blog"], operator=FilterOperator.NIN),
    MetadataFilter(key="tags", value=["apple", "river"], operator=FilterOperator.ANY),
    MetadataFilter(key="tags", value=["river", "stone"], operator=FilterOperator.ALL),
    MetadataFilter(key="tags", value="cloud", operator=FilterOperator.CONTAINS),
    MetadataFilter(key="title", value="note 1", operator=FilterOperator.TEXT_MATCH),
    MetadataFilter(key="title", value="APPLE", operator=FilterOperator.TEXT_MATCH_INSENSITIVE),
    MetadataFilter(key="title", value=None, operator=FilterOperator.IS_EMPTY),
    MetadataFilter(key="tags", value=None, operator=FilterOperator.IS_EMPTY),
    MetadataFilter(key="cat", value=None, operator=FilterOperator.IS_EMPTY),
]


@pytest.mark.parametrize("condition", [FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT])
@pytest.mark.parametrize("position", range(len(FLAT_FILTERS)))
def test_every_operator_and_condition_matches_simple_vector_store(store, simple, position, condition):
    other = FLAT_FILTERS[(position + 5) % len(FLAT_FILTERS)]
    filters = MetadataFilters(filters=[FLAT_FILTERS[position], other], condition=condition)
    for query_vector in QUERIES[:2]:
        query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=8,
                                 filters=filters)
        expected = simple.query(query)
        got = run(store, query)
        assert got.ids == expected.ids
        assert got.similarities == pytest.approx(expected.similarities, abs=1e-5)


def test_unfiltered_search_and_node_ids_match_simple_vector_store(store, simple):
    for k in (1, 5, N + 10):
        for node_ids in (None, [f"node-{i}" for i in range(0, N, 4)], []):
            query = VectorStoreQuery(query_embedding=QUERIES[2].tolist(), similarity_top_k=k,
                                     node_ids=node_ids)
            # as_retriever passes node_ids=[] to stores that keep text: it restricts nothing
            # (SimpleVectorStore, which never receives it, would return nothing)
            expected = simple.query(replace(query, node_ids=node_ids or None))
            got = run(store, query)
            assert got.ids == expected.ids
            assert got.similarities == pytest.approx(expected.similarities, abs=1e-5)
            assert [node.node_id for node in got.nodes] == got.ids


def in_reference(node, key: str, values) -> bool:
    return node.metadata.get(key) in values


def test_nested_filters_doc_ids_and_node_ids_against_brute_force(store):
    # (cat == news OR n >= 8) AND NOT (tags contains apple OR x < 2)
    filters = MetadataFilters(
        condition=FilterCondition.AND,
        filters=[
            MetadataFilters(condition=FilterCondition.OR, filters=[
                MetadataFilter(key="cat", value="news"),
                MetadataFilter(key="n", value=8, operator=FilterOperator.GTE),
            ]),
            MetadataFilters(condition=FilterCondition.NOT, filters=[
                MetadataFilter(key="tags", value="apple", operator=FilterOperator.CONTAINS),
                MetadataFilter(key="x", value=2.0, operator=FilterOperator.LT),
            ]),
        ],
    )

    def holds(node) -> bool:
        m = node.metadata
        return (m.get("cat") == "news" or m["n"] >= 8) and not ("apple" in m["tags"] or m["x"] < 2)

    doc_ids = [f"doc-{i}" for i in range(0, 15, 2)]
    node_ids = [f"node-{i}" for i in range(0, N, 3)]
    cases = [
        (dict(filters=filters), holds),
        (dict(doc_ids=doc_ids), lambda node: node.ref_doc_id in doc_ids),
        (dict(filters=filters, doc_ids=doc_ids, node_ids=node_ids),
         lambda node: holds(node) and node.ref_doc_id in doc_ids and node.node_id in node_ids),
        (dict(doc_ids=[], node_ids=[]), lambda node: True),
    ]
    for fields, allowed in cases:
        assert any(allowed(node) for node in NODES)
        for query_vector in QUERIES:
            query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=7,
                                     **fields)
            assert run(store, query).ids == brute_force(query_vector, 7, allowed)


def test_scores_are_cosine_similarities(store):
    result = run(store, VectorStoreQuery(query_embedding=QUERIES[3].tolist(), similarity_top_k=5))
    expected = np.sort(cosine(QUERIES[3]))[::-1][:5]
    assert result.similarities == pytest.approx(expected.tolist(), abs=1e-5)


def test_default_store_is_quantized_and_finds_the_neighbours():
    store = VecpressVectorStore()  # bits=4 with exact rerank
    store.add(NODES)
    assert store.client.bits == 4
    found = 0
    for query_vector in QUERIES:
        query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=5)
        found += len(set(run(store, query).ids) & set(brute_force(query_vector, 5, lambda n: True)))
    assert found >= 0.8 * 5 * len(QUERIES)


# ---------------------------------------------------------------------- MMR, text, hybrid


def mmr_reference(query: np.ndarray, k: int, fetch_k: int, lambda_mult: float) -> list[str]:
    scores = cosine(query)
    pool = list(np.argsort(-scores, kind="stable")[:fetch_k])
    unit = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    chosen: list[int] = []
    while pool and len(chosen) < k:
        def value(i):
            redundancy = max((float(unit[i] @ unit[j]) for j in chosen), default=0.0)
            return lambda_mult * scores[i] - (1 - lambda_mult) * redundancy
        best = max(pool, key=value)
        chosen.append(best)
        pool.remove(best)
    return [NODES[i].node_id for i in chosen]


@pytest.mark.parametrize("lambda_mult", [0.0, 0.3, 0.7])
def test_mmr_matches_reference(store, lambda_mult):
    for query_vector in QUERIES[:3]:
        query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=5,
                                 mode=VectorStoreQueryMode.MMR, mmr_threshold=lambda_mult)
        assert run(store, query).ids == mmr_reference(query_vector, 5, 20, lambda_mult)
        # as VectorIndexRetriever passes it: vector_store_kwargs={"mmr_threshold": ...}
        query.mmr_threshold = None
        assert run(store, query, mmr_threshold=lambda_mult, mmr_prefetch_k=12).ids == \
            mmr_reference(query_vector, 5, 12, lambda_mult)
        assert run(store, query, mmr_threshold=lambda_mult, mmr_prefetch_factor=3).ids == \
            mmr_reference(query_vector, 5, 15, lambda_mult)


def test_mmr_with_full_relevance_is_the_dense_ranking_and_filters_apply(store):
    filters = MetadataFilters(filters=[MetadataFilter(key="cat", value="paper")])
    query = VectorStoreQuery(query_embedding=QUERIES[4].tolist(), similarity_top_k=6,
                             mode="mmr", mmr_threshold=1.0, filters=filters)
    result = run(store, query)
    assert result.ids == brute_force(QUERIES[4], 6, lambda node: node.metadata.get("cat") == "paper")
    default = run(store, VectorStoreQuery(query_embedding=QUERIES[4].tolist(), similarity_top_k=6,
                                          filters=filters))
    assert result.similarities == pytest.approx(default.similarities, abs=1e-6)


def test_text_search_finds_exactly_the_nodes_holding_the_word(store):
    holding = {node.node_id for node in NODES if "ember" in node.text.split()}
    query = VectorStoreQuery(query_str="ember", similarity_top_k=N, mode="text_search")
    result = run(store, query)
    assert set(result.ids) == holding
    assert result.similarities == sorted(result.similarities, reverse=True)
    filters = MetadataFilters(filters=[MetadataFilter(key="cat", value="blog")])
    query = VectorStoreQuery(query_str="Ember!", similarity_top_k=N, mode="text_search",
                             filters=filters, doc_ids=[f"doc-{i}" for i in range(8)])
    expected = {node.node_id for node in NODES if node.node_id in holding
                and node.metadata.get("cat") == "blog" and int(node.ref_doc_id[4:]) < 8}
    assert expected and set(run(store, query).ids) == expected
    limited = run(store, VectorStoreQuery(query_str="ember", similarity_top_k=3, mode="text_search"))
    assert limited.ids == result.ids[:3]


def test_hybrid_alpha_moves_between_dense_and_text(store):
    vector = QUERIES[5].tolist()
    dense = run(store, VectorStoreQuery(query_embedding=vector, similarity_top_k=5))
    text = run(store, VectorStoreQuery(query_str="violet harbor", similarity_top_k=5,
                                       mode="text_search"))
    only_dense = run(store, VectorStoreQuery(query_embedding=vector, query_str="violet harbor",
                                             similarity_top_k=5, mode="hybrid", alpha=1.0))
    only_text = run(store, VectorStoreQuery(query_embedding=vector, query_str="violet harbor",
                                            similarity_top_k=5, mode="hybrid", alpha=0.0))
    assert only_dense.ids == dense.ids
    assert only_text.ids == text.ids
    mixed = run(store, VectorStoreQuery(query_embedding=vector, query_str="violet harbor",
                                        similarity_top_k=5, mode="hybrid"))
    assert set(mixed.ids) <= set(dense.ids) | set(text.ids) | set(
        run(store, VectorStoreQuery(query_embedding=vector, similarity_top_k=40)).ids)
    assert mixed.similarities == sorted(mixed.similarities, reverse=True)


def test_hybrid_top_k_sets_the_result_count(store):
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), query_str="stone",
                             similarity_top_k=10, sparse_top_k=10, hybrid_top_k=3, mode="hybrid")
    assert len(run(store, query).ids) == 3
    query.hybrid_top_k = None
    assert len(run(store, query).ids) == 10


@pytest.mark.parametrize("fields, kwargs, error, message", [
    (dict(mode=VectorStoreQueryMode.SPARSE), {}, ValueError, "not supported"),
    (dict(mode=VectorStoreQueryMode.SVM), {}, ValueError, "not supported"),
    (dict(mode=VectorStoreQueryMode.SEMANTIC_HYBRID), {}, ValueError, "not supported"),
    (dict(query_embedding=None), {}, ValueError, "needs query.query_embedding"),
    (dict(mode="text_search"), {}, ValueError, "needs query.query_str"),
    (dict(mode="hybrid"), {}, ValueError, "needs query.query_str"),
    (dict(similarity_top_k=0), {}, ValueError, "similarity_top_k"),
    (dict(output_fields=["text"]), {}, ValueError, "output_fields"),
    (dict(embedding_field="vec"), {}, ValueError, "embedding_field"),
    (dict(alpha=0.3), {}, ValueError, "alpha applies to mode HYBRID"),
    (dict(hybrid_top_k=3), {}, ValueError, "hybrid_top_k applies"),
    (dict(mmr_threshold=0.3), {}, ValueError, "mmr_threshold applies to mode MMR"),
    ({}, dict(mmr_prefetch_k=10), ValueError, "mmr_prefetch_k applies"),
    ({}, dict(fetch_k=10), TypeError, "unknown query options"),
    (dict(mode="mmr"), dict(mmr_prefetch_factor=0.5), ValueError, "mmr_prefetch_factor"),
    (dict(mode="mmr"), dict(mmr_prefetch_factor=2, mmr_prefetch_k=9), ValueError, "not both"),
    (dict(mode="hybrid", query_str="x", alpha=1.5), {}, ValueError, "alpha"),
    (dict(query_embedding=[1.0, 2.0]), {}, ValueError, "dimension"),
])
def test_unsupported_or_malformed_queries_raise(store, fields, kwargs, error, message):
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=3)
    for name, value in fields.items():
        setattr(query, name, value)
    with pytest.raises(error, match=message):
        run(store, query, **kwargs)


def test_filters_that_cannot_be_translated_raise(store):
    bad = MetadataFilters(filters=[MetadataFilter(key="n", value=[1, 2], operator=FilterOperator.EQ)])
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=3, filters=bad)
    with pytest.raises(ValueError, match="key 'n'"):
        run(store, query)
    with pytest.raises(ValueError):
        store.get_nodes(filters=bad)
    with pytest.raises(ValueError):
        store.delete_nodes(filters=bad)
    assert len(store.client) == N


# ---------------------------------------------------------------------- get / delete / clear


def test_deeply_nested_filters_are_clear_errors(store):
    filters = MetadataFilters(filters=[MetadataFilter(key="cat", value="news")])
    for _ in range(1000):
        filters = MetadataFilters(filters=[filters])
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=3,
                             filters=filters)
    with pytest.raises(ValueError, match="more than 32 levels"):
        run(store, query)
    with pytest.raises(ValueError, match="more than 32 levels"):
        store.delete_nodes(filters=filters)
    assert len(store.client) == N


def test_get_nodes_by_ids_and_filters(store):
    ids = ["node-5", "node-missing", "node-2", "node-5"]
    assert [n.node_id for n in store.get_nodes(ids)] == ["node-5", "node-2"]
    filters = MetadataFilters(filters=[MetadataFilter(key="n", value=3, operator=FilterOperator.LTE),
                                       MetadataFilter(key="cat", value="blog")])
    expected = [n.node_id for n in NODES if n.metadata["n"] <= 3 and n.metadata.get("cat") == "blog"]
    assert [n.node_id for n in store.get_nodes(filters=filters)] == expected
    subset = [f"node-{i}" for i in range(30)]
    assert [n.node_id for n in store.get_nodes(subset, filters)] == [i for i in expected if i in subset]
    assert [n.node_id for n in store.get_nodes()] == [n.node_id for n in NODES]
    with pytest.raises(TypeError, match="node_ids"):
        store.get_nodes("node-1")


def test_delete_by_ref_doc_id(store, simple):
    store.delete("doc-3")
    store.delete("doc-unknown")
    remaining = [n.node_id for n in NODES if n.ref_doc_id != "doc-3"]
    assert [n.node_id for n in store.get_nodes()] == remaining
    query = VectorStoreQuery(query_embedding=NODES[19].embedding, similarity_top_k=4)
    assert "node-19" not in run(store, query).ids
    with pytest.raises(TypeError, match="ref_doc_id"):
        store.delete(3)
    with pytest.raises(TypeError, match="takes no options"):
        store.delete("doc-1", cascade=True)


@pytest.mark.parametrize("node_ids, filters", [
    (["node-1", "node-2", "node-40", "ghost"], None),
    (None, MetadataFilters(filters=[MetadataFilter(key="n", value=4, operator=FilterOperator.GT)])),
    ([f"node-{i}" for i in range(20)], MetadataFilters(filters=[MetadataFilter(key="cat", value="news")])),
])
def test_delete_nodes_matches_simple_vector_store(store, node_ids, filters):
    reference = SimpleVectorStore()
    reference.add(NODES)
    reference.delete_nodes(node_ids, filters)
    store.delete_nodes(node_ids, filters)
    assert [n.node_id for n in store.get_nodes()] == list(reference.data.embedding_dict)


def test_delete_nodes_without_a_selection_is_refused(store):
    with pytest.raises(ValueError, match="clear()"):
        store.delete_nodes()
    with pytest.raises(ValueError, match="clear()"):
        store.delete_nodes(filters=MetadataFilters(filters=[]))
    assert len(store.client) == N
    store.delete_nodes([])
    assert len(store.client) == N


def test_clear(store):
    store.clear()
    assert len(store.client) == 0 and store.get_nodes() == []
    assert run(store, VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=3)).ids == []
    store.add(NODES[:3])
    assert len(store.client) == 3


# ---------------------------------------------------------------------- async


def test_async_methods_equal_the_sync_ones():
    async def scenario():
        store = VecpressVectorStore(bits=32)
        assert await store.async_add(NODES) == [n.node_id for n in NODES]
        queries = [VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5) for q in QUERIES]
        results = await asyncio.gather(*(store.aquery(q) for q in queries))
        assert [r.ids for r in results] == [store.query(q).ids for q in queries]
        mmr = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=4, mode="mmr")
        assert (await store.aquery(mmr, mmr_threshold=0.2)).ids == store.query(mmr, mmr_threshold=0.2).ids
        got = await store.aget_nodes(["node-3", "node-4"])
        assert [n.node_id for n in got] == ["node-3", "node-4"]
        await store.adelete("doc-0")
        assert store.get_nodes([f"node-{i}" for i in range(6)]) == []
        await store.adelete_nodes(["node-6"])
        filters = MetadataFilters(filters=[MetadataFilter(key="cat", value="news")])
        await store.adelete_nodes(filters=filters)
        assert len(store.client) == N - 6 - 1 - sum(
            1 for n in NODES[7:] if n.metadata.get("cat") == "news")
        with pytest.raises(ValueError, match="needs query.query_str"):
            await store.aquery(VectorStoreQuery(mode="text_search"))
        await store.aclear()
        assert len(store.client) == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------------- persistence


def test_a_store_with_a_path_is_durable_and_persist_writes_a_pointer(tmp_path):
    store = VecpressVectorStore(path=tmp_path / "store", bits=32)
    store.add(NODES)
    store.delete("doc-1")
    pointer = tmp_path / "storage" / "default__vector_store.json"
    store.persist(str(pointer))
    record = json.loads(pointer.read_text())
    assert record["format"] == "vecpress-llama-index-store"
    # a store outside the persist directory is copied into it: the pointer names a plain
    # directory beside itself, never a path elsewhere
    assert record["path"] == "default__vector_store.vecpress"
    assert (tmp_path / "storage" / record["path"] / "docs.sqlite").is_file()
    query = VectorStoreQuery(query_embedding=QUERIES[1].tolist(), similarity_top_k=6)
    expected = run(store, query)
    store.close()

    for reopen in (lambda: VecpressVectorStore.from_persist_dir(str(tmp_path / "storage")),
                   lambda: VecpressVectorStore(path=tmp_path / "store")):
        reopened = reopen()
        assert len(reopened.client) == N - 6
        again = run(reopened, query)
        assert again.ids == expected.ids and again.similarities == expected.similarities
        assert [n.text for n in again.nodes] == [n.text for n in expected.nodes]
        reopened.close()


def test_persisting_an_in_memory_store_writes_a_copy_and_replaces_it(tmp_path):
    store = VecpressVectorStore(bits=32)
    store.add(NODES[:40])
    storage = tmp_path / "storage"
    store.persist(str(storage / "default__vector_store.json"))
    assert (storage / "default__vector_store.vecpress").is_dir()
    store.add(NODES[40:])
    store.delete("doc-0")
    store.persist(str(storage / "default__vector_store.json"))
    assert sorted(p.name for p in storage.iterdir()) == ["default__vector_store.json",
                                                         "default__vector_store.vecpress"]
    assert store.client.path is None  # the store itself stays in memory

    reopened = VecpressVectorStore.from_persist_dir(str(storage), read_only=True)
    assert [n.node_id for n in reopened.get_nodes()] == [n.node_id for n in NODES[6:]]
    for query_vector in QUERIES:
        query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=5)
        assert run(reopened, query).ids == run(store, query).ids
    with pytest.raises(PermissionError):
        reopened.add(NODES[:1])
    reopened.close()


@pytest.mark.parametrize("options", [dict(bits=4), dict(bits=2, rerank=False)])
def test_a_persisted_copy_answers_exactly_as_the_original(tmp_path, options):
    store = VecpressVectorStore(**options)  # quantized: a re-encoded copy would score differently
    store.add(NODES)
    store.persist(str(tmp_path / "default__vector_store.json"))
    reopened = VecpressVectorStore.from_persist_dir(str(tmp_path))
    assert reopened.client.stats()["rerank"] == store.client.stats()["rerank"]
    for query_vector in QUERIES:
        query = VectorStoreQuery(query_embedding=query_vector.tolist(), similarity_top_k=8)
        expected, got = run(store, query), run(reopened, query)
        assert got.ids == expected.ids and got.similarities == expected.similarities
    reopened.close()


def test_an_empty_in_memory_store_persists_and_reopens(tmp_path):
    VecpressVectorStore().persist(str(tmp_path / "default__vector_store.json"))
    reopened = VecpressVectorStore.from_persist_path(str(tmp_path / "default__vector_store.json"))
    assert reopened.client is None
    reopened.add(NODES[:2])
    assert reopened.client.path is not None and len(reopened.client) == 2


def test_from_persist_path_refuses_other_files(tmp_path):
    SimpleVectorStore().persist(str(tmp_path / "default__vector_store.json"))
    with pytest.raises(ValueError, match="SimpleVectorStore"):
        VecpressVectorStore.from_persist_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        VecpressVectorStore.from_persist_dir(str(tmp_path / "missing"))
    (tmp_path / "broken.json").write_text(json.dumps({"format": "vecpress-llama-index-store",
                                                      "format_version": 1, "path": "gone"}))
    with pytest.raises(FileNotFoundError, match="moved or deleted"):
        VecpressVectorStore.from_persist_path(str(tmp_path / "broken.json"))
    (tmp_path / "future.json").write_text(json.dumps({"format": "vecpress-llama-index-store",
                                                      "format_version": 99, "path": "x"}))
    with pytest.raises(ValueError, match="upgrade vecpress"):
        VecpressVectorStore.from_persist_path(str(tmp_path / "future.json"))


def _pointer(path, name):
    path.write_text(json.dumps({"format": "vecpress-llama-index-store", "format_version": 1,
                                "path": name}))


@pytest.mark.parametrize("name", ["../elsewhere", "../../elsewhere", "a/b", "..", ".", "",
                                  "a\\b", 7, None])
def test_a_pointer_may_only_name_a_directory_beside_it(tmp_path, name):
    persist_dir = tmp_path / "deep" / "storage"
    persist_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()  # an empty directory would open as a new store
    _pointer(persist_dir / "default__vector_store.json", name)
    with pytest.raises(StoreCorruptedError, match="default__vector_store.json.*plain name"):
        VecpressVectorStore.from_persist_dir(str(persist_dir))
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_pointer_may_not_name_an_absolute_path(tmp_path):
    store = VecpressVectorStore(path=tmp_path / "outside", bits=32)
    store.add(NODES[:3])
    store.close()
    persist_dir = tmp_path / "storage"
    persist_dir.mkdir()
    _pointer(persist_dir / "default__vector_store.json", str(tmp_path / "outside"))
    with pytest.raises(StoreCorruptedError, match="plain name"):
        VecpressVectorStore.from_persist_dir(str(persist_dir))


def test_a_pointer_may_not_name_a_symbolic_link(tmp_path):
    store = VecpressVectorStore(path=tmp_path / "outside", bits=32)
    store.add(NODES[:3])
    store.close()
    persist_dir = tmp_path / "storage"
    persist_dir.mkdir()
    (persist_dir / "linked").symlink_to(tmp_path / "outside")
    _pointer(persist_dir / "default__vector_store.json", "linked")
    with pytest.raises(StoreCorruptedError, match="symbolic link"):
        VecpressVectorStore.from_persist_dir(str(persist_dir))


def test_a_pointer_file_is_read_only_if_it_is_a_small_regular_file(tmp_path):
    import os

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pointer(elsewhere / "real.json", "x")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "default__vector_store.json").symlink_to(elsewhere / "real.json")
    with pytest.raises(StoreCorruptedError, match="symbolic link"):
        VecpressVectorStore.from_persist_dir(str(linked))
    dir_link = tmp_path / "dir_link"
    dir_link.mkdir()
    (dir_link / "default__vector_store.json").symlink_to(elsewhere)
    with pytest.raises(StoreCorruptedError, match="symbolic link"):
        VecpressVectorStore.from_persist_dir(str(dir_link))
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "default__vector_store.json")  # opening must not block on it
    with pytest.raises(StoreCorruptedError, match="not a regular file"):
        VecpressVectorStore.from_persist_dir(str(fifo))
    big = tmp_path / "big"
    big.mkdir()
    (big / "default__vector_store.json").write_text(" " * (1 << 20) + "{}")
    with pytest.raises(StoreCorruptedError, match="larger than"):
        VecpressVectorStore.from_persist_dir(str(big))
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "default__vector_store.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="not a vecpress store pointer"):
        VecpressVectorStore.from_persist_dir(str(deep))


def test_a_store_created_inside_the_persist_directory_is_not_copied(tmp_path):
    storage = tmp_path / "storage"
    store = VecpressVectorStore(path=storage / "vectors", bits=32)
    store.add(NODES[:10])
    store.persist(str(storage / "default__vector_store.json"))
    assert json.loads((storage / "default__vector_store.json").read_text())["path"] == "vectors"
    assert sorted(p.name for p in storage.iterdir()) == ["default__vector_store.json", "vectors"]
    store.close()
    reopened = VecpressVectorStore.from_persist_dir(str(storage), read_only=True)
    assert reopened.client.path.resolve() == (storage / "vectors").resolve()
    assert len(reopened.client) == 10
    reopened.close()


def test_a_persisted_store_directory_with_linked_files_is_refused(tmp_path):
    store = VecpressVectorStore(path=tmp_path / "real", bits=32)
    store.add(NODES[:3])
    store.close()
    storage = tmp_path / "storage"
    (storage / "vectors").mkdir(parents=True)
    (storage / "vectors" / "docs.sqlite").symlink_to(tmp_path / "real" / "docs.sqlite")
    (storage / "vectors" / "index").symlink_to(tmp_path / "real" / "index")
    _pointer(storage / "default__vector_store.json", "vectors")
    with pytest.raises(StoreCorruptedError, match="docs.sqlite: is a symbolic link"):
        VecpressVectorStore.from_persist_dir(str(storage))


def test_persist_refuses_remote_filesystems(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    with pytest.raises(ValueError, match="local directory"):
        VecpressVectorStore().persist("/x/default__vector_store.json", fs=memory)
    VecpressVectorStore().persist(str(tmp_path / "v.json"), fs=fsspec.filesystem("file"))


def test_config_round_trips_through_to_dict(tmp_path):
    store = VecpressVectorStore(path=tmp_path / "s", bits=8, hybrid_fusion="weighted", oversample=5)
    store.add(NODES[:10])
    config = store.to_dict()
    assert config["bits"] == 8 and config["index_options"] == {"oversample": 5}
    as_json = store.to_json()
    store.close()
    for reopen in (lambda: VecpressVectorStore.from_dict(config),
                   lambda: VecpressVectorStore.from_json(as_json)):
        reopened = reopen()
        assert len(reopened.client) == 10 and reopened.hybrid_fusion == "weighted"
        reopened.close()


def test_parallel_first_adds_make_one_store():
    async def scenario():
        store = VecpressVectorStore(bits=32)
        await asyncio.gather(*(store.async_add(NODES[i::4]) for i in range(4)))
        return store

    store = asyncio.run(scenario())
    assert len(store.client) == N


@pytest.mark.parametrize("reranker", ["embed", "exact"])
def test_reranker_option_rescores_exactly(reranker):
    """A 1-bit store with a second-stage reranker returns exact cosine scores, best first."""
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    texts = [f"text {i}" for i in range(200)]

    class LookupEmbedding(MockEmbedding):  # re-embedding a text gives back its stored vector
        def _get_text_embedding(self, text):
            return vectors[int(text.split()[1])].tolist()

    store = VecpressVectorStore(dim=16, bits=1, rerank=reranker == "exact", reranker=reranker,
                                embed_model=LookupEmbedding(embed_dim=16), oversample=40)
    store.add([TextNode(id_=str(i), text=texts[i], embedding=vectors[i].tolist())
               for i in range(200)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = rng.standard_normal(16).astype(np.float32)
    exact = unit @ (query / np.linalg.norm(query))
    result = store.query(VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=5,
                                          query_str="a question"))
    found = [int(i) for i in result.ids]
    np.testing.assert_allclose(result.similarities, exact[found], atol=2e-3)
    assert result.similarities == sorted(result.similarities, reverse=True)
    assert found[0] == int(np.argmax(exact))


def test_embed_reranker_needs_the_embed_model():
    with pytest.raises(ValueError, match="embed_model"):
        VecpressVectorStore(dim=8, reranker="embed")


def test_nprobe_reaches_a_partitioned_index_and_is_checked():
    """``nprobe`` in the query kwargs reaches the Collection's search: probing every list of
    a partitioned store is exact, and a bad value is refused naming it."""
    store = VecpressVectorStore(partitions=4)
    store.add([node.model_copy() for node in NODES])
    assert store.client._index.stats()["lists"] == 4
    query = VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=5)
    found = run(store, query, nprobe=4, oversample=1000).ids
    assert found == brute_force(QUERIES[0], 5, lambda node: True)
    with pytest.raises(ValueError, match="nprobe"):
        run(store, query, nprobe=0)
    text = VectorStoreQuery(query_str="apple", similarity_top_k=5, mode=VectorStoreQueryMode.TEXT_SEARCH)
    with pytest.raises(ValueError, match="nprobe applies to mode"):
        run(store, text, nprobe=4)


# ---------------------------------------------------------------------- calibrated relevance


def test_relevance_scores_option_puts_the_calibrated_relevance_on_the_nodes():
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore

    store = VecpressVectorStore(bits=32, relevance_scores=True)
    store.add([node.model_copy() for node in NODES])
    for query in QUERIES:
        result = run(store, VectorStoreQuery(query_embedding=query.tolist(),
                                             similarity_top_k=10))
        hits = store.client.search(query, 10, relevance=True)
        assert result.ids == [h.id for h in hits] == brute_force(query, 10, lambda n: True)
        assert result.similarities == pytest.approx([h.relevance for h in hits])
        assert all(0 <= s <= 1 for s in result.similarities)
        for node, hit in zip(result.nodes, hits):
            assert node.metadata["vecpress_score"] == pytest.approx(hit.score)
            assert "vecpress_score" not in node.get_content(metadata_mode=MetadataMode.LLM)
        cut = (result.similarities[3] + result.similarities[4]) / 2
        scored = [NodeWithScore(node=n, score=s) for n, s in zip(result.nodes,
                                                                 result.similarities)]
        kept = SimilarityPostprocessor(similarity_cutoff=cut).postprocess_nodes(scored)
        assert [n.node.node_id for n in kept] == result.ids[:4]
        inside = run(store, VectorStoreQuery(query_embedding=query.tolist(),
                                             similarity_top_k=10), min_relevance=cut)
        assert inside.ids == result.ids[:4]
    # other modes keep their own scores; min_relevance belongs to DEFAULT
    text = run(store, VectorStoreQuery(query_str="apple", similarity_top_k=3,
                                       mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert all(s is not None and "vecpress_score" not in n.metadata
               for n, s in zip(text.nodes, text.similarities))
    with pytest.raises(ValueError, match="min_relevance applies to mode DENSE"):
        run(store, VectorStoreQuery(query_str="apple", similarity_top_k=3,
                                    mode=VectorStoreQueryMode.TEXT_SEARCH), min_relevance=0.2)
    assert VecpressVectorStore.from_dict(store.to_dict()).relevance_scores is True


def test_without_the_option_scores_stay_cosine(store):
    result = run(store, VectorStoreQuery(query_embedding=QUERIES[0].tolist(),
                                         similarity_top_k=5))
    assert result.similarities == pytest.approx(np.sort(cosine(QUERIES[0]))[::-1][:5],
                                                abs=1e-5)
    assert all("vecpress_score" not in n.metadata for n in result.nodes)
    with pytest.raises(ValueError, match="min_relevance must be a number in"):
        run(store, VectorStoreQuery(query_embedding=QUERIES[0].tolist(), similarity_top_k=5),
            min_relevance=2)
