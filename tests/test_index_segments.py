"""Write side of issue #12: streaming files, tiered merges, appended tombstones, readers that
never fail while a writer commits, and ``refresh``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecpress import Index
from vecpress.core import columns, segments, storage
from vecpress.core.index import upkeep as upkeep_module
from vecpress.core.index import writes as writes_module


def random_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# ---------------------------------------------------------------------- streaming writer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 3 * storage.ORIGINALS_BLOCK_ROWS + 5),
       width=st.sampled_from([None, 0, 1, 3, 16]),
       dtype=st.sampled_from(["<f2", "<f4", "<i8", "<u8"]),
       cuts=st.lists(st.integers(0, 10_000), max_size=6), blocks=st.booleans())
def test_array_writer_matches_write_array(tmp_path, rows, width, dtype, cuts, blocks):
    """Any chunking (including empty chunks, zero-width rows and 1-D arrays) gives the same
    entry and the same bytes as ``write_array`` of the whole array."""
    shape = (rows,) if width is None else (rows, width)
    array = (np.arange(int(np.prod(shape))) * 7919 % 30011).astype(dtype).reshape(shape)
    expected = storage.write_array(tmp_path, "whole.npy", array, blocks=blocks)
    edges = sorted({0, rows, *(c % (rows + 1) for c in cuts)})
    with storage.ArrayWriter(tmp_path, "parts.npy", array.dtype, array.shape,
                             blocks=blocks) as writer:
        for lo, hi in zip(edges, edges[1:]):
            writer.append(array[lo:hi])
        entry = writer.finish()
    assert entry == dict(expected, file="parts.npy")
    assert (tmp_path / "parts.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_array_writer_refuses_missing_rows_and_removes_partial_file(tmp_path):
    writer = storage.ArrayWriter(tmp_path, "a.npy", np.float32, (10, 2))
    writer.append(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="4 rows were written of the 10"):
        writer.finish()
    assert not (tmp_path / "a.npy").exists()
    with pytest.raises(ValueError, match="does not fit"):
        storage.ArrayWriter(tmp_path, "b.npy", np.float32, (1, 2)).append(np.zeros((2, 2)))


def test_array_writer_replaces_leftover_but_not_through_symlink(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"leftover of a crash")
    with storage.ArrayWriter(tmp_path, "a.npy", np.int64, (2,)) as writer:
        writer.append(np.array([1, 2]))
        writer.finish()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [1, 2])
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "b.npy").symlink_to(target)
    with storage.ArrayWriter(tmp_path, "b.npy", np.int64, (1,)) as writer:  # link removed
        writer.append(np.array([3]))
        writer.finish()
    assert target.read_bytes() == b"keep" and not (tmp_path / "b.npy").is_symlink()


def test_row_reader_reads_ranges_and_checks_crc(tmp_path):
    array = random_vectors(1000, 8).astype(np.float16)
    entry = storage.write_array(tmp_path, "o.npy", array)
    with storage.RowReader(tmp_path, entry) as reader:
        np.testing.assert_array_equal(reader.read(10, 20), array[10:20])
    with storage.RowReader(tmp_path, entry) as reader:
        for lo in range(0, 1000, 300):
            np.testing.assert_array_equal(reader.read(lo, min(1000, lo + 300)), array[lo:lo + 300])
        reader.check()
    raw = bytearray((tmp_path / "o.npy").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "o.npy").write_bytes(bytes(raw))
    with storage.RowReader(tmp_path, entry) as reader:
        reader.read(0, 1000)
        with pytest.raises(storage.StoreCorruptedError, match="o.npy: checksum"):
            reader.check()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 2999), max_size=60), half=st.booleans(),
       window=st.sampled_from([1, 5000, 40_000, 1 << 26]))
def test_row_reader_gathers_sorted_rows_window_by_window(tmp_path, monkeypatch, picks, half,
                                                         window):
    """Windows from a single row's bytes to the whole file (one map each) give the rows a
    plain read gives, repeats included; rows outside the file are refused before a map."""
    dtype = np.float16 if half else np.float32
    name = f"g-{int(half)}.npy"
    if not (tmp_path / name).exists():
        storage.write_array(tmp_path, name, np.arange(3000 * 6, dtype=dtype).reshape(3000, 6))
    array = np.load(tmp_path / name)
    entry = {"file": name, "shape": [3000, 6], "dtype": np.dtype(dtype).str,
             "crc32": storage.checksum(array)}
    monkeypatch.setattr(storage.arrays, "GATHER_WINDOW_BYTES", window)
    rows = np.sort(np.array(picks, dtype=np.int64))
    out = np.full((len(rows), 6), -1.0, np.float32)
    with storage.RowReader(tmp_path, entry) as reader:
        reader.gather(rows, out)
        np.testing.assert_array_equal(out, array[rows].astype(np.float32))
        with pytest.raises(IndexError, match="outside its 3000 rows"):
            reader.gather(np.array([5, 3000]), np.empty((2, 6), np.float32))


# ---------------------------------------------------------------------- merge policy


def _simulate(batches: list[int], max_rows: int = 10**9) -> tuple[list[int], dict[int, int]]:
    """Segment sizes after adding ``batches`` under the policy, and how often each batch's
    rows were rewritten by merges."""
    sizes: list[int] = []
    owners: list[list[int]] = []
    rewrites = dict.fromkeys(range(len(batches)), 0)
    for number, rows in enumerate(batches):
        sizes.append(rows)
        owners.append([number])
        while (run := segments.plan_merge(sizes, max_rows)) is not None:
            first, stop = run
            merged = [b for group in owners[first:stop] for b in group]
            for b in merged:
                rewrites[b] += 1
            sizes[first:stop] = [sum(sizes[first:stop])]
            owners[first:stop] = [merged]
    return sizes, rewrites


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=400))
def test_merge_policy_bounds_segments_and_rewrites(batches):
    sizes, rewrites = _simulate(batches)
    total = sum(batches)
    tiers = segments.tier(total) + 1
    assert sum(sizes) == total
    # (a run holds fewer than F segments of any one tier once merging stops)
    assert len(sizes) <= segments.MERGE_FAN_IN ** 2 * tiers
    assert max(rewrites.values()) <= tiers


def test_merge_policy_steady_batches():
    sizes, rewrites = _simulate([37] * 5000)
    F = segments.MERGE_FAN_IN
    assert len(sizes) <= (F - 1) * (segments.tier(sum(sizes)) + 1)
    assert max(rewrites.values()) <= segments.tier(37 * 5000) - segments.tier(37) + 1
    assert sizes == sorted(sizes, reverse=True)
    # growing tenfold in 100k batches rewrites each row once (a binary counter: three times)
    _, rewrites = _simulate([100_000] * 10)
    assert max(rewrites.values()) <= 1


def test_merge_policy_respects_max_segment_rows():
    sizes, _ = _simulate([300_000] * 40, max_rows=2_000_000)
    assert max(sizes) <= 2_000_000
    assert segments.tier(7) == 0 and segments.tier(8) == 1 and segments.tier(63) == 1
    assert segments.tier(64) == 2


# ---------------------------------------------------------------------- against a reference


def _brute_force(model: dict[int, np.ndarray], queries: np.ndarray, k: int) -> np.ndarray:
    ids = np.array(sorted(model))
    data = np.stack([model[i] for i in ids])
    data = data / np.linalg.norm(data, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return ids[np.argsort(-(q @ data.T), axis=1, kind="stable")[:, :k]]


def _check_against(index: Index, model: dict[int, np.ndarray], queries: np.ndarray) -> None:
    assert len(index) == len(model)
    assert sorted(index.ids.tolist()) == sorted(model)
    ids = np.array(sorted(model))
    expected = np.stack([model[i] for i in ids])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(index.get(ids), expected, atol=2e-3)
    k = 5
    _, found = index.search(queries, k=k, oversample=60)  # rerank covers everything
    truth = _brute_force(model, queries, k)
    recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
    assert recall >= 0.95


def test_merges_and_compactions_on_disk_match_brute_force(tmp_path):
    path = tmp_path / "store"
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    index = Index(dim=16, bits=4, path=path)
    model: dict[int, np.ndarray] = {}
    merges = compactions = largest_fit = 0
    original_merge, original_compact = index._merge_run, index._write_compacted

    def counting_merge(*args):
        nonlocal merges
        merges += 1
        return original_merge(*args)

    def counting_compact(*args, **kwargs):
        nonlocal compactions
        compactions += 1
        return original_compact(*args, **kwargs)

    index._merge_run, index._write_compacted = counting_merge, counting_compact
    for step in range(80):
        n = int(rng.integers(8, 64))  # one size tier, so merges come every 8 adds or so
        vectors = rng.standard_normal((n, 16)).astype(np.float32)
        if step % 5 == 4:  # replace some existing ids too
            replaced = rng.choice(sorted(model), size=min(len(model), 5), replace=False)
            ids = np.concatenate([replaced, np.arange(10**6 + step * 100,
                                                      10**6 + step * 100 + n - len(replaced))])
            index.add(vectors, ids=ids)
        else:
            ids = index.add(vectors)
        model.update(zip(ids.tolist(), vectors))
        if step % 3 == 2 or step == 50:  # at step 50 over half of the rows: a compaction
            share = 0.7 if step == 50 else 0.05
            gone = rng.choice(sorted(model), size=int(len(model) * share), replace=False)
            index.remove(gone)
            for i in gone.tolist():
                del model[i]
        if step % 20 == 19:
            index.close()
            index = Index.load(path)
            original_merge, original_compact = index._merge_run, index._write_compacted
            index._merge_run, index._write_compacted = counting_merge, counting_compact
        _check_against(index, model, queries)
        largest_fit = max(largest_fit, index._codec.fit_rows)
    assert merges >= 3 and compactions >= 2
    assert largest_fit >= 1024  # refitted past the PCA threshold
    index.close()
    reopened = Index.load(path, verify="full")
    _check_against(reopened, model, queries)
    names = {p.name for p in path.glob("*.npy")}
    assert names == storage.manifest_files(reopened._manifest)  # leftovers were removed
    reopened.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_compaction_streams_without_materialising_originals(tmp_path, persistent, monkeypatch):
    """Compaction and save never fetch all originals at once (only the refit's sample)."""
    monkeypatch.setattr(upkeep_module, "REENCODE_ROWS", 300)
    index = Index(16, bits=4, path=tmp_path / "store" if persistent else None)
    data = random_vectors(3000, seed=5)
    index.add(data)
    index.remove(np.arange(0, 3000, 3))
    fetched = []
    real_fetch = columns._Blocks.fetch_sorted  # (fetch reads through it too)
    monkeypatch.setattr(columns._Blocks, "fetch_sorted",
                        lambda self, rows: fetched.append(len(rows)) or real_fetch(self, rows))
    index.compact()
    index.save(tmp_path / "copy")
    assert max(fetched, default=0) <= 2000  # the refit's sample of the 2000 live rows
    live = np.setdiff1d(np.arange(3000), np.arange(0, 3000, 3))
    expected = data[live] / np.linalg.norm(data[live], axis=1, keepdims=True)
    np.testing.assert_allclose(index.get(live), expected, atol=2e-3)
    copy = Index.load(tmp_path / "copy", verify="full")
    np.testing.assert_allclose(copy.get(live), expected, atol=2e-3)
    np.testing.assert_array_equal(copy.search(data[:5], k=3)[1], index.search(data[:5], k=3)[1])
    copy.close()
    index.close()


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       picks=st.lists(st.integers(0, 10_000), max_size=50))
def test_blocks_fetch_reads_the_rows_of_the_concatenated_blocks(sizes, picks):
    """``_Blocks.fetch`` (any order, repeats) and ``fetch_sorted`` (ascending) give float32
    rows equal to indexing the blocks' concatenation."""
    rng = np.random.default_rng(len(sizes))
    parts = [rng.standard_normal((n, 3)).astype(np.float16) for n in sizes]
    blocks = columns._Blocks()
    for part in parts:
        blocks.append(part)
    whole = np.concatenate(parts).astype(np.float32)
    rows = np.asarray(picks, dtype=np.int64) % len(whole)
    fetched = blocks.fetch(rows)
    assert fetched.dtype == np.float32
    np.testing.assert_array_equal(fetched, whole[rows])
    np.testing.assert_array_equal(blocks.fetch_sorted(np.sort(rows)), whole[np.sort(rows)])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       picks=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2)), max_size=50),
       dtype=st.sampled_from([np.float16, np.float32]))
def test_blocks_exact_scores_match_numpy_on_the_concatenated_blocks(sizes, picks, dtype):
    """``_Blocks.exact_scores`` (sorted rows, repeats, each row with its own query) gives the
    float64 inner products and squared norms numpy computes on the blocks' concatenation."""
    rng = np.random.default_rng(len(sizes) + len(picks))
    parts = [rng.standard_normal((n, 70)).astype(dtype) for n in sizes]
    blocks = columns._Blocks()
    for part in parts:
        blocks.append(part)
    whole = np.concatenate(parts).astype(np.float64)
    queries = rng.standard_normal((3, 70)).astype(np.float32)
    rows = np.array([row for row, _ in picks], dtype=np.int64) % len(whole)
    query_of = np.array([query for _, query in picks], dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, query_of = rows[order], query_of[order]
    dots, squares = blocks.exact_scores(rows, queries, query_of)
    np.testing.assert_allclose(dots, np.einsum("jd,jd->j", whole[rows], queries[query_of]),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(squares, np.einsum("jd,jd->j", whole[rows], whole[rows]),
                               rtol=1e-12)


def test_exact_scores_read_every_float16_value_as_numpy_does():
    """The rerank kernel reads float16 originals by their bits: all 65,536 of them (zeros,
    subnormals, infinities, NaNs) widen to numpy's float32 values."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    blocks = columns._Blocks()
    blocks.append(bits.view(np.float16)[:, None])
    dots, squares = blocks.exact_scores(np.arange(len(bits)), np.ones((1, 1), np.float32),
                                        np.zeros(len(bits), np.int64))
    with np.errstate(invalid="ignore"):  # (numpy warns while widening NaNs)
        expected = bits.view(np.float16).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(dots, expected)  # (NaNs compare equal here)
    np.testing.assert_array_equal(squares, expected * expected)


def test_merge_refuses_a_damaged_source_file(tmp_path):
    path = tmp_path / "store"
    index = Index(16, bits=4, path=path)
    for seed in range(segments.MERGE_FAN_IN - 1):
        index.add(random_vectors(20, seed=seed))
    first = index._manifest["segments"][0]["files"]["originals"]["file"]
    raw = bytearray((path / first).read_bytes())
    raw[-2] ^= 0xFF
    (path / first).write_bytes(bytes(raw))
    before = json.loads((path / "manifest.json").read_text())
    with pytest.raises(storage.StoreCorruptedError, match=f"{first}: checksum"):
        index.add(random_vectors(20, seed=99))  # the add commits; the merge it starts fails
    after = json.loads((path / "manifest.json").read_text())
    assert len(after["segments"]) == len(before["segments"]) + 1  # the add, not the merge
    index.close()


# ---------------------------------------------------------------------- tombstones


def test_tombstones_are_appended_merged_and_reopened(tmp_path, monkeypatch):
    monkeypatch.setattr(writes_module, "MAX_TOMBSTONE_FILES", 4)
    path = tmp_path / "store"
    index = Index(16, bits=4, path=path)
    index.add(random_vectors(400))
    removed = []
    for n in range(6):
        gone = list(range(n * 10, n * 10 + 3))
        index.remove(gone)
        removed += gone
        entries = storage.tombstone_entries(index._manifest)
        assert len(entries) == (n + 1 if n < 4 else n - 3)
        last = np.load(path / entries[-1]["file"])
        np.testing.assert_array_equal(last, removed if n == 4 else gone)  # merged at the 5th
    index.add(random_vectors(3, seed=2), ids=[100, 101, 102])  # replacing rows adds a file too
    removed += [100, 101, 102]
    assert len(storage.tombstone_entries(index._manifest)) == 3
    index.close()
    reopened = Index.load(path)
    assert len(reopened) == 400 - len(removed) + 3
    assert not set(removed[:-3]) & set(reopened.ids.tolist())
    reopened.compact()
    assert reopened._manifest["tombstones"] == []
    reopened.close()
    assert len(Index.load(path, read_only=True)) == 400 - len(removed) + 3


@pytest.mark.parametrize("old_form", ["single", "null"])
def test_format_1_tombstones_still_read(tmp_path, old_form):
    path = tmp_path / "store"
    with Index(16, bits=4, path=path) as index:
        index.add(random_vectors(50))
        index.remove([3, 4])
    manifest = json.loads((path / "manifest.json").read_text())
    entries = manifest["tombstones"]
    manifest["format_version"] = 1
    manifest["tombstones"] = entries[0] if old_form == "single" else None
    if old_form == "null":
        manifest["count"] = 50  # (no tombstones: every row is live)
    (path / "manifest.json").write_text(json.dumps(manifest))
    reopened = Index.load(path)
    assert len(reopened) == (48 if old_form == "single" else 50)
    reopened.remove([5])
    assert len(storage.tombstone_entries(reopened._manifest)) == (2 if old_form == "single" else 1)
    reopened.close()
    assert json.loads((path / "manifest.json").read_text())["format_version"] == storage.FORMAT_VERSION
    assert len(Index.load(path, read_only=True)) == (47 if old_form == "single" else 49)


# ---------------------------------------------------------------------- readers


def _delete_replaced_files_at_once(monkeypatch) -> None:
    """No grace: a replaced manifest's files go at the commit after the one replacing it."""
    monkeypatch.setattr(writes_module, "RETAIN_SECONDS", -1.0)
    monkeypatch.setattr(writes_module, "READER_BYTES_PER_SECOND", float("inf"))


def test_mapped_originals_stay_readable_after_their_files_are_deleted(tmp_path, monkeypatch):
    _delete_replaced_files_at_once(monkeypatch)
    path = tmp_path / "store"
    data = random_vectors(300, seed=4)
    writer = Index(16, bits=4, path=path)
    writer.add(data)
    reader = Index.load(path, read_only=True)
    mapped = reader._manifest["segments"][0]["files"]["originals"]["file"]
    writer.compact()
    writer.remove([0])  # two commits later the reader's files are deleted
    assert not (path / mapped).exists()
    expected = data / np.linalg.norm(data, axis=1, keepdims=True)
    np.testing.assert_allclose(reader.get(np.arange(300)), expected, atol=2e-3)
    assert reader.search(data[:3], k=1)[1][:, 0].tolist() == [0, 1, 2]
    writer.close()


def test_writer_keeps_the_replaced_generation_for_readers(tmp_path):
    path = tmp_path / "store"
    writer = Index(16, bits=4, path=path)
    writer.add(random_vectors(100))
    stale = json.loads((path / "manifest.json").read_text())
    writer.compact()  # replaces every file
    assert storage.manifest_files(stale) <= {p.name for p in path.iterdir()}
    writer.close()


def test_read_only_load_starts_again_when_files_vanish(tmp_path, monkeypatch):
    _delete_replaced_files_at_once(monkeypatch)
    path = tmp_path / "store"
    writer = Index(16, bits=4, path=path)
    writer.add(random_vectors(100))
    stale = json.loads((path / "manifest.json").read_text())
    writer.compact()
    writer.add(random_vectors(5, seed=1))  # the stale manifest's files are gone now
    real = storage.read_manifest
    calls = []

    def first_stale(directory):
        calls.append(1)
        return stale if len(calls) == 1 else real(directory)

    monkeypatch.setattr(storage, "read_manifest", first_stale)
    reader = Index.load(path, read_only=True)
    assert len(reader) == 105 and len(calls) >= 3
    monkeypatch.setattr(storage, "read_manifest", real)
    # a file missing from the newest manifest is a real error, named, not retried forever
    (path / writer._manifest["segments"][-1]["files"]["codes"]["file"]).unlink()
    with pytest.raises(storage.StoreCorruptedError, match="codes.npy: file is missing"):
        Index.load(path, read_only=True)
    writer.close()


def test_refresh_reads_only_what_was_appended(tmp_path):
    path = tmp_path / "store"
    writer = Index(16, bits=4, path=path)
    model = {}
    ids = writer.add(random_vectors(2000, seed=1))  # past the refit threshold
    model.update(zip(ids.tolist(), random_vectors(2000, seed=1)))
    reader = Index.load(path, read_only=True)
    assert reader.refresh() is False
    read = []
    real = storage.read_array
    queries = random_vectors(4, seed=9)

    def counting(directory, entry, **kwargs):
        read.append(entry["file"])
        return real(directory, entry, **kwargs)

    for step in range(12):  # crosses merges (with rows the reader holds) but no compaction
        vectors = random_vectors(30, seed=100 + step)
        new = writer.add(vectors)
        model.update(zip(new.tolist(), vectors))
        gone = [int(new[0])]
        writer.remove(gone)
        del model[gone[0]]
        read.clear()
        storage.read_array, saved = counting, storage.read_array
        try:
            assert reader.refresh() is True
        finally:
            storage.read_array = saved
        assert not any(name.startswith("codec-") for name in read)  # not a full reload
        _check_against(reader, model, queries)
    writer.compact()
    assert reader.refresh() is True  # a compaction: read again in full
    _check_against(reader, model, queries)
    writer.close()


# ---------------------------------------------------------------------- processes


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vecpress import Index
    path, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    index = Index(dim=16, path=path)
    rng = np.random.default_rng(0)
    step, started = 0, time.monotonic()
    with open(log, "a") as out:
        while time.monotonic() - started < seconds:
            ids = index.add(rng.standard_normal((int(rng.integers(20, 200)), 16)).astype(np.float32))
            out.write(f"{int(ids[-1])}\\n")
            out.flush()
            if step % 4 == 3:  # removes from older batches only, sometimes half the store
                live = index.ids[: -200]
                share = 0.6 if step % 20 == 19 else 0.1
                if len(live):
                    index.remove(rng.choice(live, size=int(len(live) * share), replace=False))
            step += 1
    index.close()
    print(step)
""")

READER = textwrap.dedent("""
    import sys, time, traceback
    import numpy as np
    from vecpress import Index
    path, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    errors, loads, refreshes, started = 0, 0, 0, time.monotonic()
    query = np.ones((1, 16), np.float32)
    def last_committed():
        with open(log) as f:
            lines = f.read().split()
        return int(lines[-1]) if lines else -1
    while time.monotonic() - started < seconds:
        try:
            index = Index.load(path, read_only=True)
            loads += 1
            for _ in range(5):
                committed = last_committed()
                index.refresh()
                refreshes += 1
                live = index.ids
                assert len(live) == len(index)
                assert committed < 0 or int(live.max()) >= committed, (int(live.max()), committed)
                _, found = index.search(query, k=5)
                assert set(found[found >= 0].tolist()) <= set(live.tolist())
        except Exception:
            errors += 1
            traceback.print_exc()
    print(errors, loads, refreshes)
""")


@pytest.mark.slow
def test_readers_never_fail_while_a_writer_commits(tmp_path):
    path, log = tmp_path / "store", tmp_path / "committed.log"
    log.write_text("")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(log), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (path / "manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(log), "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        errors, loads, refreshes = map(int, out.split())
        assert errors == 0, err[-3000:]
        assert loads >= 1 and refreshes >= 5
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err[-3000:]
    assert int(out) >= 12  # the writer got through merges and a refit (a compaction) meanwhile


KILLED_MERGE = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vecpress import Index
    from vecpress.core import storage
    real_finish = storage.ArrayWriter.finish
    def slow_finish(self):  # a merge's (or compaction's) originals take a while to write
        if self.name.endswith("originals.npy") and self.rows > 37:
            print("merging", flush=True)
            time.sleep(5)
        return real_finish(self)
    storage.ArrayWriter.finish = slow_finish
    path, dim = sys.argv[1], 16
    index = Index(dim, bits=4, path=path)
    rng = np.random.default_rng(0)
    step = 0
    while True:
        vectors = rng.standard_normal((37, dim)).astype(np.float32)
        index.add(vectors, ids=np.arange(step * 37, step * 37 + 37))
        if step % 3 == 2:
            index.remove(np.arange((step - 2) * 37, (step - 2) * 37 + 5))
        print(step, flush=True)
        step += 1
""")


@pytest.mark.slow
def test_kill_9_during_a_merge_loses_nothing_acknowledged(tmp_path):
    from test_index_durability import _calls_through, _states_after_each_call

    path = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", KILLED_MERGE, str(path)],
                               stdout=subprocess.PIPE, text=True)
    completed, merging = -1, False
    deadline = time.monotonic() + 90
    while not merging and time.monotonic() < deadline:
        line = process.stdout.readline().strip()
        if line.isdigit():
            completed = int(line)
        merging = line == "merging"
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert merging and completed >= 3, "the writer never reached a merge"
    assert any(p.name.endswith("originals.npy") and p.name not in
               storage.manifest_files(storage.read_manifest(path)) for p in path.iterdir())

    index = Index.load(path, verify="full")
    contents = dict(zip(index.ids.tolist(), index.get(index.ids)))
    states = _states_after_each_call(completed + 2)
    reported = _calls_through(completed)
    matched = [m for m in states[reported - 1: reported + 2] if sorted(m) == sorted(contents)]
    assert matched, f"store holds {len(contents)} ids, matching no completed state"
    for i, vector in matched[0].items():
        np.testing.assert_allclose(contents[i], vector / np.linalg.norm(vector), atol=2e-3)
    assert {p.name for p in path.glob("*.npy")} == storage.manifest_files(index._manifest)
    index.add(np.ones((1, 16), np.float32))
    index.close()
