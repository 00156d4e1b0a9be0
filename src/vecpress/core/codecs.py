"""Codecs: turn float vectors into compact codes and score queries against those codes.

A codec is a small object with array state (saved as ``.npy`` by the index, never pickled) and
four operations: ``fit`` (optional, data-dependent state), ``encode``, ``scan`` (best-K rows
for a batch of queries, under an optional row filter) and ``estimate`` (scores of given rows,
used by tests). Every codec works in one of two internal metrics: ``"ip"`` (inner product; the
index normalises vectors first for cosine) or ``"l2"``. Scores are always higher-is-better: the
inner product, or minus the squared Euclidean distance.

``CODECS`` maps a codec name to its class; :func:`make_codec` is the only place names are read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import get_num_threads, parallel_chunksize

from . import kernels
from .parallel import parallel_section

#: rows of work (rows x queries) below which a batch of queries runs on the calling thread
PARALLEL_MIN_ROWS = 50_000
#: rows below which one query runs on the calling thread: splitting it pays little on an idle
#: machine (1.4 -> 1.1 ms at 100k rows) and costs a scheduler tick (~8 ms) whenever another
#: process holds a core, so only large scans are split
PARALLEL_MIN_ROWS_ONE_QUERY = 400_000


@dataclass
class RowFilter:
    """Which rows a scan may return. ``rows`` (sorted int64) wins over ``mask`` when given."""

    n_rows: int
    removed: np.ndarray | None = None  # bool per row: True for removed rows (None: none are)
    mask: np.ndarray | None = None  # bool per row
    rows: np.ndarray | None = None  # explicit allowed rows (selective filters)


_EMPTY_BOOL = np.zeros(1, dtype=np.bool_)
_EMPTY_ROWS = np.zeros(1, dtype=np.int64)


#: which items each query scans: ``(offsets, bounds)``, query ``i`` scanning the rows
#: ``[start, stop)`` of ``bounds[offsets[i]:offsets[i + 1]]`` (see :func:`run_scan`)
Spans = tuple[np.ndarray, np.ndarray]


def run_scan(family: str, codes: np.ndarray, factors: np.ndarray, flt: RowFilter,
             n_queries: int, k: int, *query_args: Any,
             spans: Spans | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the scan of a code family (see ``kernels.SCANS``); best ``k`` per query.

    Every query scans all items, or with ``spans`` only its own runs of rows (the lists of a
    partitioned index), all into one heap. Small scans run on the calling thread. Otherwise a
    single query is split in chunks of about equal row count that the threads take one at a
    time (so a thread that lost its core delays one chunk, not a half), and a batch of
    queries runs one query per task.
    """
    task, parallel = kernels.SCANS[family]
    check_removed = flt.removed is not None
    removed = flt.removed if check_removed else _EMPTY_BOOL
    check_mask = flt.mask is not None
    mask = flt.mask if check_mask else _EMPTY_BOOL
    use_rows = flt.rows is not None
    rows = flt.rows if use_rows else _EMPTY_ROWS
    if spans is None:
        n_items = len(rows) if use_rows else flt.n_rows
        offsets = np.arange(n_queries + 1, dtype=np.int64)
        bounds = np.tile(np.array([[0, n_items]], dtype=np.int64), (n_queries, 1))
        work = n_items * n_queries
    else:
        offsets, bounds = checked_spans(spans, n_queries, flt)
        work = int((bounds[:, 1] - bounds[:, 0]).sum())
    minimum = PARALLEL_MIN_ROWS_ONE_QUERY if n_queries == 1 else PARALLEL_MIN_ROWS
    serial = _thread_count() == 1 or work < minimum
    chunks = 1
    if not serial and n_queries == 1:
        chunks = _chunk_count(work)
        offsets, bounds = _split_spans(bounds, chunks)
    out_s = np.empty((n_queries, chunks, k), np.float32)
    out_r = np.empty((n_queries, chunks, k), np.int64)
    common = (codes, factors, removed, check_removed, mask, check_mask, rows, use_rows)
    if serial:
        for q in range(n_queries):
            task(*common, bounds, offsets[q], offsets[q + 1], q, *query_args, out_s[q, 0],
                 out_r[q, 0])
    else:
        with parallel_section(), parallel_chunksize(1):
            parallel(*common, bounds, offsets, *query_args, out_s, out_r)
    return _sort_heaps(out_s, out_r, k)


def checked_spans(spans: Spans, n_queries: int, flt: RowFilter) -> Spans:
    """``spans`` as contiguous int64 ``(offsets, bounds)``; ``ValueError`` unless there are
    ``n_queries`` runs of spans within ``[0, flt.n_rows)``, each sorted and not overlapping,
    and the filter does not list rows (spans are code rows, not positions in a list)."""
    if flt.rows is not None:
        raise ValueError("spans= cannot be combined with a row filter that lists its rows "
                         "(RowFilter.rows); pass a mask instead")
    if not isinstance(spans, tuple) or len(spans) != 2:
        raise ValueError("spans must be a tuple (offsets, bounds)")
    offsets, bounds = (np.asarray(a) for a in spans)
    for name, array, ndim in (("offsets", offsets, 1), ("bounds", bounds, 2)):
        if array.dtype.kind not in "iu" or array.ndim != ndim:
            raise ValueError(f"spans' {name} must be a {ndim}-d integer array, got "
                             f"{array.dtype}{list(array.shape)}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if bounds.shape[1] != 2:
        raise ValueError(f"spans' bounds must have shape (m, 2), got {list(bounds.shape)}")
    m = len(bounds)
    if (len(offsets) != n_queries + 1 or offsets[0] != 0 or offsets[-1] != m
            or (np.diff(offsets) < 0).any()):
        raise ValueError(f"spans' offsets must rise from 0 to len(bounds)={m} in "
                         f"n_queries + 1 = {n_queries + 1} steps")
    if m and ((bounds[:, 0] < 0).any() or (bounds[:, 1] < bounds[:, 0]).any()
              or (bounds[:, 1] > flt.n_rows).any()):
        raise ValueError(f"spans' bounds must be [start, stop) with "
                         f"0 <= start <= stop <= n_rows={flt.n_rows}")
    first = np.zeros(m, dtype=bool)
    first[offsets[:-1][offsets[:-1] < m]] = True
    if m > 1 and ((bounds[1:, 0] < bounds[:-1, 1]) & ~first[1:]).any():
        raise ValueError("spans' bounds of one query must be sorted and must not overlap")
    return offsets, bounds


def _split_spans(bounds: np.ndarray, n_chunks: int) -> Spans:
    """One query's spans cut into ``n_chunks`` runs of about equal row count (some may be
    empty), at tile boundaries: ``(offsets, bounds)`` with one run per chunk."""
    lengths = bounds[:, 1] - bounds[:, 0]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    tile = kernels.TILE_ROWS
    size = max(tile, -(-(-(-total // n_chunks)) // tile) * tile)
    targets = np.arange(size, total, size, dtype=np.int64)  # chunk starts, in rows scanned
    span = np.searchsorted(ends, targets, side="right")
    at = bounds[span, 0] + targets - (ends[span] - lengths[span])
    cuts = np.unique(np.minimum(-(-at // tile) * tile, bounds[span, 1]))
    # a cut strictly inside a span splits it (spans do not overlap, so sorting the starts and
    # the stops apart keeps each piece's ends together)
    holder = np.searchsorted(bounds[:, 0], cuts, side="right") - 1
    inner = cuts[(cuts > bounds[holder, 0]) & (cuts < bounds[holder, 1])]
    starts = np.sort(np.concatenate([bounds[:, 0], inner]))
    stops = np.sort(np.concatenate([bounds[:, 1], inner]))
    keep = stops > starts
    pieces = np.stack([starts[keep], stops[keep]], axis=1)
    chunk = np.searchsorted(cuts, pieces[:, 0], side="right")
    offsets = np.searchsorted(chunk, np.arange(n_chunks + 1), side="left").astype(np.int64)
    return offsets, np.ascontiguousarray(pieces, dtype=np.int64)


def _thread_count() -> int:
    return max(1, int(get_num_threads()))


def _sort_heaps(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk heaps (..., chunks, K) into the best ``k`` per query, best first."""
    scores = scores.reshape(scores.shape[0], -1)
    rows = rows.reshape(rows.shape[0], -1)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.tile(
        np.arange(scores.shape[1]), (scores.shape[0], 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    best = np.take_along_axis(top, order, axis=1)
    out_scores = np.take_along_axis(scores, best, axis=1).astype(np.float32)
    out_rows = np.take_along_axis(rows, best, axis=1).astype(np.int64)
    out_rows[~np.isfinite(out_scores)] = -1
    return out_scores, out_rows


class Codec:
    """Base class: shared bookkeeping for every codec."""

    name = "base"
    #: True when codes lose information, so keeping originals for a rerank pays off
    lossy = True

    def __init__(self, dim: int, bits: int, metric: str) -> None:
        self.dim = dim
        self.bits = bits
        self.metric = metric  # "ip" or "l2"

    # -- state ------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (the manifest stores them)."""
        return {"name": self.name, "dim": self.dim, "bits": self.bits, "metric": self.metric}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the codec needs to decode (saved as .npy files)."""
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned (``ValueError`` when it is inconsistent)."""

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype (``dtype.str``) of each array :meth:`load_state` accepts, so a
        stored state can be checked before it is read."""
        return {}

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, vectors: np.ndarray) -> None:
        """Learn data-dependent state from a sample (no-op for data-oblivious codecs)."""

    # -- codes ------------------------------------------------------------------------------
    @property
    def factor_count(self) -> int:
        return 2 if self.metric == "l2" else 1

    def code_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def code_dtype(self) -> np.dtype:
        raise NotImplementedError

    def code_bytes(self) -> int:
        return int(np.prod(self.code_shape())) * np.dtype(self.code_dtype).itemsize

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def tile_sign_words(self) -> int | None:
        """How ``scan`` wants codes laid out in RAM: ``None`` for plain rows (n, *code_shape),
        or the number of leading words of each row that :func:`tile_codes` puts side by side
        in tiles of ``kernels.TILE_ROWS`` rows."""
        return None

    def scan_layout(self, codes: np.ndarray) -> np.ndarray:
        """Encoded rows as :meth:`scan` reads them (see :attr:`tile_sign_words`)."""
        if self.tile_sign_words is None:
            return codes
        return tile_codes(codes, self.tile_sign_words)

    def scan(self, codes: np.ndarray, factors: np.ndarray, queries: np.ndarray, k: int,
             flt: RowFilter, spans: Spans | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows per query by estimated score: (q, k) scores and rows, -1 padded.
        ``codes`` are in the layout of :meth:`scan_layout`. With ``spans`` (see
        :func:`run_scan`) query ``i`` considers only the rows of its spans."""
        raise NotImplementedError


#: state arrays that are orthonormal matrices: no entry exceeds 1 in magnitude
_ORTHONORMAL = frozenset({"rotation", "projection"})


def _check_state(codec: Codec, arrays: dict[str, np.ndarray], *, finite: tuple[str, ...],
                 complete: bool = False) -> None:
    """``ValueError`` unless ``arrays`` match ``codec.state_layout()`` (all of them when
    ``complete``) and the ``finite`` ones hold no NaN or infinity."""
    layout = codec.state_layout()
    unknown = sorted(set(arrays) - set(layout))
    missing = sorted(set(layout) - set(arrays)) if complete else []
    if unknown or missing:
        raise ValueError(f"state arrays {unknown} are unknown and {missing} are missing")
    for name, array in arrays.items():
        shape, dtype = layout[name]
        if array.shape != shape or array.dtype.str != dtype:
            raise ValueError(f"state array {name} is {array.dtype.str}{list(array.shape)}, "
                             f"expected {dtype}{list(shape)}")
        if name in finite and not np.isfinite(array).all():
            raise ValueError(f"state array {name} holds NaN or infinity")
        if name in _ORTHONORMAL and array.size and np.abs(array).max() > 1.001:
            raise ValueError(f"state array {name} is not orthonormal (an entry exceeds 1)")


def tile_codes(codes: np.ndarray, sign_words: int) -> np.ndarray:
    """Code rows (n, width) in the tiled layout a codec with ``tile_sign_words`` scans
    (see ``kernels.write_tiles``); the last tile is padded with zero rows."""
    n, width = codes.shape
    tiles = np.zeros((-(-n // kernels.TILE_ROWS), kernels.TILE_ROWS * width), dtype=codes.dtype)
    kernels.write_tiles(tiles, 0, np.ascontiguousarray(codes), sign_words)
    return tiles


# =========================================================================== RaBitQ family


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal matrix: Gram-Schmidt of a seeded Gaussian matrix."""
    gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
    return np.ascontiguousarray(kernels.orthonormal_rows(gaussian), dtype=np.float32)


class RaBitQCodec(Codec):
    """RaBitQ-family codes: random rotation, then 1..8-bit levels with a per-vector scale.

    A vector ``o`` is centred on ``c``, rotated (``r = P(o - c)``), and ``r`` is replaced by
    integer levels ``x`` (centred on zero) that point as closely as possible in its direction.
    ``<r, q> ~ <x, q> * |r|^2 / <x, r>`` is the RaBitQ estimator: unbiased for 1-bit codes
    under the random rotation, with error shrinking as 1/sqrt(dim) and with each extra bit.
    The single per-vector factor ``|r|^2 / <x, r>`` is all the scan needs for inner products
    (plus ``|o - c|^2`` for L2).

    Codes are stored as bit planes and scanned with popcounts against the query quantized to
    ``query_bits``. Multi-bit codes are scanned in two steps: the top plane alone is a 1-bit
    RaBitQ code (with a second factor), and the full code is scored only for rows whose 1-bit
    estimate plus its error bound could still make the top candidates.
    """

    name = "rabitq"
    #: the centroid is learnt from the first batch only when it has at least this many rows
    MIN_FIT_ROWS = 32
    #: multiplier of the top-plane estimate's standard error used to skip rows (RaBitQ's eps0)
    #: a row is skipped when its sign-plane estimate plus PRUNE_EPSILON standard errors of that
    #: estimate (``sign_sigma``) cannot reach the K-th best score so far
    PRUNE_EPSILON = 3.0
    DEFAULT_SIGN_SIGMA = 0.3
    #: rows and queries (from the fit sample) that measure ``sign_sigma``
    CALIBRATION_ROWS = 2000
    CALIBRATION_QUERIES = 100
    #: query bits by code bits for bit-plane codes: enough that query rounding stays well
    #: below the code's own error (measured in benchmarks/)
    DEFAULT_QUERY_BITS = {1: 4, 2: 6, 3: 6, 4: 8, 5: 8, 6: 8, 7: 8, 8: 8}

    def __init__(self, dim: int, bits: int, metric: str, *, seed: int = 0,
                 query_bits: int | None = None, n_scales: int = 6, n_sweeps: int = 3) -> None:
        super().__init__(dim, bits, metric)
        self.seed = seed
        self.query_bits = query_bits or self.DEFAULT_QUERY_BITS[bits]
        if not 4 <= self.query_bits <= 8:
            raise ValueError(f"query_bits={self.query_bits} is out of range; use 4-8")
        self.n_scales = n_scales
        self.n_sweeps = n_sweeps
        self.words = (dim + 63) // 64
        self._rotation: np.ndarray | None = None  # drawn on first use, or loaded
        self.centroid: np.ndarray | None = None
        self.level_mid = ((1 << bits) - 1) / 2.0

    @property
    def prunes(self) -> bool:
        """Multi-bit codes keep a top-plane factor to skip hopeless rows early."""
        return self.bits > 1

    @property
    def factor_count(self) -> int:
        return super().factor_count + int(self.prunes)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "seed": self.seed, "query_bits": self.query_bits,
                "n_scales": self.n_scales, "n_sweeps": self.n_sweeps}

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"rotation": self.rotation}  # saved: QR results may differ across BLAS builds
        if self.centroid is not None:
            arrays["centroid"] = self.centroid
        return arrays

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        f32 = np.dtype(np.float32).str
        return {"rotation": ((self.dim, self.dim), f32), "centroid": ((self.dim,), f32)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        _check_state(self, arrays, finite=("rotation", "centroid"))
        rotation = arrays.get("rotation")  # absent until the first vector was added
        if rotation is not None:
            self._rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        centroid = arrays.get("centroid")
        self.centroid = None if centroid is None else np.asarray(centroid, dtype=np.float32)

    @property
    def rotation(self) -> np.ndarray:
        """The random orthogonal matrix (a dim x dim QR: drawn lazily, so that opening a
        stored index, which loads its matrix, never pays for one)."""
        if self._rotation is None:
            self._rotation = random_rotation(self.dim, self.seed)
        return self._rotation

    @property
    def fitted(self) -> bool:
        return self.centroid is not None

    def fit(self, vectors: np.ndarray) -> None:
        if len(vectors) >= self.MIN_FIT_ROWS:
            self.centroid = vectors.mean(axis=0).astype(np.float32)
        else:
            self.centroid = np.zeros(self.dim, dtype=np.float32)

    def code_shape(self) -> tuple[int, ...]:
        return (self.bits, self.words)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint64)

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors @ self.rotation.T, dtype=np.float32)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.centroid is None:
            self.fit(vectors)
        rotated = self.rotate(vectors)  # centred after the rotation: no copy of the batch
        rotated -= self.centroid @ self.rotation.T
        with parallel_section():
            levels, x_dot_r, x1_dot_r, norm_sq = kernels.fit_levels(rotated, self.bits,
                                                                    self.n_scales, self.n_sweeps)
            codes = kernels.pack_planes_parallel(levels, self.bits, self.words)
        factors = np.zeros((len(vectors), self.factor_count), dtype=np.float32)
        factors[:, 0] = _ratio(norm_sq, x_dot_r)
        if self.metric == "l2":
            factors[:, 1] = norm_sq
        if self.prunes:  # the top level bit alone is a 1-bit RaBitQ code
            factors[:, -1] = _ratio(norm_sq, x1_dot_r)
        return codes, factors

    def decode_levels(self, codes: np.ndarray) -> np.ndarray:
        """Centred integer levels ``x`` (n, dim) of stored codes (for tests and refits)."""
        return kernels.unpack_planes(codes, self.dim).astype(np.float32) - self.level_mid

    def quantize_query(self, rotated: np.ndarray) -> dict[str, np.ndarray]:
        """Bit planes (q, words, query_bits) of queries quantized to ``query_bits``."""
        return _quantize_query(rotated, self.query_bits, self.words)

    def scan(self, codes, factors, queries, k, flt, spans=None):
        rotated, const = _rotated_queries(self, queries)
        q_sum = rotated.sum(axis=1, dtype=np.float64)
        const = np.asarray(const, dtype=np.float64)
        l2 = self.metric == "l2"
        quantized = self.quantize_query(rotated)
        return run_scan("planes", codes, factors, flt, len(queries), k,
                        quantized["planes"], quantized["step"], quantized["low"], q_sum, const,
                        self.level_mid, l2, self.factor_count - 1 if self.prunes else -1,
                        self._prune_bound(rotated, quantized["step"]), spans=spans)

    def _prune_bound(self, rotated: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Per query, the top-plane estimate's error bound divided by the row's factor.

        RaBitQ bounds the 1-bit error by ``|r| |q| sqrt(1 - c^2) / c * eps0 / sqrt(dim - 1)``
        where ``c = <x1, r> / (|x1| |r|)``; for rotated vectors ``c`` concentrates at
        sqrt(2 / pi) = 0.8, so ``|r| = factor * c * sqrt(dim) / 2`` and the bound becomes
        ``factor * 0.3 * eps0 * |q|``. Rounding the query to 4 bits adds
        ``eps0 * 0.5 * step4 * sqrt(dim / 12)`` times the factor.
        """
        step4 = step * (1 << (self.query_bits - 4))
        norms = np.linalg.norm(rotated, axis=1)
        return (self.PRUNE_EPSILON * (0.3 * norms + 0.5 * step4 * np.sqrt(self.dim / 12.0))
                ).astype(np.float64)

    def query_step(self, queries: np.ndarray) -> np.ndarray:
        """Quantization step of each query."""
        return self.quantize_query(_rotated_queries(self, queries)[0])["step"]

    def estimate(self, codes: np.ndarray, factors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Estimated scores of every code for every (unquantized) query: the numpy reference."""
        x = self.decode_levels(codes).astype(np.float64)
        rotated, const = _rotated_queries(self, queries)
        ip = (rotated.astype(np.float64) @ x.T) * factors[:, 0][None, :]
        if self.metric == "l2":
            return -(factors[:, 1][None, :] + const[:, None] - 2 * ip)
        return ip + const[:, None]


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
    DEFAULT_SIGN_SIGMA = 0.3
    #: rows and queries (from the fit sample) that measure ``sign_sigma``
    CALIBRATION_ROWS = 2000
    CALIBRATION_QUERIES = 100
    #: query bits by code bits (the full estimate): at 4 bits, 6 query bits cost 0.006 recall
    #: against 8; at 1-2 bits they cost nothing measurable and score faster
    DEFAULT_QUERY_BITS = {1: 6, 2: 6}
    #: candidate scales per segment: 3, 4 and 6 gave the same recall (within 0.001)
    N_SCALES = 3

    def __init__(self, dim: int, bits: int, metric: str, *, seed: int = 0,
                 query_bits: int | None = None) -> None:
        super().__init__(dim, bits, metric)
        self.seed = seed
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

    # -- state ------------------------------------------------------------------------------
    def _set_allocation(self, seg_bits: np.ndarray, seg_weight: np.ndarray) -> None:
        self.seg_bits = np.asarray(seg_bits, dtype=np.int64)
        self.seg_weight = np.asarray(seg_weight, dtype=np.float64)
        self.seg_mid = ((1 << self.seg_bits) - 1) / 2.0
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
        for s in range(self.n_segments):
            for b in range(self.seg_bits[s] - 1):
                self.plane_at[s, b] = at
                at += int(self.seg_words[s])

    @property
    def tile_sign_words(self) -> int:
        """The sign planes of every row lie side by side in tiles, for the 1-bit pass."""
        return self.sign_word_count

    @property
    def ratio_columns(self) -> slice:
        """Factor columns holding the float16 segment ratios, two per column (column 0 is the
        float32 sign-plane factor)."""
        return slice(1, 1 + (self.n_segments + 1) // 2)

    @property
    def factor_count(self) -> int:
        return self.ratio_columns.stop + int(self.metric == "l2")

    @property
    def l2_col(self) -> int:
        return self.factor_count - 1

    def params(self) -> dict[str, Any]:
        return {**super().params(), "seed": self.seed, "query_bits": self.query_bits}

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
        _pack_relative(seg_factor, sign_factor, factors[:, self.ratio_columns])
        if self.metric == "l2":  # |r|^2 of the whole residual: |x|^2 - 2 <x, c> + |c|^2
            centroid = self.centroid.astype(np.float64)
            factors[:, self.l2_col] = (np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
                                       - 2.0 * np.einsum("ij,j->i", vectors, centroid)
                                       + centroid @ centroid)
        return codes, factors

    @property
    def coded_prefix(self) -> int:
        """Segments up to the last one with bits (only those are projected when encoding)."""
        coded = np.nonzero(self.seg_bits > 0)[0]
        return int(coded[-1]) + 1 if len(coded) else 0

    def decode_factors(self, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-segment factors (n, S), sign-plane factor (n,)) as the scan reads them."""
        head = factors[:, 0].astype(np.float64)
        halves = np.ascontiguousarray(factors[:, self.ratio_columns]).view(
            np.float16).astype(np.float64)
        return head[:, None] * halves[:, :self.n_segments], head

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
        seg_sums = np.add.reduceat(rotated.astype(np.float64), self.seg_starts[:-1], axis=1)
        quantized = _quantize_query(rotated, self.query_bits, self.words)
        coded = np.repeat(self.seg_bits > 0, np.diff(self.seg_starts))
        prune = bool((self.seg_bits > 1).any())
        # the sign-plane pass: a 4-bit query weighted by the segments' scales, gathered in the
        # order of the rows' sign words
        weighted = rotated * np.repeat(self.seg_weight, np.diff(self.seg_starts))[None, :]
        signs = _quantize_query(weighted, 4, self.words, dither=self.dither)
        sign_planes = np.ascontiguousarray(signs["planes"][:, self.sign_query_words, :])
        # the code's error and the query's (dithered) rounding error are independent: their
        # variances add
        bound = self.PRUNE_EPSILON * np.hypot(
            self.sign_sigma * np.linalg.norm(rotated[:, coded], axis=1),
            0.5 * signs["step"] * np.sqrt(coded.sum() / 6.0))
        halves = factors.view(np.uint16)  # the float16 ratios, read bit by bit by the scan
        return run_scan("segments", codes, factors, flt, len(queries), k, halves,
                        quantized["planes"], quantized["step"], quantized["low"], seg_sums,
                        np.asarray(const, dtype=np.float64), self.seg_starts, self.seg_bits,
                        self.plane_at, self.seg_mid, self.metric == "l2", self.l2_col, prune,
                        sign_planes, signs["step"], signs["low"],
                        weighted.sum(axis=1, dtype=np.float64), bound.astype(np.float64),
                        spans=spans)

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


def _serial_blas() -> Any:
    """Run BLAS/LAPACK on one thread (when threadpoolctl is installed): a threaded eigh of a
    384 x 384 matrix took 2.4 s instead of 0.014 s while another process held a core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: the fit is only slower on a busy machine
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
    so float16 never overflows; a row whose sign factor is 0 has nothing coded."""
    reference = np.where(sign_factor > 0, sign_factor, 1.0)[:, None]
    ratios = np.where(sign_factor[:, None] > 0, seg_factor / reference, 0.0)
    halves = np.zeros((len(ratios), 2 * out.shape[1]), dtype=np.float16)
    halves[:, :ratios.shape[1]] = ratios
    out[:, :] = halves.view(np.float32)


def _rotated_queries(codec: "RaBitQCodec | SegmentCodec",
                     queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotated queries (centred for L2) and the per-query constant of the estimate:
    ``<q, c>`` for inner products, ``|q - c|^2`` for L2."""
    centroid = codec.centroid if codec.centroid is not None else np.zeros(codec.dim, np.float32)
    if codec.metric == "l2":
        centred = queries - centroid
        return codec.rotate(centred), np.einsum("ij,ij->i", centred, centred)
    return codec.rotate(queries), queries @ centroid


def _quantize_query(rotated: np.ndarray, query_bits: int, words: int,
                    dither: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Bit planes (q, words, query_bits) of queries quantized to ``query_bits`` levels:
    rounded to the nearest level, or with ``dither`` (uniform in [0, 1) per coordinate)
    rounded up with probability equal to the fraction, which makes the rounding error
    independent of the query's own values (its variance is then at most step^2 / 4 per
    coordinate, step^2 / 6 on average)."""
    low = rotated.min(axis=1)
    top = (1 << query_bits) - 1
    step = (rotated.max(axis=1) - low) / top
    step[step == 0] = 1.0
    scaled = (rotated - low[:, None]) / step[:, None]
    levels = np.clip(np.rint(scaled) if dither is None else np.floor(scaled + dither), 0, top)
    planes = kernels.pack_planes(levels.astype(np.uint8), query_bits, words)
    return {"planes": np.ascontiguousarray(planes.transpose(0, 2, 1)),
            "step": step.astype(np.float64), "low": low.astype(np.float64)}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (a zero residual)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _chunk_count(n_rows: int) -> int:
    """Chunks for one query: about 50k rows each, at least two per thread."""
    return max(2 * _thread_count(), n_rows // 50_000)


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


# =========================================================================== registry

CODECS: dict[str, type[Codec]] = {
    "saq": SegmentCodec,
    "rabitq": RaBitQCodec,
    "int8": Int8Codec,
    "fp8": Float8Codec,
    "float16": ExactCodec,
    "float32": ExactCodec,
}


def default_codec_name(bits: int) -> str:
    return {32: "float32", 16: "float16"}.get(bits, "saq")


def make_codec(name: str, dim: int, bits: int, metric: str, **options: Any) -> Codec:
    """Build a codec from its name; the one place codec names are interpreted."""
    if name not in CODECS:
        raise ValueError(f"codec={name!r} is unknown; choose one of {sorted(CODECS)}")
    cls = CODECS[name]
    if cls is ExactCodec:
        expected = 32 if name == "float32" else 16
        if bits != expected:
            raise ValueError(f"codec={name!r} needs bits={expected}, got bits={bits}")
        return ExactCodec(dim, bits, metric)
    if cls in (RaBitQCodec, SegmentCodec):
        if not 1 <= bits <= 8:
            raise ValueError(f"codec={name!r} takes bits from 1 to 8, got bits={bits}")
        return cls(dim, bits, metric, **options)
    return cls(dim, bits, metric)


__all__ = ["CODECS", "Codec", "RowFilter", "make_codec", "default_codec_name", "random_rotation",
           "Spans", "run_scan", "checked_spans",
           "RaBitQCodec", "SegmentCodec", "allocate_bits", "ByteCodec", "Int8Codec", "Float8Codec", "ExactCodec"]
