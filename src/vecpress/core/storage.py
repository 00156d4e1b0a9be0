"""Durable files for an index directory: ``.npy`` arrays with CRC32 checksums and a JSON manifest.

The manifest is the single commit point. Array files are written (and fsynced) under names no
manifest refers to yet; then the new manifest is written to a temporary file, fsynced and
atomically renamed over the old one, and the directory is fsynced. A crash at any moment leaves
either the old manifest or the new one, each naming complete files. Files that no manifest names
are leftovers of an interrupted write and are removed when the store is next opened for writing;
the files a commit replaced are removed by a later commit (``Index`` keeps them a little longer
for readers that have just read the replaced manifest). Large files are written in chunks by
:class:`ArrayWriter` and read back in chunks by :class:`RowReader`, so that copying a file never
holds it whole in memory.
Nothing here uses pickle: ``np.load(..., allow_pickle=False)`` and ``json`` only.
"""

from __future__ import annotations

import errno
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
LOCK_FILE = "LOCK"
FORMAT_NAME = "vecpress-index"
#: 2: ``"tombstones"`` is a list of entries, each naming rows removed by one write (version 1
#: stored one entry listing every removed row, or null; both are still read)
FORMAT_VERSION = 2
#: rows per checksummed block of an originals file (``block_crc32`` in its manifest entry): a
#: block is verified the first time a rerank reads from it
ORIGINALS_BLOCK_ROWS = 4096


class StoreCorruptedError(ValueError):
    """A file of the store is missing, truncated or does not match its checksum."""


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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_array(directory: Path, name: str, array: np.ndarray, *,
                blocks: bool = False) -> dict[str, Any]:
    """Write ``array`` to ``directory/name`` durably; returns its manifest entry (with a CRC32
    per block of rows when ``blocks``, see :func:`block_checksums`)."""
    array = np.ascontiguousarray(array)
    target = directory / name
    with open(target, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    entry = {"file": name, "crc32": checksum(array), "shape": list(array.shape),
             "dtype": array.dtype.str}
    if blocks:
        entry.update(block_rows=ORIGINALS_BLOCK_ROWS, block_crc32=block_checksums(array))
    return entry


def read_array(directory: Path, entry: dict[str, Any], *, mmap: bool = False,
               verify: bool = True) -> np.ndarray:
    """Read an array named by a manifest entry; a clear error names the file when it is bad."""
    path = directory / entry["file"]
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StoreCorruptedError(f"{path}: file is missing; the store is incomplete") from None
    except (ValueError, OSError, EOFError) as exc:
        raise StoreCorruptedError(f"{path}: file is truncated or corrupted ({exc})") from None
    if list(array.shape) != list(entry["shape"]) or array.dtype.str != entry["dtype"]:
        raise StoreCorruptedError(
            f"{path}: holds {array.dtype.str}{list(array.shape)}, the manifest expects "
            f"{entry['dtype']}{entry['shape']}; the file is truncated or was replaced")
    if verify and checksum(array) != entry["crc32"]:
        raise StoreCorruptedError(f"{path}: checksum mismatch; the file is corrupted")
    return array


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest (the commit point of every write)."""
    temporary = directory / (MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, directory / MANIFEST)
    fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} holds no vecpress index ({MANIFEST} is missing); create one with "
            f"Index(dim=..., path={str(directory)!r})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreCorruptedError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreCorruptedError(f"{path}: not a vecpress index manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreCorruptedError(
            f"{path}: format version {version!r} is newer than this vecpress supports "
            f"({FORMAT_VERSION}); upgrade vecpress to open it")
    return manifest


def tombstone_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The tombstone files of a manifest as a list (format 1 stored one entry or null)."""
    tombstones = manifest.get("tombstones")
    if not tombstones:
        return []
    return [tombstones] if isinstance(tombstones, dict) else list(tombstones)


def manifest_files(manifest: dict[str, Any]) -> set[str]:
    """Every file name a manifest refers to."""
    names = {entry["file"] for entry in manifest.get("codec_files", {}).values()}
    for segment in manifest.get("segments", []):
        names.update(entry["file"] for entry in segment["files"].values())
    names.update(entry["file"] for entry in tombstone_entries(manifest))
    return names


def remove_unreferenced(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete array files that the committed manifest does not name (interrupted writes)."""
    remove_files_except(directory, manifest_files(manifest))


def remove_files_except(directory: Path, keep: set[str]) -> None:
    """Delete the ``.npy`` files not named in ``keep``, and a leftover temporary manifest."""
    for path in directory.iterdir():
        if (path.suffix == ".npy" and path.name not in keep) or path.name == MANIFEST + ".tmp":
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def disk_bytes(directory: Path, manifest: dict[str, Any]) -> int:
    total = (directory / MANIFEST).stat().st_size
    for name in manifest_files(manifest):
        try:
            total += (directory / name).stat().st_size
        except FileNotFoundError:
            pass
    return total


class DirectoryLock:
    """An exclusive advisory lock so that only one process writes a store at a time."""

    def __init__(self, directory: Path) -> None:
        import fcntl

        self._handle = open(directory / LOCK_FILE, "a+b")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RuntimeError(
                    f"{directory} is already open for writing (by another process, or by a "
                    f"store in this one that was not closed); close that one, or open with "
                    f"read_only=True to search it meanwhile") from None
            raise

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()


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
    row came, fsyncs, and returns the manifest entry :func:`write_array` would have returned
    for the whole array (the file is byte-for-byte what it would have written, too).
    :meth:`abort` (or leaving a ``with`` block by an exception) deletes the partial file.
    """

    def __init__(self, directory: Path, name: str, dtype: Any, shape: tuple[int, ...], *,
                 blocks: bool = False) -> None:
        self.path = directory / name
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.rows = 0
        self._crc = 0
        self._blocks: list[int] | None = [] if blocks else None
        self._block_crc = 0
        self._block_filled = 0  # rows in the current block
        try:  # a leftover of a crash at this generation is not in any committed manifest
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._handle = os.fdopen(os.open(self.path, flags, 0o644), "wb")
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
        """Make the file durable; returns its manifest entry (as :func:`write_array` does)."""
        if self.rows != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows} rows were written of the {self.shape[0]} "
                             f"its header announces; the file was deleted")
        self._handle.flush()
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
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreCorruptedError(f"{self.path}: file is missing; the store is incomplete") from None
        try:
            self._offset, self.dtype, self.shape = self._header()
        except BaseException:
            os.close(self._fd)
            raise
        self._row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self._crc = 0
        self._next_row = 0  # the CRC covers rows [0, _next_row) while reads stay in order

    def _header(self) -> tuple[int, np.dtype, tuple[int, ...]]:
        with open(self._fd, "rb", closefd=False) as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read(handle)
            except (ValueError, OSError, EOFError) as exc:
                raise StoreCorruptedError(f"{self.path}: file is truncated or corrupted ({exc})") from None
            offset = handle.tell()
        if (fortran or list(shape) != list(self.entry["shape"])
                or dtype.str != self.entry["dtype"]):
            raise StoreCorruptedError(
                f"{self.path}: holds {dtype.str}{list(shape)}, the manifest expects "
                f"{self.entry['dtype']}{self.entry['shape']}; the file is truncated or was replaced")
        size = os.fstat(self._fd).st_size
        if size != offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise StoreCorruptedError(f"{self.path}: file is {size} bytes, its header needs "
                                      f"more or fewer; the file is truncated or was replaced")
        return offset, dtype, tuple(shape)

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
