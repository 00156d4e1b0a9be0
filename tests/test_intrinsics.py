"""The LLVM intrinsics of the scan kernels (core/kernels/intrinsics.py) against numpy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from vecpress.core.kernels.intrinsics import popcount64, weighted_popcount8


@njit(cache=False)
def _weighted_rows(words, planes, at):
    out = np.empty(len(words), np.uint64)
    for i in range(len(words)):
        out[i] = weighted_popcount8(words[i], planes, at[i])
    return out


@njit(cache=False)
def _weighted_scalar(words, planes, at):
    out = np.empty(len(words), np.uint64)
    for i in range(len(words)):
        total = np.uint64(0)
        for j in range(8):
            total += popcount64(words[i] & planes[at[i], j]) << np.uint64(j)
        out[i] = total
    return out


def _bits(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, numpy only."""
    as_bytes = values.astype("<u8").view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1).astype(np.uint64)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), rows=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       dense=st.booleans())
def test_weighted_popcount8_is_the_sum_of_shifted_popcounts(n, rows, seed, dense):
    rng = np.random.default_rng(seed)
    high = np.iinfo(np.uint64).max
    words = rng.integers(0, high, n, dtype=np.uint64, endpoint=True)
    planes = rng.integers(0, high, (rows, 8), dtype=np.uint64, endpoint=True)
    if dense:  # every bit set: the largest sum, 64 * 255
        words[:] = high
        planes[:] = high
    at = rng.integers(0, rows, n)
    expected = (_bits(words[:, None] & planes[at]) << np.arange(8, dtype=np.uint64)).sum(axis=1)
    np.testing.assert_array_equal(_weighted_rows(words, planes, at), expected)
    np.testing.assert_array_equal(_weighted_scalar(words, planes, at), expected)


def test_weighted_popcount8_reads_row_i_of_a_row_slice():
    """A C-contiguous slice of a 3-d array (a query's planes) is read at its own rows."""
    planes = np.arange(3 * 4 * 8, dtype=np.uint64).reshape(3, 4, 8)
    words = np.full(4, np.iinfo(np.uint64).max, np.uint64)
    at = np.arange(4)
    expected = (_bits(planes[1]) << np.arange(8, dtype=np.uint64)).sum(axis=1)
    np.testing.assert_array_equal(_weighted_rows(words, planes[1], at), expected)
