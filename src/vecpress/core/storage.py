"""Durable files for an index directory: ``.npy`` arrays with CRC32 checksums and a JSON manifest.

The manifest is the single commit point. Array files are written (and fsynced) under names no
manifest refers to yet; then the new manifest is written to a temporary file, fsynced and
atomically renamed over the old one, and the directory is fsynced. A crash at any moment leaves
either the old manifest or the new one, each naming complete files. Files that no manifest names
are leftovers of an interrupted write and are removed when the store is next opened for writing.
Nothing here uses pickle: ``np.load(..., allow_pickle=False)`` and ``json`` only.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
LOCK_FILE = "LOCK"
FORMAT_NAME = "vecpress-index"
FORMAT_VERSION = 1
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


def manifest_files(manifest: dict[str, Any]) -> set[str]:
    """Every file name a manifest refers to."""
    names = {entry["file"] for entry in manifest.get("codec_files", {}).values()}
    for segment in manifest.get("segments", []):
        names.update(entry["file"] for entry in segment["files"].values())
    if manifest.get("tombstones"):
        names.add(manifest["tombstones"]["file"])
    return names


def remove_unreferenced(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete array files that the committed manifest does not name (interrupted writes)."""
    keep = manifest_files(manifest)
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
