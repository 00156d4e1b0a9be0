"""Checks on user input that raise errors naming the argument and the fix.

Called before anything is encoded or written, so a bad call leaves the store untouched.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

#: deepest nesting of dicts and lists accepted in metadata and in filters (``where``): the
#: top-level dict is level 1. Deeper input is refused with ``ValueError`` before anything is
#: written, instead of exhausting Python's recursion limit.
MAX_NESTING = 32


def as_matrix(value: Any, dim: int, name: str, *, allow_1d: bool = False) -> np.ndarray:
    """A finite float32 (n, dim) C-contiguous matrix from array-like ``value``, n >= 1."""
    if type(value) is np.ndarray and value.dtype == np.float32:  # (a search's usual query)
        return _checked_matrix(value, dim, name, allow_1d)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array of shape (n, {dim}), got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a numeric array of shape (n, {dim}): {exc}") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == np.bool_):
        raise TypeError(
            f"{name} must hold numbers, got dtype {array.dtype}; convert with np.asarray(..., "
            f"dtype=np.float32)")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}")
    return _checked_matrix(array, dim, name, allow_1d)


def _checked_matrix(array: np.ndarray, dim: int, name: str, allow_1d: bool) -> np.ndarray:
    """``as_matrix``'s checks of shape and finiteness, for an array of real numbers."""
    if array.ndim == 1 and allow_1d:
        array = array[None, :]
    if array.ndim != 2:
        hint = f"; for one vector pass {name}[None, :]" if array.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D with shape (n, {dim}), got shape {array.shape}{hint}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: pass at least one vector of dimension {dim}")
    if array.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {array.shape[1]} but the index has dim={dim}; embed with the "
            f"same model the index was built with")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
        raise ValueError(f"{name} row {bad} contains NaN or infinity; every value must be finite")
    return array


def as_ids(value: Any, n: int, name: str = "ids") -> np.ndarray:
    """Distinct non-negative int64 ids, one per vector."""
    array = _as_int_array(value, name)
    if array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} entries but there are {n} vectors; pass one id per vector")
    if (array < 0).any():
        raise ValueError(f"{name} must be non-negative (negative ids are reserved for padding)")
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} repeats id {int(unique[counts > 1][0])} within one call; ids in a batch must be distinct")
    return array


def as_id_list(value: Any, name: str = "ids") -> np.ndarray:
    """A 1-D int64 array of ids (may repeat), for lookups and removals."""
    array = _as_int_array(value, name)
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one id")
    return array


def _as_int_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be a sequence of integers: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def as_positive_int(value: Any, name: str) -> int:
    if type(value) is int and value > 0:  # (the usual case, without the ABC check's ~1 us)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


#: ``durability=`` of a persistent store: what a write has reached when it returns
DURABILITY_MODES = ("full", "process")


def as_durability(value: Any) -> str:
    """``"full"`` (every returned write is fsynced: it survives a power loss) or ``"process"``
    (written to the OS, not fsynced: it survives the process being killed)."""
    if not isinstance(value, str) or value not in DURABILITY_MODES:
        raise ValueError(f"durability={value!r} is unknown; use 'full' (every returned write "
                         f"is fsynced, survives a power loss) or 'process' (survives the "
                         f"process being killed, not a power loss)")
    return value
