"""Bounded requests (issue #13, Collection side): reader connections do not pile up per thread,
a collection on a read-only filesystem opens, nesting and sizes of metadata and filters are
capped, stale read-only views answer every mode, and k has no effect past the document count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vecpress import Collection
from vecpress.core import docstore

from conftest import clustered_vectors

DIM = 16
SRC = str(Path(__file__).resolve().parents[1] / "src")


def persistent(path: Path, n: int = 200, bits: int = 32, **options) -> tuple[Collection, np.ndarray]:
    vectors = clustered_vectors(n, DIM, seed=3)
    col = Collection(DIM, path=path, bits=bits, **options)
    col.upsert([f"d{i}" for i in range(n)], vectors, texts=[f"word{i % 7} text {i}" for i in range(n)],
               metadatas=[{"i": i, "even": i % 2 == 0} for i in range(n)])
    return col, vectors


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------- reader connections


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("read_only", [False, True])
def test_thousands_of_short_lived_threads_hold_a_bounded_number_of_handles(tmp_path, read_only):
    writer, vectors = persistent(tmp_path / "c")
    col = Collection.open(tmp_path / "c", read_only=True) if read_only else writer
    expected = [h.id for h in col.search(vectors[5], k=3)]
    baseline = open_fds()
    errors: list[BaseException] = []
    wrong: list[int] = []

    def work(i: int) -> None:
        try:
            if [h.id for h in col.search(vectors[5], k=3)] != expected:
                wrong.append(i)
            if [h.id for h in col.get([f"d{i % 200}"])] != [f"d{i % 200}"]:
                wrong.append(i)
        except BaseException as exc:  # collected, reported below
            errors.append(exc)

    for start in range(0, 2000, 200):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(start, start + 200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors and not wrong
    assert open_fds() - baseline < 40
    # the pool keeps at most MAX_IDLE_READERS connections (two handles each: file and WAL)
    assert len(col._store._readers._idle) <= docstore.MAX_IDLE_READERS
    # ... plus a few handles SQLite keeps after a close while another connection holds a
    # lock on the file (its unix VFS reuses them at the next open): 16-22 seen, and on one
    # machine 19 after 1,000 threads, 21 from 2,400 to 6,000 (a leak would keep growing)
    assert open_fds() - baseline <= 2 * docstore.MAX_IDLE_READERS + 8
    writer.close()
    if read_only:
        col.close()


def test_concurrent_readers_never_exceed_the_pool_size(tmp_path):
    store = docstore.DocStore(tmp_path, read_only=False)
    store.create({"format": "x"})
    inside = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def read() -> None:
        nonlocal inside, most
        with store._reading() as conn:
            with lock:
                inside += 1
                most = max(most, inside)
            release.wait(5)
            conn.execute("SELECT count(*) FROM meta").fetchone()
            with lock:
                inside -= 1

    threads = [threading.Thread(target=read) for _ in range(docstore.MAX_READERS + 10)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    release.set()
    for thread in threads:
        thread.join()
    assert most == docstore.MAX_READERS
    store.close()


def test_closing_closes_the_pooled_connections(tmp_path):
    col, vectors = persistent(tmp_path / "c", n=20)
    col.close()  # SQLite defers closing a file another connection of the process has locked
    baseline = open_fds()
    reader = Collection.open(tmp_path / "c", read_only=True)
    threads = [threading.Thread(target=reader.search, args=(vectors[0],)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.close()
    assert open_fds() <= baseline
    with pytest.raises(RuntimeError, match="closed"):
        reader.get(["d1"])


# ---------------------------------------------------------------------- read-only filesystem

_READ_ONLY_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    import vecpress
    from vecpress import Collection
    assert vecpress.__file__.startswith(sys.argv[2]), vecpress.__file__
    col = Collection.open(sys.argv[1], read_only=True)
    assert col._store.immutable
    vectors = np.load(sys.argv[1] + "/../vectors.npy")
    print(len(col), [h.id for h in col.search(vectors[7], k=3)],
          [h.id for h in col.search(query_text="word3", mode="text", k=2)],
          col.get(["d9"])[0].metadata["i"])
    col.close()
""")


def _can_mount_read_only(directory: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount --bind -o ro '{directory}' '{directory}' && "
                            f"! touch '{directory}/probe' 2>/dev/null"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_collection_on_a_read_only_filesystem_opens_and_searches(tmp_path):
    """A read-only bind mount in a private mount namespace: a real read-only filesystem, where
    SQLite cannot create the ``-shm`` file that ``mode=ro`` needs for a WAL database."""
    col, vectors = persistent(tmp_path / "c")
    np.save(tmp_path / "vectors.npy", vectors)
    expected = (len(col), [h.id for h in col.search(vectors[7], k=3)],
                [h.id for h in col.search(query_text="word3", mode="text", k=2)], 9)
    col.close()
    directory = tmp_path / "c"
    if not _can_mount_read_only(directory):
        pytest.skip("needs unshare and mount (root or user namespaces) for a read-only mount")
    script = tmp_path / "open_read_only.py"
    script.write_text(_READ_ONLY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind -o ro '{directory}' '{directory}' && "
         f"'{sys.executable}' '{script}' '{directory}' '{SRC}'"],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == f"{expected[0]} {expected[1]} {expected[2]} {expected[3]}"
    assert sorted(p.name for p in directory.iterdir()) == ["LOCK", "docs.sqlite", "index"]


def test_read_only_open_uses_mode_ro_when_it_can(tmp_path):
    col, _ = persistent(tmp_path / "c", n=10)
    reader = Collection.open(tmp_path / "c", read_only=True)
    assert not reader._store.immutable  # a writable directory: live WAL reads
    col.upsert(["late"], np.ones((1, DIM)), texts=["late"])
    assert [h.id for h in reader.get(["late"])] == ["late"]
    reader.close()
    col.close()


# ---------------------------------------------------------------------- nesting and sizes


def nested_dicts(levels: int, leaf=1) -> dict:
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def nested_lists(levels: int) -> list:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("metadata", [nested_dicts(1000), {"k": nested_lists(1000)},
                                      {"k": [{"a": nested_lists(999)}]}, nested_dicts(33),
                                      {"k": nested_lists(32)}])
def test_metadata_nested_too_deep_is_refused_before_anything_is_written(metadata):
    col = Collection(4)
    col.upsert(["keep"], np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"metadatas\[2\] nests .* more than 32 levels"):
        col.upsert(["x", "y", "z"], np.ones((3, 4)), metadatas=[{}, None, metadata])
    assert [h.id for h in col.get()] == ["keep"]


def test_metadata_at_the_nesting_limit_is_stored_and_read_back():
    col = Collection(4)
    metadata = {"k": nested_lists(31), **nested_dicts(31)}
    col.upsert(["x"], np.ones((1, 4)), metadatas=[metadata])
    assert col.get(["x"])[0].metadata == metadata


def deep_filters() -> list:
    and_chain = {"a": 1}
    not_chain = {"a": 1}
    not_under_key: dict = {"$gt": 1}
    for _ in range(1000):
        and_chain = {"$and": [and_chain]}
        not_chain = {"$not": not_chain}
        not_under_key = {"$not": not_under_key}
    return [and_chain, not_chain, {"k": not_under_key}]


@pytest.mark.parametrize("where", deep_filters())
def test_langchain_style_filters_nested_too_deep_are_refused(where):
    col = Collection(4)
    col.upsert(["x"], np.ones((1, 4)), metadatas=[{"a": 1}])
    for call in (lambda: col.search(np.ones(4), where=where), lambda: col.count(where=where),
                 lambda: col.get(where=where), lambda: col.delete(where=where)):
        with pytest.raises(ValueError, match="where nests filters more than 32 levels"):
            call()
    assert len(col) == 1


def test_filters_at_the_nesting_limit_work():
    col = Collection(4)
    col.upsert(["x", "y"], np.ones((2, 4)), metadatas=[{"a": 1}, {"a": 2}])
    where: dict = {"a": 1}
    for _ in range(31):
        where = {"$and": [where]}
    assert [h.id for h in col.search(np.ones(4), where=where)] == ["x"]


def test_llama_index_filters_nested_too_deep_are_refused():
    types = pytest.importorskip("llama_index.core.vector_stores.types")
    filters = types.MetadataFilters(filters=[types.MetadataFilter(key="a", value=1)])
    for _ in range(1000):
        filters = types.MetadataFilters(filters=[filters])
    col = Collection(4)
    col.upsert(["x"], np.ones((1, 4)), metadatas=[{"a": 1}])
    with pytest.raises(ValueError, match="where nests filters more than 32 levels"):
        col.search(np.ones(4), where=filters)


def test_hand_built_filter_trees_nested_too_deep_are_refused():
    from vecpress.core import filters

    tree = filters.Field("a", "eq", 1)
    for _ in range(1000):
        tree = filters.Not(tree)
    with pytest.raises(ValueError, match="more than 32 levels"):
        filters.parse(tree)


def test_filter_sizes_are_capped():
    from vecpress.core import filters

    col = Collection(4)
    col.upsert(["x"], np.ones((1, 4)), metadatas=[{"k": 3}])
    values = list(range(filters.MAX_IN_VALUES))
    assert [h.id for h in col.search(np.ones(4), where={"k": {"$in": values}})] == ["x"]
    with pytest.raises(ValueError, match="more than 10000 values"):
        col.search(np.ones(4), where={"k": {"$in": values + [1]}})
    with pytest.raises(ValueError, match="more than 10000 values"):
        col.search(np.ones(4), where={"k": {"$nin": iter(range(10**9))}})  # stops early
    with pytest.raises(ValueError, match="more than 1024 conditions"):
        col.search(np.ones(4), where={"$or": [{"k": i} for i in range(1025)]})
    with pytest.raises(ValueError, match="more than 1024 conditions"):
        col.count(where={f"k{i}": i for i in range(2000)})


def test_errors_about_huge_filter_values_stay_short():
    col = Collection(4)
    with pytest.raises(ValueError) as caught:
        col.search(np.ones(4), where={"$and": nested_dicts(500)})
    assert len(str(caught.value)) < 500


# ---------------------------------------------------------------------- stale read-only views


@pytest.mark.parametrize("fusion", ["weighted", "rrf"])
@pytest.mark.parametrize("bits", [4, 32])
def test_a_stale_read_only_view_answers_hybrid_searches(tmp_path, fusion, bits):
    writer, _ = persistent(tmp_path / "c", n=30, bits=bits)
    reader = Collection.open(tmp_path / "c", read_only=True)
    late = clustered_vectors(20, DIM, seed=9)
    writer.upsert([f"late{i}" for i in range(20)], late, texts=["zebra crossing"] * 20)
    hits = reader.search(late[0], k=10, mode="hybrid", query_text="zebra", fusion=fusion)
    assert len(hits) == 10 and len({h.id for h in hits}) == 10
    assert any(h.id.startswith("late") for h in hits)  # text hits the Index cannot score
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    if fusion == "weighted":  # the rows the stale Index lacks score on text, dense at the floor
        late_hits = [h for h in hits if h.id.startswith("late")]
        assert all(h.score <= 0.5 + 1e-9 for h in late_hits)
    reader.refresh()
    fresh = reader.search(late[0], k=10, mode="hybrid", query_text="zebra", fusion=fusion)
    assert fresh[0].id == "late0"
    reader.close()
    writer.close()


# ---------------------------------------------------------------------- k past the size


@pytest.mark.parametrize("call", ["dense", "text", "hybrid-rrf", "hybrid-weighted", "mmr",
                                  "filtered"])
def test_huge_k_returns_every_document_quickly_and_in_little_memory(tmp_path, call):
    col, vectors = persistent(tmp_path / "c", n=200, bits=4)
    query, huge = vectors[0], 10**9
    runs = {
        "dense": lambda: col.search(query, k=huge),
        "text": lambda: col.search(mode="text", query_text="text", k=huge),
        "hybrid-rrf": lambda: col.search(query, k=huge, mode="hybrid", query_text="word1",
                                         fetch_k=huge),
        "hybrid-weighted": lambda: col.search(query, k=huge, mode="hybrid", query_text="word1",
                                              fusion="weighted"),
        "mmr": lambda: col.max_marginal_relevance_search(query, k=huge, fetch_k=huge),
        "filtered": lambda: col.search(query, k=huge, where={"even": True}),
    }
    runs[call]()  # warm (numba, SQLite caches)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        hits = runs[call]()
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(hits) == (100 if call == "filtered" else 200)
    assert len({h.id for h in hits}) == len(hits)
    assert peak < 50 * 2**20
    assert elapsed < 30  # generous: a k-sized allocation would fail or take far longer
    col.close()


def test_huge_k_on_an_empty_collection_returns_nothing():
    col = Collection(4)
    assert col.search(np.ones(4), k=10**9) == []
    assert col.search(np.ones(4), k=10**9, mode="hybrid", query_text="x") == []
    assert col.max_marginal_relevance_search(np.ones(4), k=10**9, fetch_k=10**9) == []


@pytest.mark.parametrize("name", ["docs.sqlite-wal", "docs.sqlite-shm", "index"])
def test_a_collection_directory_with_linked_files_is_refused(tmp_path, name):
    from vecpress.core.storage import StoreCorruptedError

    col, _ = persistent(tmp_path / "c", n=5)
    col.close()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "c" / name
    if link.exists():
        shutil.move(str(link), str(tmp_path / "moved"))
    link.symlink_to(victim)
    for read_only in (False, True):
        with pytest.raises(StoreCorruptedError, match=f"{name}: is a symbolic link"):
            Collection.open(tmp_path / "c", read_only=read_only)
    assert victim.read_text() == "keep"


def test_filters_repeating_a_shared_part_stop_early():
    """Python callers can share one sub-filter many times: 30 levels of two references each
    would be a billion conditions to read; the limit stops the translation early."""
    from vecpress.core import filters

    as_dict: dict = {"a": 1}
    as_tree: filters.Filter = filters.Field("a", "eq", 1)
    for _ in range(30):
        as_dict = {"$and": [as_dict, as_dict]}
        as_tree = filters.Or((as_tree, as_tree))
    started = time.perf_counter()
    for where in (as_dict, as_tree):
        with pytest.raises(ValueError, match="more than 1024 conditions"):
            filters.parse(where)
    types = pytest.importorskip("llama_index.core.vector_stores.types")
    shared = types.MetadataFilters(filters=[types.MetadataFilter(key="a", value=1)])
    for _ in range(30):
        shared = types.MetadataFilters(filters=[shared, shared])
    with pytest.raises(ValueError, match="more than 1024 conditions"):
        filters.parse(shared)
    assert time.perf_counter() - started < 5
