"""The token file of a multi-vector store: float16 token rows, appended, read memory-mapped.

Layout: a 64-byte header (magic ``VPTOKEN1``, format version, token dimension), then rows of
``dim`` little-endian float16 values, back to back. A document's tokens are one run of rows;
where it starts and how many rows it has is kept with the document (in the collection's
SQLite row), so the document commit is also the commit of its tokens.

**Crash safety.** Rows are appended and (``durability="full"``) fsynced *before* the document
that points at them is committed. A crash in between leaves rows nothing points at (unused
space, never wrong answers); a torn write leaves a partial last row, which is ignored when the
file is read and overwritten by the next append. A pointer past the last whole row cannot come
from a crash, so it is refused as :class:`StoreCorruptedError`, as is a bad header.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from pathlib import Path

import numpy as np

from ..core import storage
from ..core.storage import StoreCorruptedError

MAGIC = b"VPTOKEN1"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sII")  # magic, version, dim
_APPEND_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
ROW_DTYPE = np.dtype("<f2")


def _header(dim: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, dim).ljust(HEADER_BYTES, b"\0")


class TokenFile:
    """Append-only float16 token rows of one store (see the module docstring).

    Thread-safe: appends are serialised; reads use the memory map of the moment, which stays
    valid while anyone holds it, and map the file again when asked for rows beyond it (a
    reader process sees what the writer appended since).
    """

    def __init__(self, path: Path, dim: int, *, read_only: bool, sync: bool) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self._row_bytes = self.dim * ROW_DTYPE.itemsize
        self._sync = sync
        self._lock = threading.Lock()
        self._fd = storage.open_regular_file(self.path, storage._READ_FLAGS if read_only else _APPEND_FLAGS)
        try:
            self._check_header()
            self._rows = self._whole_rows()
            self._view = self._map(self._rows)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def create(cls, path: Path, dim: int, *, sync: bool) -> "TokenFile":
        """Write a new empty token file (header only) and open it for appending."""
        fd = storage.create_new_file(path)
        try:
            os.write(fd, _header(dim))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if sync:
            storage.fsync_dir(Path(path).parent)
        return cls(path, dim, read_only=False, sync=sync)

    def _check_header(self) -> None:
        raw = os.pread(self._fd, HEADER_BYTES, 0)
        if len(raw) < HEADER_BYTES:
            raise StoreCorruptedError(f"{self.path}: shorter than its {HEADER_BYTES}-byte header")
        magic, version, dim = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise StoreCorruptedError(f"{self.path}: not a vecpress token file (bad magic)")
        if version != VERSION:
            raise StoreCorruptedError(f"{self.path}: token file version {version}; this vecpress "
                                      f"reads version {VERSION} (upgrade vecpress)")
        if dim != self.dim:
            raise StoreCorruptedError(f"{self.path}: holds {dim}-dimensional tokens but the store's "
                                      f"manifest says {self.dim}")

    def _whole_rows(self) -> int:
        """Rows wholly present in the file (a torn last row is not counted)."""
        size = os.fstat(self._fd).st_size
        return max(0, size - HEADER_BYTES) // self._row_bytes

    def _map(self, rows: int) -> np.ndarray:
        if rows == 0:
            return np.zeros((0, self.dim), dtype=ROW_DTYPE)
        mapped = mmap.mmap(self._fd, HEADER_BYTES + rows * self._row_bytes, access=mmap.ACCESS_READ)
        return np.frombuffer(mapped, dtype=ROW_DTYPE, count=rows * self.dim,
                             offset=HEADER_BYTES).reshape(rows, self.dim)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def disk_bytes(self) -> int:
        return os.fstat(self._fd).st_size

    def append(self, matrices: list[np.ndarray]) -> np.ndarray:
        """Write the matrices' rows as float16 after the last whole row; returns each one's
        first row. Durable (fsynced) on return when the file was opened with ``sync``."""
        with self._lock:
            rows = np.concatenate(matrices).astype(ROW_DTYPE, copy=False)
            starts = self._rows + np.concatenate([[0], np.cumsum([len(m) for m in matrices])[:-1]])
            data = memoryview(np.ascontiguousarray(rows)).cast("B")
            offset = HEADER_BYTES + self._rows * self._row_bytes
            written = 0
            while written < len(data):  # pwrite at the end of the whole rows: a torn tail is overwritten
                written += os.pwrite(self._fd, data[written:], offset + written)
            if self._sync:
                os.fsync(self._fd)
            self._rows += len(rows)
            return starts.astype(np.int64)

    def flush(self) -> None:
        """fsync what was appended without it (``durability="process"``)."""
        os.fsync(self._fd)

    def read(self, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of several documents back to back, as float16, with their offsets.

        Refuses a pointer outside the file's whole rows (after mapping the file again, in case
        another process appended since)."""
        starts = np.asarray(starts, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if len(starts) == 0:
            return np.zeros((0, self.dim), dtype=ROW_DTYPE), offsets
        view = self._view
        end = int((starts + counts).max())
        if end > len(view) or (starts < 0).any() or (counts < 1).any():
            view = self._remap()
            if end > len(view) or (starts < 0).any() or (counts < 1).any():
                raise StoreCorruptedError(
                    f"{self.path}: a document points at token rows outside the file's "
                    f"{len(view)} rows (or at an empty run); the store was altered")
        if len(starts) == 1:
            return view[starts[0]:starts[0] + counts[0]], offsets
        rows = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        return view[rows], offsets

    def _remap(self) -> np.ndarray:
        with self._lock:
            rows = self._whole_rows()
            if rows > len(self._view):
                self._view = self._map(rows)
                self._rows = max(self._rows, rows)
            return self._view

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
