"""What a store's manifest may say, checked before anything is allocated.

A store directory is untrusted input. :func:`validate_manifest` checks the manifest's keys,
JSON types, file names (the store's own patterns: no separators, no ``..``, nothing absolute),
that no segment or file is listed twice, and that every number is within sane limits, before
the codec is even built. :func:`validate_layout` then checks every file entry's shape and dtype
against the codec and the configuration, before any array is read. After the arrays are read,
:func:`dead_rows`, :func:`check_ids` and :func:`check_count` check what only the data can tell.
A violation is a :class:`~vecpress.core.storage.StoreCorruptedError` whose one-line message
names the manifest or the file and the rule it broke.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .storage import ARRAY_DTYPES, MANIFEST, StoreCorruptedError

#: limits of a manifest's numbers (far above any real store, far below an allocation that
#: could exhaust memory before the files are checked against them)
MAX_DIM = 65_536
MAX_ROWS = 2 ** 40
MAX_ELEMENTS = 2 ** 48
#: candidates per hit: the rerank gathers k * oversample original rows per query
MAX_OVERSAMPLE = 1024
MAX_ID = 2 ** 63 - 1
MAX_SEED = 2 ** 64 - 1

TOP_KEYS = frozenset({"format", "format_version", "config", "codec", "generation", "next_id",
                      "count", "rows", "codec_files", "segments", "tombstones"})
#: optional top-level keys (format 3: ``"log"``, the row log of ``durability="process"``;
#: ``"partitions"``, the lists of a partitioned index)
OPTIONAL_TOP_KEYS = frozenset({"log", "partitions"})
LOG_KEYS = frozenset({"file"})
PARTITION_KEYS = frozenset({"lists", "nprobe", "trained_rows", "centroids"})
#: optional: the rerank's candidates per hit the lists were tuned with, when the index's own
#: ``oversample`` was too few for its codes (see ``partitions.searched_setting``), and the
#: live rows the search defaults were last tuned at when that was after the training
PARTITION_OPTIONAL_KEYS = frozenset({"oversample", "tuned_rows"})
SEGMENT_KEYS = frozenset({"name", "rows", "files"})
ENTRY_KEYS = frozenset({"file", "crc32", "shape", "dtype"})
BLOCK_KEYS = frozenset({"block_rows", "block_crc32"})
SEGMENT_PARTS = ("codes", "factors", "ids", "originals", "lists")
REQUIRED_PARTS = frozenset({"codes", "factors", "ids"})

_GEN = "[0-9]{8,19}"
CODEC_FILE = re.compile(rf"codec-{_GEN}-([a-z_]+)\.npy")
SEGMENT_NAME = re.compile(rf"seg-{_GEN}")
#: (a lists file may carry a second number: a retraining rewrites every segment's lists at once)
SEGMENT_FILE = re.compile(rf"seg-{_GEN}-(codes|factors|ids|originals|lists)(?:-[0-9]{{1,19}})?\.npy")
CENTROIDS_FILE = re.compile(rf"part-{_GEN}-centroids\.npy")
#: most lists a store may have (far above sqrt of MAX_ROWS)
MAX_LISTS = 1 << 22
TOMBSTONE_FILE = re.compile(rf"tomb-{_GEN}(-[0-9]{{1,19}})?\.npy")
LOG_FILE = re.compile(rf"log-{_GEN}\.log")
STATE_NAME = re.compile("[a-z_]{1,64}")
_GENERATION = re.compile(_GEN)

_INT64 = np.dtype(np.int64).str
_INT32 = np.dtype(np.int32).str
_FLOAT32 = np.dtype(np.float32).str
_RESTORE = "the manifest was edited or is corrupted; restore the store from a copy"


def _fail(where: Path, rule: str) -> StoreCorruptedError:
    return StoreCorruptedError(f"{where}: {rule}; {_RESTORE}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, where: Path, name: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise _fail(where, f"{name} is {_short(value)}, it must be an integer from {low} to {high}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(value: Any, where: Path, name: str, required: frozenset[str],
          optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``value`` as a JSON object holding every ``required`` key and nothing unknown."""
    if not isinstance(value, dict):
        raise _fail(where, f"{name} is {type(value).__name__}, it must be a JSON object")
    missing = sorted(required - value.keys())
    if missing:
        raise _fail(where, f"{name} lacks the key(s) {missing}")
    unknown = sorted(map(str, value.keys() - required - optional))
    if unknown:
        raise _fail(where, f"{name} has key(s) {_short(unknown)} that the store format does not "
                           f"define")
    return value


# ---------------------------------------------------------------------- the manifest alone


def validate_manifest(manifest: dict[str, Any], directory: Path) -> None:
    """Check a parsed manifest's structure, names and limits (raises StoreCorruptedError).

    Runs before the codec is built or any file is read: keys and JSON types, file names
    following the store's own patterns, each segment and file listed once, dimensions, row
    counts and shapes within limits, segment rows adding up to ``rows``.
    """
    where = directory / MANIFEST
    _keys(manifest, where, "the manifest", TOP_KEYS, OPTIONAL_TOP_KEYS)
    _int(manifest["generation"], where, "generation", 0, MAX_ID)
    _int(manifest["next_id"], where, "next_id", 0, MAX_ID)
    rows = _int(manifest["rows"], where, "rows", 0, MAX_ROWS)
    _int(manifest["count"], where, "count", 0, rows)
    _check_config(manifest["config"], where)
    _check_codec_params(manifest["codec"], manifest["config"], where)
    seen: set[str] = set()
    _check_codec_files(manifest["codec_files"], where, seen)
    _check_segments(manifest["segments"], rows, where, seen)
    _check_tombstones(manifest["tombstones"], rows, where, seen)
    _check_partitions(manifest, where, seen)
    if "log" in manifest:
        _check_log(manifest["log"], where, seen)
    _check_generation(manifest, where, seen)


def _check_log(log: Any, where: Path, seen: set[str]) -> None:
    _keys(log, where, "log", LOG_KEYS)
    _check_file_name(log, where, "log", LOG_FILE, seen)


def _check_file_name(entry: dict[str, Any], where: Path, name: str, pattern: re.Pattern[str],
                     seen: set[str]) -> str:
    """``entry["file"]``: a name of the store's own ``pattern``, not listed before."""
    file = entry["file"]
    if not isinstance(file, str) or not pattern.fullmatch(file):
        raise _fail(where, f"{name}.file {_short(file)} is not a file name this store writes "
                           f"(expected {pattern.pattern})")
    if file in seen:
        raise _fail(where, f"{name} ({file}) is listed twice; each file belongs to one entry")
    seen.add(file)
    return file


def _check_generation(manifest: dict[str, Any], where: Path, files: set[str]) -> None:
    """Every file carries the generation that wrote it; none may be newer than the manifest's,
    or the next write (generation + 1) could reuse, and so destroy, a file still in use."""
    names = files | {s["name"] for s in manifest["segments"]}
    newest = max((int(_GENERATION.search(name).group()) for name in names), default=0)
    if newest > manifest["generation"]:
        raise _fail(where, f"generation is {manifest['generation']} but a file of generation "
                           f"{newest} is listed; the next write would overwrite it")


def _check_config(config: Any, where: Path) -> None:
    """Bounds the constructor does not impose on its own (the rest is ``_make_config``'s)."""
    if not isinstance(config, dict):
        raise _fail(where, f"config is {type(config).__name__}, it must be a JSON object")
    dim = _int(config.get("dim"), where, "config.dim", 1, MAX_DIM)
    if config.get("truncate_dim") is not None:
        _int(config["truncate_dim"], where, "config.truncate_dim", 1, dim)
    if config.get("oversample") is not None:
        _int(config["oversample"], where, "config.oversample", 1, MAX_OVERSAMPLE)
    _int(config.get("seed", 0), where, "config.seed", 0, MAX_SEED)


def _check_codec_params(params: Any, config: dict[str, Any], where: Path) -> None:
    """The codec parameters must describe the codec the configuration builds."""
    if not isinstance(params, dict):
        raise _fail(where, f"codec is {type(params).__name__}, it must be a JSON object")
    expected = {"name": config.get("codec"), "dim": config.get("truncate_dim") or config["dim"],
                "bits": config.get("bits")}
    for key, value in expected.items():
        if params.get(key) != value or isinstance(params.get(key), bool):
            raise _fail(where, f"codec.{key} is {_short(params.get(key))} but the config says "
                               f"{_short(value)}")


def _check_entry(entry: Any, where: Path, name: str, pattern: re.Pattern[str],
                 seen: set[str]) -> dict[str, Any]:
    """One file entry: keys, a file name of the store's own pattern not seen before, a CRC32,
    a bounded shape, a store dtype, and block checksums matching the rows when present."""
    _keys(entry, where, name, ENTRY_KEYS, BLOCK_KEYS)
    file = _check_file_name(entry, where, name, pattern, seen)
    label = f"{name} ({file})"
    _int(entry["crc32"], where, f"{label}.crc32", 0, 2 ** 32 - 1)
    shape = entry["shape"]
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
            or not all(_is_int(n) and 0 <= n <= MAX_ROWS for n in shape)
            or math.prod(shape) > MAX_ELEMENTS):
        raise _fail(where, f"{label}.shape {_short(shape)} is not 1-3 non-negative sizes of at "
                           f"most {MAX_ELEMENTS} elements")
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in ARRAY_DTYPES:
        raise _fail(where, f"{label}.dtype {_short(entry['dtype'])} is not one of "
                           f"{sorted(ARRAY_DTYPES)}")
    _check_blocks(entry, where, label)
    return entry


def _check_blocks(entry: dict[str, Any], where: Path, label: str) -> None:
    present = BLOCK_KEYS & entry.keys()
    if not present:
        return
    if present != BLOCK_KEYS:
        raise _fail(where, f"{label} has {sorted(present)} without {sorted(BLOCK_KEYS - present)}")
    block_rows = _int(entry["block_rows"], where, f"{label}.block_rows", 1, MAX_ROWS)
    crcs = entry["block_crc32"]
    blocks = -(-entry["shape"][0] // block_rows)
    if not isinstance(crcs, list) or len(crcs) != blocks:
        raise _fail(where, f"{label}.block_crc32 must list {blocks} checksums, one per "
                           f"{block_rows} rows")
    if not all(_is_int(c) and 0 <= c < 2 ** 32 for c in crcs):
        raise _fail(where, f"{label}.block_crc32 holds a value that is not a CRC32")


def _check_codec_files(files: Any, where: Path, seen: set[str]) -> None:
    if not isinstance(files, dict):
        raise _fail(where, f"codec_files is {type(files).__name__}, it must be a JSON object")
    for key, entry in files.items():
        if not STATE_NAME.fullmatch(key):
            raise _fail(where, f"codec_files has the key {_short(key)}, not a codec state name")
        _check_entry(entry, where, f"codec_files.{key}", CODEC_FILE, seen)
        if CODEC_FILE.fullmatch(entry["file"]).group(1) != key:
            raise _fail(where, f"codec_files.{key} names {entry['file']}, a file of another "
                               f"state array")


def _check_segments(segments: Any, rows: int, where: Path, seen: set[str]) -> None:
    if not isinstance(segments, list):
        raise _fail(where, f"segments is {type(segments).__name__}, it must be a JSON array")
    names: set[str] = set()
    total = 0
    for i, segment in enumerate(segments):
        label = f"segments[{i}]"
        _keys(segment, where, label, SEGMENT_KEYS)
        name = segment["name"]
        if not isinstance(name, str) or not SEGMENT_NAME.fullmatch(name):
            raise _fail(where, f"{label}.name {_short(name)} is not a segment name "
                               f"({SEGMENT_NAME.pattern})")
        if name in names:
            raise _fail(where, f"segment {name} is listed twice")
        names.add(name)
        seg_rows = _int(segment["rows"], where, f"{label}.rows", 0, MAX_ROWS)
        total += seg_rows
        _check_segment_files(segment["files"], seg_rows, where, f"{label} ({name})", seen)
    if total != rows:
        raise _fail(where, f"the segments hold {total} rows but rows says {rows}")


def _check_segment_files(files: Any, rows: int, where: Path, label: str,
                         seen: set[str]) -> None:
    _keys(files, where, f"{label}.files", REQUIRED_PARTS, frozenset(SEGMENT_PARTS))
    for part, entry in files.items():
        _check_entry(entry, where, f"{label}.files.{part}", SEGMENT_FILE, seen)
        if SEGMENT_FILE.fullmatch(entry["file"]).group(1) != part:
            raise _fail(where, f"{label}.files.{part} names {entry['file']}, a file of another "
                               f"part")
        if entry["shape"][0] != rows:
            raise _fail(where, f"{label}.files.{part} ({entry['file']}) has "
                               f"{entry['shape'][0]} rows, the segment {rows}")


def _check_tombstones(tombstones: Any, rows: int, where: Path, seen: set[str]) -> None:
    if tombstones is not None and not isinstance(tombstones, (dict, list)):
        raise _fail(where, f"tombstones is {type(tombstones).__name__}, it must be null, one "
                           f"file entry or a list of them")
    for i, entry in enumerate(tombstones if isinstance(tombstones, list) else
                              [tombstones] if tombstones else []):
        label = f"tombstones[{i}]"
        _check_entry(entry, where, label, TOMBSTONE_FILE, seen)
        if len(entry["shape"]) != 1 or entry["shape"][0] > rows or entry["dtype"] != _INT64:
            raise _fail(where, f"{label} ({entry['file']}) must be at most {rows} int64 row "
                               f"numbers, not {entry['dtype']}{entry['shape']}")


def _check_partitions(manifest: dict[str, Any], where: Path, seen: set[str]) -> None:
    """A partitioned store names its centroids file and gives every segment a lists file;
    a flat store has neither."""
    partitions = manifest.get("partitions")
    if partitions is not None:
        _keys(partitions, where, "partitions", PARTITION_KEYS, PARTITION_OPTIONAL_KEYS)
        lists = _int(partitions["lists"], where, "partitions.lists", 1, MAX_LISTS)
        _int(partitions["nprobe"], where, "partitions.nprobe", 1, lists)
        if "oversample" in partitions:
            _int(partitions["oversample"], where, "partitions.oversample", 1, MAX_OVERSAMPLE)
        _int(partitions["trained_rows"], where, "partitions.trained_rows", 0, MAX_ROWS)
        if "tuned_rows" in partitions:
            _int(partitions["tuned_rows"], where, "partitions.tuned_rows", 0, MAX_ROWS)
        entry = _check_entry(partitions["centroids"], where, "partitions.centroids",
                             CENTROIDS_FILE, seen)
        if len(entry["shape"]) != 2 or entry["shape"][0] != lists or entry["dtype"] != _FLOAT32:
            raise _fail(where, f"partitions.centroids ({entry['file']}) must be float32 of "
                               f"shape [{lists}, dim], not {entry['dtype']}{entry['shape']}")
    for segment in manifest["segments"]:
        if ("lists" in segment["files"]) != (partitions is not None):
            has = "has" if "lists" in segment["files"] else "lacks"
            raise _fail(where, f"segment {segment['name']} {has} a lists file, which the "
                               f"manifest's partitions entry contradicts")


# ---------------------------------------------------------------------- against the codec


@dataclass(frozen=True)
class StoreLayout:
    """Shapes (after the row count) and dtypes a store's files must have for its codec."""

    code_shape: tuple[int, ...]
    code_dtype: str
    factor_count: int
    dim: int
    originals_dtype: str | None  # None: the store keeps no originals
    code_dim: int = 0  # dimension of the vectors the codes (and centroids) are made from
    state: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)

    @classmethod
    def of(cls, codec: Any, dim: int, originals_dtype: Any | None) -> "StoreLayout":
        """The layout of a store whose codec is ``codec`` and whose originals (``dim``
        columns) are kept as ``originals_dtype`` (``None`` when none are kept)."""
        return cls(code_shape=tuple(codec.code_shape()), code_dtype=np.dtype(codec.code_dtype).str,
                   factor_count=codec.factor_count, dim=dim,
                   originals_dtype=None if originals_dtype is None else np.dtype(originals_dtype).str,
                   code_dim=codec.dim, state=codec.state_layout())

    def part(self, part: str) -> tuple[tuple[int, ...], str | None]:
        """(shape after the rows, dtype) of a segment file; dtype None for an unknown part."""
        return {"codes": (self.code_shape, self.code_dtype),
                "factors": ((self.factor_count,), _FLOAT32),
                "ids": ((), _INT64),
                "originals": ((self.dim,), self.originals_dtype),
                "lists": ((), _INT32)}[part]


def validate_codec_files(manifest: dict[str, Any], directory: Path,
                         layout: StoreLayout) -> None:
    """Check the codec state entries of a validated manifest against the codec's state
    layout (raises StoreCorruptedError); no file is read. The codec state comes first: some
    segment shapes (the ``saq`` factor width) follow from it."""
    where = directory / MANIFEST
    for key, entry in manifest["codec_files"].items():
        if key not in layout.state:
            raise _fail(where, f"codec_files.{key} ({entry['file']}) is not state of this "
                               f"codec (it has {sorted(layout.state) or 'none'})")
        shape, dtype = layout.state[key]
        _expect(entry, list(shape), dtype, where, f"codec_files.{key}")


def validate_layout(manifest: dict[str, Any], directory: Path, layout: StoreLayout) -> None:
    """Check every file entry of a validated manifest against the codec's shapes and dtypes
    (raises StoreCorruptedError); no file is read. ``layout`` is that of the codec with the
    manifest's state loaded."""
    where = directory / MANIFEST
    validate_codec_files(manifest, directory, layout)
    for segment in manifest["segments"]:
        files = segment["files"]
        if ("originals" in files) != (layout.originals_dtype is not None):
            has = "has" if "originals" in files else "lacks"
            raise _fail(where, f"segment {segment['name']} {has} an originals file, which "
                               f"the config's rerank setting contradicts")
        for part, entry in files.items():
            tail, dtype = layout.part(part)
            _expect(entry, [segment["rows"], *tail], dtype, where,
                    f"segment {segment['name']} {part}")
    partitions = manifest.get("partitions")
    if partitions is not None and partitions["centroids"]["shape"][1] != layout.code_dim:
        raise _fail(where, f"partitions.centroids ({partitions['centroids']['file']}) has "
                           f"{partitions['centroids']['shape'][1]} columns, the codes "
                           f"{layout.code_dim}")


def _expect(entry: dict[str, Any], shape: list[int], dtype: str | None, where: Path,
            label: str) -> None:
    if entry["shape"] != shape or entry["dtype"] != dtype:
        raise _fail(where, f"{label} ({entry['file']}) is {entry['dtype']}{entry['shape']}, the "
                           f"codec and config need {dtype}{shape}")


# ---------------------------------------------------------------------- after reading


def dead_rows(directory: Path, entries: list[dict[str, Any]], tombstones: list[np.ndarray],
              rows: int) -> np.ndarray:
    """The sorted removed rows of the tombstone files ``entries`` (read as ``tombstones``),
    each checked to lie within the store's ``rows`` rows."""
    for entry, array in zip(entries, tombstones):
        if len(array) and (array.min() < 0 or array.max() >= rows):
            raise StoreCorruptedError(
                f"{directory / entry['file']}: holds row numbers outside 0..{rows - 1}; "
                f"{_RESTORE}")
    if not tombstones:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(tombstones)).astype(np.int64)


def check_labels(directory: Path, entry: dict[str, Any], labels: np.ndarray, lists: int) -> None:
    """A lists file holds list numbers from 0 to ``lists - 1``."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= lists):
        raise StoreCorruptedError(
            f"{directory / entry['file']}: holds list numbers outside 0..{lists - 1}; "
            f"{_RESTORE}")


def check_count(manifest: dict[str, Any], dead: int, directory: Path) -> None:
    """``count`` must lie between the rows not removed and ``rows``.

    It should equal ``rows - dead``, but ``Index.remove`` has always committed the count of
    the previous manifest (a stale, larger count; nothing reads it back), so stores in the
    wild carry one: a count above ``rows - dead`` is accepted, one below is refused.
    """
    live = manifest["rows"] - dead
    if not live <= manifest["count"] <= manifest["rows"]:
        raise _fail(directory / MANIFEST, f"count is {manifest['count']} but {manifest['rows']} "
                                          f"rows less {dead} removed leave {live}")


def check_ids(ids: np.ndarray, removed: np.ndarray | None, manifest: dict[str, Any],
              directory: Path) -> None:
    """Ids must be non-negative, below ``next_id``, and unique among the rows not removed
    (a duplicate would make searches and removals silently wrong)."""
    if not len(ids):
        return
    lowest, highest = int(ids.min()), int(ids.max())
    if lowest < 0:
        raise _id_error(manifest, directory, ids, lowest, "is negative; ids are non-negative")
    if highest >= manifest["next_id"]:
        raise _id_error(manifest, directory, ids, highest,
                        f"is not below next_id={manifest['next_id']}")
    live = ids if removed is None else ids[~removed]
    if len(live) < 2 or (np.diff(live) > 0).all():  # increasing ids are unique: no sort
        return
    ordered = np.sort(live)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        raise _id_error(manifest, directory, ids, int(repeated[0]),
                        "belongs to two rows that are not removed; ids are unique")


def _id_error(manifest: dict[str, Any], directory: Path, ids: np.ndarray, value: int,
              rule: str) -> StoreCorruptedError:
    """The error for a bad id, naming the ids file of the segment holding it."""
    row = int(np.nonzero(ids == value)[0][-1])
    for segment in manifest["segments"]:
        if row < segment["rows"]:
            file = directory / segment["files"]["ids"]["file"]
            return StoreCorruptedError(f"{file}: id {value} {rule}; {_RESTORE}")
        row -= segment["rows"]
    return _fail(directory / MANIFEST, f"id {value} {rule}")
