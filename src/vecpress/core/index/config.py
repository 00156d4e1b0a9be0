"""An :class:`~vecpress.core.index.Index`'s settings: the constructor's arguments checked into
the JSON config its manifest stores, with the defaults they take, and the small array helpers
the other modules share (normalisation, padded results, per-vector RAM)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels, store_format
from ..codecs import default_codec_name, make_codec
from ..validate import as_positive_int

#: accepted metric names -> canonical name
METRIC_ALIASES = {"cosine": "cosine", "cos": "cosine", "ip": "ip", "dot": "ip",
                  "inner_product": "ip", "l2": "l2", "euclidean": "l2"}
#: candidates scanned per requested hit, by code bits, when reranking (from benchmarks/; 2
#: bits: 4 and 6 gave the same recall@10 on the real 100k glosses, 0.9999 flat and the same
#: at every nprobe of 256 lists, 3-17% faster)
DEFAULT_OVERSAMPLE = {1: 10, 2: 4, 3: 4, 4: 3, 5: 3, 6: 2, 7: 2, 8: 2}
RERANK_DTYPES = {"float16": np.float16, "float32": np.float32}
#: the largest magnitude float16 holds; originals beyond it would be stored as infinity
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: largest squared norm of a vector whose scores stay finite in float32
_MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4


def _make_config(*, dim: Any, metric: Any, bits: Any, rerank: Any, codec: Any, oversample: Any,
                 rerank_dtype: Any, truncate_dim: Any, seed: Any, query_bits: Any,
                 partitions: Any = None, coded_factors: Any = False) -> dict[str, Any]:
    """Validate constructor arguments into the JSON config the manifest stores.

    ``coded_factors`` is the ``saq`` factor layout (see ``SegmentCodec``): new indexes pass
    True; a stored config without the key (written before it existed) reads as False, the
    layout its files have."""
    dim = as_positive_int(dim, "dim")
    if not isinstance(metric, str) or metric.lower() not in METRIC_ALIASES:
        raise ValueError(f"metric={metric!r} is unknown; use 'cosine', 'ip' or 'l2'")
    metric = METRIC_ALIASES[metric.lower()]
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an integer (1-8, 16 or 32), got {bits!r}")
    bits = int(bits)
    if not (1 <= bits <= 8 or bits in (16, 32)):
        raise ValueError(f"bits={bits} is out of range; use 1-8 for quantized codes, 16 for "
                         f"float16 or 32 for exact float32")
    codec = default_codec_name(bits) if codec is None else codec
    if not isinstance(rerank, (bool, np.bool_)):
        raise TypeError(f"rerank must be True or False, got {rerank!r}")
    if oversample is None:
        oversample = DEFAULT_OVERSAMPLE.get(bits, 1)
    oversample = as_positive_int(oversample, "oversample")
    if oversample > store_format.MAX_OVERSAMPLE:
        raise ValueError(f"oversample={oversample} is above {store_format.MAX_OVERSAMPLE}; "
                         f"pass a larger oversample to search() for one query instead")
    if rerank_dtype not in RERANK_DTYPES:
        raise ValueError(f"rerank_dtype={rerank_dtype!r} is unknown; use 'float16' or 'float32'")
    if truncate_dim is not None:
        truncate_dim = as_positive_int(truncate_dim, "truncate_dim")
        if truncate_dim > dim:
            raise ValueError(f"truncate_dim={truncate_dim} exceeds dim={dim}")
        if truncate_dim == dim:
            truncate_dim = None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if query_bits is not None:
        query_bits = as_positive_int(query_bits, "query_bits")
        if not 4 <= query_bits <= 8:
            raise ValueError(f"query_bits={query_bits} is out of range; use 4-8")
    if not isinstance(coded_factors, (bool, np.bool_)):
        raise TypeError(f"coded_factors must be True or False, got {coded_factors!r}")
    lossy = make_codec(codec, truncate_dim or dim, bits, "ip").lossy  # validates codec/bits
    partitions = _check_partitions(partitions, rerank=bool(rerank) and lossy)
    config = {"dim": dim, "metric": metric, "bits": bits, "rerank": bool(rerank),
              "codec": codec, "oversample": oversample, "rerank_dtype": rerank_dtype,
              "truncate_dim": truncate_dim, "seed": int(seed), "query_bits": query_bits,
              "partitions": partitions}
    if coded_factors and codec == "saq":  # (absent: the layout of older stores)
        config["coded_factors"] = True
    return config


def _check_partitions(partitions: Any, *, rerank: bool) -> int | str | None:
    """``partitions`` as the config stores it: None, "auto" or a list count."""
    if partitions is None or partitions == "auto":
        return partitions
    if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)):
        raise TypeError(f"partitions must be 'auto', None or a number of lists, got "
                        f"{partitions!r}")
    if not 1 <= int(partitions) <= store_format.MAX_LISTS:
        raise ValueError(f"partitions={int(partitions)} is out of range; use 1 to "
                         f"{store_format.MAX_LISTS} lists, 'auto' or None")
    if not rerank:
        raise ValueError(f"partitions={int(partitions)} needs the kept originals to train the "
                         f"lists: use rerank=True with a quantized code (1-8 bits), or "
                         f"partitions=None")
    return int(partitions)




def ram_bytes_per_vector(ram_bytes: int, fixed_bytes: int, count: int) -> float | None:
    """RAM each vector costs: (``ram_bytes`` - ``fixed_bytes``) / ``count`` (codes, factors,
    ids, list membership; spare capacity and fixed costs excluded), ``None`` for an empty
    index. Every figure vecpress prints per vector (``stats()``, ``vecpress stats``, ``bench``,
    the demo, the README) comes from here."""
    if count <= 0:
        return None
    return (ram_bytes - fixed_bytes) / count


def _spread(sizes: np.ndarray | None) -> dict[str, int]:
    """Smallest, median and largest of ``sizes`` (empty while flat)."""
    if sizes is None or not len(sizes):
        return {}
    return {"min": int(sizes.min()), "median": int(np.median(sizes)), "max": int(sizes.max())}




def _normalized(vectors: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to unit length (a new float32 array), the norms taken in float64 so rows of
    values near 1e20 or 1e-20, whose squares leave float32's range, are scaled like any other
    (see ``kernels.unit_rows``); ``ValueError`` naming the first all-zero row."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty_like(vectors)
    zero = kernels.unit_rows(vectors, out)
    if zero >= 0:
        raise ValueError(f"{name} row {zero} is all zeros; cosine similarity needs non-zero "
                         f"vectors")
    return out


def _empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.full((n_queries, k), -np.inf, dtype=np.float32),
            np.full((n_queries, k), -1, dtype=np.int64))


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    extra = k - ids.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=-1))
