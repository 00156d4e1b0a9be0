"""One metadata filter language, two dialects in, parameterised SQL out.

Users write LangChain-style dicts (``{"year": {"$gte": 2020}, "$or": [...]}``) or LlamaIndex
``MetadataFilters``; both become the small tree below (``Field``, ``And``, ``Or``, ``Not``),
which :func:`to_sql` compiles into a ``WHERE`` clause over ``docs.metadata`` (a JSON object).
Every key and value is a bound parameter: a key like ``"); DROP TABLE docs`` is just a key.

Semantics, the same in both dialects (the tests check them against a plain-Python model):

* Values are typed: a string equals only a string, a number only a number (``1 == 1.0``), a
  boolean only a boolean. Ordering (``gt``/``gte``/``lt``/``lte``) compares numbers with numbers
  and strings with strings (by code point); any other pairing does not match.
* A missing key (or JSON ``null``) matches no comparison, so ``ne`` and ``nin`` — defined as
  ``not eq`` and ``not in`` — match documents without the key, as in LlamaIndex and MongoDB.
* ``contains``: the field is a list holding the value, or a string holding it as a substring.
  ``any`` / ``all``: ``contains`` for any / every value of a non-empty list.
* ``text_match`` / ``text_match_insensitive``: the field is a string holding the value as a
  substring (case-insensitively: both sides ``str.lower()``-ed).
* ``exists``: the key is present (even with a ``null`` value). ``is_empty``: the key is missing,
  ``null``, ``""`` or ``[]``.
* LlamaIndex ``FilterCondition.NOT`` matches when none of its filters match.

Anything unknown or malformed raises ``ValueError`` — a filter never silently matches all.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Union

#: leaf operators of the internal tree
FIELD_OPS = frozenset({"eq", "gt", "gte", "lt", "lte", "in", "exists", "contains", "any", "all",
                       "text_match", "text_match_insensitive", "is_empty"})
ORDERING = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

#: SQLite function registered on every connection for ``text_match_insensitive`` (SQLite's own
#: ``lower()`` folds ASCII only)
LOWER_FUNCTION = "vecpress_lower"


@dataclass(frozen=True)
class Field:
    """A condition on one metadata key: ``op`` is one of :data:`FIELD_OPS`."""

    key: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class And:
    children: tuple["Filter", ...]


@dataclass(frozen=True)
class Or:
    children: tuple["Filter", ...]


@dataclass(frozen=True)
class Not:
    child: "Filter"


Filter = Union[Field, And, Or, Not]


# ---------------------------------------------------------------------- parsing


def parse(where: Any) -> Filter | None:
    """The filter tree of ``where``: ``None``, a tree, a LangChain-style dict or a LlamaIndex
    ``MetadataFilters``/``MetadataFilter``. ``None``, ``{}`` and an empty ``MetadataFilters``
    mean no filter."""
    if where is None:
        return None
    if isinstance(where, (Field, And, Or, Not)):
        return _checked(where)
    if isinstance(where, dict):
        return from_dict(where) if where else None
    if _is_llama_filters(where):
        return from_llama_index(where)
    if _is_llama_filter(where):
        return from_llama_index(where)
    raise TypeError(f"where must be a dict (LangChain style), a LlamaIndex MetadataFilters or "
                    f"None, got {type(where).__name__}")


def _checked(node: Filter) -> Filter:
    """Validate a hand-built tree (the translators build valid ones)."""
    if isinstance(node, Field):
        return _field(node.key, node.op, node.value)
    if isinstance(node, (And, Or)):
        if not node.children:
            raise ValueError(f"{type(node).__name__} needs at least one condition")
        return type(node)(tuple(_checked(c) for c in node.children))
    if isinstance(node, Not):
        return Not(_checked(node.child))
    raise TypeError(f"not a filter node: {node!r}")


# -- LangChain-style dicts ------------------------------------------------------------

_DICT_OPS = {"$eq": "eq", "$ne": "ne", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte",
             "$in": "in", "$nin": "nin", "$exists": "exists", "$contains": "contains"}
_DICT_LOGIC = ("$and", "$or", "$not")


def from_dict(where: dict) -> Filter:
    """Translate a LangChain/Chroma/Mongo-style filter dict.

    ``{"k": v}`` is equality, ``{"k": {"$op": v, ...}}`` applies operators (several are ANDed),
    keys at one level are ANDed, ``$and``/``$or`` take lists and ``$not`` a filter dict (at the
    top level) or an operator dict (under a key).
    """
    if not isinstance(where, dict):
        raise ValueError(f"a filter must be a dict, got {type(where).__name__}: {where!r}")
    if not where:
        raise ValueError("empty filter dict inside a $and/$or/$not; remove it or add conditions")
    parts: list[Filter] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{key} takes a non-empty list of filter dicts, got {value!r}")
            children = tuple(from_dict(item) for item in value)
            parts.append(And(children) if key == "$and" else Or(children))
        elif key == "$not":
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ValueError("$not takes a filter dict or a non-empty list of them")
                parts.append(Not(_all_of([from_dict(item) for item in value])))
            else:
                parts.append(Not(from_dict(value)))
        elif key.startswith("$"):
            raise ValueError(
                f"unknown operator {key!r} at the top of a filter; use $and, $or, $not, or a "
                f"metadata key mapping to a value or to {{operator: value}} "
                f"(operators: {', '.join(_DICT_OPS)})")
        else:
            parts.append(_key_condition(key, value))
    return _all_of(parts)


def _key_condition(key: str, value: Any) -> Filter:
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"filter for key {key!r} is an empty dict; give {{operator: value}}")
        parts: list[Filter] = []
        for op, operand in value.items():
            if op == "$not":
                if not isinstance(operand, dict):
                    raise ValueError(f"$not under key {key!r} takes an operator dict such as "
                                     f"{{'$gt': 3}}, got {operand!r}")
                parts.append(Not(_key_condition(key, operand)))
            elif op in _DICT_OPS:
                parts.append(_field(key, _DICT_OPS[op], operand))
            else:
                raise ValueError(
                    f"unknown operator {op!r} for key {key!r}; use one of "
                    f"{', '.join(_DICT_OPS)} or $not (nested metadata objects cannot be "
                    f"matched by value)")
        return _all_of(parts)
    return _field(key, "eq", value)


def _all_of(parts: list[Filter]) -> Filter:
    return parts[0] if len(parts) == 1 else And(tuple(parts))


# -- LlamaIndex MetadataFilters (duck-typed: nothing is imported from llama_index) ----------

_LLAMA_OPS = {"==": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte",
              "in": "in", "nin": "nin", "any": "any", "all": "all", "contains": "contains",
              "text_match": "text_match", "text_match_insensitive": "text_match_insensitive",
              "is_empty": "is_empty"}


def _is_llama_filters(obj: Any) -> bool:
    return hasattr(obj, "filters") and hasattr(obj, "condition")


def _is_llama_filter(obj: Any) -> bool:
    return hasattr(obj, "key") and hasattr(obj, "operator") and hasattr(obj, "value")


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def from_llama_index(filters: Any) -> Filter | None:
    """Translate LlamaIndex ``MetadataFilters`` (nested) or a single ``MetadataFilter``."""
    if _is_llama_filters(filters):
        items = list(filters.filters or [])
        if not items:
            return None
        children = []
        for item in items:
            child = from_llama_index(item)
            if child is None:  # an empty nested MetadataFilters constrains nothing
                continue
            children.append(child)
        condition = _enum_value(filters.condition)
        condition = "and" if condition is None else str(condition).lower()
        if not children:
            return None
        if condition == "and":
            return _all_of(children)
        if condition == "or":
            return children[0] if len(children) == 1 else Or(tuple(children))
        if condition == "not":
            return Not(children[0] if len(children) == 1 else Or(tuple(children)))
        raise ValueError(f"unknown FilterCondition {filters.condition!r}; use AND, OR or NOT")
    if _is_llama_filter(filters):
        op = _enum_value(filters.operator)
        if not isinstance(op, str) or op.lower() not in _LLAMA_OPS:
            raise ValueError(f"unknown FilterOperator {filters.operator!r} for key "
                             f"{filters.key!r}; supported: {', '.join(_LLAMA_OPS)}")
        return _field(filters.key, _LLAMA_OPS[op.lower()], filters.value)
    raise ValueError(f"not a LlamaIndex MetadataFilter/MetadataFilters: {filters!r}")


# -- one validating constructor for leaves ---------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scalar(key: str, op: str, value: Any) -> Any:
    """A str / finite number / bool operand, numpy scalars converted."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, (str, bool)):
        return value
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"filter {op} on key {key!r}: value {value!r} is not finite")
        return value
    if value is None:
        raise ValueError(f"filter {op} on key {key!r} has value None; to test for a missing "
                         f"or null value use $exists / IS_EMPTY")
    raise ValueError(f"filter {op} on key {key!r} needs a string, number or boolean, got "
                     f"{type(value).__name__} {value!r}"
                     + ("; use $in / IN to match one of several values"
                        if isinstance(value, (list, tuple)) and op == "eq" else ""))


def _field(key: Any, op: str, value: Any) -> Filter:
    if not isinstance(key, str):
        raise ValueError(f"filter keys must be strings, got {key!r}")
    if op == "ne":
        return Not(_field(key, "eq", value))
    if op == "nin":
        return Not(_field(key, "in", value))
    if op not in FIELD_OPS:
        raise ValueError(f"unknown filter operator {op!r} for key {key!r}")
    if op in ("eq", "contains"):
        return Field(key, op, _scalar(key, op, value))
    if op in ORDERING:
        value = _scalar(key, op, value)
        if isinstance(value, bool):
            raise ValueError(f"filter {op} on key {key!r}: booleans have no order; use eq")
        return Field(key, op, value)
    if op in ("in", "any", "all"):
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise ValueError(f"filter {op} on key {key!r} needs a list of values, got {value!r}")
        values = tuple(_scalar(key, op, v) for v in value)
        if op != "in" and not values:
            raise ValueError(f"filter {op} on key {key!r} needs a non-empty list of values")
        return Field(key, op, values)
    if op == "exists":
        if not isinstance(value, bool):
            raise ValueError(f"$exists on key {key!r} takes True or False, got {value!r}")
        return Field(key, op, value)
    if op in ("text_match", "text_match_insensitive"):
        if not isinstance(value, str):
            raise ValueError(f"filter {op} on key {key!r} needs a string, got {value!r}")
        return Field(key, op, value)
    # is_empty takes no operand (LlamaIndex passes value=None)
    return Field(key, op, None)


# ---------------------------------------------------------------------- SQL


def to_sql(node: Filter, column: str = "metadata") -> tuple[str, list[Any]]:
    """A boolean SQL expression (never NULL) over the JSON ``column``, and its parameters."""
    params: list[Any] = []
    sql = _compile(node, column, params)
    return sql, params


def _compile(node: Filter, column: str, params: list[Any]) -> str:
    if isinstance(node, And):
        return "(" + " AND ".join(_compile(c, column, params) for c in node.children) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(_compile(c, column, params) for c in node.children) + ")"
    if isinstance(node, Not):
        return "(NOT " + _compile(node.child, column, params) + ")"
    return "IFNULL(" + _leaf(node, column, params) + ", 0)"


class _Accessors:
    """SQL for the type and value of one key, adding parameters as used.

    A key goes into a JSON path as ``$."key"``. SQLite compares a quoted path label with the
    key as it is written in the JSON text, so the label is the JSON-escaped key; SQLite's path
    syntax cannot express a double quote inside a label, so such keys are looked up with
    ``json_each`` (slower, exact).
    """

    def __init__(self, key: str, column: str, params: list[Any]) -> None:
        self.key, self.column, self.params = key, column, params
        self.by_path = '"' not in key

    def _path(self) -> str:
        import json

        self.params.append("$." + json.dumps(self.key, ensure_ascii=False))
        return "?"

    def type(self) -> str:
        if self.by_path:
            return f"json_type({self.column}, {self._path()})"
        self.params.append(self.key)
        return f"(SELECT type FROM json_each({self.column}) WHERE key = ?)"

    def value(self) -> str:
        if self.by_path:
            return f"json_extract({self.column}, {self._path()})"
        self.params.append(self.key)
        return f"(SELECT value FROM json_each({self.column}) WHERE key = ?)"

    def elements(self) -> str:
        """A table expression over the elements of an array field."""
        if self.by_path:
            return f"json_each({self.column}, {self._path()})"
        self.params.append(self.key)
        return (f"json_each((SELECT CASE WHEN type = 'array' THEN value ELSE '[]' END "
                f"FROM json_each({self.column}) WHERE key = ?))")


def _json_types(value: Any) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("true",) if value else ("false",)
    if isinstance(value, str):
        return ("text",)
    return ("integer", "real")


def _typed_equal(acc: _Accessors, value: Any, params: list[Any]) -> str:
    """The key's value equals ``value`` (a scalar) with matching JSON type."""
    types = _json_types(value)
    if isinstance(value, bool):
        return f"{acc.type()} = '{types[0]}'"
    type_sql = acc.type()
    value_sql = acc.value()
    params.append(value)
    return f"({type_sql} IN ({_quoted(types)}) AND {value_sql} = ?)"


def _quoted(types: tuple[str, ...]) -> str:
    return ", ".join(f"'{t}'" for t in types)  # fixed JSON type names, never user data


def _element_equal(value: Any, params: list[Any]) -> str:
    """Inside ``json_each``: the element equals ``value`` with matching JSON type."""
    types = _json_types(value)
    if isinstance(value, bool):
        return f"type = '{types[0]}'"
    params.append(value)
    return f"(type IN ({_quoted(types)}) AND value = ?)"


def _contains(acc: _Accessors, value: Any, params: list[Any]) -> str:
    # built in the order the placeholders appear in the SQL
    type_sql = acc.type()
    array = f"EXISTS (SELECT 1 FROM {acc.elements()} WHERE {_element_equal(value, params)})"
    if not isinstance(value, str):
        return f"({type_sql} = 'array' AND {array})"
    type_again = acc.type()
    value_sql = acc.value()
    params.append(value)
    return (f"(({type_sql} = 'array' AND {array}) OR "
            f"({type_again} = 'text' AND instr({value_sql}, ?) > 0))")


def _leaf(node: Field, column: str, params: list[Any]) -> str:
    # Parameters are appended in the order their placeholders appear in the returned SQL.
    op, value = node.op, node.value
    acc = _Accessors(node.key, column, params)
    if op == "eq":
        return _typed_equal(acc, value, params)
    if op in ORDERING:
        type_sql = acc.type()
        value_sql = acc.value()
        params.append(value)
        return f"({type_sql} IN ({_quoted(_json_types(value))}) AND {value_sql} {ORDERING[op]} ?)"
    if op == "in":
        if not value:
            return "0"
        groups: list[str] = []
        strings = [v for v in value if isinstance(v, str)]
        numbers_ = [v for v in value if _is_number(v)]
        for group, types in ((strings, ("text",)), (numbers_, ("integer", "real"))):
            if group:
                type_sql = acc.type()
                value_sql = acc.value()
                params.extend(group)
                marks = ", ".join("?" * len(group))
                groups.append(f"({type_sql} IN ({_quoted(types)}) AND {value_sql} IN ({marks}))")
        bools = sorted({v for v in value if isinstance(v, bool)})
        if bools:
            groups.append(f"{acc.type()} IN ({_quoted(tuple('true' if b else 'false' for b in bools))})")
        return "(" + " OR ".join(groups) + ")"
    if op == "exists":
        return f"({acc.type()} IS {'NOT ' if value else ''}NULL)"
    if op == "contains":
        return _contains(acc, value, params)
    if op in ("any", "all"):
        joiner = " OR " if op == "any" else " AND "
        return "(" + joiner.join(_contains(acc, v, params) for v in value) + ")"
    if op in ("text_match", "text_match_insensitive"):
        type_sql = acc.type()
        value_sql = acc.value()
        params.append(value)
        if op == "text_match":
            return f"({type_sql} = 'text' AND instr({value_sql}, ?) > 0)"
        return (f"({type_sql} = 'text' AND "
                f"instr({LOWER_FUNCTION}({value_sql}), {LOWER_FUNCTION}(?)) > 0)")
    if op == "is_empty":
        type_sql = acc.type()
        type_text = acc.type()
        value_text = acc.value()
        type_array = acc.type()
        value_array = acc.value()
        return (f"(IFNULL({type_sql}, 'null') = 'null' OR ({type_text} = 'text' AND "
                f"{value_text} = '') OR ({type_array} = 'array' AND {value_array} = '[]'))")
    raise ValueError(f"unknown filter operator {op!r}")  # unreachable: _field validates


def lower(value: Any) -> Any:
    """The SQLite ``vecpress_lower`` function: ``str.lower`` for text, other values unchanged."""
    return value.lower() if isinstance(value, str) else value
