"""The ``saq`` codec: PCA, then segments of coordinates with bits allocated by variance
(a knapsack), scanned in tiles with a 1-bit pass that prunes rows before the full estimate."""

from __future__ import annotations

import math

from typing import Any

import numpy as np

from .. import kernels
from ..parallel import parallel_section
from .base import Codec, _check_state
from .queries import _quantize_query, _ratio, _rotated_queries, _serial_blas
from .rabitq import RaBitQCodec, random_rotation
from .scanning import run_scan

#: the smallest non-zero weight a coded segment may have in a stored codec state (fits
#: give 1e-3 or more)
MIN_CODED_WEIGHT = 1e-6


class SegmentCodec(Codec):
    """Variance-aware codes (SAQ's ideas): PCA, more bits where the variance is, a scale per
    segment.

    Fitted on enough rows (``MIN_PCA_ROWS``), the codec projects centred vectors on their
    principal axes, cuts the projection into at most ``MAX_SEGMENTS`` segments of whole 64-bit
    words, and gives each segment a bit count (0-8) chosen by dynamic programming so that the
    expected error of query inner products is smallest for the same code size as uniform
    ``bits`` (queries are assumed to spread like the data, hence ``VARIANCE_POWER`` > 1).
    A random rotation inside each segment evens out its coordinates. Each segment is then a
    RaBitQ-style code with its own per-vector factor ``|r_s|^2 / <x_s, r_s>``, stored as a
    float16 ratio to the factor of the sign planes (the top bit of every coded coordinate, a
    1-bit code used to skip hopeless rows), which is float32: for 384-d vectors a row costs
    its code plus 16 bytes (20 for L2).

    With ``coded_factors`` (every store created since it exists) the ratio columns hold the
    segments up to the last coded one only (:attr:`ratio_slots`), not all ``MAX_SEGMENTS``:
    once fitted on 384-d sentence embeddings, 1- and 2-bit codes code 3 and 4 of the 6
    segments, so a row costs its code plus 12 bytes. The width then follows the fit (an
    unfitted or data-oblivious codec codes every segment); a refit re-encodes every row
    anyway. Without it (stores written before) the columns hold all segments.

    Before it has seen ``MIN_PCA_ROWS`` rows the codec is data-oblivious (a random rotation
    and ``bits`` in every segment), and the index refits it from its kept originals as it
    grows (see ``Index``); ``fit_rows`` records how many rows the current fit saw.

    Measured on 100k MiniLM embeddings of WordNet glosses (``benchmarks/bench_core.py``):
    recall@10 without rerank rises from 0.72 / 0.86 / 0.955 (plain RaBitQ codes, 1 / 2 / 4
    bits) to about 0.79 / 0.91 / 0.976.
    """

    name = "saq"
    MIN_PCA_ROWS = 1024
    #: rows the covariance is estimated from at most: 16k, 64k and 100k rows gave the same
    #: recall on the benchmark (within 0.003), and the fit stays near 0.1 s
    MAX_FIT_ROWS = 16_384
    MAX_SEGMENTS = 6
    VARIANCE_POWER = 1.5
    #: 1 - cos^2 between a Gaussian vector and its best b-bit code, b = 0..8 (measured)
    RELATIVE_ERROR = (1.0, 0.363, 0.117, 0.034, 0.0095, 0.0025, 0.00064, 0.00016, 0.00004)
    #: a row is skipped when its sign-plane estimate plus PRUNE_EPSILON standard errors of that
    #: estimate (``sign_sigma`` and the query's rounding) cannot reach the K-th best score.
    #: On the benchmark (4 bits, 1000 queries) 2.0 / 2.5 / 3.0 lose 3 / 1 / 0 of the 10,000
    #: top-10 results of an unpruned scan and take 1.18 / 1.35 / 1.47 ms
    PRUNE_EPSILON = 2.5
    #: the margin when the scan's candidates are reranked exactly (:attr:`reranked`, set by an
    #: ``Index`` with ``rerank=True``): the rerank of ``k * oversample`` candidates absorbs the
    #: few rows a narrower margin drops. On the real 100k glosses (4 bits, 256 lists, oversample
    #: 3, 1,000 queries) 2.0 gave the same recall@10 as 2.5 at every nprobe from 4 to 128 and a
    #: 12-14% faster scan; 1.5 lost 0.0003 (25% faster). Flat scans of 2-5 bit codes kept
    #: their recall@10 (0.9999); 8-bit ones (oversample 2) went from 0.9999 to 0.9998
    RERANKED_PRUNE_EPSILON = 2.0
    #: the reranked margin of a partitioned index's scans of some of its lists
    #: (``PlannedSpans.partial``; a probe of every list keeps the flat scan's margin and its
    #: answers): its recall is the probed lists' anyway, and its default ``nprobe`` is
    #: calibrated through the search itself. On the real 100k glosses (4 bits, 256 lists,
    #: 1,000 queries) 1.5 lost 0.0003 recall@10 against 2.0 at every nprobe from 4 to 256 (3
    #: of 10,000 results; 1.25 lost 0.0005, 1.0 0.0011) and took 12-15% less time at 4, 16
    #: and 64 lists, where 0.0003 of recall costs 2-5% more lists
    LISTS_PRUNE_EPSILON = 1.5
    DEFAULT_SIGN_SIGMA = 0.3
    #: rows and queries (from the fit sample) that measure ``sign_sigma``
    CALIBRATION_ROWS = 2000
    CALIBRATION_QUERIES = 100
    #: query bits by code bits (the full estimate): at 4 bits, 6 query bits cost 0.006 recall
    #: against 8; at 1 bit they cost nothing measurable. 8 query bits score a word in one
    #: vector operation: on the real 100k glosses with 256 lists, 2-bit codes searched 1-6%
    #: faster with 8 than with 6 at 8-128 lists (the same recall), 1-bit ones within 3%
    DEFAULT_QUERY_BITS = {1: 6}
    #: candidate scales per segment: 3, 4 and 6 gave the same recall (within 0.001)
    N_SCALES = 3

    def __init__(self, dim: int, bits: int, metric: str, *, seed: int = 0,
                 query_bits: int | None = None, coded_factors: bool = False,
                 reranked: bool = False) -> None:
        super().__init__(dim, bits, metric)
        self.seed = seed
        self.coded_factors = bool(coded_factors)
        self.query_bits = query_bits or self.DEFAULT_QUERY_BITS.get(bits, 8)
        if not 4 <= self.query_bits <= 8:
            raise ValueError(f"query_bits={self.query_bits} is out of range; use 4-8")
        self.words = (dim + 63) // 64
        seg_words = -(-self.words // self.MAX_SEGMENTS)
        self.seg_starts = np.minimum(np.arange(0, self.words + seg_words, seg_words) * 64,
                                     dim).astype(np.int64)
        self.seg_starts = np.unique(self.seg_starts)
        self.n_segments = len(self.seg_starts) - 1
        self.seg_words = (np.diff(self.seg_starts) + 63) // 64
        self.centroid: np.ndarray | None = None
        self._projection: np.ndarray | None = None
        self._set_allocation(np.full(self.n_segments, bits, dtype=np.int64),
                             np.ones(self.n_segments))
        self.fit_rows = 0
        #: rounding offsets of the sign-pass query (see _quantize_query): fixed, so a query
        #: always gets the same answer
        self.dither = np.random.default_rng(seed).random(dim)
        #: spread of the sign-plane estimate's error, in units of factor * |query|: measured
        #: on the fit sample (RaBitQ's 1-bit value for a random rotation until then)
        self.sign_sigma = self.DEFAULT_SIGN_SIGMA
        #: whether the scan's candidates are reranked exactly afterwards (an ``Index`` with
        #: ``rerank=True`` says so): the scan then prunes with ``RERANKED_PRUNE_EPSILON``
        self.reranked = bool(reranked)

    # -- state ------------------------------------------------------------------------------
    def _set_allocation(self, seg_bits: np.ndarray, seg_weight: np.ndarray) -> None:
        self.seg_bits = np.asarray(seg_bits, dtype=np.int64)
        self.seg_weight = np.asarray(seg_weight, dtype=np.float64)
        self.seg_mid = ((1 << self.seg_bits) - 1) / 2.0
        coded = np.nonzero(self.seg_bits > 0)[0]
        #: segments up to the last one with bits (only those are projected when encoding)
        self.coded_prefix = int(coded[-1]) + 1 if len(coded) else 0
        # where each plane starts in a row: the sign planes (top plane of every coded segment)
        # first, then each segment's lower planes
        self.plane_at = np.zeros((self.n_segments, 8), dtype=np.int64)
        at = 0
        for s in range(self.n_segments):
            if self.seg_bits[s]:
                self.plane_at[s, self.seg_bits[s] - 1] = at
                at += int(self.seg_words[s])
        self.sign_word_count = at
        self.sign_query_words = np.concatenate(
            [np.arange(self.seg_starts[s] // 64, self.seg_starts[s] // 64 + self.seg_words[s])
             for s in range(self.n_segments) if self.seg_bits[s]] or [np.zeros(0)]).astype(np.int64)
        # per dimension, for the scan's query (the same for every query, so made once here)
        widths = np.diff(self.seg_starts)
        self._coded_dims = np.repeat(self.seg_bits > 0, widths)
        self._dim_weight = np.repeat(self.seg_weight, widths).astype(np.float64)
        #: whether the scan prunes by sign planes (not when no segment has more than 1 bit)
        self._prunes = bool((self.seg_bits > 1).any())
        #: the query's rounding error over the coded dimensions, in half steps
        self._rounding_scale = float(np.sqrt(self._coded_dims.sum() / 6.0))
        for s in range(self.n_segments):
            for b in range(self.seg_bits[s] - 1):
                self.plane_at[s, b] = at
                at += int(self.seg_words[s])

    @property
    def tile_sign_words(self) -> int:
        """The sign planes of every row lie side by side in tiles, for the 1-bit pass."""
        return self.sign_word_count

    @property
    def ratio_slots(self) -> int:
        """Segments whose factor ratio a row stores: every segment, or with
        ``coded_factors`` those up to the last coded one (the scan reads no other)."""
        return self.coded_prefix if self.coded_factors else self.n_segments

    @property
    def ratio_columns(self) -> slice:
        """Factor columns holding the float16 segment ratios, two per column (column 0 is the
        float32 sign-plane factor)."""
        return slice(1, 1 + (self.ratio_slots + 1) // 2)

    @property
    def factor_count(self) -> int:
        return self.ratio_columns.stop + int(self.metric == "l2")

    @property
    def l2_col(self) -> int:
        return self.factor_count - 1

    def params(self) -> dict[str, Any]:
        params = {**super().params(), "seed": self.seed, "query_bits": self.query_bits}
        if self.coded_factors:  # (absent: the layout of stores written before it existed)
            params["coded_factors"] = True
        return params

    def state_arrays(self) -> dict[str, np.ndarray]:
        if self.centroid is None:
            return {}
        return {"centroid": self.centroid, "projection": self.projection,
                "seg_bits": self.seg_bits, "seg_weight": self.seg_weight,
                "fit_rows": np.array([self.fit_rows], dtype=np.int64),
                "sign_sigma": np.array([self.sign_sigma], dtype=np.float64)}

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        f32, f64, i64 = (np.dtype(t).str for t in (np.float32, np.float64, np.int64))
        return {"centroid": ((self.dim,), f32), "projection": ((self.dim, self.dim), f32),
                "seg_bits": ((self.n_segments,), i64), "seg_weight": ((self.n_segments,), f64),
                "fit_rows": ((1,), i64), "sign_sigma": ((1,), f64)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if not arrays:
            return  # not fitted yet
        _check_state(self, arrays, finite=("centroid", "projection", "seg_weight", "sign_sigma"),
                     complete=True)
        seg_bits = np.asarray(arrays["seg_bits"])
        if seg_bits.min() < 0 or seg_bits.max() > 8:
            raise ValueError(f"seg_bits {seg_bits.tolist()} are not all 0-8")
        if int((seg_bits * self.seg_words).sum()) != self.bits * self.words:
            raise ValueError(f"seg_bits {seg_bits.tolist()} do not fill the "
                             f"{self.bits * self.words} code words of {self.bits} bits")
        if arrays["seg_weight"].min() < 0 or arrays["sign_sigma"][0] < 0 \
                or arrays["fit_rows"][0] < 0:
            raise ValueError("seg_weight, sign_sigma and fit_rows must not be negative")
        # a fit scales the weights to a root mean square of 1 over the coded dimensions, so
        # none exceeds sqrt(dim), and holds a coded one at 1e-3 or more (0 in stores written
        # before that floor); others (crafted files) overflow the encoded factors
        weights = arrays["seg_weight"]
        coded = weights[seg_bits > 0]
        if weights.max() > math.sqrt(self.dim) * (1 + 1e-6) \
                or ((coded != 0) & (coded < MIN_CODED_WEIGHT)).any():
            raise ValueError(f"seg_weight {weights.tolist()} are not all within "
                             f"[{MIN_CODED_WEIGHT:g}, sqrt(dim) = {math.sqrt(self.dim):.4g}] "
                             f"(or 0), which every fit gives")
        self.centroid = np.asarray(arrays["centroid"], dtype=np.float32)
        self._projection = np.ascontiguousarray(arrays["projection"], dtype=np.float32)
        self._set_allocation(arrays["seg_bits"], arrays["seg_weight"])
        self.fit_rows = int(arrays["fit_rows"][0])
        self.sign_sigma = float(arrays["sign_sigma"][0])

    @property
    def projection(self) -> np.ndarray:
        if self._projection is None:
            self._projection = random_rotation(self.dim, self.seed)
        return self._projection

    @property
    def fitted(self) -> bool:
        return self.centroid is not None

    def refit_due(self, live_rows: int) -> bool:
        """Whether a refit from ``live_rows`` rows would be worth re-encoding them: the
        index has grown fourfold since the fit, up to ``MAX_FIT_ROWS``."""
        return (self.fit_rows < self.MAX_FIT_ROWS and live_rows >= self.MIN_PCA_ROWS
                and live_rows >= 4 * self.fit_rows)

    def fit(self, vectors: np.ndarray) -> None:
        """Centroid, principal axes and bit allocation from a sample (data-oblivious codes
        below ``MIN_PCA_ROWS`` rows), then the sign-plane error measured on that sample."""
        self._fit_projection(vectors)
        with _serial_blas():  # small products: threads only add waiting on a busy machine
            self.sign_sigma = self._measure_sign_sigma(vectors)

    def _measure_sign_sigma(self, vectors: np.ndarray) -> float:
        """Standard deviation of (full estimate - sign-plane estimate) / (factor * |q|) with
        rows of the sample as data and other rows as queries; the default when the sample is
        too small to tell."""
        if len(vectors) < self.MIN_PCA_ROWS:
            return self.DEFAULT_SIGN_SIGMA
        rng = np.random.default_rng(self.seed)
        picked = rng.choice(len(vectors), min(len(vectors), self.CALIBRATION_ROWS
                                              + self.CALIBRATION_QUERIES), replace=False)
        queries = vectors[picked[:self.CALIBRATION_QUERIES]]
        data = vectors[picked[self.CALIBRATION_QUERIES:]]
        codes, factors = self.encode(data)
        levels = self.decode_levels(codes).astype(np.float64)
        seg_factor, sign_factor = self.decode_factors(factors)
        rotated = _rotated_queries(self, queries)[0].astype(np.float64)
        full = self._inner_products(rotated, levels, seg_factor)
        # the sign planes: +-1/2 by each level's top bit, times the segment's weight (0 where
        # a segment has no bits)
        dims = np.diff(self.seg_starts)
        signs = np.where(levels >= 0, 0.5, -0.5) * np.repeat(self.seg_weight, dims)[None, :]
        sign = (rotated @ signs.T) * sign_factor[None, :]
        coded = np.repeat(self.seg_bits > 0, dims)
        scale = np.linalg.norm(rotated[:, coded], axis=1)[:, None] * sign_factor[None, :]
        usable = scale > 0
        if not usable.any():
            return self.DEFAULT_SIGN_SIGMA
        return float(np.std((full - sign)[usable] / scale[usable]))

    def _fit_projection(self, vectors: np.ndarray) -> None:
        if len(vectors) > self.MAX_FIT_ROWS:
            picked = np.random.default_rng(self.seed).choice(len(vectors), self.MAX_FIT_ROWS,
                                                             replace=False)
            vectors = vectors[np.sort(picked)]
        n = len(vectors)
        self.fit_rows = n
        if n < RaBitQCodec.MIN_FIT_ROWS:
            self.centroid = np.zeros(self.dim, dtype=np.float32)
        else:
            self.centroid = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
        if n < self.MIN_PCA_ROWS:
            self._projection = random_rotation(self.dim, self.seed)
            self._set_allocation(np.full(self.n_segments, self.bits), np.ones(self.n_segments))
            return
        centred = np.asarray(vectors - self.centroid, dtype=np.float32)
        with _serial_blas():
            variances, axes = np.linalg.eigh((centred.T @ centred).astype(np.float64) / n)
        order = np.argsort(variances)[::-1]
        variances = np.clip(variances[order], 0.0, None)
        per_dim = np.array([variances[a:b].mean() for a, b in
                            zip(self.seg_starts[:-1], self.seg_starts[1:])])
        seg_bits = allocate_bits(per_dim ** self.VARIANCE_POWER * np.diff(self.seg_starts),
                                 self.seg_words, self.bits * self.words, self.RELATIVE_ERROR)
        if (seg_bits == self.bits).all():  # nothing to gain: a full rotation spreads better
            self._projection = random_rotation(self.dim, self.seed)
            self._set_allocation(seg_bits, np.ones(self.n_segments))
            return
        weight = np.sqrt(per_dim)
        coded = seg_bits > 0
        dims = np.diff(self.seg_starts)
        norm = np.sqrt((dims[coded] * weight[coded] ** 2).sum() / dims[coded].sum())
        weight = np.where(coded, np.maximum(weight / norm if norm > 0 else 1.0, 1e-3), 0.0)
        blocks = np.zeros((self.dim, self.dim))
        for s, (a, b) in enumerate(zip(self.seg_starts[:-1], self.seg_starts[1:])):
            blocks[a:b, a:b] = random_rotation(int(b - a), self.seed + 1 + s)
        self._projection = np.ascontiguousarray(blocks @ axes[:, order].T, dtype=np.float32)
        self._set_allocation(seg_bits, weight)

    # -- codes ------------------------------------------------------------------------------
    def code_shape(self) -> tuple[int, ...]:
        return (self.bits * self.words,)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint64)

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors @ self.projection.T, dtype=np.float32)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.centroid is None:
            self.fit(vectors)
        # segments without bits (the low-variance tail at 1-2 bits) are never projected; the
        # centroid is subtracted after the projection, which spares a copy of the batch
        n_seg = self.coded_prefix
        projection = self.projection[:int(self.seg_starts[n_seg])]
        rotated = np.ascontiguousarray(vectors @ projection.T, dtype=np.float32)
        rotated -= self.centroid @ projection.T
        with parallel_section():
            codes, x_dot, r_sq, sign_dot = kernels.encode_segments(
                rotated, self.seg_starts[:n_seg + 1], self.seg_bits[:n_seg], self.N_SCALES,
                self.plane_at[:n_seg], self.bits * self.words)
        seg_factor = np.zeros((len(vectors), self.n_segments))
        seg_factor[:, :n_seg] = np.where(x_dot > 0, r_sq / np.where(x_dot > 0, x_dot, 1.0), 0.0)
        sign_factor = _ratio(r_sq.sum(axis=1), sign_dot @ self.seg_weight[:n_seg])
        factors = np.zeros((len(vectors), self.factor_count), dtype=np.float32)
        factors[:, 0] = sign_factor
        _pack_relative(seg_factor[:, :self.ratio_slots], sign_factor,
                       factors[:, self.ratio_columns])
        if self.metric == "l2":  # |r|^2 of the whole residual: |x|^2 - 2 <x, c> + |c|^2
            centroid = self.centroid.astype(np.float64)
            factors[:, self.l2_col] = (np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
                                       - 2.0 * np.einsum("ij,j->i", vectors, centroid)
                                       + centroid @ centroid)
        return codes, factors

    def decode_factors(self, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-segment factors (n, S), sign-plane factor (n,)) as the scan reads them."""
        head = factors[:, 0].astype(np.float64)
        halves = np.ascontiguousarray(factors[:, self.ratio_columns]).view(
            np.float16).astype(np.float64)
        ratios = np.zeros((len(factors), self.n_segments))  # 0 for segments without a slot
        ratios[:, :self.ratio_slots] = halves[:, :self.ratio_slots]
        return head[:, None] * ratios, head

    def decode_levels(self, codes: np.ndarray) -> np.ndarray:
        """Centred levels (n, dim) of stored codes; 0 in segments without bits."""
        levels = kernels.unpack_segments(codes, self.seg_starts, self.seg_bits,
                                         self.plane_at, self.dim).astype(np.float32)
        mids = np.repeat(self.seg_mid, np.diff(self.seg_starts))
        return np.where(np.repeat(self.seg_bits > 0, np.diff(self.seg_starts)),
                        levels - mids, 0.0).astype(np.float32)

    def scan(self, codes, factors, queries, k, flt, spans=None):
        if codes.ndim != 2 or codes.shape[1] != kernels.TILE_ROWS * self.bits * self.words:
            raise ValueError(f"codes of shape {codes.shape} are not in the tiled layout this "
                             f"codec scans; pass codec.scan_layout(codes)")
        rotated, const = _rotated_queries(self, queries)
        (planes, step, low, seg_sums, sign_planes, sign_step, sign_low, sign_sum,
         bound) = kernels.prepare_queries(
            rotated, self.seg_starts, self._dim_weight, self._coded_dims, self.sign_query_words,
            self.dither, self.query_bits, self.words, float(self.sign_sigma),
            self._rounding_scale, self._prune_margin(partial=getattr(spans, "partial", False)))
        prune = self._prunes
        halves = factors.view(np.uint16)  # the float16 ratios, read bit by bit by the scan
        return run_scan("segments", codes, factors, flt, len(queries), k, halves, planes, step,
                        low, seg_sums, np.asarray(const, dtype=np.float64), self.seg_starts,
                        self.seg_bits, self.plane_at, self.seg_mid, self.metric == "l2",
                        self.l2_col, prune, sign_planes, sign_step, sign_low, sign_sum, bound,
                        spans=spans)

    def _prune_margin(self, partial: bool) -> float:
        """Standard errors of the sign-plane estimate a scan adds before it prunes a row
        (``partial``: the scan covers some of a partitioned index's lists)."""
        if not self.reranked:
            return float(self.PRUNE_EPSILON)
        return float(self.LISTS_PRUNE_EPSILON if partial else self.RERANKED_PRUNE_EPSILON)

    def query_step(self, queries: np.ndarray) -> np.ndarray:
        """Quantization step of each query."""
        return _quantize_query(_rotated_queries(self, queries)[0], self.query_bits,
                               self.words)["step"]

    def _inner_products(self, rotated: np.ndarray, levels: np.ndarray,
                        seg_factor: np.ndarray) -> np.ndarray:
        """Estimated <r, q> (queries x rows): per segment, factor * <levels, rotated query>."""
        ip = np.zeros((len(rotated), len(levels)))
        for s, (a, b) in enumerate(zip(self.seg_starts[:-1], self.seg_starts[1:])):
            ip += (rotated[:, a:b] @ levels[:, a:b].T) * seg_factor[:, s][None, :]
        return ip

    def estimate(self, codes: np.ndarray, factors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Estimated scores of every code for every (unquantized) query: the numpy reference."""
        seg_factor, _ = self.decode_factors(factors)
        rotated, const = _rotated_queries(self, queries)
        ip = self._inner_products(rotated.astype(np.float64),
                                  self.decode_levels(codes).astype(np.float64), seg_factor)
        if self.metric == "l2":
            return -(factors[:, self.l2_col][None, :] + const[:, None] - 2 * ip)
        return ip + const[:, None]


def allocate_bits(weights: np.ndarray, seg_words: np.ndarray, budget: int,
                  relative_error: tuple[float, ...]) -> np.ndarray:
    """Bits per segment (0..8) spending exactly ``budget`` bit-words that minimise
    ``sum(weights[s] * relative_error[bits[s]])``: a knapsack by dynamic programming."""
    n_seg = len(weights)
    best = np.full((n_seg + 1, budget + 1), np.inf)
    best[0, 0] = 0.0
    choice = np.zeros((n_seg + 1, budget + 1), dtype=np.int64)
    for s in range(n_seg):
        for used in np.nonzero(np.isfinite(best[s]))[0]:
            for bits in range(len(relative_error)):
                spent = used + bits * int(seg_words[s])
                if spent > budget:
                    break
                cost = best[s, used] + weights[s] * relative_error[bits]
                if cost < best[s + 1, spent]:
                    best[s + 1, spent] = cost
                    choice[s + 1, spent] = bits
    bits_out = np.zeros(n_seg, dtype=np.int64)
    used = budget
    for s in range(n_seg, 0, -1):
        bits_out[s - 1] = choice[s, used]
        used -= choice[s, used] * int(seg_words[s - 1])
    return bits_out


def _pack_relative(seg_factor: np.ndarray, sign_factor: np.ndarray, out: np.ndarray) -> None:
    """Write the segment factors as float16 ratios to the sign-plane factor, two per float32
    column of ``out``. The ratios are bounded (about sqrt(dim / segment dims) / 0.8 at most),
    so float16 does not overflow for a fitted state; they are clipped to float16's range all
    the same, as a crafted state could push them past it. A row whose sign factor is 0 has
    nothing coded."""
    reference = np.where(sign_factor > 0, sign_factor, 1.0)[:, None]
    ratios = np.where(sign_factor[:, None] > 0, seg_factor / reference, 0.0)
    halves = np.zeros((len(ratios), 2 * out.shape[1]), dtype=np.float16)
    half_max = float(np.finfo(np.float16).max)
    halves[:, :ratios.shape[1]] = np.clip(ratios, -half_max, half_max)
    out[:, :] = halves.view(np.float32)
