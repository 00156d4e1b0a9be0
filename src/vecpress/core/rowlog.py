"""The row log: small adds appended to one file instead of each writing a segment and a manifest.

With ``durability="process"`` an :class:`~vecpress.core.index.Index` appends an add of a few
rows to the log its manifest names (``"log": {"file": "log-<generation>.log"}``), so a
one-row add costs one ``write`` and no file creation, rename or fsync. Creating files and
renaming the manifest are metadata operations that wait for the filesystem's journal, often
for a millisecond or more while other processes fsync; an append does not.

The manifest stays the commit point of the store's structure: it names the segments, the
tombstones and the one log whose records follow its rows. Each record is committed by its own
CRC32: a record is one ``write`` of a header (magic, rows, payload bytes), the rows' ids, codes,
factors and originals, and a CRC32 of all of it. A reader takes the records in order up to
the first that is incomplete or fails its check (a write cut short by ``kill -9`` mid-append,
or, after a power loss, data that never reached the disk), so it always sees a prefix of the
acknowledged adds. Rows an add replaces are not written: replaying the records in order
finds them again. The next manifest commit folds the log into a segment (its replaced rows
into tombstones) and names a new log or none; ``close()`` leaves none.

A log file is untrusted input like every file of a store: opened without following links,
its header's sizes checked against the codec's row layout and the file's size before anything
is allocated, ids checked (non-negative, unique within a record).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .storage import StoreCorruptedError, create_new_file, open_regular_file
from .store_format import StoreLayout

MAGIC = b"VPR1"
#: magic, rows, reserved (0), payload bytes
_HEADER = struct.Struct("<4sIIQ")
_CRC = struct.Struct("<I")
#: an add of at most this many rows goes to the log (larger ones write a segment)
LOG_ADD_ROWS = 64
#: the log is folded into a segment once it would hold more rows ...
LOG_MAX_ROWS = 2048
#: ... or more bytes than this
LOG_MAX_BYTES = 32 << 20


@dataclass
class Rows:
    """Rows read from a log (in record order)."""

    ids: np.ndarray
    codes: np.ndarray
    factors: np.ndarray
    originals: np.ndarray | None
    #: rows per record, so that replacements are replayed record by record
    counts: list[int]


def _row_parts(layout: StoreLayout) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    parts = [("ids", np.dtype(np.int64), ()),
             ("codes", np.dtype(layout.code_dtype), tuple(layout.code_shape)),
             ("factors", np.dtype(np.float32), (layout.factor_count,))]
    if layout.originals_dtype is not None:
        parts.append(("originals", np.dtype(layout.originals_dtype), (layout.dim,)))
    return parts


def row_bytes(layout: StoreLayout) -> int:
    """Bytes one row takes in a record."""
    return sum(dtype.itemsize * int(np.prod(tail, dtype=np.int64))
               for _, dtype, tail in _row_parts(layout))


def encode_record(ids: np.ndarray, codes: np.ndarray, factors: np.ndarray,
                  originals: np.ndarray | None, layout: StoreLayout) -> bytes:
    """One record holding these rows (in the layout's dtypes), ready to append."""
    arrays = {"ids": ids, "codes": codes, "factors": factors, "originals": originals}
    payload = b"".join(np.ascontiguousarray(arrays[name], dtype=dtype).tobytes()
                       for name, dtype, _ in _row_parts(layout))
    header = _HEADER.pack(MAGIC, len(ids), 0, len(payload))
    return header + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(header)))


class LogWriter:
    """Appends records to a new log file (created empty, never through a link)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = directory / name
        self._fd: int | None = create_new_file(self.path)
        self.size = 0
        #: a failed append could not be undone: append no more (the next write starts a log)
        self.broken = False

    def append(self, record: bytes) -> None:
        """Write one record (one ``write`` unless the OS splits it). On failure the file is
        cut back to its previous end, so no record ever follows a broken one."""
        if self._fd is None or self.broken:
            raise RuntimeError(f"{self.path}: the log is closed")
        view, done = memoryview(record), 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except BaseException:
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                self.broken = True
            raise
        self.size += len(record)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Close and delete the file (its creation was not committed)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def read_log(directory: Path, name: str, layout: StoreLayout,
             offset: int = 0) -> tuple[Rows, int]:
    """The rows of the complete, intact records from byte ``offset`` on, and the offset after
    the last of them. Reading stops at the first record that is cut short or fails its
    CRC32 (a write in progress, or one cut short by a crash): those rows were never
    acknowledged. A record whose CRC32 holds but whose content breaks the format is a
    :class:`StoreCorruptedError`; so is a missing file."""
    path = directory / name
    try:
        fd = open_regular_file(path)
    except FileNotFoundError:
        raise StoreCorruptedError(f"{path}: file is missing; the store is incomplete") from None
    parts = _row_parts(layout)
    per_row = row_bytes(layout)
    chunks: dict[str, list[np.ndarray]] = {part: [] for part, _, _ in parts}
    counts: list[int] = []
    try:
        size = os.fstat(fd).st_size
        if size > LOG_MAX_BYTES:
            raise StoreCorruptedError(f"{path}: is {size} bytes, more than the {LOG_MAX_BYTES} "
                                      f"a row log may have; restore the store from a copy")
        while offset + _HEADER.size + _CRC.size <= size:
            header = os.pread(fd, _HEADER.size, offset)
            magic, rows, reserved, payload_bytes = _HEADER.unpack(header)
            end = offset + _HEADER.size + payload_bytes + _CRC.size
            if (magic != MAGIC or reserved != 0 or rows == 0 or rows > LOG_ADD_ROWS
                    or payload_bytes != rows * per_row or end > size):
                break  # a torn or never-written record: the prefix before it is the log
            payload = os.pread(fd, payload_bytes, offset + _HEADER.size)
            (crc,) = _CRC.unpack(os.pread(fd, _CRC.size, end - _CRC.size))
            if len(payload) != payload_bytes or crc != zlib.crc32(payload, zlib.crc32(header)):
                break
            position = 0
            for part, dtype, tail in parts:
                count = rows * int(np.prod(tail, dtype=np.int64))
                chunks[part].append(np.frombuffer(payload, dtype=dtype, count=count,
                                                  offset=position).reshape(rows, *tail))
                position += count * dtype.itemsize
            ids = chunks["ids"][-1]
            if (ids < 0).any() or len(np.unique(ids)) != rows:
                raise StoreCorruptedError(f"{path}: the record at byte {offset} holds negative "
                                          f"or repeated ids; restore the store from a copy")
            counts.append(rows)
            offset = end
    except OSError as exc:
        raise StoreCorruptedError(f"{path}: cannot be read ({exc})") from None
    finally:
        os.close(fd)
    joined = {}
    for part, dtype, tail in parts:
        joined[part] = (np.concatenate(chunks[part]) if chunks[part]
                        else np.zeros((0, *tail), dtype))
    return Rows(ids=joined["ids"], codes=joined["codes"], factors=joined["factors"],
                originals=joined.get("originals"), counts=counts), offset
