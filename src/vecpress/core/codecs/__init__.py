"""Codecs: turn float vectors into compact codes and score queries against those codes.

A codec is a small object with array state (saved as ``.npy`` by the index, never pickled) and
four operations: ``fit`` (optional, data-dependent state), ``encode``, ``scan`` (best-K rows
for a batch of queries, under an optional row filter) and ``estimate`` (scores of given rows,
used by tests). Every codec works in one of two internal metrics: ``"ip"`` (inner product; the
index normalises vectors first for cosine) or ``"l2"``. Scores are always higher-is-better: the
inner product, or minus the squared Euclidean distance.

``CODECS`` maps a codec name to its class; :func:`make_codec` is the only place names are read.

One module per family: ``rabitq``, ``saq`` and ``scalar`` (one-byte and exact codes), over
``base`` (the ``Codec`` class, state checks, the tiled layout), ``queries`` (query preparation
shared by the bit-plane families) and ``scanning`` (row filters, spans, running a kernel and
merging heaps). This package holds the registry and re-exports the names other layers use.
"""

from __future__ import annotations

from typing import Any

from .base import Codec, tile_codes
from .queries import _quantize_query
from .rabitq import RaBitQCodec, random_rotation
from .saq import SegmentCodec, _pack_relative, allocate_bits
from .scalar import ByteCodec, ExactCodec, Float8Codec, Int8Codec
from .scanning import PlannedSpans, RowFilter, Spans, _split_spans, checked_spans, run_scan

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


__all__ = ["CODECS", "ByteCodec", "Codec", "ExactCodec", "Float8Codec", "Int8Codec",
           "PlannedSpans", "RaBitQCodec", "RowFilter", "SegmentCodec", "Spans", "_pack_relative",
           "_quantize_query", "_split_spans", "allocate_bits", "checked_spans",
           "default_codec_name", "make_codec", "random_rotation", "run_scan", "tile_codes"]
