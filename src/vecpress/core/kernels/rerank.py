"""The rerank's exact scores: kept original rows (float16 or float32) against their queries,
read in place from a block of originals, accumulated in float64."""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .intrinsics import _VECTORISE, half_to_float


def _widened(value):  # pragma: no cover - replaced by the overload below in compiled code
    """A stored original's coordinate as float64 (float16 bits as uint16, or float32)."""
    raise NotImplementedError


@overload(_widened, inline="always")
def _widened_overload(value):
    if value == types.uint16:
        return lambda value: np.float64(half_to_float(value))
    return lambda value: np.float64(value)


@njit(cache=True, nogil=True, fastmath=_VECTORISE)
def exact_scores(block, rows, queries, query_of, dots, squares):
    """For each ``j``: ``dots[j] = <block[rows[j]], queries[query_of[j]]>`` and ``squares[j]
    = |block[rows[j]]|^2``. ``block`` (n, dim) is uint16 (float16 bits) or float32; the rows
    are read where they lie (a memory map reads only their pages)."""
    dim = block.shape[1]
    for j in range(rows.shape[0]):
        row = block[rows[j]]
        query = queries[query_of[j]]
        dot = 0.0
        square = 0.0
        for d in range(dim):
            value = _widened(row[d])
            dot += value * query[d]
            square += value * value
        dots[j] = dot
        squares[j] = square
