"""How segment files are merged, and how their rows are streamed in bounded memory.

Merge policy (size tiers): a segment of ``rows`` rows sits in tier ``floor(log_F(rows))`` for
the fan-in ``F = MERGE_FAN_IN``. When ``F`` segments of one tier lie in a run of segments no
larger than that tier, the run (from the first of them to the ``F``-th) is merged into one
segment, which lands in a higher tier. So every row is rewritten about ``log_F(n)`` times, a
doubling of the store rewrites only the tiers it completes, and the store keeps at most ``F-1``
segments per tier in the usual case of batches of similar size. Runs are always contiguous:
rows keep their numbers (the codes in RAM and the tombstones use them), so a merge changes
files only. A merge never makes a segment larger than :func:`max_segment_rows`: segments of a
tier whose ``F`` together would exceed it stay as they are until a compaction rewrites the
store, so a store of ``n`` rows keeps ``O(F log_F(max) + F n / max)`` segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import storage

#: segments merged at once, and the growth factor between tiers
MERGE_FAN_IN = 8
#: a merge never writes a segment larger than this many rows ...
MAX_SEGMENT_ROWS = 2_000_000
#: ... or larger than this many bytes of kept originals
MAX_SEGMENT_BYTES = 2 << 30
#: memory for one chunk while merges, compaction, ``save`` and refits stream rows from one file
#: to another (originals are read with ``pread``, never mapped); a chunk's rows are counted as
#: four float32 copies, the working set of re-encoding them after a refit
MERGE_BUFFER_BYTES = 256 << 20


def tier(rows: int) -> int:
    """The size tier of a segment: ``floor(log_F(rows))`` (0 for fewer than ``F`` rows)."""
    level, bound = 0, MERGE_FAN_IN
    while rows >= bound:  # integer steps: math.log is off by one at exact powers
        level += 1
        bound *= MERGE_FAN_IN
    return level


def max_segment_rows(row_bytes: int) -> int:
    """The largest segment a merge may write, for originals of ``row_bytes`` per row."""
    return max(1, min(MAX_SEGMENT_ROWS, MAX_SEGMENT_BYTES // max(1, row_bytes)))


def plan_merge(sizes: Sequence[int], max_rows: int) -> tuple[int, int] | None:
    """The segments ``[first, stop)`` to merge next, or None when no merge is due.

    ``sizes`` are the segments' row counts in row order. The lowest tier with ``F`` segments
    inside one run of segments of that tier or below wins; the merged run spans the first to
    the ``F``-th of them (smaller segments in between come along and move up too).
    """
    tiers = [tier(rows) for rows in sizes]
    for level in sorted(set(tiers)):
        members: list[int] = []  # positions of tier-`level` segments in the current run
        for position, segment_tier in enumerate(tiers):
            if segment_tier > level:
                members = []
                continue
            if segment_tier == level:
                members.append(position)
            if len(members) == MERGE_FAN_IN:
                first, stop = members[0], position + 1
                if sum(sizes[first:stop]) <= max_rows:
                    return first, stop
                members = members[1:]  # too large together; try the next window
    return None


def chunk_rows(row_bytes: int, *, budget: int | None = None, cap: int = 65_536) -> int:
    """Rows per chunk so that a chunk of ``row_bytes`` per row stays within ``budget``."""
    budget = MERGE_BUFFER_BYTES if budget is None else budget
    return max(1, min(cap, budget // max(1, row_bytes)))


class SegmentWriter:
    """The files of one new segment, written part by part in chunks (see ``ArrayWriter``).

    ``parts`` maps a part name (``codes``, ``factors``, ``ids``, ``originals``) to its dtype and
    trailing shape; originals also get per-block CRC32s; ``sync=False`` skips the fsyncs.
    ``finish`` returns the segment's
    manifest entry; leaving a ``with`` block by an exception deletes every partial file.
    """

    def __init__(self, directory: Path, name: str, rows: int,
                 parts: dict[str, tuple[Any, tuple[int, ...]]], *, sync: bool = True) -> None:
        self.name = name
        self.rows = rows
        self._writers: dict[str, storage.ArrayWriter] = {}
        try:
            for part, (dtype, tail) in parts.items():
                self._writers[part] = storage.ArrayWriter(
                    directory, f"{name}-{part}.npy", dtype, (rows, *tail),
                    blocks=part == "originals", sync=sync)
        except BaseException:
            self.abort()
            raise

    def append(self, **chunks: np.ndarray | None) -> None:
        """The next rows of each part (parts given as None are skipped)."""
        for part, chunk in chunks.items():
            if chunk is not None:
                self._writers[part].append(chunk)

    def finish(self) -> dict[str, Any]:
        files = {part: writer.finish() for part, writer in self._writers.items()}
        return {"name": self.name, "rows": self.rows, "files": files}

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.abort()

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is not None:
            self.abort()
