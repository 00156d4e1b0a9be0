"""Fixed-dimensional encodings (MUVERA) of token sets: the bucketing loop.

A set of token vectors becomes one vector made of ``repetitions`` blocks of ``buckets``
sub-blocks of ``width`` values. The caller has already hashed every token (its SimHash bucket
per repetition, ``bucket_ids``) and projected it (``values``, one ``width``-wide slice per
repetition, or one shared slice when ``value_step`` is 0). This kernel only sums the values of
each bucket, divides by the count when averaging (documents), fills empty buckets from the
token whose bucket id is nearest in Hamming distance (documents), and optionally scales every
non-zero bucket slot to unit length (documents). Knows nothing of documents beyond row ranges;
never raises.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .intrinsics import popcount64


@njit(cache=True, nogil=True)
def _encode_one(bucket_ids, values, start, stop, buckets, width, value_step, average,
                fill_empty, unit_slots, out_row):
    repetitions = bucket_ids.shape[1]
    counts = np.zeros(buckets, dtype=np.int64)
    for rep in range(repetitions):
        counts[:] = 0
        block = rep * buckets * width
        column = rep * value_step
        for t in range(start, stop):
            bucket = bucket_ids[t, rep]
            counts[bucket] += 1
            at = block + bucket * width
            for j in range(width):
                out_row[at + j] += values[t, column + j]
        for bucket in range(buckets):
            at = block + bucket * width
            if counts[bucket] > 0:
                if average and counts[bucket] > 1:
                    scale = np.float32(1.0) / np.float32(counts[bucket])
                    for j in range(width):
                        out_row[at + j] *= scale
            elif fill_empty and stop > start:
                nearest = start
                best = 65
                for t in range(start, stop):
                    distance = popcount64(np.uint64(bucket ^ bucket_ids[t, rep]))
                    if distance < best:  # ties: the first token
                        best = distance
                        nearest = t
                for j in range(width):
                    out_row[at + j] = values[nearest, column + j]
            if unit_slots:
                _scale_to_unit(out_row, at, width)


@njit(cache=True, nogil=True)
def _scale_to_unit(out_row, at, width):
    """Scale ``out_row[at:at + width]`` to unit length (left alone when it is all zero)."""
    norm_sq = 0.0
    for j in range(width):
        norm_sq += float(out_row[at + j]) * float(out_row[at + j])
    if norm_sq > 0.0:
        scale = np.float32(1.0 / np.sqrt(norm_sq))
        for j in range(width):
            out_row[at + j] *= scale


@njit(cache=True, nogil=True)
def encode_fdes_serial(bucket_ids, values, offsets, buckets, width, value_step, average, fill_empty,
                       unit_slots, out):
    """:func:`encode_fdes` on the calling thread: for a query or a few sets, where waking the
    thread pool costs more than the work."""
    for i in range(out.shape[0]):
        _encode_one(bucket_ids, values, offsets[i], offsets[i + 1], buckets, width, value_step,
                    average, fill_empty, unit_slots, out[i])


@njit(cache=True, nogil=True, parallel=True)
def encode_fdes(bucket_ids, values, offsets, buckets, width, value_step, average, fill_empty,
                unit_slots, out):
    """Write the encoding of token set ``i`` (rows ``offsets[i]:offsets[i+1]``) into ``out[i]``.

    ``bucket_ids`` (tokens, repetitions) int64 in ``[0, buckets)``; ``values`` (tokens, columns)
    float32 where repetition ``r`` reads columns ``r*value_step : r*value_step + width``;
    ``unit_slots``: scale every non-zero bucket slot to unit length after averaging and filling;
    ``out`` (sets, repetitions*buckets*width) float32, zeroed by the caller.
    """
    for i in prange(out.shape[0]):
        _encode_one(bucket_ids, values, offsets[i], offsets[i + 1], buckets, width, value_step,
                    average, fill_empty, unit_slots, out[i])


@njit(cache=True, nogil=True, parallel=True)
def count_sketch(fdes, targets, signs, out):
    """``out[i, targets[j]] += signs[j] * fdes[i, j]``: a count sketch of each row (``out`` zeroed)."""
    for i in prange(fdes.shape[0]):
        for j in range(fdes.shape[1]):
            out[i, targets[j]] += signs[j] * fdes[i, j]
