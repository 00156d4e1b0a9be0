"""Plain-Python reference for Collection tests: filter semantics, random metadata and filters,
brute-force search, BM25 as FTS5 computes it, and MMR.

Filters are generated as small tuples (``("eq", key, value)``, ``("and", [...])``, ...), evaluated
here directly on metadata dicts, and rendered into each dialect (LangChain dict, LlamaIndex
``MetadataFilters``) for the collection. Nothing here uses vecpress.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from hypothesis import strategies as st

MISSING = object()

#: metadata keys, including ones that look like SQL or JSON-path syntax
KEYS = ["cat", "n", "x", "flag", "tags", "title", "a.b", 'q"k', "'); DROP TABLE docs;--", "é $[0]"]
STRINGS = ["a", "b", "c", "", "A", "'; DELETE FROM docs; --", "hello World", "ÉCOLE été"]
LIST_ITEMS = ["a", "b", "c", 1, 2, 2.5, True]
TEXT_PROBES = ["ell", "WOR", "é", "o w", "a", "", "ÉT", "'"]


# ---------------------------------------------------------------------- semantics


def kind(value: Any) -> str:
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def typed_eq(field: Any, value: Any) -> bool:
    return kind(field) == kind(value) and kind(field) in ("bool", "number", "string") \
        and field == value


def ordered(field: Any, op: str, value: Any) -> bool:
    if kind(field) != kind(value) or kind(field) not in ("number", "string"):
        return False
    return {"gt": field > value, "gte": field >= value, "lt": field < value,
            "lte": field <= value}[op]


def contains(field: Any, value: Any) -> bool:
    if kind(field) == "list":
        return any(typed_eq(item, value) for item in field)
    return kind(field) == "string" and isinstance(value, str) and value in field


def holds(metadata: dict, node: tuple) -> bool:
    """Does ``metadata`` satisfy the abstract filter ``node``?"""
    op = node[0]
    if op == "and":
        return all(holds(metadata, c) for c in node[1])
    if op == "or":
        return any(holds(metadata, c) for c in node[1])
    if op == "nor":
        return not any(holds(metadata, c) for c in node[1])
    if op == "not":
        return not holds(metadata, node[1])
    key, value = node[1], node[2]
    field = metadata.get(key, MISSING)
    if op == "eq":
        return typed_eq(field, value)
    if op == "ne":
        return not typed_eq(field, value)
    if op in ("gt", "gte", "lt", "lte"):
        return ordered(field, op, value)
    if op == "in":
        return any(typed_eq(field, v) for v in value)
    if op == "nin":
        return not any(typed_eq(field, v) for v in value)
    if op == "exists":
        return (key in metadata) == value
    if op == "contains":
        return contains(field, value)
    if op == "any":
        return any(contains(field, v) for v in value)
    if op == "all":
        return all(contains(field, v) for v in value)
    if op == "text_match":
        return isinstance(field, str) and value in field
    if op == "text_match_insensitive":
        return isinstance(field, str) and value.lower() in field.lower()
    if op == "is_empty":
        return field is MISSING or field is None or field == "" or field == []
    raise AssertionError(op)


# ---------------------------------------------------------------------- random data


def random_metadata(rng: np.random.Generator) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key in KEYS:
        if rng.random() < 0.3:
            continue
        choice = rng.integers(0, 9)
        if choice == 0:
            value: Any = STRINGS[rng.integers(len(STRINGS))]
        elif choice == 1:
            value = int(rng.integers(-3, 4))
        elif choice == 2:
            value = float(rng.integers(-12, 13)) / 4
        elif choice == 3:
            value = bool(rng.integers(2))
        elif choice == 4:
            value = None
        elif choice == 5:
            value = [LIST_ITEMS[i] for i in rng.integers(0, len(LIST_ITEMS), rng.integers(0, 4))]
        elif choice == 6:
            value = {"z": int(rng.integers(3))}
        else:  # keys mostly keep one type, as real metadata does
            value = {"cat": "abc"[rng.integers(3)], "n": int(rng.integers(0, 5)),
                     "x": float(rng.integers(0, 8)) / 2, "flag": bool(rng.integers(2)),
                     "tags": ["abc"[i] for i in rng.integers(0, 3, rng.integers(0, 3))],
                     "title": STRINGS[rng.integers(len(STRINGS))]}.get(key, "b")
        metadata[key] = value
    return metadata


scalars = st.one_of(st.sampled_from(STRINGS), st.integers(-3, 3),
                    st.sampled_from([0.5, -1.25, 2.0, 1.0]), st.booleans())
numbers_or_strings = st.one_of(st.sampled_from(STRINGS), st.integers(-3, 3),
                               st.sampled_from([0.5, -1.25, 2.0]))
keys = st.sampled_from(KEYS)


def _leaf(ops: list[str], values: st.SearchStrategy, ordered_values: st.SearchStrategy,
          lists=None):
    def value_lists(min_size: int) -> st.SearchStrategy:
        if lists is not None:
            return lists(min_size)
        return st.lists(values, min_size=min_size, max_size=3)

    def build(op: str) -> st.SearchStrategy:
        if op in ("eq", "ne", "contains"):
            return st.tuples(st.just(op), keys, values)
        if op in ("gt", "gte", "lt", "lte"):
            return st.tuples(st.just(op), keys, ordered_values)
        if op in ("in", "nin"):
            return st.tuples(st.just(op), keys, value_lists(0))
        if op in ("any", "all"):
            return st.tuples(st.just(op), keys, value_lists(1))
        if op == "exists":
            return st.tuples(st.just(op), keys, st.booleans())
        if op in ("text_match", "text_match_insensitive"):
            return st.tuples(st.just(op), keys, st.sampled_from(TEXT_PROBES))
        return st.tuples(st.just(op), keys, st.none())  # is_empty
    return st.one_of([build(op) for op in ops])


def _tree(leaf: st.SearchStrategy, groups: list[str]) -> st.SearchStrategy:
    def extend(children: st.SearchStrategy) -> st.SearchStrategy:
        options = [st.tuples(st.just(g), st.lists(children, min_size=1, max_size=3))
                   for g in groups]
        options.append(st.tuples(st.just("not"), children))
        return st.one_of(options)
    return st.recursive(leaf, extend, max_leaves=5)


#: filters expressible as LangChain-style dicts
langchain_filters = _tree(_leaf(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists",
                                 "contains"], scalars, numbers_or_strings), ["and", "or"])
#: filters expressible as LlamaIndex MetadataFilters (no booleans: pydantic StrictInt)
llama_values = st.one_of(st.sampled_from(STRINGS), st.integers(-3, 3),
                         st.sampled_from([0.5, -1.25, 2.0]))
llama_filters = _tree(_leaf(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains",
                             "any", "all", "text_match", "text_match_insensitive", "is_empty"],
                            llama_values, llama_values, lists=lambda min_size: st.one_of(
                                st.lists(st.sampled_from(STRINGS), min_size=min_size, max_size=3),
                                st.lists(st.integers(-3, 3), min_size=min_size, max_size=3),
                                st.lists(st.sampled_from([0.5, 2.5]), min_size=min_size,
                                         max_size=3))),
                      ["and", "or", "nor"])


# ---------------------------------------------------------------------- rendering

_DICT_OPS = {"eq": "$eq", "ne": "$ne", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte",
             "in": "$in", "nin": "$nin", "exists": "$exists", "contains": "$contains"}


def to_langchain(node: tuple, style: int = 0) -> dict:
    """A LangChain-style dict for ``node``; ``style`` varies the equivalent spellings."""
    op = node[0]
    if op in ("and", "or"):
        children = [to_langchain(c, style + i) for i, c in enumerate(node[1])]
        if op == "and" and style % 2 == 0:
            merged: dict = {}
            for child in children:
                if set(child) & set(merged):
                    return {"$and": children}
                merged.update(child)
            return merged  # implicit AND of keys
        return {f"${op}": children}
    if op == "not":
        child = node[1]
        if child[0] in _DICT_OPS and style % 2:
            return {child[1]: {"$not": {_DICT_OPS[child[0]]: _listed(child[2])}}}
        return {"$not": to_langchain(child, style + 1)}
    key, value = node[1], node[2]
    if op == "eq" and style % 3 == 0:
        return {key: value}
    return {key: {_DICT_OPS[op]: _listed(value)}}


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_llama(node: tuple):
    """LlamaIndex ``MetadataFilters`` for ``node``."""
    from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator,
                                                      MetadataFilter, MetadataFilters)

    operators = {"eq": FilterOperator.EQ, "ne": FilterOperator.NE, "gt": FilterOperator.GT,
                 "gte": FilterOperator.GTE, "lt": FilterOperator.LT, "lte": FilterOperator.LTE,
                 "in": FilterOperator.IN, "nin": FilterOperator.NIN,
                 "contains": FilterOperator.CONTAINS, "any": FilterOperator.ANY,
                 "all": FilterOperator.ALL, "text_match": FilterOperator.TEXT_MATCH,
                 "text_match_insensitive": FilterOperator.TEXT_MATCH_INSENSITIVE,
                 "is_empty": FilterOperator.IS_EMPTY}

    def build(n: tuple):
        op = n[0]
        if op in ("and", "or", "nor"):
            condition = {"and": FilterCondition.AND, "or": FilterCondition.OR,
                         "nor": FilterCondition.NOT}[op]
            return MetadataFilters(filters=[build(c) for c in n[1]], condition=condition)
        if op == "not":
            return MetadataFilters(filters=[build(n[1])], condition=FilterCondition.NOT)
        return MetadataFilter(key=n[1], value=_listed(n[2]), operator=operators[op])

    built = build(node)
    if not hasattr(built, "filters"):
        built = MetadataFilters(filters=[built])
    return built


# ---------------------------------------------------------------------- search references


def dense_scores(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    v = vectors.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    if metric == "l2":
        return -((v - q) ** 2).sum(axis=1)
    return v @ q


_WORD = re.compile(r"\w+")


def bm25_scores(texts: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    """FTS5's ``-bm25()`` for documents matching any query word (plain lower-case words;
    the test corpus avoids words the Porter stemmer would change)."""
    docs = [_WORD.findall(t.lower()) for t in texts]
    n_docs = len(docs)
    avgdl = sum(len(d) for d in docs) / n_docs
    terms = list(dict.fromkeys(_WORD.findall(query.lower())))
    scores: dict[int, float] = {}
    for term in terms:
        having = sum(term in d for d in docs)
        idf = math.log((n_docs - having + 0.5) / (having + 0.5))
        idf = idf if idf > 0 else 1e-6
        for i, d in enumerate(docs):
            f = d.count(term)
            if f:
                part = idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
                scores[i] = scores.get(i, 0.0) + part
    return scores


def mmr_reference(query: np.ndarray, vectors: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Greedy MMR with cosine similarity, written out loop by loop."""
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    chosen: list[int] = []
    while len(chosen) < min(k, len(vectors)):
        best, best_value = None, -math.inf
        for i in range(len(vectors)):
            if i in chosen:
                continue
            redundancy = max((cos(vectors[i], vectors[j]) for j in chosen), default=0.0)
            value = lambda_mult * cos(query, vectors[i]) - (1 - lambda_mult) * redundancy
            if value > best_value:
                best, best_value = i, value
        chosen.append(best)
    return chosen
