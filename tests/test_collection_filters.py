"""Metadata filters: both dialects against the plain-Python reference, errors, SQL safety."""

from __future__ import annotations

import functools
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecpress import Collection
from vecpress.core import filters

from collection_model import (holds, langchain_filters, llama_filters, random_metadata,
                              to_langchain, to_llama)

N_DOCS = 400


@functools.lru_cache(maxsize=None)
def corpus() -> tuple[Collection, tuple[dict, ...]]:
    rng = np.random.default_rng(7)
    metadatas = tuple(random_metadata(rng) for _ in range(N_DOCS))
    col = Collection(4, bits=32, metric="ip")
    col.upsert([f"d{i}" for i in range(N_DOCS)], rng.standard_normal((N_DOCS, 4)),
               texts=[f"text {i}" for i in range(N_DOCS)], metadatas=list(metadatas))
    return col, metadatas


def expected_ids(node: tuple, metadatas) -> set[str]:
    return {f"d{i}" for i, m in enumerate(metadatas) if holds(m, node)}


def test_metadata_round_trips_exactly():
    col, metadatas = corpus()
    got = col.get([f"d{i}" for i in range(N_DOCS)])
    assert [h.metadata for h in got] == list(metadatas)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=langchain_filters, style=st.integers(0, 5))
def test_langchain_dicts_match_reference(node, style):
    col, metadatas = corpus()
    where = to_langchain(node, style)
    assert {h.id for h in col.get(where=where)} == expected_ids(node, metadatas), where


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=llama_filters)
def test_llama_index_filters_match_reference(node):
    col, metadatas = corpus()
    where = to_llama(node)
    assert {h.id for h in col.get(where=where)} == expected_ids(node, metadatas), where


def test_reference_agrees_with_llama_index_own_filter_function():
    """On flat filters over keys of one type each, our semantics equal LlamaIndex's evaluator."""
    from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator,
                                                      MetadataFilter, MetadataFilters)
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn

    rng = np.random.default_rng(3)
    docs = []
    for _ in range(200):
        meta = {}
        if rng.random() < 0.8:
            meta["s"] = ["apple", "Banana", "", "cherry pie"][rng.integers(4)]
        if rng.random() < 0.8:
            meta["n"] = int(rng.integers(0, 5))
        if rng.random() < 0.8:
            meta["tags"] = [["x", "y", "z"][i] for i in rng.integers(0, 3, rng.integers(0, 3))]
        if rng.random() < 0.1:
            meta["s"] = None
        docs.append(meta)
    col = Collection(2, bits=32)
    col.upsert([str(i) for i in range(len(docs))], rng.standard_normal((len(docs), 2)),
               metadatas=docs)
    F, O = MetadataFilter, FilterOperator
    cases = [F(key="s", value="apple"), F(key="s", value="apple", operator=O.NE),
             F(key="n", value=2, operator=O.GT), F(key="n", value=2, operator=O.LTE),
             F(key="s", value="b", operator=O.GTE), F(key="n", value=[1, 3], operator=O.IN),
             F(key="s", value=["apple", ""], operator=O.NIN),
             F(key="tags", value="x", operator=O.CONTAINS),
             F(key="s", value="pie", operator=O.CONTAINS),
             F(key="tags", value=["x", "z"], operator=O.ANY),
             F(key="tags", value=["x", "y"], operator=O.ALL),
             F(key="s", value="an", operator=O.TEXT_MATCH),
             F(key="s", value="BAN", operator=O.TEXT_MATCH_INSENSITIVE),
             F(key="s", value=None, operator=O.IS_EMPTY),
             F(key="tags", value=None, operator=O.IS_EMPTY)]
    for condition in (FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT):
        for i in range(len(cases)):
            group = [cases[i], cases[(i * 7 + 3) % len(cases)]]
            flt = MetadataFilters(filters=group, condition=condition)
            keep = build_metadata_filter_fn(lambda j: docs[int(j)], flt)
            expected = {str(j) for j in range(len(docs)) if keep(str(j))}
            assert {h.id for h in col.get(where=flt)} == expected, flt


def test_dict_spellings():
    col = Collection(2, bits=32)
    col.upsert(["a", "b", "c", "d"], np.eye(2)[[0, 1, 0, 1]],
               metadatas=[{"year": 2019, "tags": ["x"], "ok": True},
                          {"year": 2021, "tags": ["y"], "ok": False},
                          {"year": 2023.0, "tags": [], "ok": 1},
                          {"genre": "sf"}])

    def ids(where):
        return sorted(h.id for h in col.get(where=where))

    assert ids({"year": {"$gte": 2020, "$lt": 2023}}) == ["b"]
    assert ids({"year": 2023}) == ["c"]  # 2023 == 2023.0
    assert ids({"ok": True}) == ["a"]  # a boolean is not the number 1
    assert ids({"ok": 1}) == ["c"]
    assert ids({"year": {"$ne": 2019}}) == ["b", "c", "d"]  # a missing key is "not equal"
    assert ids({"year": {"$nin": [2019, 2021]}}) == ["c", "d"]
    assert ids({"genre": {"$exists": True}}) == ["d"]
    assert ids({"$not": {"genre": {"$exists": True}}}) == ["a", "b", "c"]
    assert ids({"year": {"$not": {"$gt": 2020}}}) == ["a", "d"]
    assert ids({"tags": {"$contains": "y"}}) == ["b"]
    assert ids({"$or": [{"year": 2019}, {"genre": "sf"}]}) == ["a", "d"]
    assert ids({"$and": [{"year": {"$gt": 2000}}, {"ok": False}]}) == ["b"]
    assert ids({"year": {"$in": []}}) == []
    assert col.count({}) == 4  # an empty dict is no filter
    assert col.count(where={"year": {"$lt": 2022}}) == 2


@pytest.mark.parametrize("where, message", [
    ({"a": {"$regex": "x"}}, "unknown operator '\\$regex'"),
    ({"$foo": 1}, "unknown operator '\\$foo'"),
    ({"$and": {"a": 1}}, "\\$and takes a non-empty list"),
    ({"$or": []}, "\\$or takes a non-empty list"),
    ({"a": [1, 2]}, "\\$in"),
    ({"a": None}, "None"),
    ({"a": {"$in": 3}}, "list of values"),
    ({"a": {"$in": "abc"}}, "list of values"),
    ({"a": {"$gt": True}}, "booleans have no order"),
    ({"a": {"$gt": [1]}}, "string, number or boolean"),
    ({"a": {"$exists": "yes"}}, "True or False"),
    ({"a": {}}, "empty dict"),
    ({"a": {"b": 1}}, "unknown operator 'b'"),
    ({"a": {"$eq": float("nan")}}, "not finite"),
    ({"$and": [{}]}, "empty filter dict"),
    ({"$not": {"a": {"$bogus": 1}}}, "bogus"),
    ({1: 2}, "keys must be strings"),
])
def test_malformed_dict_filters_raise(where, message):
    col = Collection(2, bits=32)
    col.upsert(["a"], [[1.0, 0.0]], metadatas=[{"a": 1}])
    with pytest.raises(ValueError, match=message):
        col.search([1.0, 0.0], k=1, where=where)
    with pytest.raises(ValueError, match=message):
        col.delete(where=where)
    assert len(col) == 1  # nothing deleted by a bad filter


def test_malformed_llama_filters_raise():
    from llama_index.core.vector_stores.types import (FilterOperator, MetadataFilter,
                                                      MetadataFilters)

    class FakeFilter:  # duck-typed like a MetadataFilter with an operator we do not know
        key, value, operator = "a", 1, "~="

    class FakeFilters:
        filters = [MetadataFilter(key="a", value=1)]
        condition = "xor"

    class FakeGroup:
        filters = [FakeFilter()]
        condition = "and"

    col = Collection(2, bits=32)
    col.upsert(["a"], [[1.0, 0.0]], metadatas=[{"a": 1}])
    for bad, message in [(FakeGroup(), "unknown FilterOperator"),
                         (FakeFilters(), "unknown FilterCondition"),
                         (MetadataFilters(filters=[MetadataFilter(key="a", value=1,
                                                                  operator=FilterOperator.IN)]),
                          "list of values"),
                         (MetadataFilters(filters=[MetadataFilter(
                             key="a", value=[], operator=FilterOperator.ANY)]), "non-empty"),
                         (MetadataFilters(filters=[MetadataFilter(
                             key="a", value=2, operator=FilterOperator.TEXT_MATCH)]), "string")]:
        with pytest.raises(ValueError, match=message):
            col.search([1.0, 0.0], k=1, where=bad)
    with pytest.raises(TypeError, match="where must be"):
        col.search([1.0, 0.0], k=1, where="a = 1")
    # an empty MetadataFilters constrains nothing, as in LlamaIndex
    assert len(col.search([1.0, 0.0], k=1, where=MetadataFilters(filters=[]))) == 1


def test_sql_looking_keys_values_and_ids_are_data():
    evil = "'); DROP TABLE docs; --"
    col = Collection(2, bits=32)
    col.upsert([evil, 'x" OR 1=1 --'], [[1.0, 0.0], [0.0, 1.0]], texts=[evil, "plain"],
               metadatas=[{evil: evil, "k": 'a"b'}, {"k": "other", 'we"ird': 1}])
    assert [h.id for h in col.get(where={evil: evil})] == [evil]
    assert [h.id for h in col.get(where={evil: {"$ne": evil}})] == ['x" OR 1=1 --']
    assert [h.id for h in col.get(where={"k": 'a"b'})] == [evil]
    assert [h.id for h in col.get(where={'we"ird': {"$gte": 1}})] == ['x" OR 1=1 --']
    assert [h.id for h in col.search(None, mode="text", query_text="DROP TABLE\" OR *")] == [evil]
    assert col.get([evil])[0].metadata == {evil: evil, "k": 'a"b'}
    assert col.delete(ids=['x" OR 1=1 --']) == 1
    assert len(col) == 1


@settings(max_examples=60, deadline=None)
@given(key=st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=8),
       value=st.one_of(st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=8),
                                                           st.integers(-10**18, 10**18),
                                                           st.floats(allow_nan=False,
                                                                     allow_infinity=False)))
def test_any_key_and_value_can_be_filtered(key, value):
    col = Collection(2, bits=32)
    col.upsert(["hit", "miss"], [[1.0, 0.0], [0.0, 1.0]],
               metadatas=[{key: value}, {}])
    assert [h.id for h in col.get(where=filters.Field(key, "eq", value))] == ["hit"]
    assert [h.id for h in col.get(where=filters.Field(key, "exists", False))] == ["miss"]
    assert col.get(["hit"])[0].metadata == {key: value}


def test_sql_is_parameterised():
    node = filters.parse({"$or": [{"'; DROP TABLE x": {"$in": ["'", '"', "\\", 3, True]}},
                                  {"k": {"$contains": "%_"}},
                                  {"$not": {"z": {"$gt": "') OR 1=1"}}}]})
    leaves = []

    def walk(n):
        if isinstance(n, filters.Field):
            leaves.append(n)
        elif isinstance(n, filters.Not):
            walk(n.child)
        else:
            for c in n.children:
                walk(c)

    walk(node)
    assert len(leaves) == 3
    for leaf in leaves:
        sql, params = filters.condition_sql(leaf)
        assert "DROP" not in sql and "%_" not in sql and "OR 1=1" not in sql
        assert sql.count("?") == len(params)
        assert sqlite3.complete_statement(sql + ";")
        assert leaf.key in params


def test_nul_characters_in_metadata_are_rejected():
    col = Collection(2, bits=32)
    with pytest.raises(ValueError, match=r"metadatas\[0\]\['k'\] contains a NUL"):
        col.upsert(["a"], [[1.0, 0.0]], metadatas=[{"k": "x\x00y"}])
    with pytest.raises(ValueError, match="key 'k\\\\x00z' contains a NUL"):
        col.upsert(["a"], [[1.0, 0.0]], metadatas=[{"k\x00z": 1}])
    with pytest.raises(ValueError, match=r"\['k'\] is not valid Unicode"):
        col.upsert(["a"], [[1.0, 0.0]], metadatas=[{"k": "\ud800"}])
    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode"):
        col.upsert(["a"], [[1.0, 0.0]], texts=["\ud800"])
    assert len(col) == 0
