"""One-byte codes (``int8``, ``fp8``) and exact codes (``float16``, ``float32``)."""

from __future__ import annotations

import numpy as np

from .base import Codec
from .scanning import _sort_heaps, checked_spans, run_scan


# =========================================================================== one-byte codes


def _e4m3_table() -> np.ndarray:
    """The 256 values of float8 e4m3 (FN variant: no infinities, one NaN code per sign)."""
    values = np.empty(256, dtype=np.float32)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exponent = (code >> 3) & 0xF
        mantissa = code & 0x7
        if exponent == 0xF and mantissa == 0x7:
            values[code] = np.nan
        elif exponent == 0:
            values[code] = sign * (mantissa / 8.0) * 2.0 ** -6
        else:
            values[code] = sign * (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7)
    return values


class ByteCodec(Codec):
    """One byte per dimension with a per-vector scale, decoded by a 256-entry table.

    The simple baselines users know: ``int8`` (symmetric absmax scaling) and ``fp8``
    (float8 e4m3 after scaling the largest coordinate to 448). No rotation, no training.
    """

    def __init__(self, dim: int, bits: int, metric: str) -> None:
        if bits != 8:
            raise ValueError(f"codec={self.name!r} stores 8 bits per dimension; pass bits=8")
        super().__init__(dim, bits, metric)
        finite = np.isfinite(self.table)
        order = np.argsort(self.table[finite], kind="stable")
        self._sorted_values = self.table[finite][order]
        self._sorted_codes = np.nonzero(finite)[0][order].astype(np.uint8)

    table: np.ndarray
    peak: float

    def code_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        peak = np.abs(vectors).max(axis=1)
        scale = np.where(peak > 0, peak / self.peak, 1.0).astype(np.float32)
        scaled = vectors / scale[:, None]
        pos = np.searchsorted(self._sorted_values, scaled).clip(1, len(self._sorted_values) - 1)
        below = self._sorted_values[pos - 1]
        above = self._sorted_values[pos]
        nearest = np.where(scaled - below <= above - scaled, pos - 1, pos)
        codes = self._sorted_codes[nearest]
        factors = np.zeros((len(vectors), self.factor_count), dtype=np.float32)
        factors[:, 0] = scale
        if self.metric == "l2":
            factors[:, 1] = np.einsum("ij,ij->i", vectors, vectors)
        return np.ascontiguousarray(codes), factors

    def scan(self, codes, factors, queries, k, flt, spans=None):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        l2 = self.metric == "l2"
        const = (np.einsum("ij,ij->i", queries, queries) if l2
                 else np.zeros(len(queries))).astype(np.float64)
        return run_scan("bytes", codes, factors, flt, len(queries), k, self.table,
                        queries, const, l2, spans=spans)

    def decode(self, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return self.table[codes] * factors[:, :1]


class Int8Codec(ByteCodec):
    name = "int8"
    table = (np.arange(256, dtype=np.float32) - 128.0)
    table[0] = np.nan  # -128 is never produced: keeps the code symmetric
    peak = 127.0


class Float8Codec(ByteCodec):
    name = "fp8"
    table = _e4m3_table()
    peak = 448.0


# =========================================================================== exact codes


class ExactCodec(Codec):
    """float32 (``bits=32``) or float16 (``bits=16``) vectors scanned with BLAS."""

    lossy = False
    BLOCK = 65_536

    def __init__(self, dim: int, bits: int, metric: str) -> None:
        super().__init__(dim, bits, metric)
        self.name = "float32" if bits == 32 else "float16"
        self._dtype = np.dtype(np.float32 if bits == 32 else np.float16)

    @property
    def factor_count(self) -> int:
        return 1 if self.metric == "l2" else 0

    def code_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def code_dtype(self) -> np.dtype:
        return self._dtype

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = vectors.astype(self._dtype)
        factors = np.zeros((len(vectors), self.factor_count), dtype=np.float32)
        if self.metric == "l2":
            as_stored = codes.astype(np.float32)
            factors[:, 0] = np.einsum("ij,ij->i", as_stored, as_stored)
        return codes, factors

    def score_rows(self, codes: np.ndarray, factors: np.ndarray, queries: np.ndarray,
                   rows: slice | np.ndarray) -> np.ndarray:
        block = np.asarray(codes[rows], dtype=np.float32)
        scores = queries @ block.T
        if self.metric == "l2":
            q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
            scores = -(factors[rows, 0][None, :] + q_sq - 2 * scores)
        return scores

    def scan(self, codes, factors, queries, k, flt, spans=None):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if spans is not None:
            return self._scan_spans(codes, factors, queries, k, flt, spans)
        if flt.rows is not None:
            scores = self.score_rows(codes, factors, queries, flt.rows)
            return _top_of_block(scores, flt.rows, k)
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_r = np.zeros((len(queries), 0), np.int64)
        for start in range(0, flt.n_rows, self.BLOCK):
            stop = min(flt.n_rows, start + self.BLOCK)
            scores = self.score_rows(codes, factors, queries, slice(start, stop))
            allowed = np.ones(stop - start, dtype=bool)
            if flt.removed is not None:
                allowed &= ~flt.removed[start:stop]
            if flt.mask is not None:
                allowed &= flt.mask[start:stop]
            scores[:, ~allowed] = -np.inf
            block_s, block_r = _top_of_block(scores, np.arange(start, stop), k)
            best_s, best_r = _sort_heaps(np.concatenate([best_s, block_s], axis=1)[:, None],
                                         np.concatenate([best_r, block_r], axis=1)[:, None], k)
        if best_s.shape[1] < k:
            pad = k - best_s.shape[1]
            best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            best_r = np.pad(best_r, ((0, 0), (0, pad)), constant_values=-1)
        return best_s, best_r

    def _scan_spans(self, codes, factors, queries, k, flt, spans):
        """:meth:`scan` of each query over the allowed rows of its own spans, by blocks of
        at most ``BLOCK`` rows."""
        offsets, bounds = checked_spans(spans, len(queries), flt)
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_r = np.full((len(queries), k), -1, np.int64)
        for q in range(len(queries)):
            rows = _span_rows(bounds[offsets[q]:offsets[q + 1]])
            if flt.removed is not None:
                rows = rows[~flt.removed[rows]]
            if flt.mask is not None:
                rows = rows[flt.mask[rows]]
            if not len(rows):
                continue
            tops = [_top_of_block(self.score_rows(codes, factors, queries[q:q + 1], block),
                                  block, k)
                    for block in np.split(rows, range(self.BLOCK, len(rows), self.BLOCK))]
            best_s, best_r = _sort_heaps(np.concatenate([t[0] for t in tops], axis=1)[:, None],
                                         np.concatenate([t[1] for t in tops], axis=1)[:, None], k)
            out_s[q, :best_s.shape[1]] = best_s[0]
            out_r[q, :best_r.shape[1]] = best_r[0]
        return out_s, out_r


def _span_rows(bounds: np.ndarray) -> np.ndarray:
    """The rows of spans (m, 2), in order, as one int64 array."""
    lengths = bounds[:, 1] - bounds[:, 0]
    shift = bounds[:, 0] - (np.cumsum(lengths) - lengths)  # row minus position, per span
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _top_of_block(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.broadcast_to(np.asarray(rows, dtype=np.int64), scores.shape)
    if scores.shape[1] == 0:
        return scores.astype(np.float32), np.zeros(scores.shape, np.int64)
    return _sort_heaps(scores[:, None], np.ascontiguousarray(rows)[:, None], k)
