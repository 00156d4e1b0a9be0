"""Segment codes (the default ``saq`` codec) written: the encoder, which picks each
segment's levels and scale and packs them into bit planes as it goes, and packing and
unpacking of given levels (the planes' order in a row: see ``segments``' opening comment).
The tiled in-RAM layout and the scan are in ``segments``."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .intrinsics import _VECTORISE


@njit(inline="always", fastmath=_VECTORISE)
def _level(value, inv_scale, mid, top):
    """The level of ``value`` on a grid of ``1 / inv_scale`` steps centred on ``mid``,
    clipped to [0, top]."""
    return min(max(np.floor(value * inv_scale + mid + 0.5), 0.0), top)


#: rows per task of the segment encoder (each task reuses one row of levels)
_ENCODE_BLOCK = 64


@njit(cache=True, nogil=True, parallel=True, fastmath=_VECTORISE)
def encode_segments(rows, seg_starts, seg_bits, n_scales, plane_at, row_words):
    """Segment codes of rotated rows: per row and segment, levels that point as closely as
    possible along the row's segment, packed straight into bit planes.

    As :func:`fit_levels`, but each segment has its own bit count and scale, the best of
    ``n_scales`` candidates (the outermost level at 100% down to 40% of the segment's peak),
    chosen by the cosine before any level is written. Returns the codes (n, row_words) uint64
    (see :func:`pack_segments`) and per (row, segment): ``<x_s, r_s>``, ``|r_s|^2`` and
    ``<x1_s, r_s>`` where ``x1 = +-1/2`` by the level's top bit (the segment's sign plane).
    No (n, dim) array of levels is made: at 100k rows it was 38 MB of fresh memory.
    """
    n, dim = rows.shape
    n_seg = seg_bits.shape[0]
    codes = np.zeros((n, row_words), dtype=np.uint64)
    x_dot = np.zeros((n, n_seg), dtype=np.float64)
    r_sq = np.zeros((n, n_seg), dtype=np.float64)
    sign_dot = np.zeros((n, n_seg), dtype=np.float64)
    for block in prange((n + _ENCODE_BLOCK - 1) // _ENCODE_BLOCK):
        levels = np.zeros(dim, dtype=np.uint8)
        for r in range(block * _ENCODE_BLOCK, min(n, (block + 1) * _ENCODE_BLOCK)):
            row = rows[r]
            for s in range(n_seg):
                lo, hi, bits = seg_starts[s], seg_starts[s + 1], seg_bits[s]
                sq = 0.0
                peak = 0.0
                for i in range(lo, hi):
                    v = float(row[i])
                    sq += v * v
                    peak = max(peak, abs(v))
                r_sq[r, s] = sq
                levels[lo:hi] = 0
                if bits == 0 or peak == 0.0:
                    continue
                top = float((1 << bits) - 1)
                mid = top / 2.0
                best_cos = -2.0
                best_scale = mid / peak
                for c in range(n_scales if bits > 1 else 1):
                    scale = mid / (peak * (1.0 - 0.6 * c / max(n_scales - 1, 1)))  # inverse step
                    ip = 0.0
                    xx = 0.0
                    for i in range(lo, hi):
                        x = _level(row[i], scale, mid, top) - mid
                        ip += x * row[i]
                        xx += x * x
                    cos = ip / np.sqrt(xx) if xx > 0 else -1.0
                    if cos > best_cos:
                        best_cos = cos
                        best_scale = scale
                half = 1 << (bits - 1)
                ip = 0.0
                signs = 0.0
                for i in range(lo, hi):
                    level = _level(row[i], best_scale, mid, top)
                    levels[i] = np.uint8(level)
                    ip += (level - mid) * row[i]
                    signs += row[i] if level >= half else -row[i]
                x_dot[r, s] = ip
                sign_dot[r, s] = 0.5 * signs
            _pack_segment_row(levels, seg_starts, seg_bits, plane_at, codes[r])
    return codes, x_dot, r_sq, sign_dot


@njit(inline="always")
def _pack_segment_row(levels, seg_starts, seg_bits, plane_at, out):
    """Pack one row of levels (dim,) into its segment bit planes ``out`` (row_words,)."""
    one = np.uint64(1)
    for s in range(seg_bits.shape[0]):
        lo, hi = seg_starts[s], seg_starts[s + 1]
        words = (hi - lo + 63) >> 6
        for b in range(seg_bits[s]):
            for w in range(words):
                start = lo + (w << 6)
                packed = np.uint64(0)
                for i in range(start, min(start + 64, hi)):
                    packed |= ((np.uint64(levels[i]) >> np.uint64(b)) & one) << np.uint64(i - start)
                out[plane_at[s, b] + w] = packed


@njit(cache=True, nogil=True)
def pack_segments(levels, seg_starts, seg_bits, plane_at, row_words):
    """Pack (n, dim) levels into (n, row_words) uint64 rows of segment bit planes."""
    out = np.zeros((levels.shape[0], row_words), dtype=np.uint64)
    for r in range(levels.shape[0]):
        _pack_segment_row(levels[r], seg_starts, seg_bits, plane_at, out[r])
    return out


@njit(cache=True, nogil=True)
def unpack_segments(codes, seg_starts, seg_bits, plane_at, dim):
    """Inverse of :func:`pack_segments` (uncoded segments read as level 0)."""
    n = codes.shape[0]
    out = np.zeros((n, dim), dtype=np.uint8)
    for r in range(n):
        for s in range(seg_bits.shape[0]):
            lo, hi = seg_starts[s], seg_starts[s + 1]
            for i in range(lo, hi):
                w = (i - lo) >> 6
                shift = np.uint64((i - lo) & 63)
                value = 0
                for b in range(seg_bits[s]):
                    if (codes[r, plane_at[s, b] + w] >> shift) & np.uint64(1):
                        value |= 1 << b
                out[r, i] = value
    return out
