"""One metadata filter language, two dialects in, parameterised SQL out.

Users write LangChain-style dicts (``{"year": {"$gte": 2020}, "$or": [...]}``) or LlamaIndex
``MetadataFilters``; both become the small tree below (``Field``, ``And``, ``Or``, ``Not``),
which :func:`evaluate` runs as indexed ``SELECT``s over the ``fields`` table, combined in
numpy. Every key and value is a bound parameter: a key like ``"); DROP TABLE docs``
is just a key.

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

Limits, so that one request stays bounded: a filter nests at most :data:`MAX_NESTING` levels
(each filter dict under ``$and``/``$or``/``$not``, each ``$not`` under a key, each nested
``MetadataFilters`` is a level), holds at most :data:`MAX_FILTER_NODES` conditions and
connectives, and one ``$in``/``$nin``/``any``/``all`` lists at most :data:`MAX_IN_VALUES`
values. Past a limit, ``ValueError`` names ``where`` and the limit.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from .validate import MAX_NESTING

#: most conditions and connectives (AND / OR / NOT) in one filter, after translation
MAX_FILTER_NODES = 1024
#: most values in one ``$in`` / ``$nin`` / ``any`` / ``all`` (SQLite binds each one)
MAX_IN_VALUES = 10_000

#: leaf operators of the internal tree
FIELD_OPS = frozenset({"eq", "gt", "gte", "lt", "lte", "in", "exists", "contains", "any", "all",
                       "text_match", "text_match_insensitive", "is_empty", "empty_value"})
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

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80


def _show(value: Any) -> str:
    """A short repr for error messages (a deep or huge value stays a few dozen characters)."""
    return _SHORT.repr(value)


# ---------------------------------------------------------------------- parsing


def parse(where: Any) -> Filter | None:
    """The filter tree of ``where``: ``None``, a tree, a LangChain-style dict or a LlamaIndex
    ``MetadataFilters``/``MetadataFilter``. ``None``, ``{}`` and an empty ``MetadataFilters``
    mean no filter."""
    if where is None:
        return None
    if isinstance(where, (Field, And, Or, Not)):
        tree = _checked(where)
    elif isinstance(where, dict):
        tree = from_dict(where) if where else None
    elif _is_llama_filters(where) or _is_llama_filter(where):
        tree = from_llama_index(where)
    else:
        raise TypeError(f"where must be a dict (LangChain style), a LlamaIndex MetadataFilters "
                        f"or None, got {type(where).__name__}")
    if tree is not None:
        _check_size(tree)
    return tree


def _too_many() -> ValueError:
    return ValueError(f"where has more than {MAX_FILTER_NODES} conditions and connectives "
                      f"(vecpress.core.filters.MAX_FILTER_NODES); use $in with a list of values, "
                      f"or split the request")


class _Level:
    """Where a translation is: the nesting depth of the part being read, and how many parts of
    the whole filter were read so far. Both are checked on entering a part, before recursing,
    so a filter too deep or too large (even one that repeats a shared sub-filter) stops early.
    """

    __slots__ = ("depth", "_read")

    def __init__(self, depth: int = 1, read: list[int] | None = None) -> None:
        if depth > MAX_NESTING:
            raise ValueError(f"where nests filters more than {MAX_NESTING} levels deep "
                             f"(vecpress.core.filters.MAX_NESTING); flatten it, e.g. one "
                             f"$and/$or list instead of nested ones")
        self.depth = depth
        self._read = [0] if read is None else read
        self._read[0] += 1
        if self._read[0] > MAX_FILTER_NODES:
            raise _too_many()

    def deeper(self) -> "_Level":
        """A part nested one level below this one."""
        return _Level(self.depth + 1, self._read)

    def beside(self) -> "_Level":
        """Another part at this level (a key's condition within a filter dict)."""
        return _Level(self.depth, self._read)


def _check_size(tree: Filter) -> None:
    """Refuse a tree of more than :data:`MAX_FILTER_NODES` nodes (counted without recursion;
    ``ne``, ``any``, ``is_empty`` and the like translate to more than one node)."""
    count, pending = 0, [tree]
    while pending:
        node = pending.pop()
        count += 1
        if count > MAX_FILTER_NODES:
            raise _too_many()
        if isinstance(node, (And, Or)):
            pending.extend(node.children)
        elif isinstance(node, Not):
            pending.append(node.child)


def _checked(node: Filter, level: _Level | None = None) -> Filter:
    """Validate a hand-built tree (the translators build valid ones)."""
    level = level or _Level()
    if isinstance(node, Field):
        return _field(node.key, node.op, node.value)
    if isinstance(node, (And, Or)):
        if not node.children:
            raise ValueError(f"{type(node).__name__} needs at least one condition")
        return type(node)(tuple(_checked(c, level.deeper()) for c in node.children))
    if isinstance(node, Not):
        return Not(_checked(node.child, level.deeper()))
    raise TypeError(f"not a filter node: {_show(node)}")


# -- LangChain-style dicts ------------------------------------------------------------

_DICT_OPS = {"$eq": "eq", "$ne": "ne", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte",
             "$in": "in", "$nin": "nin", "$exists": "exists", "$contains": "contains"}
_DICT_LOGIC = ("$and", "$or", "$not")


def from_dict(where: dict, level: _Level | None = None) -> Filter:
    """Translate a LangChain/Chroma/Mongo-style filter dict (``level``: where it lies in an
    enclosing filter, for the limits; ``None`` at the top).

    ``{"k": v}`` is equality, ``{"k": {"$op": v, ...}}`` applies operators (several are ANDed),
    keys at one level are ANDed, ``$and``/``$or`` take lists and ``$not`` a filter dict (at the
    top level) or an operator dict (under a key).
    """
    level = level or _Level()
    if not isinstance(where, dict):
        raise ValueError(f"a filter must be a dict, got {type(where).__name__}: {_show(where)}")
    if not where:
        raise ValueError("empty filter dict inside a $and/$or/$not; remove it or add conditions")
    parts: list[Filter] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings, got {_show(key)}")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{key} takes a non-empty list of filter dicts, got {_show(value)}")
            children = tuple(from_dict(item, level.deeper()) for item in value)
            parts.append(And(children) if key == "$and" else Or(children))
        elif key == "$not":
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ValueError("$not takes a filter dict or a non-empty list of them")
                parts.append(Not(_all_of([from_dict(item, level.deeper()) for item in value])))
            else:
                parts.append(Not(from_dict(value, level.deeper())))
        elif key.startswith("$"):
            raise ValueError(
                f"unknown operator {key!r} at the top of a filter; use $and, $or, $not, or a "
                f"metadata key mapping to a value or to {{operator: value}} "
                f"(operators: {', '.join(_DICT_OPS)})")
        else:
            parts.append(_key_condition(key, value, level.beside()))
    return _all_of(parts)


def _key_condition(key: str, value: Any, level: _Level) -> Filter:
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"filter for key {key!r} is an empty dict; give {{operator: value}}")
        parts: list[Filter] = []
        for op, operand in value.items():
            if op == "$not":
                if not isinstance(operand, dict):
                    raise ValueError(f"$not under key {key!r} takes an operator dict such as "
                                     f"{{'$gt': 3}}, got {_show(operand)}")
                parts.append(Not(_key_condition(key, operand, level.deeper())))
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


def from_llama_index(filters: Any, level: _Level | None = None) -> Filter | None:
    """Translate LlamaIndex ``MetadataFilters`` (nested; ``level``: where it lies in an
    enclosing filter, for the limits) or a single ``MetadataFilter``."""
    level = level or _Level()
    if _is_llama_filters(filters):
        items = list(filters.filters or [])
        if not items:
            return None
        children = []
        for item in items:
            child = from_llama_index(item, level.deeper())
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
    raise ValueError(f"not a LlamaIndex MetadataFilter/MetadataFilters: {_show(filters)}")


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
            raise ValueError(f"filter {op} on key {key!r}: value {_show(value)} is not finite")
        return value
    if value is None:
        raise ValueError(f"filter {op} on key {key!r} has value None; to test for a missing "
                         f"or null value use $exists / IS_EMPTY")
    raise ValueError(f"filter {op} on key {key!r} needs a string, number or boolean, got "
                     f"{type(value).__name__} {_show(value)}"
                     + ("; use $in / IN to match one of several values"
                        if isinstance(value, (list, tuple)) and op == "eq" else ""))


def _bounded_values(key: str, op: str, value: Any) -> tuple:
    """The operands of ``in``/``any``/``all``: at most :data:`MAX_IN_VALUES`, each a scalar."""
    values = []
    for item in value:
        if len(values) == MAX_IN_VALUES:
            raise ValueError(f"where: filter {op} on key {key!r} lists more than {MAX_IN_VALUES} "
                             f"values (vecpress.core.filters.MAX_IN_VALUES); split the request "
                             f"or tag the documents with a metadata field to filter on")
        values.append(_scalar(key, op, item))
    return tuple(values)


def _field(key: Any, op: str, value: Any) -> Filter:
    if not isinstance(key, str):
        raise ValueError(f"filter keys must be strings, got {_show(key)}")
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
            raise ValueError(f"filter {op} on key {key!r} needs a list of values, got {_show(value)}")
        values = _bounded_values(key, op, value)
        if op == "in":
            return Field(key, op, values)
        if not values:
            raise ValueError(f"filter {op} on key {key!r} needs a non-empty list of values")
        parts = tuple(Field(key, "contains", v) for v in values)
        return parts[0] if len(parts) == 1 else (Or(parts) if op == "any" else And(parts))
    if op == "exists":
        if not isinstance(value, bool):
            raise ValueError(f"$exists on key {key!r} takes True or False, got {_show(value)}")
        return Field(key, op, True) if value else Not(Field(key, op, True))
    if op in ("text_match", "text_match_insensitive"):
        if not isinstance(value, str):
            raise ValueError(f"filter {op} on key {key!r} needs a string, got {_show(value)}")
        return Field(key, op, value)
    if op == "empty_value":
        return Field(key, op, None)
    # is_empty takes no operand (LlamaIndex passes value=None)
    return Or((Not(Field(key, "exists", True)), Field(key, "empty_value", None)))


# ---------------------------------------------------------------------- evaluation
#
# Conditions run on the ``fields`` table that SQLite triggers keep beside ``docs`` (see
# :mod:`vecpress.core.docstore`): one row per top-level metadata key with its JSON kind and
# value, and one per element of a list. An index on ``(key, kind, value, doc)`` turns each
# condition into one range scan over the documents having that key, so a selective condition
# costs little however many documents there are. AND, OR and NOT then combine the sorted row
# id arrays in numpy (a NOT under an AND is a set difference, so it needs no complement).

#: ``fields.kind`` of a top-level value by JSON type; elements of lists get an "e" prefix
KIND_STRING, KIND_NUMBER, KIND_BOOL = "s", "n", "b"
TOP_LEVEL_KINDS = "('s', 'n', 'b', 'z', 'a', 'o')"


def evaluate(node: Filter, run: Callable[[str, list[Any]], np.ndarray],
             universe: Callable[[], np.ndarray]) -> np.ndarray:
    """Sorted distinct row ids matching ``node``.

    ``run(sql, params)`` returns the sorted distinct row ids a condition's ``SELECT`` yields;
    ``universe()`` those of every document (needed only for a NOT outside any AND).
    """
    if isinstance(node, Field):
        sql, params = condition_sql(node)
        return run(sql, params)
    if isinstance(node, Not):
        return _difference(universe(), evaluate(node.child, run, universe))
    if isinstance(node, Or):
        return sorted_unique(np.concatenate([evaluate(c, run, universe) for c in node.children]))
    positive = [c for c in node.children if not isinstance(c, Not)]
    negative = [c.child for c in node.children if isinstance(c, Not)]
    result = None
    for child in positive:
        part = evaluate(child, run, universe)
        result = part if result is None else _intersection(result, part)
        if len(result) == 0:
            return result
    if result is None:
        result = universe()
    for child in negative:
        if len(result) == 0:
            break
        result = _difference(result, evaluate(child, run, universe))
    return result


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int array by sort and compare (numpy 2's hashing unique is ~15x
    slower on row id arrays)."""
    values = np.sort(values)
    if len(values) > 1:
        values = values[np.concatenate(([True], values[1:] != values[:-1]))]
    return values


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in the sorted array ``sorted_set``."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=np.bool_)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return small[_member(small, large)]


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[~_member(a, b)]


def condition_sql(node: Field) -> tuple[str, list[Any]]:
    """A ``SELECT doc FROM fields ...`` for one condition, and its parameters."""
    params: list[Any] = []
    return _leaf(node, params), params


def _kind(value: Any, element: bool = False) -> str:
    kind = KIND_BOOL if isinstance(value, bool) else KIND_STRING if isinstance(value, str) \
        else KIND_NUMBER
    return "e" + kind if element else kind


def _scan(key: str, kinds: str, condition: str, args: list[Any], params: list[Any]) -> str:
    """Documents whose ``key`` has a field row of ``kinds`` (an SQL list of kind constants)
    meeting ``condition`` (which uses ``value`` and the placeholders for ``args``)."""
    params.append(key)
    params.extend(args)
    return f"SELECT doc FROM fields WHERE key = ? AND kind IN {kinds}{condition}"


def _stored(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # JSON true/false are stored as 1/0


def _leaf(node: Field, params: list[Any]) -> str:
    # kind constants are fixed strings written here; every key and value is a parameter
    key, op, value = node.key, node.op, node.value
    if op == "eq":
        return _scan(key, f"('{_kind(value)}')", " AND value = ?", [_stored(value)], params)
    if op in ORDERING:
        return _scan(key, f"('{_kind(value)}')", f" AND value {ORDERING[op]} ?", [value], params)
    if op == "in":
        parts = []
        for kind in (KIND_STRING, KIND_NUMBER, KIND_BOOL):
            group = list(dict.fromkeys(_stored(v) for v in value if _kind(v) == kind))
            if group:
                marks = ", ".join("?" * len(group))
                parts.append(_scan(key, f"('{kind}')", f" AND value IN ({marks})", group, params))
        return " UNION ALL ".join(parts) if parts else "SELECT doc FROM fields WHERE 0"
    if op == "exists":  # exists=False is NOT(exists=True), see _field
        return _scan(key, TOP_LEVEL_KINDS, "", [], params)
    if op == "contains":
        element = _scan(key, f"('{_kind(value, element=True)}')", " AND value = ?",
                        [_stored(value)], params)
        if not isinstance(value, str):
            return element
        return element + " UNION ALL " + _scan(key, "('s')", " AND instr(value, ?) > 0", [value],
                                               params)
    if op == "text_match":
        return _scan(key, "('s')", " AND instr(value, ?) > 0", [value], params)
    if op == "text_match_insensitive":
        return _scan(key, "('s')", f" AND instr({LOWER_FUNCTION}(value), {LOWER_FUNCTION}(?)) > 0",
                     [value], params)
    if op == "empty_value":  # is_empty is NOT(exists) OR empty_value, see _field
        return _scan(key, "('z', 's', 'a')",
                     " AND (kind = 'z' OR (kind = 's' AND value = '') OR (kind = 'a' AND value = 0))",
                     [], params)
    raise ValueError(f"unknown filter operator {op!r}")  # unreachable: _field validates


def lower(value: Any) -> Any:
    """The SQLite ``vecpress_lower`` function: ``str.lower`` for text, other values unchanged."""
    return value.lower() if isinstance(value, str) else value
