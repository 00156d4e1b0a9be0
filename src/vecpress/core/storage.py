"""Durable files for an index directory: ``.npy`` arrays with CRC32 checksums and a JSON manifest.

The manifest is the single commit point. Array files are written (and fsynced) under names no
manifest refers to yet; then the new manifest is written to a temporary file, fsynced and
atomically renamed over the old one, and the directory is fsynced. A crash at any moment leaves
either the old manifest or the new one, each naming complete files. Files that no manifest names
are leftovers of an interrupted write and are removed when the store is next opened for writing;
the files a commit replaced are removed by a later commit (``Index`` keeps them a little longer
for readers that have just read the replaced manifest). With ``sync=False`` (an index's
``durability="process"``) nothing is fsynced: the rename still makes a commit atomic for other
processes and for ``kill -9``, and after a power loss the checksums refuse a manifest whose
files did not reach the disk. Large files are written in chunks by
:class:`ArrayWriter` and read back in chunks by :class:`RowReader`, so that copying a file never
holds it whole in memory.

A store directory is untrusted input (people download and share them). Every file in it is
opened without following a symbolic link and without blocking, and must be a regular file;
``.npy`` headers are parsed here and checked against the manifest and the file's size before
anything is allocated or mapped; the manifest is size-capped before it is parsed. Nothing here
uses pickle or ``np.load``. What the manifest may say is checked by
:mod:`vecpress.core.store_format`.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import stat
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np
from numpy.lib import format as npy_format

MANIFEST = "manifest.json"
LOCK_FILE = "LOCK"
FORMAT_NAME = "vecpress-index"
#: 2: ``"tombstones"`` is a list of entries, each naming rows removed by one write (version 1
#: stored one entry listing every removed row, or null; both are still read)
FORMAT_VERSION = 2
#: the version of a manifest that names a row log (``"log"``, see :mod:`vecpress.core.rowlog`)
#: or partitions (``"partitions"``, see :mod:`vecpress.core.partitions`): older versions, which
#: would miss the log's rows or the lists, refuse it; a store with neither stays version 2
EXTENDED_FORMAT_VERSION = 3
#: rows per checksummed block of an originals file (``block_crc32`` in its manifest entry): a
#: block is verified the first time a rerank reads from it
ORIGINALS_BLOCK_ROWS = 4096
#: the dtypes a store's arrays may have (native byte order; never objects or records)
ARRAY_DTYPES = frozenset(np.dtype(t).str for t in
                         (np.uint8, np.uint64, np.int32, np.int64, np.float16, np.float32,
                          np.float64))
#: a manifest larger than this is refused before it is parsed (one of a 100M-row store is
#: well under 1 MB; parsing 8 MB takes about 0.4 s)
MAX_MANIFEST_BYTES = 8 << 20
#: JSON objects and arrays a manifest may hold (a segment needs eleven): bounds the memory
#: that parsing a hostile manifest can take
MAX_MANIFEST_CONTAINERS = 100_000

_READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))
_LOCK_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))


class StoreCorruptedError(ValueError):
    """A file of the store is missing, truncated, does not match its checksum, or breaks a
    rule of the store format (the message names the file and the rule)."""


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


def sync_files(directory: Path, names: Iterable[str]) -> None:
    """fsync the files ``names`` of ``directory`` (those that exist), then the directory: what
    was written without fsyncs (``sync=False``) becomes durable."""
    for name in names:
        try:
            fd = open_regular_file(directory / name)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


# ---------------------------------------------------------------------- opening files


def open_regular_file(path: Path, flags: int = _READ_FLAGS) -> int:
    """Open a file of a store as a file descriptor, refusing anything but a regular file.

    Symbolic links are not followed and FIFOs do not block: either is refused at once with
    a :class:`StoreCorruptedError` naming the file (``FileNotFoundError`` when it is absent).
    """
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreCorruptedError(
                f"{path}: is a symbolic link; the files of a store must be regular files in "
                f"its directory (replace the link by the file it points to)") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            raise StoreCorruptedError(f"{path}: is not a regular file; the files of a store "
                                      f"must be regular files (remove it)") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StoreCorruptedError(
                f"{path}: is a {_file_kind(mode)}, not a regular file; the files of a store "
                f"must be regular files (remove it)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def require_plain(path: Path, *, directory: bool = False) -> None:
    """Refuse a link or special file at ``path`` (absence is fine), for entries of a store that
    another library opens by name (SQLite follows links): checked just before it does."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise StoreCorruptedError(
            f"{path}: is a symbolic link; the files of a store must be regular files in its "
            f"directory (replace the link by what it points to)")
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        want = "a directory" if directory else "a regular file"
        raise StoreCorruptedError(f"{path}: is a {_file_kind(mode)}, not {want}; remove it")


def create_new_file(path: Path) -> int:
    """Create ``path`` for writing (a file descriptor), never through a link.

    Callers write names that no committed manifest refers to, so a file or link already at
    that name is a leftover: it is unlinked first (unlink does not follow links), then the
    file is created exclusively without following links.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise StoreCorruptedError(f"{path}: a directory stands where the store writes a file; "
                                  f"remove it") from None
    return os.open(path, _CREATE_FLAGS, 0o644)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ---------------------------------------------------------------------- arrays


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


# ---------------------------------------------------------------------- manifest


def write_manifest(directory: Path, manifest: dict[str, Any], *, sync: bool = True) -> None:
    """Atomically replace the manifest (the commit point of every write). ``sync=False``
    skips the fsyncs (of the file and of the directory): the rename is still atomic for
    other processes, but after a power loss the old manifest may be back."""
    temporary = directory / (MANIFEST + ".tmp")
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))  # (C encoder: fast)
    with os.fdopen(create_new_file(temporary), "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    os.replace(temporary, directory / MANIFEST)  # replaces a link there, never follows it
    if sync:
        fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest of a store, opened like every store file (no links, no FIFOs) and
    refused above :data:`MAX_MANIFEST_BYTES` before it is parsed. Its content is checked by
    :func:`vecpress.core.store_format.validate_manifest`."""
    path = directory / MANIFEST
    try:
        fd = open_regular_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} holds no vecpress index ({MANIFEST} is missing); create one with "
            f"Index(dim=..., path={str(directory)!r})") from None
    with open(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size > MAX_MANIFEST_BYTES:
            raise StoreCorruptedError(
                f"{path}: is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may "
                f"have; it is not a vecpress manifest")
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    manifest = _parse_json(raw, path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreCorruptedError(f"{path}: not a vecpress index manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StoreCorruptedError(f"{path}: format_version {version!r} is not a positive "
                                  f"integer; the manifest is corrupted")
    if version > EXTENDED_FORMAT_VERSION:
        raise StoreCorruptedError(
            f"{path}: format version {version!r} is newer than this vecpress supports "
            f"({EXTENDED_FORMAT_VERSION}); upgrade vecpress to open it")
    return manifest


def _parse_json(raw: bytes, path: Path) -> Any:
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_MANIFEST_CONTAINERS:
        raise StoreCorruptedError(
            f"{path}: holds {containers} JSON objects and arrays, more than the "
            f"{MAX_MANIFEST_CONTAINERS} a manifest may have; it is not a vecpress manifest")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreCorruptedError(f"{path}: not valid JSON ({_one_line(exc)})") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


def tombstone_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The tombstone file entries of a manifest: ``tombstones`` is ``null``, one entry (as
    format 1 first wrote it) or a list of entries."""
    tombstones = manifest.get("tombstones")
    if not tombstones:
        return []
    return list(tombstones) if isinstance(tombstones, list) else [tombstones]


def manifest_files(manifest: dict[str, Any]) -> set[str]:
    """Every file name a manifest refers to."""
    names = {entry["file"] for entry in manifest.get("codec_files", {}).values()}
    for segment in manifest.get("segments", []):
        names.update(entry["file"] for entry in segment["files"].values())
    names.update(entry["file"] for entry in tombstone_entries(manifest))
    if manifest.get("partitions"):
        names.add(manifest["partitions"]["centroids"]["file"])
    if manifest.get("log"):
        names.add(manifest["log"]["file"])
    return names


def remove_unreferenced(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete array files that the committed manifest does not name (interrupted writes)."""
    remove_files_except(directory, manifest_files(manifest))


def remove_files(directory: Path, names: Iterable[str]) -> None:
    """Delete the files ``names`` of ``directory`` (those already gone are skipped)."""
    for name in names:
        try:
            os.unlink(directory / name)
        except (FileNotFoundError, IsADirectoryError):
            pass


def remove_files_except(directory: Path, keep: set[str]) -> None:
    """Delete the ``.npy`` and ``.log`` files not named in ``keep``, and a leftover temporary
    manifest."""
    for path in directory.iterdir():
        if ((path.suffix in (".npy", ".log") and path.name not in keep)
                or path.name == MANIFEST + ".tmp"):
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError):
                pass  # gone already, or a directory: not something a write left behind


def disk_bytes(directory: Path, manifest: dict[str, Any]) -> int:
    total = os.lstat(directory / MANIFEST).st_size
    for name in manifest_files(manifest):
        try:
            total += os.lstat(directory / name).st_size
        except FileNotFoundError:
            pass
    return total


class StoreLockedError(RuntimeError):
    """The store is open for writing elsewhere (its directory lock is held)."""


class DirectoryLock:
    """An exclusive advisory lock so that only one process writes a store at a time.

    ``LOCK`` is created or opened without following a link and must be a regular file, so
    a link planted there cannot make the store create or touch a file elsewhere.
    """

    def __init__(self, directory: Path) -> None:
        import fcntl

        self._fd: int | None = open_regular_file(directory / LOCK_FILE, _LOCK_FLAGS)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreLockedError(
                    f"{directory} is already open for writing (by another process, or by a "
                    f"store in this one that was not closed); close that one, or open with "
                    f"read_only=True to search it meanwhile") from None
            raise

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_new_directory(path: Path, kind: str) -> DirectoryLock:
    """Make ``path`` (new, or an empty directory) the home of a new store of ``kind`` and hold
    its write lock. Refuses a file, and a directory that holds anything but a lock, before
    anything is written there."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory")
    if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
        raise FileExistsError(f"path={str(path)!r} is a non-empty directory that holds no "
                              f"{kind}; choose a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    return DirectoryLock(path)


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
