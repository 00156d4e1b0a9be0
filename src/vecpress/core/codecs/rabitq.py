"""The ``rabitq`` codec: RaBitQ-family codes (a random rotation, then 1-8-bit levels with a
per-vector scale), scanned as bit planes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from ..parallel import parallel_section
from .base import Codec, _check_state
from .queries import _quantize_query, _ratio, _rotated_queries, _serial_blas
from .scanning import run_scan


#: dimensions from which the rotation is a LAPACK QR (on one BLAS thread) instead of the numba
#: Gram-Schmidt: the same matrix up to rounding, but Gram-Schmidt's 2 d^3 scalar steps took
#: 117 s at d = 2560 (multi-vector encodings) on a busy machine, the QR about a second
LAPACK_ROTATION_DIM = 1024


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal matrix: the orthonormalised rows of a seeded Gaussian matrix
    (Gram-Schmidt, or from :data:`LAPACK_ROTATION_DIM` on a QR with a positive diagonal)."""
    gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
    if dim < LAPACK_ROTATION_DIM:
        return np.ascontiguousarray(kernels.orthonormal_rows(gaussian), dtype=np.float32)
    with _serial_blas():
        q, r = np.linalg.qr(gaussian.T)  # columns of q: Gram-Schmidt of the rows, up to signs
    rows = q.T * np.sign(np.diag(r))[:, None]
    return np.ascontiguousarray(rows, dtype=np.float32)


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
