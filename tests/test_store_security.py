"""A store directory is untrusted input (issue #13): each attack found so far, then a fuzzer.

Opening a hostile store must never hang, follow a link, write or read outside the directory,
blow up memory or return silently wrong answers: it opens, or it raises StoreCorruptedError
naming the file and the rule.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import struct
import tempfile
import time
import tracemalloc
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_vectors
from vecpress import Index
from vecpress.core import storage
from vecpress.core.storage import StoreCorruptedError

DIM = 16
SENTINEL = b"sentinel: must never change\n"


# ---------------------------------------------------------------------- helpers


def make_store(path: Path, n: int = 300, dim: int = DIM, remove: int = 10,
               partitions: int | None = None) -> Path:
    """A persistent store of ``n`` vectors in two segments, ``remove`` of them removed
    (partitioned into ``partitions`` lists when given: a centroids file and lists files)."""
    with Index(dim, bits=4, path=path, partitions=partitions) as index:
        first = int(n * 0.8)
        index.add(random_vectors(first, dim, seed=1))
        index.add(random_vectors(n - first, dim, seed=2))
        if remove:
            index.remove(np.arange(remove))
    return path


def read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def entry_of(manifest: dict, part: str, segment: int = 0) -> dict:
    return manifest["segments"][segment]["files"][part]


def rewrite_array(path: Path, entry: dict, array: np.ndarray) -> None:
    """Replace an entry's file by ``array`` and update the entry to match (a careful forger)."""
    (path / entry["file"]).unlink()
    entry.update(storage.write_array(path, entry["file"], array,
                                     blocks="block_crc32" in entry))


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A file outside the store that no attack may change."""
    target = tmp_path / "outside" / "sentinel.txt"
    target.parent.mkdir()
    target.write_bytes(SENTINEL)
    return target


@contextmanager
def deadline(seconds: float):
    """Time the block by this thread's CPU time (a loaded machine stretches wall time, not
    the work done), and fail instead of hanging: SIGALRM interrupts a blocking open after 30x
    ``seconds`` of wall time."""
    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds * 30} s (hung?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds * 30)
    start = time.thread_time()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    spent = time.thread_time() - start
    assert spent < seconds, f"{spent:.2f} CPU s, more than {seconds} s"


@contextmanager
def memory_below(limit: int):
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < limit, f"peak {peak / 2**20:.1f} MiB"


def refused(path: Path, match: str, **load_options) -> None:
    with deadline(1.0), pytest.raises(StoreCorruptedError, match=match) as info:
        Index.load(path, **load_options)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- file names and links


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside/seg-00000001-ids.npy",
                                  "sub/seg-00000001-ids.npy", "seg-00000001-ids.npy/..",
                                  "seg-00000001-IDS.npy", "seg-٠٠٠٠٠٠٠١-ids.npy", ""])
def test_file_names_outside_the_store_pattern_are_refused(tmp_path, name):
    path = make_store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    manifest = read_manifest(path)
    shutil.copy(path / entry_of(manifest, "ids")["file"], outside / "seg-00000001-ids.npy")
    entry_of(manifest, "ids")["file"] = name
    write_manifest(path, manifest)
    refused(path, "not a file name this store writes")


def test_symlinked_segment_file_is_refused(tmp_path):
    path = make_store(tmp_path / "store")
    target = path / entry_of(read_manifest(path), "ids")["file"]
    copy = tmp_path / "copy.npy"
    shutil.copy(target, copy)
    target.unlink()
    target.symlink_to(copy)
    refused(path, f"{target.name}: is a symbolic link")
    refused(path, "symbolic link", read_only=True)


@pytest.mark.parametrize("part", ["codes", "originals"])
def test_fifo_segment_file_is_refused_at_once(tmp_path, part):
    path = make_store(tmp_path / "store")
    target = path / entry_of(read_manifest(path), part)["file"]
    target.unlink()
    os.mkfifo(target)
    refused(path, f"{target.name}: is a FIFO")


def test_fifo_or_link_manifest_is_refused(tmp_path, sentinel):
    path = make_store(tmp_path / "store")
    manifest = path / "manifest.json"
    shutil.copy(manifest, sentinel.parent / "manifest.json")
    manifest.unlink()
    manifest.symlink_to(sentinel.parent / "manifest.json")
    refused(path, "manifest.json: is a symbolic link")
    manifest.unlink()
    os.mkfifo(manifest)
    refused(path, "manifest.json: is a FIFO")


@pytest.mark.parametrize("dangling", [False, True])
def test_lock_symlink_is_refused_and_target_untouched(tmp_path, sentinel, dangling):
    path = make_store(tmp_path / "store")
    (path / "LOCK").unlink()
    target = sentinel.parent / "created-by-lock" if dangling else sentinel
    (path / "LOCK").symlink_to(target)
    before = os.stat(sentinel)
    refused(path, "LOCK: is a symbolic link")
    assert not (sentinel.parent / "created-by-lock").exists()
    assert sentinel.read_bytes() == SENTINEL
    assert os.stat(sentinel).st_mtime_ns == before.st_mtime_ns
    assert len(Index.load(path, read_only=True)) == 290  # a reader takes no lock


def test_writer_never_writes_through_a_planted_link(tmp_path, sentinel):
    path = make_store(tmp_path / "store")
    with Index.load(path) as index:
        gen = read_manifest(path)["generation"]
        names = ["manifest.json.tmp"] + [
            f"{kind}-{g:08d}{tail}" for g in range(gen + 1, gen + 8)
            for kind, tail in [("seg", "-codes.npy"), ("seg", "-factors.npy"),
                               ("seg", "-ids.npy"), ("seg", "-originals.npy"), ("tomb", ".npy"),
                               ("codec", "-centroid.npy"), ("codec", "-projection.npy")]]
        for name in names:
            (path / name).symlink_to(sentinel)
        index.add(random_vectors(40, DIM, seed=3))
        index.remove([20, 21])
        index.add(random_vectors(5, DIM, seed=4))
    assert sentinel.read_bytes() == SENTINEL
    assert len(Index.load(path)) == 333
    assert not any(p.is_symlink() for p in path.iterdir())


def test_directory_in_the_way_of_a_write_is_an_error_naming_it(tmp_path):
    path = make_store(tmp_path / "store")
    with Index.load(path) as index:
        gen = read_manifest(path)["generation"]
        (path / f"seg-{gen + 1:08d}-codes.npy").mkdir()
        with pytest.raises(StoreCorruptedError, match="a directory stands"):
            index.add(random_vectors(3, DIM))
    assert len(Index.load(path)) == 290


def test_lowered_generation_is_refused_before_a_write_reuses_a_name(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    manifest["generation"] = 1
    write_manifest(path, manifest)
    refused(path, "the next write would overwrite")


@pytest.mark.parametrize("name", ["docs.sqlite", "docs.sqlite-wal", "index"])
def test_collection_refuses_links_to_its_database_or_index(tmp_path, sentinel, name):
    from vecpress import Collection

    path = tmp_path / "collection"
    with Collection(DIM, path=path) as collection:
        collection.upsert(["a", "b"], random_vectors(2, DIM), texts=["x", "y"])
    target = path / name
    moved = sentinel.parent / name
    if target.exists():
        os.rename(target, moved)
    else:
        moved.write_bytes(b"")
    target.symlink_to(moved)
    with pytest.raises(StoreCorruptedError, match=f"{name}: is a symbolic link"):
        Collection.open(path)
    assert sentinel.read_bytes() == SENTINEL


# ---------------------------------------------------------------------- sizes and limits


def test_huge_dim_is_refused_before_any_allocation(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    manifest["config"]["dim"] = 10 ** 9
    write_manifest(path, manifest)
    with memory_below(20 << 20):
        refused(path, "config.dim is 1000000000")


@pytest.mark.parametrize("copies,rule", [(5_000, "is listed twice"),
                                         (40_000, "more than the 8388608")])
def test_segment_listed_many_times_is_refused_quickly(tmp_path, copies, rule):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    manifest["segments"] = manifest["segments"][:1] * copies
    manifest["rows"] = manifest["segments"][0]["rows"] * copies
    write_manifest(path, manifest)
    refused(path, rule)
    with memory_below(100 << 20), pytest.raises(StoreCorruptedError, match=rule):
        Index.load(path)


def _claim_shape(file: Path, shape: tuple[int, ...], descr: str = "<u8") -> None:
    """Rewrite an .npy header to claim ``shape`` (the data stays as it was)."""
    raw = file.read_bytes()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header = header.ljust(header_len - 1) + b"\n"
    assert len(header) == header_len
    file.write_bytes(raw[:10] + header + raw[10 + header_len:])


def test_npy_header_claiming_800_gb_is_refused_without_allocating(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    entry = entry_of(manifest, "codes")
    claimed = (10 ** 11, 1)  # 800 GB of uint64
    _claim_shape(path / entry["file"], claimed)
    with memory_below(20 << 20):
        refused(path, f"{entry['file']}: holds <u8\\[100000000000, 1\\]")
    # even when the manifest agrees with the header, the file's size gives it away
    forged = dict(entry, shape=list(claimed))
    with memory_below(20 << 20), pytest.raises(StoreCorruptedError, match="bytes but its header"):
        storage.read_array(path, forged)
    with memory_below(20 << 20), pytest.raises(StoreCorruptedError, match="bytes but its header"):
        storage.read_array(path, forged, mmap=True)


@pytest.mark.parametrize("descr", ["|O", ">u8", "<c16", "|V8"])
def test_npy_with_a_dtype_a_store_never_writes_is_refused(tmp_path, descr):
    path = make_store(tmp_path / "store")
    entry = entry_of(read_manifest(path), "codes")
    _claim_shape(path / entry["file"], tuple(entry["shape"]), descr)
    refused(path, f"{entry['file']}: (holds dtype|not a readable)")


def test_manifest_too_large_or_too_nested_is_refused(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = path / "manifest.json"
    with open(manifest, "r+b") as handle:
        handle.truncate(storage.MAX_MANIFEST_BYTES + 1)  # sparse: cheap
    with memory_below(20 << 20):
        refused(path, "more than the")
    manifest.write_text("[" + "[]," * 300_000 + "[]]")
    with memory_below(20 << 20):
        refused(path, "JSON objects and arrays")
    manifest.write_text('{"format": "vecpress-index", "x": ' + "[" * 90_000 + "]" * 90_000 + "}")
    refused(path, "not valid JSON .*recursion")
    manifest.write_text('{"format": "vecpress-index", "format_version": NaN}')
    refused(path, "not valid JSON")


# ---------------------------------------------------------------------- hand edits


def test_ids_with_fewer_rows_than_codes_are_refused(tmp_path):
    path = make_store(tmp_path / "store", n=2500, remove=0)
    manifest = read_manifest(path)
    entry = entry_of(manifest, "ids")
    rewrite_array(path, entry, np.arange(500, dtype=np.int64))
    write_manifest(path, manifest)
    refused(path, f"\\({entry['file']}\\) has 500 rows, the segment 2000")


def test_duplicate_ids_are_refused_naming_the_ids_file(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    entry = entry_of(manifest, "ids")
    rewrite_array(path, entry, np.zeros(entry["shape"], dtype=np.int64))
    write_manifest(path, manifest)
    refused(path, f"{entry['file']}: id 0 belongs to two rows")


def test_negative_or_too_large_ids_are_refused(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    entry = entry_of(manifest, "ids")
    ids = np.arange(entry["shape"][0], dtype=np.int64)
    ids[5] = -7
    rewrite_array(path, entry, ids)
    write_manifest(path, manifest)
    refused(path, "id -7 is negative")
    ids[5] = 10 ** 12
    rewrite_array(path, entry, ids)
    write_manifest(path, manifest)
    refused(path, "is not below next_id")


def test_removed_duplicate_ids_are_fine(tmp_path):
    path = tmp_path / "store"
    with Index(DIM, path=path) as index:
        index.add(random_vectors(50, DIM), ids=np.arange(50))
        index.add(random_vectors(5, DIM, seed=3), ids=np.arange(5))  # replaces rows 0-4
    assert len(Index.load(path)) == 50


@pytest.mark.parametrize("dim", [32, 128])
def test_edited_dim_is_refused(tmp_path, dim):
    path = make_store(tmp_path / "store", dim=64)
    manifest = read_manifest(path)
    manifest["config"]["dim"] = dim
    write_manifest(path, manifest)
    refused(path, f"codec.dim is 64 but the config says {dim}")
    manifest["codec"]["dim"] = dim
    write_manifest(path, manifest)
    refused(path, "the codec and config need")


@pytest.mark.parametrize("key", ["format_version", "config", "codec", "generation", "next_id",
                                 "count", "rows", "codec_files", "segments", "tombstones"])
def test_missing_top_level_key_is_refused(tmp_path, key):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    del manifest[key]
    write_manifest(path, manifest)
    refused(path, "(lacks the key|format_version None)")


@pytest.mark.parametrize("where", ["segment", "files", "entry", "tombstones", "config"])
def test_missing_nested_key_is_refused(tmp_path, where):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    segment = manifest["segments"][0]
    {"segment": lambda: segment.pop("rows"), "files": lambda: segment["files"].pop("ids"),
     "entry": lambda: segment["files"]["codes"].pop("shape"),
     "tombstones": lambda: manifest["tombstones"][0].pop("crc32"),
     "config": lambda: manifest["config"].pop("metric")}[where]()
    write_manifest(path, manifest)
    refused(path, "(lacks|invalid index configuration)")


def test_unknown_keys_and_wrong_types_are_refused(tmp_path):
    path = make_store(tmp_path / "store")
    original = read_manifest(path)
    edits = [lambda m: m.update(extra=1), lambda m: m.update(rows="300"),
             lambda m: m.update(rows=True), lambda m: m.update(segments={}),
             lambda m: m["segments"][0].update(rows=1.5),
             lambda m: m["segments"][0]["files"]["codes"].update(crc32=-1),
             lambda m: m["segments"][0]["files"]["codes"].update(shape=[2 ** 41, 1]),
             lambda m: m["segments"][0]["files"].update(extra=m["segments"][0]["files"]["ids"]),
             lambda m: m.update(tombstones=5), lambda m: m["config"].update(oversample=10 ** 9),
             lambda m: m["config"].update(seed=-1), lambda m: m.update(count=10 ** 6)]
    for edit in edits:
        manifest = json.loads(json.dumps(original))
        edit(manifest)
        write_manifest(path, manifest)
        refused(path, "manifest.json: ")


def test_rows_not_adding_up_or_count_below_live_rows_are_refused(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    manifest["rows"] += 1
    write_manifest(path, manifest)
    refused(path, "the segments hold 300 rows but rows says 301")
    manifest["rows"] -= 1
    manifest["count"] = 250
    write_manifest(path, manifest)
    refused(path, "count is 250 but 300 rows less 10 removed leave 290")


def test_tombstones_may_be_a_list_of_files(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    gen = manifest["generation"]
    manifest["tombstones"] = [
        storage.write_array(path, f"tomb-{gen:08d}-1.npy", np.arange(0, 6, dtype=np.int64)),
        storage.write_array(path, f"tomb-{gen:08d}-2.npy", np.arange(4, 12, dtype=np.int64))]
    manifest["count"] = 288
    write_manifest(path, manifest)
    index = Index.load(path)
    assert len(index) == 288 and 11 not in index and 12 in index
    index.close()
    manifest["tombstones"][1] = storage.write_array(path, f"tomb-{gen:08d}-3.npy",
                                                    np.array([300], dtype=np.int64))
    write_manifest(path, manifest)
    refused(path, f"tomb-{gen:08d}-3.npy: holds row numbers outside 0..299")


def test_codec_state_of_the_wrong_shape_or_values_is_refused(tmp_path):
    path = make_store(tmp_path / "store")
    manifest = read_manifest(path)
    entry = manifest["codec_files"]["seg_bits"]
    rewrite_array(path, entry, np.array([9], dtype=np.int64))
    write_manifest(path, manifest)
    refused(path, "codec state .*seg_bits \\[9\\] are not all 0-8")
    rewrite_array(path, entry, np.array([4, 4], dtype=np.int64))
    write_manifest(path, manifest)
    refused(path, "codec_files.seg_bits .* the codec and config need")
    rewrite_array(path, entry, np.array([4], dtype=np.int64))
    projection = manifest["codec_files"]["projection"]
    forged = np.eye(DIM, dtype=np.float32) * 3.0
    rewrite_array(path, projection, forged)
    write_manifest(path, manifest)
    refused(path, "projection is not orthonormal")
    rewrite_array(path, projection, np.eye(DIM, dtype=np.float32))
    weights = manifest["codec_files"]["seg_weight"]
    for forged_weight in (2.0 ** 40, 5e-324):  # (both found by the store fuzzer)
        rewrite_array(path, weights, np.array([forged_weight]))
        write_manifest(path, manifest)
        refused(path, "seg_weight .* are not all within")
    del manifest["codec_files"]["seg_bits"]
    write_manifest(path, manifest)
    refused(path, "missing")


# ---------------------------------------------------------------------- originals


def _flip_last_bit(file: Path, offset_from_end: int = 3) -> None:
    raw = bytearray(file.read_bytes())
    raw[-offset_from_end] ^= 0x01
    file.write_bytes(bytes(raw))


def test_flipped_bit_in_originals_fails_the_first_search_touching_it(tmp_path):
    path = make_store(tmp_path / "store", remove=0)
    entry = entry_of(read_manifest(path), "originals", segment=-1)
    _flip_last_bit(path / entry["file"])
    index = Index.load(path, read_only=True)  # only the sizes are checked at open
    queries = random_vectors(5, DIM, seed=9)
    with pytest.raises(StoreCorruptedError, match=f"{entry['file']}: block 0 .* checksum"):
        index.search(queries, k=300)
    with pytest.raises(StoreCorruptedError, match=entry["file"]):
        index.get([299])
    unchecked = Index.load(path, read_only=True, verify=False)
    assert unchecked.search(queries, k=300)[1].shape == (5, 300)
    with pytest.raises(StoreCorruptedError, match=f"{entry['file']}: checksum"):
        Index.load(path, verify="full")


def test_blocks_are_checked_only_where_read(tmp_path):
    path = tmp_path / "store"
    with Index(4, bits=4, path=path) as index:
        index.add(random_vectors(9000, 4))
    entry = entry_of(read_manifest(path), "originals")
    assert entry["block_rows"] == 4096 and len(entry["block_crc32"]) == 3
    _flip_last_bit(path / entry["file"])  # in block 2 (rows 8192-8999)
    index = Index.load(path)
    assert index.get([0, 4095, 4096, 8191]).shape == (4, 4)
    with pytest.raises(StoreCorruptedError, match="block 2 \\(rows 8192-8999\\)"):
        index.get([8999])
    rows = index._originals.blocks[0]
    assert isinstance(rows, storage.CheckedRows) and rows._verified.tolist() == [True, True, False]


def test_searches_never_pass_a_block_that_failed_or_was_not_read(tmp_path):
    """A search records the checksum blocks its rerank found sound, so later searches skip
    them; a block that failed, or that no search has read yet, is still checked each time."""
    path = tmp_path / "store"
    data = random_vectors(9000, 4, seed=3)
    with Index(4, bits=4, path=path) as index:
        index.add(data)
    entry = entry_of(read_manifest(path), "originals")
    _flip_last_bit(path / entry["file"])  # in block 2 (rows 8192-8999)
    index = Index.load(path)
    for _ in range(2):  # rows of blocks 0 and 1 only: sound, then skipped
        assert index.search(data[:2], k=1)[1][:, 0].tolist() == [0, 1]
    for _ in range(2):
        with pytest.raises(StoreCorruptedError, match="block 2"):
            index.search(data[:1], k=9000)
    assert index._originals._kernel_table().checked.tolist() == [True, True, False]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_the_rerank_s_record_of_checked_blocks_matches_a_reference(data, sizes):
    """``kernels.rows_checked`` over files of ``sizes`` rows (each in checksum blocks of its
    own size, or unchecked): True exactly when every block the rows touch is flagged, and
    with ``mark`` it flags exactly those blocks."""
    from vecpress.core import kernels

    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    per = np.array([data.draw(st.integers(0, 8)) for _ in sizes], dtype=np.int64)
    counts = [-(-n // int(p)) if p else 0 for n, p in zip(sizes, per)]
    base = np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)
    checked = np.array(data.draw(st.lists(st.booleans(), min_size=sum(counts),
                                          max_size=sum(counts))), dtype=np.bool_)
    rows = np.sort(np.array(data.draw(st.lists(st.integers(0, int(starts[-1]) - 1),
                                               max_size=20)), dtype=np.int64))
    touched = set()
    for row in rows.tolist():
        b = int(np.searchsorted(starts, row, side="right")) - 1
        if per[b]:
            touched.add(int(base[b] + (row - starts[b]) // per[b]))
    expected = checked.copy()
    expected[sorted(touched)] = True
    assert kernels.rows_checked(rows, starts, base, per, checked, False) == all(
        checked[t] for t in touched)
    kernels.rows_checked(rows, starts, base, per, checked, True)
    np.testing.assert_array_equal(checked, expected)


def test_stores_without_block_checksums_keep_working(tmp_path):
    path = make_store(tmp_path / "store", remove=0)
    manifest = read_manifest(path)
    for segment in manifest["segments"]:
        del segment["files"]["originals"]["block_rows"]
        del segment["files"]["originals"]["block_crc32"]
    write_manifest(path, manifest)
    index = Index.load(path)
    data = np.concatenate([random_vectors(240, DIM, seed=1), random_vectors(60, DIM, seed=2)])
    scores, ids = index.search(data[:3], k=1)
    assert ids[:, 0].tolist() == [0, 1, 2] and np.all(scores > 0.99)


# ---------------------------------------------------------------------- the fuzzer

QUERIES = random_vectors(3, DIM, seed=7)
FORGED_VALUES = st.one_of(st.integers(-2, 400), st.sampled_from([-1, 9, 2 ** 40, 2 ** 62]),
                          st.floats(-4, 4), st.just("copy"))
OUTCOMES: Counter = Counter()
INTERESTING_VALUES = st.one_of(
    st.integers(-3, 5), st.sampled_from([-1, 2 ** 31, 2 ** 32, 2 ** 40 + 1, 2 ** 63, 10 ** 9]),
    st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.sampled_from(["", "../manifest.json", "/etc/passwd", "seg-00000001-codes.npy",
                     "tomb-00000009.npy", "codec-00000001-centroid.npy", "<f4", "|O", "<u8",
                     "saq", "l2", "float32"]),
    st.just([]), st.just({}), st.lists(st.integers(-2, 400), max_size=3))


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    path = make_store(tmp_path_factory.mktemp("fuzz") / "base", n=300, remove=12)
    Index.load(path, read_only=True).search(QUERIES, k=5)  # warm the kernels
    return path


@pytest.fixture(scope="module")
def partitioned_store(tmp_path_factory) -> Path:
    path = make_store(tmp_path_factory.mktemp("fuzz") / "lists", n=300, remove=12,
                      partitions=4)
    assert "partitions" in read_manifest(path)
    Index.load(path, read_only=True).search(QUERIES, k=5)
    return path


def _leaves(value, prefix=()):
    """Every path (tuple of keys/indices) into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:4]):
            yield from _leaves(item, prefix + (i,))


@st.composite
def mutations(draw, base: Path):
    """One to three edits of the manifest or the files of a copy of ``base``."""
    manifest = read_manifest(base)
    paths = [p for p in _leaves(manifest) if p]
    files = sorted(p.name for p in base.iterdir())
    forgeable = [p for p in paths if p[-1] == "file" and "originals" not in p]
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "delta", "delete", "add_key", "dup_segment",
                                     "swap_names", "symlink", "fifo", "truncate", "extend",
                                     "flip", "swap_files", "unlink", "mkdir", "plant_next",
                                     "forge", "forge"]))
        if kind in ("set", "delta", "delete", "add_key"):
            ops.append((kind, draw(st.sampled_from(paths)), draw(INTERESTING_VALUES)
                        if kind == "set" else draw(st.integers(-3, 3))))
        elif kind in ("dup_segment", "swap_names"):
            ops.append((kind, draw(st.integers(0, 3)), draw(st.integers(0, 3))))
        elif kind == "swap_files":
            ops.append((kind, draw(st.sampled_from(files)), draw(st.sampled_from(files))))
        elif kind == "forge":  # new content with a matching checksum: only the rules can tell
            ops.append((kind, draw(st.sampled_from(forgeable)),
                        (draw(st.floats(0, 1)), draw(FORGED_VALUES))))
        elif kind in ("truncate", "extend", "flip"):
            ops.append((kind, draw(st.sampled_from(files)), draw(st.floats(0, 1))))
        else:
            ops.append((kind, draw(st.sampled_from(files)), None))
    return ops


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _apply_json(manifest: dict, op) -> None:
    kind, path, arg = op
    try:
        parent = _get(manifest, path[:-1])
        key = path[-1]
        if kind == "set":  # (a copy: hypothesis hands the same {} or [] to every example)
            parent[key] = copy.deepcopy(arg)
        elif kind == "delta" and isinstance(parent[key], int):
            parent[key] += arg
        elif kind == "delete":
            parent.pop(key) if isinstance(parent, dict) else parent.pop(key)
        elif kind == "add_key" and isinstance(parent[key], dict):
            parent[key]["unexpected"] = copy.deepcopy(arg)
    except (KeyError, IndexError, TypeError, AttributeError):
        pass  # an earlier edit removed the place: nothing to do


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()


def _apply_file(store: Path, op, sentinel: Path) -> None:
    """One file mutation; content edits apply to regular files only (never through a link
    the mutator planted itself)."""
    kind, name, arg = op
    target = store / name
    regular = target.is_file() and not target.is_symlink()
    if kind == "plant_next":
        manifest = store / "manifest.json"
        gen = 1  # when the manifest was mutated too, any generation will do
        if manifest.is_file() and not manifest.is_symlink():  # never open a FIFO here
            try:
                gen = int(read_manifest(store)["generation"])
            except (ValueError, KeyError, TypeError):
                pass
        for planted in (f"seg-{gen + 1:08d}-codes.npy", f"seg-{gen + 1:08d}-originals.npy",
                        f"tomb-{gen + 1:08d}.npy", "manifest.json.tmp"):
            if not (store / planted).exists() and not (store / planted).is_symlink():
                (store / planted).symlink_to(sentinel)
    elif not target.exists() and not target.is_symlink():
        return
    elif kind in ("symlink", "fifo", "unlink", "mkdir"):
        _remove(target)
        if kind == "symlink":
            target.symlink_to(sentinel)
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "mkdir":
            target.mkdir()
    elif not regular:
        return
    elif kind == "truncate":
        os.truncate(target, int(target.stat().st_size * arg))
    elif kind == "extend":
        with open(target, "ab") as handle:
            handle.write(bytes(1 + int(arg * 64)))
    elif kind == "flip" and target.stat().st_size:
        raw = bytearray(target.read_bytes())
        bit = int(arg * (len(raw) * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(raw))
    elif kind == "swap_files" and arg != name and (store / arg).is_file() \
            and not (store / arg).is_symlink():
        swap = store / "swap.tmp"
        os.rename(target, swap)
        os.rename(store / arg, target)
        os.rename(swap, store / arg)


def _forge(store: Path, manifest: dict, op) -> None:
    """Change one value of an array file (or copy a neighbour's value) and fix its CRC32."""
    _, path, (where, value) = op
    try:
        entry = _get(manifest, path[:-1])
        array = storage.read_array(store, entry, verify=False).copy()
    except (KeyError, IndexError, TypeError, StoreCorruptedError):
        return  # an earlier edit broke the entry: nothing to forge
    flat = array.reshape(-1)
    if not flat.size:
        return
    i = int(where * (flat.size - 1))
    with np.errstate(all="ignore"):
        flat[i] = flat[i - 1] if value == "copy" else np.asarray(value).astype(array.dtype)
    rewrite_array(store, entry, array)


def _mutate(store: Path, ops, sentinel: Path) -> None:
    manifest = read_manifest(store)
    json_ops = [op for op in ops if op[0] in ("set", "delta", "delete", "add_key")]
    for op in json_ops:
        _apply_json(manifest, op)
    segments = manifest.get("segments")
    for kind, i, j in (op for op in ops if op[0] in ("dup_segment", "swap_names")):
        if isinstance(segments, list) and segments:
            i, j = i % len(segments), j % len(segments)
            if kind == "dup_segment":
                segments.append(json.loads(json.dumps(segments[i])))
            else:
                try:
                    a, b = segments[i]["files"]["codes"], segments[j]["files"]["ids"]
                    a["file"], b["file"] = b["file"], a["file"]
                except (KeyError, IndexError, TypeError):
                    pass  # an earlier edit broke the segments: nothing to swap
    for op in ops:
        if op[0] == "forge":
            _forge(store, manifest, op)
    write_manifest(store, manifest)
    for op in ops:
        if op[0] in ("symlink", "fifo", "truncate", "extend", "flip", "swap_files", "unlink",
                     "mkdir", "plant_next"):
            _apply_file(store, op, sentinel)


def _exercise(store: Path) -> str:
    """Open, search, write and reopen a mutated store; the outcome's name."""
    try:
        index = Index.load(store)
    except StoreCorruptedError:
        return "refused at open"
    except FileNotFoundError:
        manifest = store / "manifest.json"
        assert not manifest.exists() and not manifest.is_symlink()
        return "refused at open (no manifest)"
    try:
        scores, ids = index.search(QUERIES, k=5)
        live = set(index.ids.tolist())
        assert ids.shape == (3, 5) and set(ids[ids >= 0].tolist()) <= live
        assert np.isfinite(scores[ids >= 0]).all()
        count = len(index)
        index.add(random_vectors(2, DIM, seed=5))
    except StoreCorruptedError:
        return "refused at search or write"
    finally:
        index.close()
    with Index.load(store) as again:  # what the store wrote must open again
        assert len(again) == count + 2
    return "opened, searched and written"


def _run_case(base: Path, ops, scratch: Path) -> str:
    case = Path(tempfile.mkdtemp(dir=scratch))
    try:
        sentinel = case / "sentinel.txt"
        sentinel.write_bytes(SENTINEL)
        store = case / "store"
        shutil.copytree(base, store, symlinks=True)
        with deadline(2.0):  # the mutator must never hang either
            _mutate(store, ops, sentinel)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            # a case takes ~15 ms; the bound only catches a hang or a blow-up, and is loose
            # because CI machines are shared (the per-case time is recorded in OUTCOMES)
            with deadline(5.0):
                outcome = _exercise(store)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 100 << 20, f"peak {peak / 2**20:.1f} MiB"
        assert sentinel.read_bytes() == SENTINEL
        assert not any(p.name != "sentinel.txt" and p.name != "store" for p in case.iterdir())
        OUTCOMES[outcome] += 1
        OUTCOMES["seconds"] += time.perf_counter() - start
        return outcome
    finally:
        shutil.rmtree(case)


def _fuzz(base_store: Path, scratch: Path, examples: int) -> Counter:
    OUTCOMES.clear()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ops=mutations(base_store))
    def case(ops):
        _run_case(base_store, ops, scratch)

    case()
    cases = sum(v for k, v in OUTCOMES.items() if k != "seconds")
    print(f"\nstore fuzzer: {cases} cases, "
          + ", ".join(f"{k}: {v}" for k, v in OUTCOMES.items() if k != "seconds")
          + f"; {OUTCOMES['seconds'] / max(cases, 1) * 1000:.1f} ms per case")
    return OUTCOMES


def test_fuzzed_stores_open_or_are_refused(base_store, tmp_path, record_property):
    outcomes = _fuzz(base_store, tmp_path, examples=250)
    record_property("store_fuzz_outcomes", dict(outcomes))
    assert outcomes["refused at open"] and outcomes["opened, searched and written"]


def test_fuzzed_partitioned_stores_open_or_are_refused(partitioned_store, tmp_path,
                                                       record_property):
    outcomes = _fuzz(partitioned_store, tmp_path, examples=150)
    record_property("store_fuzz_outcomes", dict(outcomes))
    assert outcomes["refused at open"] and outcomes["opened, searched and written"]


@pytest.mark.slow
def test_fuzzed_stores_open_or_are_refused_long(base_store, tmp_path, record_property):
    outcomes = _fuzz(base_store, tmp_path, examples=1500)
    record_property("store_fuzz_outcomes", dict(outcomes))


# ---------------------------------------------------------------------- the row log


def make_logged_store(path: Path) -> Path:
    """A store left with rows in its row log (durability="process", not closed)."""
    index = Index(DIM, path=path, durability="process")
    index.add(random_vectors(300, DIM))
    for i in range(5):
        index.add(random_vectors(1, DIM, seed=100 + i))
    index._lock_file.release()  # as after kill -9: the log is not folded
    index._lock_file = None
    index._read_only = True
    return path


def log_of(path: Path) -> Path:
    return path / read_manifest(path)["log"]["file"]


@pytest.mark.parametrize("name", ["../log-00000002.log", "log-00000002.npy", "log-2.log", ""])
def test_log_names_outside_the_store_pattern_are_refused(tmp_path, name):
    path = make_logged_store(tmp_path / "s")
    manifest = read_manifest(path)
    manifest["log"] = {"file": name}
    write_manifest(path, manifest)
    refused(path, "log.file .* is not a file name this store writes")


def test_log_that_is_a_link_a_fifo_missing_or_oversized_is_refused(tmp_path):
    path = make_logged_store(tmp_path / "s")
    log = log_of(path)
    assert len(Index.load(path, read_only=True)) == 305
    saved = log.read_bytes()
    log.unlink()
    refused(path, "file is missing")
    (tmp_path / "elsewhere.log").write_bytes(saved)
    log.symlink_to(tmp_path / "elsewhere.log")
    refused(path, "is a symbolic link")
    log.unlink()
    os.mkfifo(log)
    refused(path, "is a FIFO")
    log.unlink()
    with open(log, "wb") as handle:
        handle.write(saved)
        handle.truncate(64 << 20)  # sparse: cheap
    refused(path, "more than the .* a row log may have")


def test_log_records_that_fail_their_checks_end_the_log_there(tmp_path):
    """A flipped bit or a record header that does not fit the codec's rows is where the log
    ends (as a write cut short would): the store opens with the records before it."""
    path = make_logged_store(tmp_path / "s")
    log = log_of(path)
    data = bytearray(log.read_bytes())
    record = len(data) // 5
    data[2 * record + 40] ^= 0x10  # inside the third record's payload
    log.write_bytes(bytes(data))
    assert len(Index.load(path, read_only=True)) == 302
    data[2 * record + 40] ^= 0x10
    struct.pack_into("<I", data, record + 4, 2)  # the second record claims two rows
    log.write_bytes(bytes(data))
    assert len(Index.load(path, read_only=True)) == 301


def test_a_manifest_naming_a_log_has_a_version_older_releases_refuse(tmp_path):
    path = make_logged_store(tmp_path / "s")
    version = read_manifest(path)["format_version"]
    assert version == storage.EXTENDED_FORMAT_VERSION > storage.FORMAT_VERSION


def test_a_log_without_a_fitted_codec_is_refused(tmp_path):
    path = make_logged_store(tmp_path / "s")
    manifest = read_manifest(path)
    manifest.update(codec_files={}, segments=[], tombstones=[], rows=0, count=0)
    write_manifest(path, manifest)
    refused(path, "names a row log but no fitted codec state")
