"""The manifest, a store's single commit point: atomic replacement, a size-capped parse, the
files it names, and the removal of files no manifest names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .files import StoreCorruptedError, _one_line, create_new_file, fsync_dir, open_regular_file


MANIFEST = "manifest.json"
FORMAT_NAME = "vecpress-index"
#: 2: ``"tombstones"`` is a list of entries, each naming rows removed by one write (version 1
#: stored one entry listing every removed row, or null; both are still read)
FORMAT_VERSION = 2
#: the version of a manifest that names a row log (``"log"``, see :mod:`vecpress.core.rowlog`)
#: or partitions (``"partitions"``, see :mod:`vecpress.core.partitions`): older versions, which
#: would miss the log's rows or the lists, refuse it; a store with neither stays version 2
EXTENDED_FORMAT_VERSION = 3
#: a manifest larger than this is refused before it is parsed (one of a 100M-row store is
#: well under 1 MB; parsing 8 MB takes about 0.4 s)
MAX_MANIFEST_BYTES = 8 << 20
#: JSON objects and arrays a manifest may hold (a segment needs eleven): bounds the memory
#: that parsing a hostile manifest can take
MAX_MANIFEST_CONTAINERS = 100_000


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
