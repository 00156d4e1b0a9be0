"""``.npy`` arrays of a store: headers parsed and checked before anything is allocated or
mapped, CRC32 checksums (per file, and per block of rows for originals), whole-array reads and
writes, chunked writes (:class:`ArrayWriter`) and reads (:class:`RowReader`), and the lazily
checked rows of a mapped originals file (:class:`CheckedRows`)."""

from __future__ import annotations

import io
import math
import mmap
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from .files import StoreCorruptedError, _one_line, create_new_file, open_regular_file


#: bytes of a file :meth:`RowReader.gather` maps at a time (its pages leave the process's
#: resident memory when the window is unmapped)
GATHER_WINDOW_BYTES = 64 << 20
#: rows per checksummed block of an originals file (``block_crc32`` in its manifest entry): a
#: block is verified the first time a rerank reads from it
ORIGINALS_BLOCK_ROWS = 4096
#: the dtypes a store's arrays may have (native byte order; never objects or records)
ARRAY_DTYPES = frozenset(np.dtype(t).str for t in
                         (np.uint8, np.uint64, np.int32, np.int64, np.float16, np.float32,
                          np.float64))


def checksum(array: np.ndarray) -> int:
    """CRC32 of an array's bytes in C order."""
    data = np.ascontiguousarray(array)
    return zlib.crc32(memoryview(data).cast("B")) if data.size else 0


def block_checksums(array: np.ndarray, block_rows: int = ORIGINALS_BLOCK_ROWS) -> list[int]:
    """CRC32 of each run of ``block_rows`` rows of ``array`` (the last run may be shorter).

    Stored as ``"block_rows"`` and ``"block_crc32"`` in the manifest entry of an originals
    file, so a reader can verify the few blocks a rerank touches instead of the whole file.
    """
    return [checksum(array[start:start + block_rows])
            for start in range(0, len(array), block_rows)]


def write_array(directory: Path, name: str, array: np.ndarray, *,
                blocks: bool = False, sync: bool = True) -> dict[str, Any]:
    """Write ``array`` to ``directory/name`` (fsynced unless ``sync=False``); returns its
    manifest entry (with a CRC32 per block of rows when ``blocks``, see
    :func:`block_checksums`). A link or leftover file at that name is replaced, never written
    through."""
    array = np.ascontiguousarray(array)
    with os.fdopen(create_new_file(directory / name), "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    entry = {"file": name, "crc32": checksum(array), "shape": list(array.shape),
             "dtype": array.dtype.str}
    if blocks:
        entry.update(block_rows=ORIGINALS_BLOCK_ROWS, block_crc32=block_checksums(array))
    return entry


def read_array(directory: Path, entry: dict[str, Any], *, mmap: bool = False,
               verify: bool = True) -> np.ndarray:
    """Read (or memory-map, read-only) the array a manifest entry names.

    The file is opened without following links and must be a regular file; its ``.npy``
    header must match the entry's shape and dtype, and the file's size the header, before
    anything is allocated or mapped. ``verify`` also checks the CRC32 (reading every byte).
    A violation is a :class:`StoreCorruptedError` naming the file.
    """
    path = directory / entry["file"]
    try:
        fd = open_regular_file(path)
    except FileNotFoundError:
        raise StoreCorruptedError(f"{path}: file is missing; the store is incomplete") from None
    try:
        with open(fd, "rb", closefd=False) as handle:
            shape, dtype, offset = _checked_header(handle, fd, path, entry)
            if mmap and math.prod(shape):
                array = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)
            else:
                array = _read_data(handle, path, shape, dtype)
    except OSError as exc:
        raise StoreCorruptedError(f"{path}: cannot be read ({_one_line(exc)})") from None
    finally:
        os.close(fd)
    if verify and checksum(array) != entry["crc32"]:
        raise StoreCorruptedError(f"{path}: checksum mismatch; the file is corrupted")
    return array


def _read_npy_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an ``.npy`` file, refusing what a store never writes."""
    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version} is not one numpy.save writes")
    except Exception as exc:  # numpy's parser of untrusted bytes: ValueError, SyntaxError,
        # tokenize.TokenError, RecursionError... all mean the same here
        raise StoreCorruptedError(
            f"{path}: not a readable .npy file ({_one_line(exc)}); the file is corrupted") from None
    if dtype.hasobject or dtype.str not in ARRAY_DTYPES:
        raise StoreCorruptedError(
            f"{path}: holds dtype {dtype.str!r}; a store's arrays are plain numbers in native "
            f"byte order ({', '.join(sorted(ARRAY_DTYPES))})")
    if fortran and len(shape) > 1:
        raise StoreCorruptedError(f"{path}: is in Fortran order; a store writes C order only")
    return tuple(int(n) for n in shape), dtype, handle.tell()


def _checked_header(handle: BinaryIO, fd: int, path: Path,
                    entry: dict[str, Any]) -> tuple[tuple[int, ...], np.dtype, int]:
    """The header of an array file, checked against its manifest entry and against the
    file's size (before anything of that size is allocated or mapped)."""
    shape, dtype, offset = _read_npy_header(handle, path)
    if list(shape) != list(entry["shape"]) or dtype.str != entry["dtype"]:
        raise StoreCorruptedError(
            f"{path}: holds {dtype.str}{list(shape)}, the manifest expects "
            f"{entry['dtype']}{entry['shape']}; the file is truncated or was replaced")
    expected = offset + math.prod(shape) * dtype.itemsize
    size = os.fstat(fd).st_size
    if size != expected:
        raise StoreCorruptedError(
            f"{path}: is {size} bytes but its header describes {expected}; the file is "
            f"truncated or was extended")
    return shape, dtype, offset


def _read_data(handle: BinaryIO, path: Path, shape: tuple[int, ...],
               dtype: np.dtype) -> np.ndarray:
    array = np.empty(shape, dtype=dtype)
    if not array.size:
        return array
    view = memoryview(array).cast("B")
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise StoreCorruptedError(f"{path}: ended while being read; the file is truncated")
        done += got
    return array


#: reads of at most this many rows find their blocks in a Python loop (see CheckedRows)
_FEW_ROWS = 64


class CheckedRows:
    """Rows of a memory-mapped originals file, each block of rows CRC-checked on first read.

    ``block_crc32`` (see :func:`block_checksums`) holds one CRC32 per ``block_rows`` rows.
    The first read that touches a block verifies it and remembers it (once per block per
    process); a mismatch raises :class:`StoreCorruptedError` naming the file and the block,
    so a flipped bit never becomes a wrong score. No lock is held while checking: two
    threads may verify the same block at once, which is harmless.
    """

    def __init__(self, array: np.ndarray, path: Path, block_rows: int,
                 block_crc32: list[int]) -> None:
        # (a plain ndarray view of the map: indexing a np.memmap makes a memmap object per
        # result, which cost a search's rerank about 4 us a block)
        self.array = np.asarray(array)
        self.path = path
        self.block_rows = block_rows
        self._expected = block_crc32
        self._verified = np.zeros(len(block_crc32), dtype=np.bool_)
        self._all_verified = False  # once True, reads skip the block bookkeeping

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The rows at integer positions ``rows`` (an array), after checking their blocks."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.checked_array(rows)[rows]

    def checked_array(self, rows: np.ndarray) -> np.ndarray:
        """The whole mapped array, once the blocks ``rows`` (int64 positions) touch have
        passed their checks: for a caller that reads those rows itself (the rerank's kernel)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and not self._all_verified:
            self._verify_blocks_of(rows)
        return self.array

    def _verify_blocks_of(self, rows: np.ndarray) -> None:
        """Verify the blocks ``rows`` touch. A rerank reads a few rows per file: for those a
        loop over Python ints is several times cheaper than numpy's unique and masks, which
        cost a search about 10 us per file until every block of it had been read."""
        if rows.size <= _FEW_ROWS:
            blocks = {row // self.block_rows for row in rows.tolist()}
            unchecked = [block for block in blocks if not self._verified[block]]
        else:
            blocks = np.unique(rows // self.block_rows)
            unchecked = blocks[~self._verified[blocks]].tolist()
        if not unchecked:
            return
        for block in unchecked:
            self.verify_block(int(block))
        self._all_verified = bool(self._verified.all())

    def verify_block(self, block: int) -> None:
        """Check one block's CRC32 (no-op once it has passed)."""
        if self._verified[block]:
            return
        start = block * self.block_rows
        stop = min(start + self.block_rows, len(self.array))
        if checksum(self.array[start:stop]) != self._expected[block]:
            raise StoreCorruptedError(
                f"{self.path}: block {block} (rows {start}-{stop - 1}) fails its checksum; "
                f"the file is corrupted (restore the store from a copy)")
        self._verified[block] = True


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of this dtype and shape."""
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(shape)}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, fields)
    except ValueError:  # a header over 64 KiB (never for our shapes): np.save moves to 2.0
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, fields)
    return buffer.getvalue()


class ArrayWriter:
    """Writes one ``.npy`` file chunk by chunk, so an array never has to be whole in memory.

    The header is written for the final ``shape`` up front; :meth:`append` adds rows (the
    trailing dimensions and dtype of ``shape``/``dtype``) and keeps the CRC32 running, and the
    per-block CRC32s of :func:`block_checksums` when ``blocks``. :meth:`finish` checks that every
    row came, fsyncs (unless ``sync=False``), and returns the manifest entry
    :func:`write_array` would have returned
    for the whole array (the file is byte-for-byte what it would have written, too).
    :meth:`abort` (or leaving a ``with`` block by an exception) deletes the partial file.
    """

    def __init__(self, directory: Path, name: str, dtype: Any, shape: tuple[int, ...], *,
                 blocks: bool = False, sync: bool = True) -> None:
        self.path = directory / name
        self.sync = sync
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.rows = 0
        self._crc = 0
        self._blocks: list[int] | None = [] if blocks else None
        self._block_crc = 0
        self._block_filled = 0  # rows in the current block
        # (a leftover of a crash at this generation is in no committed manifest)
        self._handle = os.fdopen(create_new_file(self.path), "wb")
        self._handle.write(_npy_header(self.dtype, self.shape))

    def append(self, chunk: np.ndarray) -> None:
        """Add the next rows (cast to the writer's dtype; trailing dimensions must match)."""
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.shape[1:] or self.rows + len(chunk) > self.shape[0]:
            raise ValueError(f"{self.path}: chunk of shape {chunk.shape} does not fit the "
                             f"{self.rows} of {self.shape} rows written so far")
        self.rows += len(chunk)
        if self._blocks is not None:
            self._add_to_blocks(chunk)
        if chunk.size:  # (rows may have zero width, e.g. the factors of an exact code)
            data = memoryview(chunk).cast("B")
            self._handle.write(data)
            self._crc = zlib.crc32(data, self._crc)

    def _add_to_blocks(self, chunk: np.ndarray) -> None:
        """Running CRC32 per ``ORIGINALS_BLOCK_ROWS`` rows; blocks span chunk boundaries."""
        position = 0
        while position < len(chunk):
            take = min(ORIGINALS_BLOCK_ROWS - self._block_filled, len(chunk) - position)
            part = chunk[position:position + take]
            if part.size:
                self._block_crc = zlib.crc32(memoryview(part).cast("B"), self._block_crc)
            self._block_filled += take
            position += take
            if self._block_filled == ORIGINALS_BLOCK_ROWS:
                self._blocks.append(self._block_crc)
                self._block_crc, self._block_filled = 0, 0

    def finish(self) -> dict[str, Any]:
        """Complete the file (fsynced unless the writer was made with ``sync=False``); returns
        its manifest entry (as :func:`write_array` does)."""
        if self.rows != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows} rows were written of the {self.shape[0]} "
                             f"its header announces; the file was deleted")
        self._handle.flush()
        if self.sync:
            os.fsync(self._handle.fileno())
        self._handle.close()
        entry = {"file": self.name, "crc32": self._crc,
                 "shape": list(self.shape), "dtype": self.dtype.str}
        if self._blocks is not None:
            if self._block_filled:
                self._blocks.append(self._block_crc)
            entry.update(block_rows=ORIGINALS_BLOCK_ROWS, block_crc32=self._blocks)
        return entry

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._handle.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ArrayWriter":
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is not None and not self._handle.closed:
            self.abort()


class RowReader:
    """Reads row ranges of a committed ``.npy`` file with ``pread`` into fresh buffers.

    Unlike a memory map, pages read this way are not mapped into the process, so copying a
    whole file through a small buffer keeps the resident memory at the buffer's size.
    ``read`` in order from row 0 to the end also checks the file's CRC32 on the way
    (:meth:`check` raises :class:`StoreCorruptedError` if it does not match the entry).
    """

    def __init__(self, directory: Path, entry: dict[str, Any]) -> None:
        self.path = directory / entry["file"]
        self.entry = entry
        try:
            self._fd = open_regular_file(self.path)
        except FileNotFoundError:
            raise StoreCorruptedError(f"{self.path}: file is missing; the store is incomplete") from None
        try:
            with open(self._fd, "rb", closefd=False) as handle:
                self.shape, self.dtype, self._offset = _checked_header(
                    handle, self._fd, self.path, entry)
        except BaseException:
            os.close(self._fd)
            raise
        self._row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self._crc = 0
        self._next_row = 0  # the CRC covers rows [0, _next_row) while reads stay in order

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new array."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out).cast("B")
        position, done = self._offset + start * self._row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got == 0:
                raise StoreCorruptedError(f"{self.path}: file ended early; it is truncated")
            done += got
        if start == self._next_row:
            self._crc = zlib.crc32(view, self._crc)
            self._next_row = stop
        return out

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` (sorted int64, in range) into ``out``, through a memory map of at most
        :data:`GATHER_WINDOW_BYTES` of the file at a time, each closed before the next opens:
        only the pages of the rows read are ever mapped, and never more than a window's. For
        rows far apart, one ``pread`` each cost 3.3 us a row (384-d float32) and this 0.55.
        (The file's CRC32 is not checked: see :meth:`read` for a read that checks it.)"""
        if not len(rows):
            return
        if rows[0] < 0 or rows[-1] >= self.shape[0]:
            raise IndexError(f"{self.path}: rows {rows[0]}..{rows[-1]} outside its "
                             f"{self.shape[0]} rows")
        window = max(1, GATHER_WINDOW_BYTES // max(1, self._row_bytes))
        lo = 0
        while lo < len(rows):
            first = int(rows[lo])
            hi = int(np.searchsorted(rows, first + window, side="left"))
            last = int(rows[hi - 1]) + 1
            start = self._offset + first * self._row_bytes
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            length = self._offset + last * self._row_bytes - aligned
            values = (last - first) * (self._row_bytes // self.dtype.itemsize)
            mapped = mmap.mmap(self._fd, length, prot=mmap.PROT_READ, offset=aligned)
            block = None
            try:
                block = np.frombuffer(mapped, dtype=self.dtype, offset=start - aligned,
                                      count=values).reshape(last - first, *self.shape[1:])
                out[lo:hi] = block[rows[lo:hi] - first]
            finally:
                block = None  # (no view of the map may outlive it)
                mapped.close()
            lo = hi

    def check(self) -> None:
        """After reading every row in order: raise if the data does not match its CRC32."""
        if self._next_row == self.shape[0] and self._crc != self.entry["crc32"]:
            raise StoreCorruptedError(f"{self.path}: checksum mismatch; the file is corrupted")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "RowReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
