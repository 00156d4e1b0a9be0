"""numba kernels: bit packing, popcount scans, code fitting and a bounded top-k.

Plain module-level functions on arrays, compiled once with ``cache=True``. They never raise on
user data and know nothing of documents or files: the Python layers validate before calling.
One module per family: ``planes`` (bit-plane codes, ``rabitq``), ``segments`` (segment codes
in tiles and their scan, ``saq``, written by ``segment_encoding``), ``bytes``
(``int8``/``fp8``), with the shared top-k heap in ``heap``, the
LLVM intrinsics in ``intrinsics``, the k-means loops in ``kmeans``, the rerank's exact
scores in ``rerank`` and unit-length rows for cosine in ``vectors``. This package re-exports
the names the codecs, the column store, the index and the clustering use.
"""

from __future__ import annotations

from ..parallel import configure_threading_layer

configure_threading_layer()  # before any parallel kernel runs (see parallel.py)

# (imported after the threading layer is chosen)
from .bytes import scan_bytes_parallel, scan_bytes_task  # noqa: E402
from .intrinsics import popcount64  # noqa: E402
from .kmeans import cluster_sums, lower_nearest, nearest_of_scores, seed_gains  # noqa: E402
from .planes import (  # noqa: E402
    fit_levels, orthonormal_rows, pack_planes, pack_planes_parallel, quantize_planes,
    scan_planes_parallel, scan_planes_task, unpack_planes)
from .heap import sorted_heaps  # noqa: E402
from .probe import plan_one_query, rows_at, span_extent  # noqa: E402
from .rerank import (  # noqa: E402
    best_candidates, candidates_by_row, exact_scores_at, rows_checked)
from .segment_encoding import encode_segments, pack_segments, unpack_segments  # noqa: E402
from .segments import (  # noqa: E402
    TILE_ROWS, prepare_queries, read_tiles, scan_segments_parallel, scan_segments_task,
    write_tiles)
from .vectors import unit_rows  # noqa: E402

#: serial task and parallel driver of each code family
SCANS = {
    "planes": (scan_planes_task, scan_planes_parallel),
    "bytes": (scan_bytes_task, scan_bytes_parallel),
    "segments": (scan_segments_task, scan_segments_parallel),
}

__all__ = ["best_candidates", "candidates_by_row", "cluster_sums", "encode_segments",
           "exact_scores_at", "fit_levels", "lower_nearest", "nearest_of_scores",
           "orthonormal_rows", "pack_planes", "pack_planes_parallel", "pack_segments",
           "plan_one_query", "popcount64", "prepare_queries", "quantize_planes", "read_tiles",
           "rows_at", "rows_checked", "scan_bytes_parallel", "scan_bytes_task",
           "scan_planes_parallel", "scan_planes_task", "scan_segments_parallel",
           "scan_segments_task", "SCANS", "seed_gains", "sorted_heaps", "span_extent",
           "TILE_ROWS", "unit_rows", "unpack_planes", "unpack_segments", "write_tiles"]
