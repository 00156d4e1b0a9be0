"""Concurrency (issue #12): searches from many threads while a writer changes the store, kernels
that release the GIL, parallel kernels from two threads at once and after a fork, and an
asyncio event loop that keeps ticking while the adapters search.

Correctness is checked against a brute-force reference: the writer logs every version of the
store (which pool vectors are live) before it starts changing it, and each concurrent search
must return the exact top-k of some version that was current while it ran. No test asserts a
speed: the event-loop tests bound a stall generously and the GIL test compares two durations
measured in the same interval; the targets are measured by ``benchmarks/bench_concurrency.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import clustered_vectors
from vecpress import Collection, Index
from vecpress.core import partitions

REPO = Path(__file__).resolve().parent.parent
DIM = 32
K = 10
#: candidates per hit for the rerank: at 32 dimensions and 4 bits the default (3) misses a
#: true neighbour in about 1 of 300 queries; 20 makes every search exact, so that a concurrent
#: result can be compared with brute force (checked serially first, see _assert_exact_serially)
OVERSAMPLE = 20
#: float16 originals: an exact rerank score is within ~2e-4 of the float64 cosine
SCORE_TOLERANCE = 2e-3
READERS = 8
READ_SECONDS = 4.0
INITIAL_ROWS = 2_500  # above the codec's fitting threshold (1,024): codes, not exact vectors
POOL_ROWS = 7_000


# ---------------------------------------------------------------------- the version log


class VersionLog:
    """Every version of a store a writer produced, as boolean masks over a pool of vectors.

    The writer calls :meth:`begin` with the next version *before* it starts changing the store
    and :meth:`end` when the change returned. A reader takes :meth:`oldest_current` before a
    search and :meth:`newest_started` after it: the search saw one of the versions in between.
    """

    def __init__(self, first: np.ndarray) -> None:
        self._lock = threading.Lock()
        self._versions = [first.copy()]
        self._completed = 0

    def begin(self, live: np.ndarray) -> None:
        with self._lock:
            self._versions.append(live.copy())

    def end(self) -> None:
        with self._lock:
            self._completed = len(self._versions) - 1

    def oldest_current(self) -> int:
        with self._lock:
            return self._completed

    def newest_started(self) -> int:
        with self._lock:
            return len(self._versions) - 1

    def __getitem__(self, number: int) -> np.ndarray:
        return self._versions[number]

    def __len__(self) -> int:
        return len(self._versions)


@dataclass
class Observation:
    """One search a reader ran: which queries, what came back, and its version window."""

    first_version: int
    last_version: int
    query_rows: np.ndarray
    scores: np.ndarray  # (len(query_rows), K)
    ids: np.ndarray  # pool rows, (len(query_rows), K), -1 padding


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (the cosine metric's view of the vectors), in float64."""
    vectors = vectors.astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_topk_problem(true_scores: np.ndarray, allowed: np.ndarray, scores: np.ndarray,
                       ids: np.ndarray) -> str | None:
    """Why ``(scores, ids)`` is not an exact top-k of one query over the ``allowed`` pool rows
    (``None`` when it is). Ties are tolerated: every returned row must score within
    :data:`SCORE_TOLERANCE` of the true k-th best, and the returned score must be its own."""
    expected = min(K, int(allowed.sum()))
    found = ids[ids >= 0]
    if len(found) != expected:
        return f"{len(found)} hits, expected {expected}"
    if (ids[expected:] != -1).any():
        return "padding (-1) before real hits"
    if len(np.unique(found)) != len(found):
        return f"repeated ids {found.tolist()}"
    if not allowed[found].all():
        return f"ids {found[~allowed[found]].tolist()} not live in this version"
    if expected == 0:
        return None
    returned = scores[:expected]
    if not np.isfinite(returned).all() or (np.diff(returned) > 1e-6).any():
        return f"scores not finite and sorted: {returned.tolist()}"
    own = true_scores[found]
    if np.abs(own - returned).max() > SCORE_TOLERANCE:
        return f"scores {returned.tolist()} differ from the exact {own.tolist()}"
    kth = np.partition(true_scores[allowed], -expected)[-expected]
    if own.min() < kth - SCORE_TOLERANCE:
        return f"a hit scores {own.min():.5f}, below the true k-th best {kth:.5f}"
    return None


def check_observations(observations: list[Observation], log: VersionLog,
                       true_scores: np.ndarray, allowed_rows: np.ndarray | None = None) -> None:
    """Every observation is the exact top-k of some version in its window (restricted to
    ``allowed_rows``, a boolean pool mask for filtered searches)."""
    assert observations, "the readers ran no search"
    for number, seen in enumerate(observations):
        assert (seen.ids[seen.ids >= 0] < len(true_scores[0])).all(), "an id outside the pool"
        problems = []
        for version in range(seen.first_version, seen.last_version + 1):
            allowed = log[version] if allowed_rows is None else log[version] & allowed_rows
            problem = next((p for q, s, i in zip(seen.query_rows, seen.scores, seen.ids)
                            if (p := exact_topk_problem(true_scores[q], allowed, s, i))), None)
            if problem is None:
                break
            problems.append(f"version {version}: {problem}")
        else:
            raise AssertionError(f"search {number} (versions {seen.first_version}.."
                                 f"{seen.last_version}) matches none: " + "; ".join(problems))


# ---------------------------------------------------------------------- the threads


def run_readers(search: Callable[[np.random.Generator], Observation], count: int,
                seconds: float) -> list[Observation]:
    """``count`` threads calling ``search`` for ``seconds``; every observation, or the first
    exception a reader raised."""
    results: list[list[Observation]] = [[] for _ in range(count)]
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def reader(number: int) -> None:
        rng = np.random.default_rng(number)
        try:
            while time.monotonic() < deadline:
                results[number].append(search(rng))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [seen for per_reader in results for seen in per_reader]


class Writer(threading.Thread):
    """Adds new pool rows and removes live ones in small batches until stopped, logging each
    version before it changes the store; keeps the live count near the initial one."""

    def __init__(self, live: np.ndarray, log: VersionLog, add: Callable[[np.ndarray], None],
                 remove: Callable[[np.ndarray], None], seed: int = 99) -> None:
        super().__init__()
        self.live = live.copy()
        self.log = log
        self._add, self._remove = add, remove
        self.stop = threading.Event()
        self.steps = 0
        self.error: BaseException | None = None
        self._rng = np.random.default_rng(seed)
        self._next = int(np.nonzero(live)[0].max()) + 1
        self._target = int(live.sum())

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self._next < len(self.live) - 64:
                self.step()
        except BaseException as error:
            self.error = error

    def step(self) -> None:
        size = int(self._rng.integers(1, 48))
        if self.live.sum() < self._target or self._rng.random() < 0.5:
            rows = np.arange(self._next, self._next + size)
            self._next += size
            self.live[rows] = True
            self.log.begin(self.live)
            self._add(rows)
        else:
            rows = self._rng.choice(np.nonzero(self.live)[0], size, replace=False)
            self.live[rows] = False
            self.log.begin(self.live)
            self._remove(rows)
        self.log.end()
        self.steps += 1


def run_with_writer(writer: Writer, search: Callable[[np.random.Generator], Observation]
                    ) -> list[Observation]:
    """The readers for :data:`READ_SECONDS` while ``writer`` runs; checks the writer worked."""
    writer.start()
    try:
        observations = run_readers(search, READERS, READ_SECONDS)
    finally:
        writer.stop.set()
        writer.join()
    if writer.error is not None:
        raise writer.error
    assert writer.steps >= 5, f"the writer made only {writer.steps} changes"
    return observations


# ---------------------------------------------------------------------- Index


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool vectors, query vectors, exact cosine scores of every query against the pool)."""
    vectors = clustered_vectors(POOL_ROWS, DIM, seed=3)
    queries = clustered_vectors(48, DIM, seed=4)
    return vectors, queries, unit_rows(queries) @ unit_rows(vectors).T


def _assert_exact_serially(observe: Callable[[np.random.Generator], Observation],
                           log: VersionLog, true_scores: np.ndarray,
                           allowed_rows: np.ndarray | None = None) -> None:
    """Before any concurrency: the search is exact on the first version (else comparing the
    concurrent searches with brute force would prove nothing)."""
    rng = np.random.default_rng(12345)
    check_observations([observe(rng) for _ in range(20)], log, true_scores, allowed_rows)


@pytest.mark.parametrize("lists", [None, 8])
def test_index_searches_from_8_threads_match_a_version_while_a_writer_changes_it(
        tmp_path, pool, monkeypatch, lists):
    """Flat, and partitioned into 8 lists whose layout is rebuilt every 64 added rows (all
    lists probed, so every search must be exact on some version)."""
    vectors, queries, true_scores = pool
    monkeypatch.setattr(partitions, "TAIL_MIN_ROWS", 64)
    monkeypatch.setattr(partitions, "TAIL_FRACTION", 0.0)
    index = Index(dim=DIM, bits=4, path=tmp_path / "index", partitions=lists)
    index.add(vectors[:INITIAL_ROWS], ids=np.arange(INITIAL_ROWS))
    live = np.zeros(len(vectors), dtype=np.bool_)
    live[:INITIAL_ROWS] = True
    log = VersionLog(live)

    def observe(rng: np.random.Generator) -> Observation:
        rows = rng.choice(len(queries), int(rng.choice([1, 1, 4])), replace=False)
        first = log.oldest_current()
        scores, ids = index.search(queries[rows], k=K, oversample=OVERSAMPLE, nprobe=8)
        return Observation(first, log.newest_started(), rows, scores, ids)

    _assert_exact_serially(observe, log, true_scores)
    layouts = index._lists
    writer = Writer(live, log, add=lambda rows: index.add(vectors[rows], ids=rows),
                    remove=index.remove)
    observations = run_with_writer(writer, observe)
    check_observations(observations, log, true_scores)
    assert sorted(index.ids.tolist()) == np.nonzero(writer.live)[0].tolist()
    assert len(log) == writer.steps + 1
    if lists:
        assert index._lists is not layouts  # the layout was rebuilt under the readers
    index.close()


# ---------------------------------------------------------------------- Collection


def _doc_id(row: int) -> str:
    return f"doc-{row}"


def _group(rows: np.ndarray) -> np.ndarray:
    return rows % 3


def test_collection_filtered_searches_from_8_threads_match_a_version(tmp_path, pool):
    vectors, queries, true_scores = pool
    collection = Collection(dim=DIM, path=tmp_path / "collection", bits=4)

    def upsert(rows: np.ndarray) -> None:
        collection.upsert([_doc_id(r) for r in rows], vectors[rows],
                          texts=[f"text {r}" for r in rows],
                          metadatas=[{"group": int(g)} for g in _group(rows)])

    def delete(rows: np.ndarray) -> None:
        assert collection.delete(ids=[_doc_id(r) for r in rows]) == len(rows)

    upsert(np.arange(INITIAL_ROWS))
    live = np.zeros(len(vectors), dtype=np.bool_)
    live[:INITIAL_ROWS] = True
    log = VersionLog(live)
    in_group = _group(np.arange(len(vectors))) == 1

    def observe(rng: np.random.Generator) -> Observation:
        row = int(rng.integers(len(queries)))
        first = log.oldest_current()
        hits = collection.search(queries[row], k=K, where={"group": 1}, oversample=OVERSAMPLE)
        last = log.newest_started()
        ids = np.full(K, -1, dtype=np.int64)
        scores = np.full(K, -np.inf, dtype=np.float32)
        for position, hit in enumerate(hits):
            pool_row = int(hit.id.removeprefix("doc-"))
            assert hit.text == f"text {pool_row}" and hit.metadata == {"group": 1}, hit
            ids[position], scores[position] = pool_row, hit.score
        return Observation(first, last, np.array([row]), scores[None], ids[None])

    _assert_exact_serially(observe, log, true_scores, in_group)
    writer = Writer(live, log, add=upsert, remove=delete)
    observations = run_with_writer(writer, observe)
    check_observations(observations, log, true_scores, in_group)
    assert len(collection) == int(writer.live.sum())
    collection.close()


# ---------------------------------------------------------------------- subprocess scripts


def run_script(source: str, timeout: float = 240,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``source`` in a fresh interpreter with ``src/`` first on the path (numba's threads and
    a crash stay out of the test process), with ``env`` added to the environment."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _describe(result: subprocess.CompletedProcess) -> str:
    return (f"exit code {result.returncode}\nstdout: {result.stdout[-2000:]}\n"
            f"stderr: {result.stderr[-3000:]}")


GIL_SCRIPT = """
    import json, sys, threading, time
    import numpy as np
    from vecpress import Index

    sys.setswitchinterval(0.0005)  # hand the GIL over within 0.5 ms when it is free to go
    rng = np.random.default_rng(0)
    index = Index(dim=64, bits=1, rerank=False)
    for _ in range(10):
        index.add(rng.standard_normal((100_000, 64)).astype(np.float32))
    queries = rng.standard_normal((60, 64)).astype(np.float32)
    index.search(queries[:2], k=10)  # compiled
    left = rng.standard_normal((240, 240))

    def share_with_notes(calls):
        # Run the calls on this thread while another thread notes the time every 0.2 ms:
        # the share of calls with a note in the middle half of the call, and the calls'
        # median duration. A call that holds the GIL throughout leaves no note there.
        stop, notes = threading.Event(), []

        def note_taker():
            last = 0.0
            while not stop.is_set():
                now = time.perf_counter()
                if now - last >= 0.0002:
                    notes.append(now)
                    last = now

        thread = threading.Thread(target=note_taker)
        thread.start()
        time.sleep(0.05)
        spans = []
        for call in calls:
            start = time.perf_counter()
            call()
            spans.append((start, time.perf_counter()))
        stop.set()
        thread.join()
        notes, spans = np.array(notes), np.array(spans)
        quarter = (spans[:, 1] - spans[:, 0]) / 4
        inside = (np.searchsorted(notes, spans[:, 1] - quarter)
                  - np.searchsorted(notes, spans[:, 0] + quarter))
        return float((inside > 0).mean()), float(np.median(spans[:, 1] - spans[:, 0]))

    searched, search_s = share_with_notes(
        [lambda q=q: index.search(q[None], k=10) for q in queries])
    product_s = []
    for _ in range(7):
        start = time.perf_counter()
        np.dot(left, left)
        product_s.append(time.perf_counter() - start)
    reps = max(1, int(search_s / max(float(np.median(product_s)), 1e-5)))
    control, control_s = share_with_notes(  # GIL-free calls of about the same length
        [lambda: [np.dot(left, left) for _ in range(reps)] for _ in range(30)])
    print(json.dumps({"search_share": searched, "search_ms": search_s * 1000,
                      "control_share": control, "control_ms": control_s * 1000}))
"""


@pytest.mark.slow
def test_search_kernels_release_the_gil():
    """Another Python thread runs while a search's kernel scans 1M codes.

    One thread (numba held to 1 thread, so the scan is one serial kernel call per query) runs
    60 single-query searches of several ms each; another notes the time every 0.2 ms. A
    kernel that holds the GIL leaves no note in the middle half of any search; one that
    releases it leaves notes in most, unless the OS keeps the note-taker off the CPU for the
    whole window. The same count around GIL-free calls of equal length (numpy products on 1
    BLAS thread) is the control: on a machine too loaded to let the note-taker run at all
    there is nothing to tell, and the test is skipped. The searches must leave notes in at
    least half as many calls as the control.

    Why not one long batch search on numba's threads: numba's parallel launcher already
    releases the GIL while its threads run, so such a test passes whether the kernels are
    ``nogil`` or not. Single queries on one thread (the serial kernel, one call per query) are
    what Python threads serving requests run, and what holds the GIL today. Not a timed
    assertion: both shares are counted in the same process against the same scheduler, and a
    GIL-holding kernel scores about 0 against a control of about 1.
    """
    single = {name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    result = run_script(GIL_SCRIPT, env=single)
    assert result.returncode == 0, _describe(result)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["control_share"] < 0.3:
        pytest.skip(f"the machine is too loaded to see another thread run: {figures}")
    assert figures["search_share"] >= 0.5 * figures["control_share"], (
        f"another Python thread ran during {figures['search_share']:.0%} of the searches "
        f"(median {figures['search_ms']:.1f} ms) but during {figures['control_share']:.0%} "
        f"of GIL-free calls as long: the search kernel holds the GIL ({figures})")


TWO_INDEXES_SCRIPT = """
    import threading
    import numpy as np
    from vecpress import Index

    rng = np.random.default_rng(0)
    indexes, batches, expected = [], [], []
    for seed, bits in ((1, 1), (2, 4)):
        index = Index(dim=64, bits=bits, rerank=False)
        index.add(rng.standard_normal((60_000, 64)).astype(np.float32))
        queries = rng.standard_normal((256, 64)).astype(np.float32)
        indexes.append(index)
        batches.append(queries)
        expected.append(index.search(queries, k=10))  # serially: the reference
    errors = []

    def searcher(number):
        try:
            for _ in range(8):
                scores, ids = indexes[number].search(batches[number], k=10)
                assert (ids == expected[number][1]).all(), "ids differ from the serial search"
                assert np.allclose(scores, expected[number][0]), "scores differ"
        except BaseException as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    print("ok")
"""


@pytest.mark.slow
def test_two_threads_run_parallel_kernels_on_two_indexes_at_once():
    """Two Python threads each launch numba's parallel scan (batches of 256 queries over
    60k rows) at the same time: the process must not abort (numba's workqueue layer
    terminates on concurrent launches) and both get the serial results."""
    result = run_script(TWO_INDEXES_SCRIPT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), _describe(result)


FORK_SCRIPT = """
    import os, sys
    import numpy as np
    from vecpress import Index

    rng = np.random.default_rng(0)
    index = Index(dim=64, bits=4, rerank=False)
    index.add(rng.standard_normal((60_000, 64)).astype(np.float32))
    queries = rng.standard_normal((256, 64)).astype(np.float32)
    expected = index.search(queries, k=10)[1]  # a parallel kernel ran: numba's pool exists
    pid = os.fork()
    if pid == 0:
        try:
            same = (index.search(queries, k=10)[1] == expected).all()
            single = (index.search(queries[:1], k=10)[1] == expected[:1]).all()
            code = 0 if same and single else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    child = os.waitstatus_to_exitcode(status)
    again = (index.search(queries, k=10)[1] == expected).all()
    print(f"child {child} parent {'ok' if again else 'differs'}")
    sys.exit(0 if child == 0 and again else 1)
"""


@pytest.mark.slow
def test_fork_after_a_parallel_kernel_ran_child_can_search():
    result = run_script(FORK_SCRIPT, timeout=180)
    assert result.returncode == 0, _describe(result)
    assert "child 0 parent ok" in result.stdout, _describe(result)


# ---------------------------------------------------------------------- the event loop

ASYNC_ROWS = 3_000
ASYNC_DIM = 384
#: how long each search is made to take (a sleep added inside ``Collection.search``): a store
#: call made on the event loop's thread stalls the loop at least this long
SLOW_SEARCH_S = 0.150
#: a loop that never waits for a search sees gaps of a few ms; one that does sees >= 150 ms
#: (the real stall of a big store's search is measured by the concurrency benchmark)
STALL_BOUND_S = 0.100


async def longest_loop_stall(work: Callable[[], "asyncio.Future"], repeats: int
                             ) -> tuple[float, int, list]:
    """Await ``work()`` ``repeats`` times while a ticker coroutine records ``loop.time()`` every
    1 ms; returns (the longest gap between ticks, ticks, the results)."""
    loop = asyncio.get_running_loop()
    ticks: list[float] = [loop.time()]
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks.append(loop.time())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    results = [await work() for _ in range(repeats)]
    done.set()
    await task
    return float(np.diff(ticks).max()), len(ticks), results


class FakeEmbeddings:
    """A deterministic stand-in for an embedding model: each text's vector is drawn from a
    generator seeded by the text (no model, no network); LangChain's ``Embeddings`` API."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _vector(self, text: str) -> list[float]:
        seed = int.from_bytes(text.encode()[:16].ljust(16, b"\0"), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


@pytest.fixture(scope="module")
def slow_stores():
    """The LangChain adapter over 3k documents of 384 dimensions in memory, and the LlamaIndex
    adapter over the same :class:`Collection`, whose ``search`` is made to take
    :data:`SLOW_SEARCH_S` longer (a sleep), so a search that runs on the event loop's thread
    is seen whatever the machine's speed. The documents carry LlamaIndex's node metadata (which
    its adapter turns back into nodes); they are written through the public ``collection``
    property, as vectors, without an embedding model."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.embeddings import Embeddings
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    from vecpress.integrations.langchain import VecpressVectorStore as LangChainStore
    from vecpress.integrations.llama_index import VecpressVectorStore as LlamaIndexStore

    class Fake(FakeEmbeddings, Embeddings):
        pass

    template = node_to_metadata_dict(TextNode(id_="NODE", text=""), remove_text=True,
                                     flat_metadata=False)
    content = template["_node_content"]
    assert '"id_": "NODE"' in content, content
    langchain_store = LangChainStore(Fake(ASYNC_DIM), dim=ASYNC_DIM)
    rng = np.random.default_rng(7)
    ids = [f"n{r}" for r in range(ASYNC_ROWS)]
    metadatas = [dict(template, _node_content=content.replace('"id_": "NODE"', f'"id_": "{i}"'))
                 for i in ids]
    collection = langchain_store.collection
    collection.upsert(ids, rng.standard_normal((ASYNC_ROWS, ASYNC_DIM), dtype=np.float32),
                      texts=[f"document {i}" for i in ids], metadatas=metadatas)
    fast_search = collection.search

    def slow_search(*args, **kwargs):
        time.sleep(SLOW_SEARCH_S)
        return fast_search(*args, **kwargs)

    collection.search = slow_search
    yield langchain_store, LlamaIndexStore(collection=collection)
    langchain_store.close()


def test_a_slow_search_stalls_a_loop_that_waits_for_it(slow_stores):
    """The meter's control: the same search called on the loop's thread is seen."""
    store, _ = slow_stores

    async def on_the_loop():
        return store.similarity_search("question", k=4)

    stall, _, _ = asyncio.run(longest_loop_stall(on_the_loop, 2))
    assert stall >= SLOW_SEARCH_S


def test_langchain_asimilarity_search_does_not_stall_the_event_loop(slow_stores):
    store, _ = slow_stores
    queries = [f"question {i}" for i in range(6)]
    expected = [[d.id for d in store.similarity_search(q, k=4)] for q in queries]
    found = iter(queries)

    stall, ticks, results = asyncio.run(longest_loop_stall(
        lambda: store.asimilarity_search(next(found), k=4), len(queries)))
    assert [[d.id for d in docs] for docs in results] == expected
    assert ticks > len(queries), "the ticker never ran"
    assert stall < STALL_BOUND_S, f"the event loop stalled {stall * 1000:.1f} ms"


def test_llama_index_aquery_does_not_stall_the_event_loop(slow_stores):
    from llama_index.core.vector_stores.types import VectorStoreQuery

    _, store = slow_stores
    rng = np.random.default_rng(11)
    queries = [VectorStoreQuery(query_embedding=rng.standard_normal(ASYNC_DIM).tolist(),
                                similarity_top_k=4) for _ in range(6)]
    expected = [store.query(q).ids for q in queries]
    found = iter(queries)

    stall, ticks, results = asyncio.run(longest_loop_stall(
        lambda: store.aquery(next(found)), len(queries)))
    assert [r.ids for r in results] == expected
    assert all(len(ids) == 4 for ids in expected)
    assert ticks > len(queries), "the ticker never ran"
    assert stall < STALL_BOUND_S, f"the event loop stalled {stall * 1000:.1f} ms"


# ---------------------------------------------------------------------- another process writes

WRITER_SCRIPT = """
    import sys, time
    import numpy as np
    from vecpress import Collection

    path, seconds = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(5)
    collection = Collection.open(path)
    oldest, newest = 0, len(collection)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ids = [f"doc-{i}" for i in range(newest, newest + 16)]
        collection.upsert(ids, rng.standard_normal((16, collection.dim)).astype(np.float32),
                          texts=[f"text {i}" for i in range(newest, newest + 16)])
        newest += 16
        collection.delete(ids=[f"doc-{i}" for i in range(oldest, oldest + 16)])
        oldest += 16
    collection.close()
    print(newest - 3000)
"""


@pytest.mark.slow
def test_read_only_collection_in_another_process_keeps_working_while_a_writer_writes(tmp_path):
    """A reader process opens, refreshes and searches a collection another process keeps
    writing (adds, deletes, and the segment merges and compactions they set off): no error,
    and every search returns k documents that exist with their own text. ("A file stays
    readable while any reader's manifest names it.")"""
    path = tmp_path / "shared"
    rows = np.arange(3000)
    with Collection(dim=DIM, path=path, bits=4) as collection:
        collection.upsert([f"doc-{r}" for r in rows], clustered_vectors(3000, DIM, seed=8),
                          texts=[f"text {r}" for r in rows])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER_SCRIPT), str(path), "8"], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(0)
    errors: list[str] = []
    searches = 0
    try:
        while writer.poll() is None:
            try:
                reader = Collection.open(path, read_only=True)
                try:
                    for _ in range(5):
                        reader.refresh()
                        hits = reader.search(rng.standard_normal(DIM), k=K)
                        assert len(hits) == K, f"{len(hits)} hits"
                        assert all(h.text == "text " + h.id.removeprefix("doc-")
                                   for h in hits), hits
                        assert all(a.score >= b.score for a, b in zip(hits, hits[1:])), hits
                        searches += 1
                finally:
                    reader.close()
            except Exception as error:  # every kind counts; reported below
                errors.append(repr(error))
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err[-3000:]
    assert int(out.strip()) > 100, f"the writer made only {out.strip()} upserts"
    assert searches > 0
    assert not errors, f"{len(errors)} reader errors ({searches} searches), e.g. {errors[:3]}"
