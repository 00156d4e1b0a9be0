"""Collection mutations against a dict model (hypothesis), kill -9 during writes, reader threads
beside a writer, and a read-only second process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vecpress import Collection

from collection_model import dense_scores, holds

DIM = 5
POOL = [f"id{i}" for i in range(12)]


def abandon(col: Collection) -> None:
    """Leave a writer as ``kill -9`` would between two calls: SQLite has committed, the Index
    is neither closed (no fold of its row log, no fsync) nor told anything; only the locks are
    released so that this process may open the store again."""
    col._index._lock_file.release()
    col._index._lock_file = None
    col._index._read_only = True
    col._store.close()
    col._release_lock()
    col._read_only = True


class CollectionModel(RuleBasedStateMachine):
    """Upsert / delete by id / delete by filter / clear / reopen against ``dict[id, doc]``."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="vecpress-col-"))
        self.model: dict[str, tuple[np.ndarray, str, dict]] = {}

    @initialize(persistent=st.booleans(), metric=st.sampled_from(["ip", "l2"]),
                durability=st.sampled_from(["full", "process"]))
    def create(self, persistent, metric, durability):
        self.path = self.directory / "store" if persistent else None
        self.metric = metric
        self.durability = durability
        self.col = Collection(DIM, path=self.path, bits=32, metric=metric, durability=durability)

    @rule(data=st.data(), n=st.integers(1, 4))
    def upsert(self, data, n):
        ids = data.draw(st.lists(st.sampled_from(POOL), min_size=n, max_size=n, unique=True))
        vectors = data.draw(st.lists(st.lists(st.integers(-9, 9), min_size=DIM, max_size=DIM),
                                     min_size=n, max_size=n))
        groups = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        array = np.array(vectors, dtype=np.float32)
        texts = [f"word{g} {i}" for g, i in zip(groups, ids)]
        metas = [{"g": g, "id": i} for g, i in zip(groups, ids)]
        self.col.upsert(ids, array, texts=texts, metadatas=metas)
        for i, v, t, m in zip(ids, array, texts, metas):
            self.model[i] = (v, t, m)

    @rule(data=st.data())
    def delete_ids(self, data):
        ids = data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=4, unique=True))
        assert self.col.delete(ids=ids) == len(set(ids) & set(self.model))
        for i in ids:
            self.model.pop(i, None)

    @rule(g=st.integers(0, 2))
    def delete_where(self, g):
        doomed = [i for i, (_, _, m) in self.model.items() if m["g"] == g]
        assert self.col.delete(where={"g": g}) == len(doomed)
        for i in doomed:
            del self.model[i]

    @rule()
    def clear(self):
        self.col.clear()
        self.model.clear()

    @precondition(lambda self: self.path is not None)
    @rule()
    def reopen(self):
        self.col.close()
        self.col = Collection.open(self.path, durability=self.durability)

    @precondition(lambda self: self.path is not None)
    @rule()
    def crash_and_reopen(self):
        abandon(self.col)
        self.col = Collection.open(self.path, durability=self.durability)

    @rule(query=st.lists(st.integers(-9, 9), min_size=DIM, max_size=DIM), k=st.integers(1, 6),
          g=st.one_of(st.none(), st.integers(0, 2)))
    def search_matches_model(self, query, k, g):
        q = np.array(query, dtype=np.float32)
        if self.metric == "ip" and not q.any():
            q[0] = 1.0
        node = None if g is None else ("eq", "g", g)
        allowed = [i for i, (_, _, m) in self.model.items() if node is None or holds(m, node)]
        hits = self.col.search(q, k=k, where=None if g is None else {"g": g})
        assert len(hits) == min(k, len(allowed))
        if allowed:
            scores = dense_scores(np.stack([self.model[i][0] for i in allowed]), q, self.metric)
            expected = np.sort(scores)[::-1][:k]
            np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5, atol=1e-4)
        for h in hits:
            _, text, meta = self.model[h.id]
            assert (h.text, h.metadata) == (text, meta)

    @invariant()
    def contents_match(self):
        assert len(self.col) == len(self.model) == len(self.col.index)
        got = {h.id: (h.text, h.metadata) for h in self.col.get()}
        assert got == {i: (t, m) for i, (_, t, m) in self.model.items()}

    def teardown(self):
        self.col.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestCollectionModel = CollectionModel.TestCase
TestCollectionModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


class DefaultCodecCollectionModel(CollectionModel):
    """The same rules on the default index (4-bit saq codes + float16 rerank), plus bulk upserts
    over a larger id pool that cross the codec's PCA refits and automatic compactions.
    Searches scan every row's code before the exact rerank (``oversample`` past the row count),
    so they still equal brute force; vectors are small integers, which float16 holds exactly."""

    @initialize(persistent=st.booleans(), metric=st.sampled_from(["ip", "l2"]),
                durability=st.sampled_from(["full", "process"]))
    def create(self, persistent, metric, durability):
        self.path = self.directory / "store" if persistent else None
        self.metric = metric
        self.durability = durability
        self.col = Collection(DIM, path=self.path, metric=metric, durability=durability)
        self.seed = 0

    @rule(n=st.integers(300, 1200), start=st.integers(0, 1000))
    def bulk_upsert(self, n, start):
        self.seed += 1
        rng = np.random.default_rng(self.seed)
        ids = [f"bulk{(start + i) % 1500}" for i in range(n)]
        ids = list(dict.fromkeys(ids))
        array = rng.integers(-9, 10, (len(ids), DIM)).astype(np.float32)
        array[~array.any(axis=1), 0] = 1.0
        groups = rng.integers(0, 3, len(ids)).tolist()
        metas = [{"g": g, "id": i} for g, i in zip(groups, ids)]
        texts = [f"word{g} {i}" for g, i in zip(groups, ids)]
        self.col.upsert(ids, array, texts=texts, metadatas=metas)
        for i, v, t, m in zip(ids, array, texts, metas):
            self.model[i] = (v, t, m)

    @rule(query=st.lists(st.integers(-9, 9), min_size=DIM, max_size=DIM), k=st.integers(1, 6),
          g=st.one_of(st.none(), st.integers(0, 2)))
    def search_matches_model(self, query, k, g):
        q = np.array(query, dtype=np.float32)
        if not q.any():
            q[0] = 1.0
        allowed = [i for i, (_, _, m) in self.model.items() if g is None or m["g"] == g]
        hits = self.col.search(q, k=k, where=None if g is None else {"g": g}, oversample=10**6)
        assert len(hits) == min(k, len(allowed))
        if allowed:
            scores = dense_scores(np.stack([self.model[i][0] for i in allowed]), q, self.metric)
            expected = np.sort(scores)[::-1][:k]
            np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5, atol=1e-3)
        for h in hits:
            _, text, meta = self.model[h.id]
            assert (h.text, h.metadata) == (text, meta)


TestDefaultCodecCollectionModel = DefaultCodecCollectionModel.TestCase
TestDefaultCodecCollectionModel.settings = settings(
    max_examples=10, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------- kill -9

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from vecpress import Collection
    sys.path.insert(0, {tests!r})
    from test_collection_durability import operation

    col = Collection(16, path={path!r}, bits=4, durability={durability!r})
    for step in range(10**6):
        kind, ids, vectors, metas = operation(step)
        if kind == "upsert":
            col.upsert(ids, vectors, texts=[m["text"] for m in metas], metadatas=metas)
        else:
            col.delete(ids=ids)
        print(step, flush=True)
""")


def operation(step: int):
    """The deterministic write number ``step``: mostly upserts (new and replacing), some deletes."""
    rng = np.random.default_rng(step)
    ids = sorted({f"doc{int(i)}" for i in rng.integers(0, 400, int(rng.integers(1, 40)))})
    if step % 5 == 4:
        return "delete", ids, None, None
    vectors = np.stack([doc_vector(i, step) for i in ids])
    metas = [{"step": step, "text": f"{i} at step {step}"} for i in ids]
    return "upsert", ids, vectors, metas


def doc_vector(doc_id: str, step: int) -> np.ndarray:
    seed = int(doc_id[3:]) * 100_003 + step
    return np.random.default_rng(seed).standard_normal(16).astype(np.float32)


def model_after(last_step: int) -> dict[str, int]:
    """``id -> step of its current version`` after steps 0..last_step."""
    state: dict[str, int] = {}
    for step in range(last_step + 1):
        kind, ids, _, _ = operation(step)
        for i in ids:
            if kind == "upsert":
                state[i] = step
            else:
                state.pop(i, None)
    return state


def kill_writer_after(path: Path, acks_wanted: int, extra_delay: float,
                      durability: str = "full") -> int:
    """Run the writer, SIGKILL it once ``acks_wanted`` writes returned (plus a delay); returns the
    last acknowledged step."""
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(path),
                           durability=durability)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = -1
    try:
        while last + 1 < acks_wanted:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer died: {proc.stderr.read()}")
            last = int(line)
        time.sleep(extra_delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        # the lines readline() already buffered are in proc.stdout, not in communicate()'s
        rest = proc.stdout.read()
        proc.wait()
        proc.stderr.close()
    for line in rest.split():
        last = int(line)
    return last


def check_store(path: Path, last_ack: int) -> None:
    col = Collection.open(path)
    try:
        got = {h.id: h.metadata["step"] for h in col.get()}
        # every acknowledged write is there; the one in flight is all there or not at all
        assert got in (model_after(last_ack), model_after(last_ack + 1))
        assert len(col.index) == len(got)
        for doc_id, step in list(got.items())[:60]:
            hit = col.search(doc_vector(doc_id, step), k=1)[0]
            assert hit.id == doc_id and hit.score == pytest.approx(1.0, abs=2e-3)
            assert hit.text == f"{doc_id} at step {step}"
        col.upsert(["after"], np.ones((1, 16)))  # and it takes writes again
    finally:
        col.close()


@pytest.mark.slow
@pytest.mark.parametrize("acks, delay", [(3, 0.0), (12, 0.013), (25, 0.031)])
def test_kill_9_during_writes(tmp_path, acks, delay):
    path = tmp_path / "store"
    last = kill_writer_after(path, acks, delay)
    check_store(path, last)


@pytest.mark.slow
@pytest.mark.parametrize("acks, delay", [(3, 0.0), (40, 0.004), (130, 0.011), (260, 0.023)])
def test_kill_9_during_writes_with_process_durability(tmp_path, acks, delay):
    """Writes that returned without any fsync (SQLite synchronous=NORMAL, small adds in the
    Index's row log) are all there after kill -9; the write in flight is whole or absent. The
    later kills come after the row log has been folded into segments at least once."""
    path = tmp_path / "store"
    last = kill_writer_after(path, acks, delay, durability="process")
    check_store(path, last)


# ---------------------------------------------------------------------- threads


def test_reader_threads_beside_a_writer():
    """Searches during writes see whole writes only: each hit's vector, text and metadata
    belong to the same version, and a filter matching k documents always gives k hits."""
    n, dim, k = 300, 12, 8
    col = Collection(dim, bits=32, metric="ip")
    ids = [f"d{i}" for i in range(n)]

    def version_vectors(version: int) -> np.ndarray:
        return np.random.default_rng(version).standard_normal((n, dim)).astype(np.float32)

    def upsert(version: int, rows) -> None:
        vectors = version_vectors(version)[rows]
        col.upsert([ids[r] for r in rows], vectors, texts=[f"v{version}" for _ in rows],
                   metadatas=[{"v": version, "group": r % 3} for r in rows])

    upsert(0, np.arange(n))
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        cache: dict[int, np.ndarray] = {}
        try:
            while not stop.is_set():
                group = int(rng.integers(3))
                hits = col.search(rng.standard_normal(dim), k=k, where={"group": group},
                                  include_vectors=True)
                assert len(hits) == k
                for h in hits:
                    row = int(h.id[1:])
                    v = h.metadata["v"]
                    assert h.metadata["group"] == row % 3 == group and h.text == f"v{v}"
                    if v not in cache:
                        cache[v] = version_vectors(v)
                    np.testing.assert_allclose(h.vector, cache[v][row], rtol=1e-6)
                got = col.get([ids[int(rng.integers(n))]], include_vectors=True)[0]
                np.testing.assert_allclose(
                    got.vector, version_vectors(got.metadata["v"])[int(got.id[1:])], rtol=1e-6)
                searches[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(99)
    try:
        for version in range(1, 150):
            upsert(version, np.sort(rng.choice(n, 40, replace=False)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searches[0] > 10
    assert len(col) == n == len(col.index)


# ---------------------------------------------------------------------- a second process

READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vecpress import Collection
    col = Collection.open({path!r}, read_only=True)
    out = {{"count": len(col),
            "hits": [h.id for h in col.search(np.eye(4)[1], k=2, where={{"g": 1}})],
            "text": [h.id for h in col.search(None, k=5, mode="text", query_text="beta")]}}
    try:
        Collection.open({path!r})
    except RuntimeError as exc:
        out["second_writer"] = str(exc)
    try:
        col.delete(ids=["a"])
    except PermissionError:
        out["read_only"] = True
    print(json.dumps(out))
""")


def test_second_process_reads_while_first_writes(tmp_path):
    path = tmp_path / "store"
    col = Collection(4, path=path, bits=32)
    col.upsert(["a", "b", "c"], np.eye(4)[:3], texts=["alpha", "beta", "gamma beta"],
               metadatas=[{"g": 0}, {"g": 1}, {"g": 1}])
    result = subprocess.run([sys.executable, "-c", READER.format(path=str(path))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["count"] == 3
    assert out["hits"] == ["b", "c"]
    assert out["text"][0] == "b" and set(out["text"]) == {"b", "c"}
    assert "already open for writing" in out["second_writer"]
    assert out["read_only"] is True
    col.close()


def test_replaced_vectors_whose_tombstones_were_pending_are_gone_after_a_crash(tmp_path):
    """An upsert returns before the tombstones of the vectors it replaced are written (they
    ride on the next commit); after a crash right then, reopening removes those leftovers."""
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from vecpress import Collection
        rng = np.random.default_rng(0)
        col = Collection(dim=8, path={str(tmp_path / "c")!r})
        col.upsert([f"d{{i}}" for i in range(50)], rng.standard_normal((50, 8)))
        col.upsert(["d3", "d7"], np.ones((2, 8)))  # replaces two documents
        assert len(col.index) == 50 and col.index._pending_removals
        os._exit(0)  # no close: the pending tombstones are never written
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with Collection.open(tmp_path / "c") as col:
        assert len(col) == 50 and len(col.index) == 50
        hits = col.search(np.ones(8), k=2)
        assert sorted(h.id for h in hits) == ["d3", "d7"]
        assert all(abs(h.score - 1.0) < 1e-3 for h in hits)


# ---------------------------------------------------------------------- durability


def test_durability_is_validated_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"durability='sometimes' is unknown; use 'full'"):
        Collection(8, path=tmp_path / "c", durability="sometimes")
    assert not (tmp_path / "c").exists()
    Collection(8, path=tmp_path / "c").close()
    with pytest.raises(ValueError, match="durability"):
        Collection.open(tmp_path / "c", durability=None)
    Collection.open(tmp_path / "c").close()


def test_process_durability_skips_fsyncs_and_sqlite_full_sync(tmp_path, monkeypatch):
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    rng = np.random.default_rng(0)
    with Collection(8, path=tmp_path / "full") as col:
        assert col._store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        col.upsert([f"d{i}" for i in range(1100)], rng.standard_normal((1100, 8)))
        before = len(calls)
        col.upsert(["one"], rng.standard_normal((1, 8)))
        assert len(calls) - before >= 5
    calls.clear()
    col = Collection(8, path=tmp_path / "fast", durability="process")
    assert col._store._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    col.upsert([f"d{i}" for i in range(1100)], rng.standard_normal((1100, 8)))
    for i in range(200):
        col.upsert([f"d{i % 150}"], rng.standard_normal((1, 8)), texts=[f"t{i}"])
    col.delete(ids=["d1", "d2"])
    assert calls == []
    col.close()
    assert calls  # close makes everything durable
    with Collection.open(tmp_path / "fast", read_only=True) as reader:
        assert len(reader) == 1098


FOLLOWER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from vecpress import Collection
    path, stop = sys.argv[1], sys.argv[2]
    col = Collection.open(path, read_only=True)
    errors, refreshes = [], 0
    rng = np.random.default_rng(0)
    col.search(rng.standard_normal(8), k=5)
    print("ready", flush=True)
    while not os.path.exists(stop):
        try:
            col.refresh()
            refreshes += 1
            for hit in col.search(rng.standard_normal(8), k=5):
                assert hit.text == hit.id + " " + str(hit.metadata["v"]), hit
        except Exception as exc:
            errors.append(repr(exc))
    col.refresh()
    docs = col.get(include_vectors=True)
    print(json.dumps({"errors": errors[:5], "refreshes": refreshes,
                      "docs": {h.id: [h.text, h.vector.tolist()] for h in docs},
                      "index_rows": len(col.index)}))
""")


def test_a_reader_process_follows_a_process_durability_writer(tmp_path, monkeypatch):
    """One-document upserts (new and replacing) and deletes through the row log, folded every
    40 rows, while another process refreshes and searches: no reader error, and after the
    last write the reader holds exactly the writer's documents and vectors."""
    from vecpress.core import rowlog

    monkeypatch.setattr(rowlog, "LOG_MAX_ROWS", 40)
    path, stop = tmp_path / "store", tmp_path / "stop"
    rng = np.random.default_rng(5)
    col = Collection(8, path=path, bits=32, durability="process")
    model = {f"d{i}": (0, rng.standard_normal(8).astype(np.float32)) for i in range(30)}
    col.upsert(list(model), np.stack([v for _, v in model.values()]),
               texts=[f"{i} 0" for i in model], metadatas=[{"v": 0}] * len(model))
    reader = subprocess.Popen([sys.executable, "-c", FOLLOWER, str(path), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the writes start once the reader has opened and searched (a loaded machine can take
        # seconds to start it, and a reader that starts after the last write follows nothing)
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        for step in range(1, 301):
            doc = f"d{int(rng.integers(0, 60))}"
            if step % 17 == 0 and doc in model:
                col.delete(ids=[doc])
                del model[doc]
                continue
            vector = rng.standard_normal(8).astype(np.float32)
            col.upsert([doc], vector[None], texts=[f"{doc} {step}"], metadatas=[{"v": step}])
            model[doc] = (step, vector)
            if step % 50 == 0:
                time.sleep(0.2)  # (let the reader catch up now and then)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["errors"] == [] and result["refreshes"] > 1
    assert sorted(result["docs"]) == sorted(model)
    for doc, (text, vector) in result["docs"].items():
        step, expected = model[doc]
        assert text == f"{doc} {step}"
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert result["index_rows"] >= len(model)  # (replaced vectors' tombstones may be pending)
    col.close()
