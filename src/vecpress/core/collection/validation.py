"""Checks of a :class:`~vecpress.core.collection.Collection`'s arguments (ids, texts, metadata,
relevance), each raising an error that names the argument and the fix before anything is
written. The sharded and multi-vector stores use them too."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np

from ..validate import MAX_NESTING


def _checked_relevance(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (a calibrated relevance), got "
                         f"{value!r}")
    return float(value)


def _checked_relevant_ids(relevant_ids: Any, n: int) -> list[set[str]]:
    if isinstance(relevant_ids, (str, bytes, dict)) or not hasattr(relevant_ids, "__iter__"):
        raise TypeError(f"relevant_ids must be a list with one list of ids per query, got "
                        f"{type(relevant_ids).__name__}")
    groups = list(relevant_ids)
    if len(groups) != n:
        raise ValueError(f"relevant_ids has {len(groups)} entries but there are {n} queries; "
                         f"pass one list of relevant ids per query")
    return [set(_checked_id_list(group)) for group in groups]


def _checked_ids(ids: Any, n: int) -> list[str]:
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    ids = _checked_id_list(ids)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but there are {n} vectors; pass one id "
                         f"per vector")
    if len(set(ids)) != n:
        seen: set[str] = set()
        repeated = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"ids repeats {repeated!r} within one call; ids in a batch must be "
                         f"distinct")
    return ids


def _checked_id_list(ids: Any) -> list[str]:
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"ids must be a list of strings, got {type(ids).__name__}"
                        + (f"; for one id pass [{ids!r}]" if isinstance(ids, str) else ""))
    ids = list(ids)
    for position, value in enumerate(ids):
        if not isinstance(value, str):
            raise TypeError(f"ids[{position}] must be a string, got {type(value).__name__} "
                            f"{value!r}")
        if not value:
            raise ValueError(f"ids[{position}] is an empty string; ids must be non-empty")
        _storable_text(value, f"ids[{position}]")
    return ids


def _checked_list(values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list with one entry per vector, got "
                        f"{type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} vectors")
    return values


def _checked_texts(texts: Any, n: int) -> list[str | None]:
    texts = _checked_list(texts, n, "texts")
    for position, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a string or None, got "
                            f"{type(text).__name__}")
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"texts[{position}] is not valid Unicode ({exc.reason})") from None
    return texts


def _storable_text(text: str, where: str) -> str:
    """``text`` if SQLite can store and match it: UTF-8 encodable, without NUL characters."""
    if "\x00" in text:
        raise ValueError(f"{where} contains a NUL character, which SQLite's JSON functions cut "
                         f"off; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is not valid Unicode ({exc.reason}: {text[exc.start:exc.end]!r})"
                         ) from None
    return text


def _json_value(value: Any, where: str, root: str, depth: int = 1) -> Any:
    """``value`` as plain JSON data (numpy scalars unwrapped, tuples as lists), or TypeError;
    ``depth`` is its nesting level within the metadata dict ``root`` (at most
    :data:`~vecpress.core.validate.MAX_NESTING`)."""
    if isinstance(value, str):
        return _storable_text(value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, (bool, str)):
            return _json_value(value, where, root, depth)
    if isinstance(value, int):
        if not -(2 ** 63) <= value < 2 ** 63:
            raise TypeError(f"{where} is an integer outside the 64-bit range JSON in SQLite "
                            f"holds: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}; JSON has no NaN or infinity")
        return value
    if isinstance(value, (list, tuple, dict)) and depth > MAX_NESTING:
        raise ValueError(f"{root} nests dicts and lists more than {MAX_NESTING} levels deep "
                         f"(vecpress.core.validate.MAX_NESTING); flatten it or store the deep "
                         f"part as a JSON string")
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]", root, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r} of type {type(key).__name__}; "
                                f"metadata keys must be strings")
            _storable_text(key, f"{where} key {key!r}")
            out[key] = _json_value(item, f"{where}[{key!r}]", root, depth + 1)
        return out
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r:.60}); metadata must be "
                    f"JSON: str, int, float, bool, None, lists and dicts of them")


def _metadata_json(metadata: Any, where: str) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(f"{where} must be a dict, got {type(metadata).__name__}")
    return json.dumps(_json_value(metadata, where, where), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"))
