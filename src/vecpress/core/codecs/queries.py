"""Query preparation shared by the bit-plane families (``rabitq``, ``saq``): rotation,
centring and quantization to bit planes, and small numeric helpers."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kernels

if TYPE_CHECKING:
    from .rabitq import RaBitQCodec
    from .saq import SegmentCodec


def _serial_blas() -> Any:
    """Run BLAS/LAPACK on one thread (when threadpoolctl is installed): a threaded eigh of a
    384 x 384 matrix took 2.4 s instead of 0.014 s while another process held a core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: the fit is only slower on a busy machine
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
    rotated = np.ascontiguousarray(rotated)
    use_dither = dither is not None
    planes, step, low = kernels.quantize_planes(
        rotated, query_bits, words,
        np.ascontiguousarray(dither, dtype=np.float64) if use_dither else _NO_DITHER, use_dither)
    return {"planes": planes, "step": step, "low": low}


_NO_DITHER = np.zeros(1, dtype=np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (a zero residual)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out
