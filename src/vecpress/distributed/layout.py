"""The root directory of a sharded collection: its manifest, its shard directories, routing.

Layout::

    <path>/sharded.json     format, shard names, routing rule, the settings of every shard
    <path>/LOCK             held by the one driver that writes
    <path>/shard-0000/      a Collection directory (docs.sqlite, index/, LOCK held by its actor)
    <path>/shard-0001/      ...

The manifest is written once, when the store is created (after every shard directory exists),
and never changes. A store directory is untrusted input: the manifest is read without following
links and refused above :data:`MAX_ROOT_MANIFEST_BYTES`, every field is checked against the
one shape this version writes, and shard names must be exactly ``shard-0000`` ... in order, so
nothing in the file can point outside the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import storage
from ..core.collection import INDEX_OPTIONS
from ..core.index import METRIC_ALIASES, Index

ROOT_MANIFEST = "sharded.json"
FORMAT_NAME = "vecpress-sharded"
FORMAT_VERSION = 1
#: the routing rule this version writes and reads: the first 8 bytes of BLAKE2b of the id's
#: UTF-8 bytes, as a big-endian unsigned integer, modulo the number of shards
ROUTING = {"hash": "blake2b-64", "rule": "hash mod shards"}
#: most shards a store may have (each is one Ray actor and one directory)
MAX_SHARDS = 1024
MAX_ROOT_MANIFEST_BYTES = 64 << 10
_SETTINGS = ("dim", "metric", "bits", "index_options")


def shard_name(position: int) -> str:
    """The directory name of shard ``position`` (``shard-0000``, ``shard-0001``, ...)."""
    return f"shard-{position:04d}"


def shard_of(doc_id: str, shards: int) -> int:
    """The shard a document id is routed to: stable across processes, machines and versions
    (Python's ``hash`` is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def route(ids: Sequence[str], shards: int) -> list[np.ndarray]:
    """For each shard, the positions in ``ids`` that belong to it (in the order given)."""
    owner = np.fromiter((shard_of(i, shards) for i in ids), dtype=np.int64, count=len(ids))
    return [np.nonzero(owner == s)[0] for s in range(shards)]


def as_shard_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= int(value) <= MAX_SHARDS:
        raise ValueError(f"shards must be an integer from 1 to {MAX_SHARDS}, got {value!r}")
    return int(value)


def new_manifest(shards: int, dim: int, metric: str, bits: int,
                 index_options: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "shards": [shard_name(i) for i in range(shards)], "routing": dict(ROUTING),
            "dim": dim, "metric": metric, "bits": bits, "index_options": dict(index_options)}


def create_root(path: Path, manifest: dict[str, Any]) -> None:
    """Make the shard directories, then write the manifest (fsynced): a crash before the
    manifest leaves a directory that does not open as a store and can be created again."""
    for name in manifest["shards"]:
        (path / name).mkdir(exist_ok=True)
    temporary = path / (ROOT_MANIFEST + ".tmp")
    with os.fdopen(storage.create_new_file(temporary), "wb") as handle:
        handle.write(json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path / ROOT_MANIFEST)
    storage.fsync_dir(path)


def holds_store(path: Path) -> bool:
    return os.path.lexists(path / ROOT_MANIFEST)


def read_root(path: Path) -> dict[str, Any]:
    """The checked manifest of the store at ``path`` (``StoreCorruptedError`` naming the file
    and the rule it breaks; ``FileNotFoundError`` when there is none)."""
    file = path / ROOT_MANIFEST
    try:
        fd = storage.open_regular_file(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"path={str(path)!r} holds no sharded vecpress collection ({ROOT_MANIFEST} is "
            f"missing); create one with ShardedCollection(dim, path=..., shards=...)") from None
    with open(fd, "rb") as handle:
        raw = handle.read(MAX_ROOT_MANIFEST_BYTES + 1)
    if len(raw) > MAX_ROOT_MANIFEST_BYTES:
        raise storage.StoreCorruptedError(
            f"{file}: is larger than {MAX_ROOT_MANIFEST_BYTES} bytes; it is not a sharded "
            f"collection manifest")
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise storage.StoreCorruptedError(f"{file}: not valid JSON ({exc})") from None
    _check_manifest(manifest, file)
    for name in manifest["shards"]:
        shard = path / name
        storage.require_plain(shard, directory=True)
        if not shard.is_dir():
            raise storage.StoreCorruptedError(
                f"{shard}: the shard directory named by {ROOT_MANIFEST} is missing; restore it "
                f"from a copy (its documents are lost otherwise)")
    return manifest


def check_settings(manifest: dict[str, Any], path: Path, given: dict[str, Any]) -> None:
    """Refuse settings given to open a store (``None``: not given) that differ from those in
    its ``manifest``: a ``ValueError`` naming the setting and the stored value."""
    stored = {"dim": manifest["dim"], "bits": manifest["bits"], "metric": manifest["metric"],
              "shards": len(manifest["shards"]), **manifest["index_options"]}
    for name, value in given.items():
        if value is None:
            continue
        if name == "metric" and isinstance(value, str):
            value = METRIC_ALIASES.get(value.lower(), value)
        if stored.get(name, _ABSENT) != value:
            raise ValueError(f"{name}={value!r} does not match the sharded collection at "
                             f"{str(path)!r}, created with {name}="
                             f"{stored.get(name, 'the default')!r}; leave {name} out to open it")


_ABSENT = object()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _check_manifest(manifest: Any, file: Path) -> None:
    def bad(rule: str) -> storage.StoreCorruptedError:
        return storage.StoreCorruptedError(f"{file}: {rule}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise bad("not a sharded vecpress collection manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise bad(f"format version {version} is newer than this vecpress supports "
                  f"({FORMAT_VERSION}); upgrade vecpress to open it")
    expected = {"format", "format_version", "shards", "routing", *_SETTINGS}
    if set(manifest) != expected:
        raise bad(f"has keys {sorted(manifest)}, expected {sorted(expected)}")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise bad(f"shards must be a list of 1 to {MAX_SHARDS} names")
    if shards != [shard_name(i) for i in range(len(shards))]:
        raise bad("shards must be named shard-0000, shard-0001, ... in order")
    if manifest["routing"] != ROUTING:
        raise bad(f"routing {manifest['routing']!r} is not one this vecpress knows "
                  f"({ROUTING!r})")
    dim, metric, bits = manifest["dim"], manifest["metric"], manifest["bits"]
    options = manifest["index_options"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1 << 16:
        raise bad(f"dim {dim!r} is not an integer from 1 to 65536")
    if metric not in set(METRIC_ALIASES.values()):
        raise bad(f"metric {metric!r} is not one of {sorted(set(METRIC_ALIASES.values()))}")
    if not isinstance(options, dict) or set(options) - set(INDEX_OPTIONS):
        raise bad(f"index_options must be a dict of {', '.join(INDEX_OPTIONS)}")
    try:  # the Index checks bits and every option (in memory, nothing is written)
        Index(dim, metric=metric, bits=bits, path=None, **options)
    except (TypeError, ValueError) as exc:
        raise bad(f"its settings are not valid ({exc})") from None
