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
    assert open_fds() - baseline <= 2 * docstore.MAX_IDLE_READERS
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
