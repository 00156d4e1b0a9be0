"""Mutation sequences against a dict model (hypothesis), kill -9 during writes, warm numba cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vecpress import Index

DIM = 6


def abandon(index: Index) -> None:
    """Leave a writer as ``kill -9`` would between two calls: no close (no fold of the row
    log, no fsync), only its lock released so that this process may open the store again."""
    index._lock_file.release()
    index._lock_file = None
    index._read_only = True


class IndexModel(RuleBasedStateMachine):
    """Random add / replace / remove / compact / reopen against ``dict[id, vector]``.

    Exact float32 codes make every search comparable with a brute-force search of the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="vecpress-model-"))
        self.model: dict[int, np.ndarray] = {}

    @initialize(persistent=st.booleans(), metric=st.sampled_from(["ip", "l2"]),
                durability=st.sampled_from(["full", "process"]))
    def create(self, persistent, metric, durability):
        self.path = self.directory / "store" if persistent else None
        self.durability = durability
        self.index = Index(DIM, metric=metric, bits=32, path=self.path, durability=durability)
        self.metric = metric

    vectors = st.lists(st.lists(st.integers(-20, 20), min_size=DIM, max_size=DIM),
                       min_size=1, max_size=6)

    @rule(rows=vectors)
    def add_auto(self, rows):
        array = np.array(rows, dtype=np.float32)
        ids = self.index.add(array)
        assert not set(ids.tolist()) & set(self.model)
        self.model.update(zip(ids.tolist(), array))

    @rule(rows=vectors, data=st.data())
    def add_with_ids(self, rows, data):
        ids = data.draw(st.lists(st.integers(0, 40), min_size=len(rows), max_size=len(rows),
                                 unique=True))
        array = np.array(rows, dtype=np.float32)
        self.index.add(array, ids=ids)
        self.model.update(zip(ids, array))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, unique=True))
        assert self.index.remove(ids) == len(ids)
        for i in ids:
            del self.model[i]

    @rule(missing=st.integers(1000, 2000))
    def remove_unknown_changes_nothing(self, missing):
        with pytest.raises(KeyError):
            self.index.remove([missing])

    @rule()
    def compact(self):
        self.index.compact()

    @precondition(lambda self: self.path is not None)
    @rule()
    def reopen(self):
        self.index.close()
        self.index = Index.load(self.path, durability=self.durability)

    @precondition(lambda self: self.path is not None)
    @rule()
    def crash_and_reopen(self):
        abandon(self.index)
        self.index = Index.load(self.path, durability=self.durability)

    @precondition(lambda self: self.path is not None)
    @rule()
    def reader_sees_the_same(self):
        reader = Index.load(self.path, read_only=True)
        assert sorted(reader.ids.tolist()) == sorted(self.model)
        if self.model:
            ids = np.array(sorted(self.model))
            np.testing.assert_array_equal(reader.get(ids), self.index.get(ids))

    @invariant()
    def same_contents(self):
        if not hasattr(self, "index"):
            return
        assert len(self.index) == len(self.model)
        assert sorted(self.index.ids.tolist()) == sorted(self.model)
        if self.model:
            ids = np.array(sorted(self.model))
            np.testing.assert_array_equal(self.index.get(ids), np.stack([self.model[i] for i in ids]))

    @invariant()
    def search_matches_brute_force(self):
        if not hasattr(self, "index") or not self.model:
            return
        ids = np.array(sorted(self.model))
        data = np.stack([self.model[i] for i in ids]).astype(np.float64)
        query = np.array([[1, -2, 3, 0.5, -1, 2]], dtype=np.float32)
        k = 4
        scores, found = self.index.search(query, k=k)
        if self.metric == "ip":
            exact = data @ query[0]
        else:
            exact = -((data - query[0]) ** 2).sum(axis=1)
        expected = np.sort(exact)[::-1][:k]
        np.testing.assert_allclose(scores[0, : len(expected)], expected, rtol=1e-5, atol=1e-3)
        # returned ids really have those scores (ties may be ordered either way)
        lookup = dict(zip(ids.tolist(), exact))
        got = [lookup[i] for i in found[0, : len(expected)]]
        np.testing.assert_allclose(got, scores[0, : len(expected)], rtol=1e-5, atol=1e-3)

    def teardown(self):
        if hasattr(self, "index"):
            self.index.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


class DefaultCodecModel(RuleBasedStateMachine):
    """The default codec (4-bit saq codes, float16 originals, rerank) under random batches of
    adds, replacements and removals large enough to cross the codec's refits (the first PCA fit
    at 1,024 rows, again at 4x growth) and automatic compactions (half the rows removed),
    with reopens, against ``dict[id, vector]``.

    With ``oversample`` covering every row the rerank scores all of them exactly, so a search
    equals brute force over the float16-rounded originals whatever the codes; the default
    search must return live ids whose scores are their exact scores.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="vecpress-default-model-"))
        self.model: dict[int, np.ndarray] = {}
        self.next_seed = 0

    #: the index's ``partitions`` setting ("auto" stays flat at these sizes)
    PARTITIONS: int | str | None = "auto"

    @initialize(persistent=st.booleans(), metric=st.sampled_from(["cosine", "ip", "l2"]),
                durability=st.sampled_from(["full", "process"]))
    def create(self, persistent, metric, durability):
        self.path = self.directory / "store" if persistent else None
        self.durability = durability
        self.index = Index(16, metric=metric, path=self.path, durability=durability,
                           partitions=self.PARTITIONS)
        self.metric = metric

    def _batch(self, n: int) -> np.ndarray:
        self.next_seed += 1
        rng = np.random.default_rng(self.next_seed)
        return (rng.standard_normal((n, 16)) * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)

    def _stored(self, array: np.ndarray) -> np.ndarray:
        """What the index keeps: normalised for cosine, rounded to float16."""
        if self.metric == "cosine":
            array = array / np.linalg.norm(array, axis=1, keepdims=True)
        return array.astype(np.float16).astype(np.float32)

    @rule(n=st.integers(1, 700))
    def add_auto(self, n):
        array = self._batch(n)
        ids = self.index.add(array)
        self.model.update(zip(ids.tolist(), self._stored(array)))

    @precondition(lambda self: self.model)
    @rule(fraction=st.floats(0.05, 1.0), extra=st.integers(0, 200))
    def replace_some_and_add(self, fraction, extra):
        live = sorted(self.model)
        replaced = live[: max(1, int(len(live) * fraction))]
        ids = np.array(replaced + list(range(10**6 + self.next_seed * 1000,
                                             10**6 + self.next_seed * 1000 + extra)))
        array = self._batch(len(ids))
        self.index.add(array, ids=ids)
        self.model.update(zip(ids.tolist(), self._stored(array)))

    @precondition(lambda self: self.model)
    @rule(fraction=st.floats(0.05, 0.9), offset=st.integers(0, 10**6))
    def remove_some(self, fraction, offset):
        live = sorted(self.model)
        count = max(1, int(len(live) * fraction))
        picked = [live[(offset + 7 * i) % len(live)] for i in range(count)]
        picked = sorted(set(picked))
        assert self.index.remove(picked) == len(picked)
        for i in picked:
            del self.model[i]

    @precondition(lambda self: self.path is not None)
    @rule()
    def reopen(self):
        self.index.close()
        self.index = Index.load(self.path, durability=self.durability)

    @precondition(lambda self: self.path is not None)
    @rule()
    def crash_and_reopen(self):
        abandon(self.index)
        self.index = Index.load(self.path, durability=self.durability)

    @invariant()
    def exhaustive_search_is_exact(self):
        if not hasattr(self, "index"):
            return
        assert len(self.index) == len(self.model)
        if not self.model:
            return
        ids = np.array(sorted(self.model))
        data = np.stack([self.model[i] for i in ids]).astype(np.float64)
        query = self._batch(1)
        unit = query / np.linalg.norm(query) if self.metric == "cosine" else query
        exact = (data @ unit[0] if self.metric != "l2"
                 else -((data - unit[0]) ** 2).sum(axis=1))
        k = min(5, len(ids))
        scores, found = self.index.search(query, k=k, oversample=10**6)
        np.testing.assert_allclose(scores[0], np.sort(exact)[::-1][:k], rtol=1e-4, atol=1e-3)
        lookup = dict(zip(ids.tolist(), exact))
        np.testing.assert_allclose([lookup[i] for i in found[0]], scores[0], rtol=1e-4, atol=1e-3)
        scores, found = self.index.search(query, k=k)  # the default: codes, then the rerank
        assert len(set(found[0].tolist())) == k and set(found[0].tolist()) <= set(lookup)
        np.testing.assert_allclose([lookup[i] for i in found[0]], scores[0], rtol=1e-4, atol=1e-3)

    def teardown(self):
        if hasattr(self, "index"):
            self.index.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestDefaultCodecModel = DefaultCodecModel.TestCase
TestDefaultCodecModel.settings = settings(max_examples=12, stateful_step_count=12, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])


class PartitionedCodecModel(DefaultCodecModel):
    """The same, partitioned into 4 lists: trained at 64 rows, retrained at each
    ``RETRAIN_GROWTH``-fold growth, the tail of new rows folded into the lists, all through
    compactions and reopens.
    The exhaustive search must probe every list (its candidates cover every row), and the
    default search still returns live ids with their exact scores."""

    PARTITIONS = 4

    @invariant()
    def lists_hold_every_row_once(self):
        if not hasattr(self, "index") or self.index._lists is None:
            return
        lists, n_rows = self.index._lists, self.index._ids.size
        assert np.array_equal(np.sort(lists.perm), np.arange(lists.sorted_end))
        labels = self.index._row_labels(np.arange(n_rows))
        assert len(self.index._labels.view) == n_rows - lists.sorted_end  # the tail's
        assert np.array_equal(np.diff(lists.bounds), np.bincount(labels[: lists.sorted_end],
                                                                 minlength=lists.n_lists))


TestPartitionedCodecModel = PartitionedCodecModel.TestCase
TestPartitionedCodecModel.settings = settings(max_examples=12, stateful_step_count=12,
                                              deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from vecpress import Index
    path, dim = sys.argv[1], 16
    lists = None if sys.argv[3] == "flat" else int(sys.argv[3])
    index = Index(dim, bits=4, path=path, durability=sys.argv[2], partitions=lists)
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


def _states_after_each_call(steps: int) -> list[dict[int, np.ndarray]]:
    """Contents after every completed ``add``/``remove`` of the writer (its RNG replayed);
    entry ``i`` of the result is the state after call ``i``."""
    rng = np.random.default_rng(0)
    model: dict[int, np.ndarray] = {}
    states = []
    for s in range(steps):
        vectors = rng.standard_normal((37, 16)).astype(np.float32)
        model.update(zip(range(s * 37, s * 37 + 37), vectors))
        states.append(dict(model))
        if s % 3 == 2:
            for i in range((s - 2) * 37, (s - 2) * 37 + 5):
                model.pop(i, None)
            states.append(dict(model))
    return states


def _calls_through(step: int) -> int:
    """How many calls the writer has made once it printed ``step``."""
    return (step + 1) + (step + 1) // 3


@pytest.mark.slow
@pytest.mark.parametrize("durability, delay, lists", [
    ("full", 0.4, "flat"), ("full", 0.9, "flat"), ("full", 1.7, "flat"),
    ("process", 0.2, "flat"), ("process", 0.9, "flat"), ("process", 1.7, "flat"),
    # 4 lists: trained at 64 rows, retrained at 256 and 1,024 (lists files rewritten)
    ("full", 0.9, "4"), ("process", 1.7, "4")])
def test_kill_9_during_writes_leaves_every_completed_call(tmp_path, durability, delay, lists):
    path = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), durability, lists],
                               stdout=subprocess.PIPE, text=True)
    completed = -1
    deadline = time.monotonic() + 60
    while completed < 3 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip().isdigit():
            completed = int(line)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    rest = process.stdout.read()
    process.wait()
    completed = max([completed] + [int(x) for x in rest.split() if x.isdigit()])
    assert completed >= 3, "the writer never got going"

    index = Index.load(path)  # verifies every checksum
    contents = dict(zip(index.ids.tolist(), index.get(index.ids)))
    # the store holds the state after the last reported call, or after one or two calls more
    # (the writer was killed after a commit but before it printed)
    states = _states_after_each_call(completed + 2)
    reported = _calls_through(completed)
    candidates = states[reported - 1: reported + 2]
    matched = [m for m in candidates if sorted(m) == sorted(contents)]
    assert matched, f"store holds {len(contents)} ids, matching no completed state"
    model = matched[0]
    for i, vector in model.items():
        np.testing.assert_allclose(contents[i], vector / np.linalg.norm(vector), atol=2e-3)
    if lists != "flat":
        assert index._lists is not None, "the writer never trained its lists"
    index.add(np.ones((1, 16), np.float32))  # and it accepts writes again
    leftovers = [p.name for p in path.iterdir() if p.suffix == ".tmp"]
    assert not leftovers
    index.close()


CACHE_PROBE = textwrap.dedent("""
    import numpy as np
    from vecpress import Index
    from vecpress.core import kernels
    index = Index(64, bits=4)
    index.add(np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32))
    index.search(np.ones((1, 64), np.float32), k=3)
    used = (kernels.scan_segments_task, kernels.encode_segments)  # the default codec's
    hits = sum(sum(f.stats.cache_hits.values()) for f in used)
    print(hits, sum(sum(f.stats.cache_misses.values()) for f in used))
""")


@pytest.mark.slow
def test_second_process_loads_kernels_from_numba_cache():
    """After one run has compiled the kernels, a fresh interpreter loads them from the cache."""
    subprocess.run([sys.executable, "-c", CACHE_PROBE], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], check=True, capture_output=True,
                         text=True).stdout.split()
    hits, misses = int(out[0]), int(out[1])
    assert hits >= 2 and misses == 0


# ---------------------------------------------------------------------- durability="process"


def test_durability_is_validated_before_anything_is_written(tmp_path):
    for bad in ("fsync", "FULL", None, True, 1):
        with pytest.raises(ValueError, match=r"durability=.*'full'.*'process'"):
            Index(4, path=tmp_path / "new", durability=bad)
        assert not (tmp_path / "new").exists()
    Index(4, path=tmp_path / "store").close()
    with pytest.raises(ValueError, match="durability"):
        Index.load(tmp_path / "store", durability="os")
    Index.load(tmp_path / "store").close()  # (the failed open took no lock)


def _count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


@pytest.mark.parametrize("bits", [4, 32])
def test_full_durability_fsyncs_every_write_and_process_none_until_close(tmp_path, monkeypatch,
                                                                         bits):
    rng = np.random.default_rng(0)
    calls = _count_fsyncs(monkeypatch)
    full = Index(8, bits=bits, path=tmp_path / "full")
    full.add(rng.standard_normal((1100, 8)))
    before = len(calls)
    full.add(rng.standard_normal((1, 8)))
    assert len(calls) - before >= 5  # four segment files and the manifest (+ the directory)
    full.close()

    calls.clear()
    fast = Index(8, bits=bits, path=tmp_path / "fast", durability="process")
    fast.add(rng.standard_normal((1100, 8)))
    for _ in range(300):
        fast.add(rng.standard_normal((1, 8)))
    fast.remove([3, 5])
    fast.maintain()
    assert calls == []
    fast.close()  # makes the committed state durable
    assert calls


def test_process_durability_appends_small_adds_to_the_row_log(tmp_path):
    rng = np.random.default_rng(1)
    index = Index(8, path=tmp_path / "s", durability="process")
    index.add(rng.standard_normal((2000, 8)))
    segments = index.stats()["segments"]
    for _ in range(50):
        index.add(rng.standard_normal((1, 8)))
    logs = [p.name for p in (tmp_path / "s").iterdir() if p.suffix == ".log"]
    assert len(logs) == 1 and index.stats()["segments"] == segments
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["log"] == {"file": logs[0]} and manifest["format_version"] == 3
    index.close()  # folds the log: a closed store has none and keeps format 2
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert "log" not in manifest and manifest["format_version"] == 2
    assert len(Index.load(tmp_path / "s", read_only=True)) == 2050
    Index.load(tmp_path / "s").close()  # a writer's open removes files of older manifests
    assert not [p for p in (tmp_path / "s").iterdir() if p.suffix == ".log"]


def test_row_log_replays_replacements_and_keeps_a_prefix_of_a_torn_tail(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "s"
    index = Index(8, bits=32, metric="ip", path=path, durability="process")
    index.add(rng.standard_normal((100, 8)), ids=np.arange(100))
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    for i in range(20):  # replace ids 0..19 one by one, through the log
        index.add(vectors[i:i + 1], ids=[i])
    index.add(rng.standard_normal((3, 8)), ids=[200, 201, 202])
    abandon(index)
    reopened = Index.load(path, durability="process")
    assert sorted(reopened.ids.tolist()) == list(range(100)) + [200, 201, 202]
    np.testing.assert_array_equal(reopened.get(np.arange(20)), vectors)
    abandon(reopened)

    log = next(p for p in path.iterdir() if p.suffix == ".log")
    with open(log, "r+b") as handle:  # the last record cut short, as by kill -9 mid-write
        handle.truncate(log.stat().st_size - 5)
    after = Index.load(path, durability="process")
    assert sorted(after.ids.tolist()) == list(range(100))  # the 3-row add is gone, whole
    np.testing.assert_array_equal(after.get(np.arange(20)), vectors)
    after.add(np.ones((1, 8)), ids=[300])  # a new log: nothing is appended after torn bytes
    after.close()
    final = Index.load(path, read_only=True)
    assert sorted(final.ids.tolist()) == list(range(100)) + [300]


def test_reader_refresh_reads_the_row_log_as_it_grows(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s"
    writer = Index(8, path=path, durability="process")
    writer.add(rng.standard_normal((1500, 8)))
    reader = Index.load(path, read_only=True)
    for step in range(3):
        for _ in range(40):
            writer.add(rng.standard_normal((2, 8)))
        writer.remove(writer.ids[:3])  # a commit: folds the log into a segment
        for _ in range(5):
            writer.add(rng.standard_normal((1, 8)))
        assert reader.refresh()
        assert sorted(reader.ids.tolist()) == sorted(writer.ids.tolist())
        queries = rng.standard_normal((4, 8))
        np.testing.assert_array_equal(reader.search(queries, k=5)[1],
                                      writer.search(queries, k=5)[1])
    assert not reader.refresh()
    writer.close()


def test_a_record_with_a_valid_checksum_but_bad_ids_is_refused(tmp_path):
    from vecpress.core import rowlog, storage

    path = tmp_path / "s"
    index = Index(8, bits=32, path=path, durability="process")
    index.add(np.ones((10, 8)))
    index.add(np.ones((1, 8)))
    layout = index._store_layout()
    abandon(index)
    log = next(p for p in path.iterdir() if p.suffix == ".log")
    record = rowlog.encode_record(np.array([-4]), np.ones((1, 8), np.float32),
                                  np.zeros((1, 0), np.float32), None, layout)
    with open(log, "ab") as handle:
        handle.write(record)
    with pytest.raises(storage.StoreCorruptedError, match="negative or repeated ids"):
        Index.load(path)
