"""The in-RAM columns of an :class:`~vecpress.core.index.Index` and the snapshot a search reads.

- ``_Growable``: a row-appendable array (amortised O(1) growth; rows below ``size`` are never
  written in place, so a view of them is a snapshot);
- ``_IdColumn``: the id of every row, removal flags and id -> row lookups;
- ``_TiledCodes``: code rows in the tiled layout the saq scan reads;
- ``_Blocks``: kept originals as row blocks (arrays in RAM, or memory maps of segment files);
- ``_Snapshot``: what one search reads, taken under the index's publish mutex, plus the row
  filter built from it.

Nothing here touches files or knows about documents.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from . import kernels
from .codecs import Codec, RowFilter, tile_codes
from .partitions import ListLayout

#: a filter allowing at most this fraction of rows is scored row by row instead of by mask
SELECTIVE_FRACTION = 1 / 16


class _Growable:
    """A row-appendable array with amortised O(1) growth."""

    def __init__(self, tail: tuple[int, ...], dtype: Any) -> None:
        self._data = np.empty((0, *tail), dtype=dtype)
        self.size = 0

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes allocated, spare capacity included (see :attr:`used_nbytes`)."""
        return int(self._data.nbytes)

    @property
    def used_nbytes(self) -> int:
        """Bytes of the rows held: what the data costs, without room for growth."""
        return int(self.view.nbytes)

    def extend(self, block: np.ndarray) -> None:
        needed = self.size + len(block)
        if needed > len(self._data):
            capacity = needed if self.size == 0 else max(needed, int(len(self._data) * 1.5))
            grown = np.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size: needed] = block
        self.size = needed

    def replace(self, array: np.ndarray) -> None:
        self._data = np.ascontiguousarray(array)
        self.size = len(array)

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` rows without growing again (a rebuild knows its size)."""
        if capacity > len(self._data):
            grown = np.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.view[rows]

    @property
    def scan_view(self) -> np.ndarray:
        return self.view


class _IdColumn:
    """The id of every row, which rows are removed, and the live row of an id.

    While rows carry consecutive ids (the index's own numbering, or a ``Collection``'s) the
    ids are implicit, ``first + row``, and cost no RAM; the first row that breaks the run
    turns them into an explicit int64 array. While explicit ids keep ascending (a
    ``Collection`` after compaction) the array itself is the lookup table (binary search).
    Ids out of order get a sorted copy of the live ids and their rows, plus a short unsorted
    tail of newer rows that is folded in once it reaches ``TAIL_ROWS``: every lookup is
    O(log n) and every append amortised O(1), never a sort of the whole column per call.

    Removed rows are flagged in a bool array that exists only while there are any. Arrays
    below ``size`` are never written in place (removal copies the flags), so a shallow copy
    (:meth:`frozen`) is an immutable snapshot that a search can read while rows are added.
    """

    #: rows appended after the sorted lookup table before it is rebuilt
    TAIL_ROWS = 4096

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self.size = 0
        self._first = 0  # id of row 0 while implicit
        self._explicit: _Growable | None = None
        self._ascending = True  # explicit ids strictly increase with the row
        self._removed: _Growable | None = None
        self.deleted = 0
        # lookup table for ids out of order: live ids of rows [0, _indexed), sorted, and rows
        self._sorted_ids = np.zeros(0, np.int64)
        self._sorted_rows = np.zeros(0, np.int64)
        self._indexed = 0
        self._tail: tuple[int, np.ndarray, np.ndarray] | None = None  # (size, ids, rows) cache
        if ids is not None and len(ids):
            self.extend(np.asarray(ids, dtype=np.int64))

    def frozen(self) -> "_IdColumn":
        """A snapshot: later appends and removals do not change it."""
        if self._explicit is not None and not self._ascending:
            self._sorted_tail()  # computed once here rather than by every snapshot
        twin = _shallow_copy(self)
        for name in ("_explicit", "_removed"):
            part = getattr(self, name)
            if part is not None:
                setattr(twin, name, _shallow_copy(part))
        return twin

    @property
    def nbytes(self) -> int:
        parts = sum(part.nbytes for part in (self._explicit, self._removed) if part is not None)
        return int(parts + self._sorted_ids.nbytes + self._sorted_rows.nbytes)

    @property
    def used_nbytes(self) -> int:
        """:attr:`nbytes` without the spare capacity of the growable columns."""
        parts = sum(part.used_nbytes for part in (self._explicit, self._removed) if part is not None)
        return int(parts + self._sorted_ids.nbytes + self._sorted_rows.nbytes)

    @property
    def removed(self) -> np.ndarray | None:
        """Bool per row, True where removed; None while no row is."""
        return None if self._removed is None else self._removed.view

    @property
    def removal_key(self) -> object:
        """An object that changes whenever a row is removed (the flags' buffer, which a
        removal replaces): caches derived from the flags are keyed on it."""
        return None if self._removed is None else self._removed._data

    def extend(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        if self._explicit is None:
            start = self._first + self.size if self.size else int(ids[0])
            if not self.size:
                self._first = start
            if not np.array_equal(ids, np.arange(start, start + len(ids))):
                self._explicit = _Growable((), np.int64)
                self._explicit.extend(self._first + np.arange(self.size, dtype=np.int64))
        if self._explicit is not None:
            if self._ascending and not self._continues_ascending(ids):
                self._ascending = False
                self._indexed = 0  # the table is built below
            self._explicit.extend(ids)
        if self._removed is not None:
            self._removed.extend(np.zeros(len(ids), np.bool_))
        self.size += len(ids)
        if not self._ascending and self.size - self._indexed > self.TAIL_ROWS:
            self._build_table()

    def _continues_ascending(self, ids: np.ndarray) -> bool:
        last = int(self._explicit.view[-1]) if self._explicit.size else -1
        return bool(ids[0] > last and (len(ids) == 1 or (np.diff(ids) > 0).all()))

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Ids of ``rows`` (whether removed or not), as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._explicit is None:
            return self._first + rows
        return self._explicit.view[rows]

    def of_found(self, rows: np.ndarray) -> np.ndarray:
        """Ids of a search's ``rows`` (int64), -1 where a row is -1 (no hit), as a new array."""
        if self._explicit is None:
            return np.where(rows >= 0, rows + self._first, -1)
        return np.where(rows >= 0, self._explicit.view[rows], -1)  # (row -1 reads the last)

    def all(self) -> np.ndarray:
        """The id of every row, -1 for removed rows (a new array)."""
        ids = self.of_rows(np.arange(self.size))
        if self._removed is not None:
            ids[self._removed.view] = -1
        return ids

    def live_rows(self) -> np.ndarray:
        return (np.arange(self.size) if self._removed is None
                else np.nonzero(~self._removed.view)[0])

    def removed_rows(self) -> np.ndarray:
        return (np.zeros(0, np.int64) if self._removed is None
                else np.nonzero(self._removed.view)[0])

    def rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) for ``ids``: the live row holding each id (0 where there is none)
        and whether there is one."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._explicit is None:
            rows = ids - self._first
            found = (rows >= 0) & (rows < self.size)
        elif self._ascending:
            rows, found = _search_sorted(self._explicit.view, None, ids)
        else:
            rows, found = self._lookup_unordered(ids)
        rows = np.where(found, rows, 0)
        if self._removed is not None:
            found &= ~self._removed.view[rows]
        return rows, found

    def _lookup_unordered(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Newest rows first: the unsorted tail (it holds every re-added id), then the table."""
        tail_ids, tail_rows = self._sorted_tail()
        rows, found = _search_sorted(tail_ids, tail_rows, ids)
        if self._removed is not None:  # a removed tail row may still have a live older copy
            found &= ~self._removed.view[np.where(found, rows, 0)]
        if not found.all():
            older, in_table = _search_sorted(self._sorted_ids, self._sorted_rows, ids)
            take = ~found & in_table
            rows = np.where(take, older, rows)
            found = found | in_table
        return rows, found

    def _build_table(self) -> None:
        live = self.live_rows()
        ids = self._explicit.view[live]
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._sorted_rows = ids[order], live[order]
        self._indexed = self.size
        self._tail = None

    def _sorted_tail(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tail is None or self._tail[0] != self.size:
            rows = np.arange(self._indexed, self.size, dtype=np.int64)
            ids = self._explicit.view[self._indexed:self.size]
            order = np.argsort(ids, kind="stable")  # equal ids stay in row order
            self._tail = (self.size, ids[order], rows[order])
        return self._tail[1], self._tail[2]

    def remove(self, rows: np.ndarray) -> None:
        """Flag ``rows`` as removed (into a new flag array: snapshots keep theirs)."""
        if len(rows) == 0:
            return
        flags = (np.zeros(self.size, np.bool_) if self._removed is None
                 else self._removed.view.copy())
        rows = np.unique(rows)
        fresh = rows[~flags[rows]]
        flags[fresh] = True
        if self._removed is None:
            self._removed = _Growable((), np.bool_)
        self._removed.replace(flags)
        self.deleted += len(fresh)


def _search_sorted(keys: np.ndarray, rows: np.ndarray | None,
                   ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, found) of ``ids`` in the sorted array ``keys`` (row = position when ``rows`` is
    None). A repeated key is an id that was re-added: its last copy is the newest row, the
    only one that can still be live."""
    if len(keys) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), np.bool_)
    at = (np.searchsorted(keys, ids, side="right") - 1).clip(0, len(keys) - 1)
    found = keys[at] == ids
    return (at if rows is None else rows[at]), found


class _TiledCodes:
    """Code rows kept in the tiled layout their codec scans (``Codec.tile_sign_words``):
    rows in, rows out, tiles to the scan. Grows like :class:`_Growable`, a tile at a time."""

    def __init__(self, width: int, sign_words: int) -> None:
        self._tiles = _Growable((kernels.TILE_ROWS * width,), np.uint64)
        self.width = width
        self.sign_words = sign_words
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self._tiles.nbytes

    @property
    def used_nbytes(self) -> int:
        """Bytes of the rows held; the unfilled rest of the last tile counts as spare room."""
        return self.size * self.width * np.dtype(np.uint64).itemsize

    @property
    def scan_view(self) -> np.ndarray:
        return self._tiles.view

    def extend(self, codes: np.ndarray) -> None:
        new_tiles = -(-(self.size + len(codes)) // kernels.TILE_ROWS) - self._tiles.size
        if new_tiles > 0:
            self._tiles.extend(np.zeros((new_tiles, self._tiles.view.shape[1]), np.uint64))
        kernels.write_tiles(self._tiles.view, self.size, np.ascontiguousarray(codes, np.uint64),
                            self.sign_words)
        self.size += len(codes)

    def replace(self, codes: np.ndarray) -> None:
        self._tiles.replace(tile_codes(np.ascontiguousarray(codes, np.uint64), self.sign_words))
        self.size = len(codes)

    def reserve(self, rows: int) -> None:
        self._tiles.reserve(-(-rows // kernels.TILE_ROWS))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return kernels.read_tiles(self._tiles.view, np.asarray(rows, dtype=np.int64),
                                  self.sign_words, self.width)


class _Blocks:
    """Kept original vectors as a list of row blocks (in-memory arrays or memory maps)."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.starts: list[int] = []
        self.rows = 0
        self._table: _BlockTable | None = None  # built by a rerank, shared by twins

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.starts.append(self.rows)
        self.rows += len(block)
        self._table = None

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        """float32 originals of ``rows`` (any order), reading only those rows."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.blocks[0].shape[1]), dtype=np.float32)
        out[order] = self.fetch_sorted(rows[order])
        return out

    def fetch_sorted(self, rows: np.ndarray) -> np.ndarray:
        """float32 originals of ``rows`` (sorted ascending): each block's rows are one run of
        the result, so a search's rerank makes one read per block it touches."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.blocks[0].shape[1]), dtype=np.float32)
        for block, lo, hi, local in self._runs(rows):
            out[lo:hi] = block[local]
        return out

    def exact_scores(self, rows: np.ndarray, queries: np.ndarray,
                     query_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(<x, q>, |x|^2)`` in float64 for each of ``rows`` (sorted ascending) against its
        query ``queries[query_of[j]]`` (float32 rows), read in place by one kernel call over
        every block (see :class:`_BlockTable`): no float32 copy of the rows is made."""
        rows = np.asarray(rows, dtype=np.int64)
        dots = np.empty(len(rows), dtype=np.float64)
        squares = np.empty(len(rows), dtype=np.float64)
        if not len(rows):
            return dots, squares
        if rows[0] < 0 or rows[-1] >= self.rows:  # (the kernel reads the blocks by address)
            raise IndexError(f"rows {rows[0]}..{rows[-1]} lie outside the {self.rows} kept")
        table = self._kernel_table()
        if queries.shape[1] != table.dim:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the originals "
                             f"{table.dim}")
        if not table.verified and not kernels.rows_checked(
                rows, table.starts, table.check_base, table.check_rows, table.checked, False):
            table.verified = self._verify_rows(rows)  # (raises on a block that fails)
            kernels.rows_checked(rows, table.starts, table.check_base, table.check_rows,
                                 table.checked, True)
        kernels.exact_scores_at(table.addresses, table.halves, table.starts, table.dim, rows,
                                queries, query_of, dots, squares)
        return dots, squares

    def _kernel_table(self) -> "_BlockTable":
        """The blocks as :func:`kernels.exact_scores_at` reads them (built once per blocks)."""
        if self._table is None:
            self._table = _BlockTable.of(self.blocks, self.starts, self.rows)
        return self._table

    def _verify_rows(self, rows: np.ndarray) -> bool:
        """Check the CRC32 of the blocks of the checked files that sorted ``rows`` touch;
        True once every block of every file has passed (no later read needs a check)."""
        for block, _lo, _hi, local in self._runs(rows):
            if hasattr(block, "checked_array"):
                block.checked_array(local)
        return all(getattr(block, "_all_verified", True) for block in self.blocks)

    def _runs(self, rows: np.ndarray) -> Iterator[tuple[Any, int, int, np.ndarray]]:
        """For sorted int64 ``rows``: ``(block, lo, hi, local)`` for each block they touch,
        ``rows[lo:hi]`` being its rows and ``local`` their positions within it."""
        edges = np.searchsorted(rows, self.starts + [self.rows]).tolist()
        for b, block in enumerate(self.blocks):
            lo, hi = edges[b], edges[b + 1]
            if lo < hi:
                yield block, lo, hi, rows[lo:hi] - self.starts[b]

    def span(self, start: int, stop: int) -> np.ndarray:
        return self.fetch_sorted(np.arange(start, stop))

    def frozen(self) -> "_Blocks":
        """A snapshot: appends to this object do not change it."""
        twin = _Blocks()
        twin.blocks, twin.starts, twin.rows = list(self.blocks), list(self.starts), self.rows
        if self.blocks:
            twin._table = self._kernel_table()  # (built once, not per snapshot)
        return twin

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.blocks
                       if isinstance(b, np.ndarray) and not _file_mapped(b)))


@dataclass
class _BlockTable:
    """Where each block of kept originals lies in memory, for a rerank in one kernel call.
    It holds the arrays it points into, so they outlive every read through the addresses."""

    arrays: list[np.ndarray]
    addresses: np.ndarray  # (blocks,) int64: each array's first byte
    halves: np.ndarray  # (blocks,) bool: float16 (else float32)
    starts: np.ndarray  # (blocks + 1,) int64: the first row of each block, then the rows
    dim: int
    #: per block: where its files' checksum blocks' flags start in ``checked``, and the rows
    #: of each checksum block (0: an in-memory block, nothing to check)
    check_base: np.ndarray
    check_rows: np.ndarray
    #: per checksum block of every checked file: passed (a search's record, so that rows
    #: already checked cost no Python; ``CheckedRows`` keeps the authoritative flags)
    checked: np.ndarray
    verified: bool = False  # every block of every checked file has passed its CRC32

    @classmethod
    def of(cls, blocks: list[Any], starts: list[int], rows: int) -> "_BlockTable":
        """The table of ``blocks`` (float16 or float32 rows: a block that is not C-contiguous
        is copied, which none of the index's blocks needs)."""
        arrays = [np.ascontiguousarray(getattr(block, "array", block)) for block in blocks]
        for array in arrays:
            if array.ndim != 2 or array.shape[1] != arrays[0].shape[1] or array.dtype not in (
                    np.float16, np.float32):
                raise TypeError(f"kept originals must be (n, dim) float16 or float32 blocks, "
                                f"got {array.dtype} {array.shape}")
        flags = [np.array(getattr(block, "_verified", np.zeros(0, np.bool_)), dtype=np.bool_)
                 for block in blocks]  # (copies: CheckedRows keeps its own)
        return cls(arrays=arrays,
                   addresses=np.array([a.ctypes.data for a in arrays], dtype=np.int64),
                   halves=np.array([a.dtype == np.float16 for a in arrays], dtype=np.bool_),
                   starts=np.array(starts + [rows], dtype=np.int64),
                   dim=arrays[0].shape[1] if arrays else 0,
                   check_base=np.cumsum([0] + [len(f) for f in flags])[:-1].astype(np.int64),
                   check_rows=np.array([getattr(block, "block_rows", 0) if len(f) else 0
                                        for block, f in zip(blocks, flags)], dtype=np.int64),
                   checked=np.concatenate(flags + [np.zeros(0, np.bool_)]))


def _file_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` views a memory-mapped file (its pages are the page cache's, not RAM
    this process owns): a ``np.memmap`` or a view of one."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def _shallow_copy(obj: Any) -> Any:
    """A new object of ``obj``'s class sharing its attributes (``copy.copy`` of a plain object,
    without the pickle protocol's detour: a snapshot takes two or three per search)."""
    twin = object.__new__(type(obj))
    twin.__dict__.update(obj.__dict__)
    return twin


@dataclass(frozen=True)
class _Snapshot:
    """The state one search reads: the codec, the code rows, their factors and ids (with the
    removal flags) and the kept originals, as they were at one moment."""

    codec: Codec
    codes: np.ndarray
    factors: np.ndarray
    ids: _IdColumn
    originals: _Blocks
    lists: ListLayout | None = None  # partitioned: codes and factors are in position order
    tail_labels: np.ndarray | None = None  # partitioned: the lists of the rows after the layout's


def _row_filter(ids: _IdColumn, mask: Any) -> RowFilter:
    """The rows a scan may return: live rows, restricted by ``mask`` when given."""
    n_rows = ids.size
    flt = RowFilter(n_rows=n_rows, removed=ids.removed)
    if mask is None:
        return flt
    allowed = _mask_rows(ids, mask)
    if len(allowed) <= max(64, n_rows * SELECTIVE_FRACTION):
        flt.rows = allowed
    else:
        flt.mask = np.zeros(n_rows, dtype=np.bool_)
        flt.mask[allowed] = True
    return flt


def _mask_rows(ids: _IdColumn, mask: Any) -> np.ndarray:
    """Sorted live rows that ``mask`` (ids or a boolean row array) allows."""
    if isinstance(mask, (set, frozenset)):
        mask = np.fromiter(mask, dtype=np.int64, count=len(mask))
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        # a mask made before rows were appended covers a prefix: later rows are not allowed
        if array.ndim != 1 or len(array) > ids.size:
            raise ValueError(f"mask is a boolean array of shape {array.shape}; it must have "
                             f"one entry per row, shape ({ids.size},) (see Index.row_ids)")
        if ids.removed is not None:
            array = array & ~ids.removed[:len(array)]
        return np.nonzero(array)[0]
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise TypeError("mask must be a collection of integer ids or a boolean row array, "
                        f"got dtype {array.dtype} with shape {array.shape}")
    rows, present = ids.rows_of(array)
    return np.unique(rows[present])


# ---------------------------------------------------------------------- helpers
