"""Concurrency benchmark (issue #12): threads, the event loop, one-document writes, peak memory
of big writes, and a writer process beside reader processes.

Sections (``--sections``, all by default):

- ``qps``: single-query searches from 1, 2 and 4 Python threads against one index (each
  library held to 1 thread inside a call, so the threads are the only parallelism;
  ``--inner-threads 0`` leaves the libraries' defaults): vecpress
  4-bit + rerank (the default) and 1-bit + rerank, both on disk; FAISS ``IndexRaBitQ`` 4-bit
  alone and under ``IndexRefineFlat`` (k-factor 3); hnswlib (M=16, ef=64). QPS per thread
  count, the 2-thread / 1-thread ratio (target for vecpress: at least 1.7x on 2 cores), p50
  latency, recall@10 of the 1-thread run against exact search.
- ``stall``: the event loop's longest stall while awaiting LangChain ``asimilarity_search`` and
  LlamaIndex ``aquery`` over the same store (a ticker coroutine wakes every 1 ms; the longest
  gap between wake-ups during each query), median and max over the queries, beside the same
  figure for an idle ``asyncio.sleep`` (target: at most 5 ms).
- ``latency``: median and p99 of a one-document ``Collection.upsert`` and of ``Collection.get``
  of one id, and of ``Index.add`` / ``Index.get`` of one explicit id, in memory and on disk
  (default ``durability="full"``, then the same stores reopened with ``durability="process"``),
  at the base size (real vectors) and 1M (synthetic; ``--latency-sizes``). Target: 1 ms at 1M.
- ``rss``: peak RSS (``VmHWM``) and ``RssAnon`` in fresh processes: building a 480k-row on-disk
  index in 100k batches, a 20k-row add into it, ``compact()`` of the resulting 500k index with
  a fifth of its rows removed; with ``--build-10m``, building 10M x 384 synthetic vectors on
  disk (originals in 100k batches) against ``stats()['ram_bytes']`` (target: peak at most 2x
  the final RAM + 2 GiB). The add and compact peaks are reset just before the operation
  (``/proc/self/clear_refs``), so they are the operation's own.
- ``rw``: one writer process upserting and deleting documents for ``--duration`` seconds while
  two reader processes loop ``Collection.open(read_only=True)``, ``refresh()`` and ``search``:
  reader errors (target 0), opens, refreshes and searches per second, writes per second.

Data: WordNet glosses embedded with all-MiniLM-L6-v2 (``benchmarks/datasets.py``; 100k base,
``--quick`` 10k, which embeds only what it needs on an empty cache), or ``--synthetic``
vectors shaped like them (``bench_scale``'s generator; no recall claims then). The 1M latency
store and the memory runs always use synthetic vectors.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_concurrency                # about 25 min
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_concurrency --quick        # about 2 min
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_concurrency --build-10m    # adds 25-40 min
    python -m benchmarks.bench_concurrency --quick --synthetic --sections qps stall

Writes ``benchmarks/results/concurrency.md`` and ``concurrency.json`` (``concurrency_quick.*``
with ``--quick``; another folder with ``--out``). Big stores go under the system's temporary
folder or ``$VECPRESS_SCALE_TMP`` (10M: about 8 GB of disk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

if not __package__:  # run as `python benchmarks/bench_concurrency.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.bench_scale import CHUNK, SyntheticEmbeddings, load_spectrum
from benchmarks.common import RESULTS, machine, recall_at, source_version

K = 10
THREAD_COUNTS = (1, 2, 4)
SECTIONS = ("qps", "stall", "latency", "rss", "rw")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- data


def load_data(n_base: int, n_queries: int, *, synthetic: bool, quick: bool
              ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(base, queries, query texts, a description of the data)."""
    if synthetic:
        generator = SyntheticEmbeddings(load_spectrum())
        base = np.concatenate(list(generator.stream(n_base)))
        texts = [f"query {i}" for i in range(n_queries)]
        return base, generator.queries(n_queries), texts, "synthetic 384-d (bench_scale)"
    from benchmarks.datasets import load_embeddings, release_model

    base, queries, _, texts = load_embeddings(
        n_base, n_queries, corpus_size=n_base + n_queries if quick else None)
    release_model()
    return base, queries, texts, "WordNet glosses, all-MiniLM-L6-v2 (384-d)"


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """Median and 99th percentile of durations, in milliseconds."""
    values = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.median(values)), "p99_ms": float(np.percentile(values, 99))}


def threads_inside_calls(count: int) -> None:
    """Hold numba (for the calling thread: its setting is per thread), FAISS's OpenMP and BLAS
    to ``count`` threads (1: the Python threads are the only parallelism); 0 leaves them."""
    if count <= 0:
        return
    import numba

    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        import faiss

        faiss.omp_set_num_threads(count)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=count, user_api="blas")
    except ImportError:
        pass


# ---------------------------------------------------------------- qps from threads


def qps_methods(base: np.ndarray, workdir: Path) -> dict[str, Callable[[], Callable]]:
    """Name -> builder of a one-query search function ``(query vector) -> ids``."""

    def vecpress(bits: int) -> Callable[[], Callable]:
        def build() -> Callable:
            from vecpress import Index

            index = Index(base.shape[1], metric="ip", bits=bits, rerank=True,
                          path=workdir / f"qps-vecpress-{bits}")
            index.add(base)
            return lambda q: index.search(q[None], K)[1][0]
        return build

    def faiss_index(factory: str, k_factor: int | None = None) -> Callable[[], Callable]:
        def build() -> Callable:
            import faiss

            index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            index.train(base)
            index.add(base)
            if k_factor is not None:
                index.k_factor = k_factor
            return lambda q: index.search(q[None], K)[1][0]
        return build

    def hnswlib_index() -> Callable:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(max_elements=len(base), M=16, ef_construction=128)
        index.add_items(base, np.arange(len(base)), num_threads=os.cpu_count() or 1)
        index.set_ef(64)
        return lambda q: index.knn_query(q[None], k=K, num_threads=1)[0][0]

    return {"vecpress 4-bit + rerank x3 (default), on disk": vecpress(4),
            "vecpress 1-bit + rerank x10, on disk": vecpress(1),
            "faiss IndexRaBitQ 4-bit": faiss_index("RaBitQ4"),
            "faiss IndexRaBitQ 4-bit + RefineFlat x3": faiss_index("RaBitQ4,RFlat", 3),
            "hnswlib M=16 ef=64": hnswlib_index}


def run_threads(search: Callable, queries: np.ndarray, threads: int, inner: int = 1
                ) -> tuple[float, list[float], np.ndarray]:
    """Every query once, split round-robin over ``threads`` Python threads started together:
    (queries per second over the wall time, each query's latency, the ids found)."""
    found = np.full((len(queries), K), -1, dtype=np.int64)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    spans: list[tuple[float, float]] = []
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        threads_inside_calls(inner)
        barrier.wait()
        start = time.perf_counter()
        try:
            for row in range(number, len(queries), threads):
                began = time.perf_counter()
                ids = np.asarray(search(queries[row]))
                latencies[number].append(time.perf_counter() - began)
                found[row, :len(ids)] = ids[:K]
        except BaseException as error:
            errors.append(error)
        spans.append((start, time.perf_counter()))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return len(queries) / wall, [t for per in latencies for t in per], found


#: rounds per thread count in the QPS section (the median round is reported)
REPEATS = 3


def measure_qps(base: np.ndarray, queries: np.ndarray, workdir: Path, inner: int = 1
                ) -> list[dict[str, Any]]:
    """QPS of single-query searches from 1, 2 and 4 threads, per method, each library held to
    ``inner`` threads inside a call (0: its default)."""
    from benchmarks.datasets import ground_truth

    _, truth = ground_truth(base, queries, k=K, metric="ip", cache_dir=None)
    rows = []
    for name, build in qps_methods(base, workdir).items():
        search = build()
        run_threads(search, queries[:50], 1, inner)  # warm: compile, load, fault pages in
        row: dict[str, Any] = {"method": name, "queries": len(queries), "inner_threads": inner}
        for threads in THREAD_COUNTS:
            # REPEATS rounds per thread count, the median kept: a burst of other work on a
            # 2-core machine then skews one round, not the ratio
            runs = [run_threads(search, queries, threads, inner) for _ in range(REPEATS)]
            qps, latencies, found = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
            row[f"qps_{threads}t"] = qps
            row[f"p50_ms_{threads}t"] = percentiles_ms(latencies)["p50_ms"]
            if threads == 1:
                row["recall@10"] = recall_at(found, truth, K)
        row["ratio_2t_1t"] = row["qps_2t"] / row["qps_1t"]
        rows.append(row)
        print(f"  {name:<48} QPS {row['qps_1t']:,.0f} / {row['qps_2t']:,.0f} / "
              f"{row['qps_4t']:,.0f} (1/2/4 threads), 2t/1t {row['ratio_2t_1t']:.2f}x, "
              f"recall@10 {row['recall@10']:.4f}", flush=True)
        del search
    return rows


# ---------------------------------------------------------------- event-loop stalls


def llama_index_metadata(ids: list[str]) -> list[dict[str, Any]]:
    """LlamaIndex's node metadata for documents ``ids`` (what its adapter writes and turns
    back into nodes), made from one template rather than one node object per document."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    template = node_to_metadata_dict(TextNode(id_="NODE", text=""), remove_text=True,
                                     flat_metadata=False)
    content = template["_node_content"]
    return [dict(template, _node_content=content.replace('"id_": "NODE"', f'"id_": "{i}"'))
            for i in ids]


def lookup_embeddings(texts: list[str], vectors: np.ndarray):
    """A LangChain ``Embeddings`` returning the precomputed vector of each known text."""
    from langchain_core.embeddings import Embeddings

    table = dict(zip(texts, vectors))

    class Lookup(Embeddings):
        def embed_documents(self, batch: list[str]) -> list[list[float]]:
            return [table[t].tolist() for t in batch]

        def embed_query(self, text: str) -> list[float]:
            return table[text].tolist()

    return Lookup()


async def longest_gaps(calls: list[Callable[[], Any]]) -> list[float]:
    """Await each call in turn while a ticker coroutine wakes every 1 ms; per call, the longest
    time between two wake-ups (or between the call's start or end and a wake-up), seconds."""
    loop = asyncio.get_running_loop()
    state = {"last": loop.time(), "longest": 0.0, "running": True}

    async def ticker() -> None:
        while state["running"]:
            await asyncio.sleep(0.001)
            now = loop.time()
            state["longest"] = max(state["longest"], now - state["last"])
            state["last"] = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    gaps = []
    for call in calls:
        state["longest"], state["last"] = 0.0, loop.time()
        await call()
        gaps.append(max(state["longest"], loop.time() - state["last"]))
    state["running"] = False
    await task
    return gaps


def measure_stalls(base: np.ndarray, queries: np.ndarray, texts: list[str], workdir: Path,
                   count: int) -> list[dict[str, Any]]:
    """Longest event-loop stall per awaited query, LangChain and LlamaIndex, one store."""
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from vecpress.integrations.langchain import VecpressVectorStore as LangChainStore
    from vecpress.integrations.llama_index import VecpressVectorStore as LlamaIndexStore

    store = LangChainStore(lookup_embeddings(texts, queries), path=workdir / "stall",
                           dim=base.shape[1])
    for start in range(0, len(base), CHUNK):
        ids = [f"d{i}" for i in range(start, min(start + CHUNK, len(base)))]
        store.collection.upsert(ids, base[start:start + len(ids)],
                                texts=[f"document {i}" for i in ids],
                                metadatas=llama_index_metadata(ids))
    llama = LlamaIndexStore(collection=store.collection)
    count = min(count, len(texts))
    rows = []
    cases = {
        "idle (asyncio.sleep 5 ms)": [lambda: asyncio.sleep(0.005) for _ in range(count)],
        "LangChain asimilarity_search k=4": [
            lambda t=t: store.asimilarity_search(t, k=4) for t in texts[:count]],
        "LlamaIndex aquery top 4": [
            lambda q=q: llama.aquery(VectorStoreQuery(query_embedding=q.tolist(),
                                                      similarity_top_k=4))
            for q in queries[:count]],
    }
    for name, calls in cases.items():
        asyncio.run(longest_gaps(calls[:5]))  # warm
        gaps = np.asarray(asyncio.run(longest_gaps(calls))) * 1000
        rows.append({"call": name, "queries": count, "n": len(base),
                     "stall_p50_ms": float(np.median(gaps)), "stall_max_ms": float(gaps.max())})
        print(f"  {name:<40} longest stall per call: median {rows[-1]['stall_p50_ms']:.2f} ms, "
              f"max {rows[-1]['stall_max_ms']:.2f} ms", flush=True)
    store.close()
    return rows


# ---------------------------------------------------------------- one-document writes and reads


def vector_chunks(n: int, base: np.ndarray | None) -> Iterator[np.ndarray]:
    """``base`` in chunks when it has ``n`` rows, else ``n`` synthetic vectors chunk by chunk."""
    if base is not None and len(base) == n:
        return (base[start:start + CHUNK] for start in range(0, n, CHUNK))
    return SyntheticEmbeddings(load_spectrum()).stream(n)


def timed(calls: list[Callable[[], Any]]) -> dict[str, float]:
    """Median and p99 of each call's wall time (after two untimed calls)."""
    for call in calls[:2]:
        call()
    seconds = []
    for call in calls[2:]:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return percentiles_ms(seconds)


def measure_point_ops(n: int, base: np.ndarray | None, workdir: Path, ops: int,
                      base_is_real: bool = True) -> list[dict[str, Any]]:
    """One-document upsert / get on a Collection and one-id add / get on an Index of ``n``
    (the base vectors when there are ``n`` of them, else synthetic ones)."""
    from vecpress import Collection, Index

    rng = np.random.default_rng(n)
    data = "real" if base_is_real and base is not None and len(base) == n else "synthetic"
    rows = []
    # the disk stores are built once (default durability="full"), then reopened with
    # durability="process" for its rows
    for run, where in enumerate(("memory", "disk", "disk, durability=process")):
        built = time.perf_counter()
        if run == 2:
            collection = Collection.open(workdir / f"points-{n}", durability="process")
            index = Index.load(workdir / f"points-{n}-index", durability="process")
        else:
            collection = Collection(dim=384, path=workdir / f"points-{n}" if run else None)
            index = Index(384, path=workdir / f"points-{n}-index" if run else None)
            start = 0
            for chunk in vector_chunks(n, base):
                ids = [f"d{i}" for i in range(start, start + len(chunk))]
                collection.upsert(ids, chunk, texts=[f"document {i}" for i in ids],
                                  metadatas=[{"i": i} for i in range(start, start + len(chunk))])
                index.add(chunk, ids=np.arange(start, start + len(chunk)))
                start += len(chunk)
        built = time.perf_counter() - built
        new = rng.standard_normal((ops + 2, 384)).astype(np.float32)
        olds = rng.integers(0, n, ops + 2)
        fresh = run * (ops + 2)  # (each run adds ids the store does not hold yet)
        figures = {
            "Collection.upsert (1 new doc)": [
                lambda i=i: collection.upsert([f"new{fresh + i}"], new[i:i + 1], texts=["new"])
                for i in range(ops + 2)],
            "Collection.get (1 id)": [lambda i=i: collection.get([f"d{i}"]) for i in olds],
            "Index.add (1 explicit id)": [
                lambda i=i: index.add(new[i:i + 1], ids=[n + fresh + i]) for i in range(ops + 2)],
            "Index.get (1 id)": [lambda i=i: index.get([int(i)]) for i in olds],
        }
        for op, calls in figures.items():
            rows.append({"n": n, "data": data, "store": where, "op": op, "ops": ops,
                         "build_s": built, **timed(calls)})
            print(f"  {n:>9,} {where:<24} {op:<32} p50 {rows[-1]['p50_ms']:.3f} ms  p99 "
                  f"{rows[-1]['p99_ms']:.3f} ms", flush=True)
        collection.close()
        index.close()
    return rows


# ---------------------------------------------------------------- peak memory, fresh processes


def read_status() -> dict[str, int]:
    """VmHWM (peak resident), VmRSS, RssAnon and RssFile of this process, bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def worker_build(path: Path, n: int) -> dict[str, Any]:
    """Build an on-disk index of ``n`` synthetic vectors in 100k batches (default options)."""
    from vecpress import Index

    index = Index(384, path=path)
    start = time.perf_counter()
    for chunk in SyntheticEmbeddings(load_spectrum()).stream(n):
        index.add(chunk)
    seconds = time.perf_counter() - start
    ram = int(index.stats()["ram_bytes"])
    index.close()
    status = read_status()
    target = 2 * ram + 2 * 2**30
    return {"operation": f"build {n:,} on disk, 100k batches", "n": n, "seconds": seconds,
            "ram_bytes": ram, "peak_target_bytes": target,
            "within_target": status["VmHWM"] <= target, **status}


def worker_add(path: Path, n: int) -> dict[str, Any]:
    """Open the index at ``path`` and add ``n`` synthetic vectors in one call."""
    from vecpress import Index

    index = Index.load(path)
    vectors = SyntheticEmbeddings(load_spectrum(), seed=1).chunk(0, n)
    before = read_status()
    peak_reset = reset_peak()
    start = time.perf_counter()
    index.add(vectors)
    seconds = time.perf_counter() - start
    return {"operation": f"add {n:,} into {len(index) - n:,} on disk", "n": len(index),
            "seconds": seconds, "ram_bytes": int(index.stats()["ram_bytes"]),
            "peak_reset": peak_reset, "rss_before_bytes": before["VmRSS"],
            "anon_before_bytes": before["RssAnon"], **read_status()}


def worker_compact(path: Path, removed_fraction: float) -> dict[str, Any]:
    """Open the index at ``path``, remove a fraction of its rows, then ``compact()``."""
    from vecpress import Index

    index = Index.load(path)
    ids = index.ids
    index.remove(np.random.default_rng(0).choice(ids, int(len(ids) * removed_fraction),
                                                 replace=False))
    before = read_status()
    peak_reset = reset_peak()
    start = time.perf_counter()
    index.compact()
    seconds = time.perf_counter() - start
    return {"operation": f"compact() of {len(ids):,} on disk, {removed_fraction:.0%} removed",
            "n": len(ids), "seconds": seconds, "ram_bytes": int(index.stats()["ram_bytes"]),
            "peak_reset": peak_reset, "rss_before_bytes": before["VmRSS"],
            "anon_before_bytes": before["RssAnon"], **read_status()}


def run_worker(*args: str, timeout: float) -> dict[str, Any]:
    """This module's ``--worker`` in a fresh interpreter; its JSON line."""
    command = [sys.executable, "-m", "benchmarks.bench_concurrency", "--worker", *args]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")  # as bench_scale: no heap creep
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_peaks(workdir: Path, base_rows: int, add_rows: int, build_rows: int | None,
                  timeout: float) -> list[dict[str, Any]]:
    """Build, add and compact peaks (and the optional big build), each in its own process."""
    store = workdir / "rss-store"
    rows = [run_worker("build", str(store), str(base_rows), timeout=timeout),
            run_worker("add", str(store), str(add_rows), timeout=timeout),
            run_worker("compact", str(store), "0.2", timeout=timeout)]
    if build_rows:
        rows.append(run_worker("build", str(workdir / "rss-big"), str(build_rows),
                               timeout=timeout * 20))
    for row in rows:
        print(f"  {row['operation']:<44} peak {row['VmHWM'] / 2**20:,.0f} MiB, anon "
              f"{row['RssAnon'] / 2**20:,.0f} MiB, stats ram {row['ram_bytes'] / 2**20:,.0f} "
              f"MiB, {row['seconds']:.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------- a writer and two readers


def worker_writer(path: Path, seconds: float) -> dict[str, Any]:
    """Upsert 16 new documents and delete the 16 oldest, in turn, for ``seconds``."""
    from vecpress import Collection

    rng = np.random.default_rng(1)
    collection = Collection.open(path)
    oldest, newest, writes, errors = 0, len(collection), 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ids = [f"d{i}" for i in range(newest, newest + 16)]
            collection.upsert(ids, rng.standard_normal((16, collection.dim)).astype(np.float32),
                              texts=[f"document {i}" for i in ids])
            newest += 16
            collection.delete(ids=[f"d{i}" for i in range(oldest, oldest + 16)])
            oldest += 16
            writes += 2
        except Exception as error:  # counted, reported
            errors.append(repr(error))
    collection.close()
    return {"role": "writer", "seconds": seconds, "writes": writes, "errors": len(errors),
            "first_errors": errors[:3]}


def worker_reader(path: Path, seconds: float, seed: int) -> dict[str, Any]:
    """Open read-only, then refresh and search ten times, and again, for ``seconds``."""
    from vecpress import Collection

    rng = np.random.default_rng(seed)
    opens = refreshes = searches = 0
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            collection = Collection.open(path, read_only=True)
            opens += 1
            try:
                for _ in range(10):
                    collection.refresh()
                    refreshes += 1
                    hits = collection.search(rng.standard_normal(collection.dim), k=K)
                    if len(hits) != K:
                        raise AssertionError(f"{len(hits)} hits, expected {K}")
                    searches += 1
            finally:
                collection.close()
        except Exception as error:  # counted, reported
            errors.append(repr(error))
    return {"role": "reader", "seconds": seconds, "opens": opens, "refreshes": refreshes,
            "searches": searches, "errors": len(errors), "first_errors": errors[:3]}


def measure_writer_readers(base: np.ndarray, workdir: Path, seconds: float
                           ) -> list[dict[str, Any]]:
    """One writer process and two reader processes on one collection for ``seconds``."""
    from vecpress import Collection

    path = workdir / "rw"
    with Collection(dim=base.shape[1], path=path) as collection:
        for start in range(0, len(base), CHUNK):
            ids = [f"d{i}" for i in range(start, min(start + CHUNK, len(base)))]
            collection.upsert(ids, base[start:start + len(ids)],
                              texts=[f"document {i}" for i in ids])
    command = [sys.executable, "-m", "benchmarks.bench_concurrency", "--worker"]
    roles = [["writer", str(path), str(seconds)]] + [
        ["reader", str(path), str(seconds), str(seed)] for seed in (1, 2)]
    processes = [subprocess.Popen(command + role, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for role in roles]
    rows = []
    for role, process in zip(roles, processes):
        out, err = process.communicate(timeout=seconds + 600)
        if process.returncode != 0:
            rows.append({"role": role[0], "seconds": seconds, "errors": 1,
                         "first_errors": [f"exit code {process.returncode}: {err[-500:]}"]})
            continue
        rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        rates = ", ".join(f"{row[name] / seconds:,.1f} {name}/s" for name in
                          ("writes", "opens", "refreshes", "searches") if name in row)
        print(f"  {row['role']:<7} {rates}; errors {row['errors']} {row['first_errors']}",
              flush=True)
    return rows


# ---------------------------------------------------------------- report


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    """The report's tables, one per section that ran."""
    lines = [report["header"], ""]
    if report.get("qps"):
        inner = report["qps"][0]["inner_threads"]
        inside = ("library defaults" if inner <= 0
                  else "1 thread" if inner == 1 else f"{inner} threads")
        lines += [f"### Single-query QPS from Python threads ({inside} inside each call)", "",
                  "| method | recall@10 | QPS 1 thread | QPS 2 threads | QPS 4 threads | "
                  "2t / 1t | p50 ms 1 / 2 threads |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['method']} | {r['recall@10']:.4f} | {r['qps_1t']:,.0f} | "
                  f"{r['qps_2t']:,.0f} | {r['qps_4t']:,.0f} | {r['ratio_2t_1t']:.2f}x | "
                  f"{r['p50_ms_1t']:.2f} / {r['p50_ms_2t']:.2f} |" for r in report["qps"]]
        lines += ["", "Target for vecpress: 2t / 1t at least 1.7x on 2 cores.", ""]
    if report.get("stall"):
        lines += ["### Event-loop stalls during awaited searches (ticker every 1 ms)", "",
                  "| call | n | queries | longest stall per call, median ms | max ms |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['call']} | {r['n']:,} | {r['queries']} | {r['stall_p50_ms']:.2f} | "
                  f"{r['stall_max_ms']:.2f} |" for r in report["stall"]]
        lines += ["", "Target: at most 5 ms (the idle row is the floor on this machine).", ""]
    if report.get("latency"):
        lines += ["### One-document writes and reads", "",
                  "| n | data | store | operation | p50 ms | p99 ms |",
                  "| ---: | --- | --- | --- | ---: | ---: |"]
        lines += [f"| {r['n']:,} | {r['data']} | {r['store']} | {r['op']} | {r['p50_ms']:.3f} "
                  f"| {r['p99_ms']:.3f} |" for r in report["latency"]]
        lines += ["", "Target: at most 1 ms at 1M.", ""]
    if report.get("rss"):
        lines += ["### Peak memory of big writes (fresh process each)", "",
                  "| operation | peak RSS MiB (VmHWM) | RssAnon MiB after | RssFile MiB after | "
                  "RSS before MiB | stats ram MiB | target MiB | seconds |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["rss"]:
            target = r.get("peak_target_bytes")
            lines.append(
                f"| {r['operation']} | {_mib(r['VmHWM'])} | {_mib(r['RssAnon'])} | "
                f"{_mib(r['RssFile'])} | "
                f"{_mib(r['rss_before_bytes']) if 'rss_before_bytes' in r else '-'} | "
                f"{_mib(r['ram_bytes'])} | "
                f"{'-' if target is None else _mib(target)} | {r['seconds']:.1f} |")
        lines += ["", "Add and compact: peak since just before the operation (the process's "
                  "RSS then is 'RSS before'); builds: the whole process, including the "
                  "synthetic generator's working memory (up to about 0.5 GB for a 100k "
                  "chunk). Target for builds: peak at most 2x stats ram + 2 GiB. Peak RSS "
                  "counts the pages of the memory-mapped originals the process touched (page "
                  "cache).", ""]
    if report.get("rw"):
        seconds = report["rw"][0]["seconds"]
        lines += [f"### One writer, two readers ({seconds:.0f} s, separate processes)", "",
                  "| process | writes/s | opens/s | refreshes/s | searches/s | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["rw"]:
            rate = lambda name: f"{r[name] / seconds:,.1f}" if name in r else "-"  # noqa: E731
            lines.append(f"| {r['role']} | {rate('writes')} | {rate('opens')} | "
                         f"{rate('refreshes')} | {rate('searches')} | {r['errors']} |")
        lines += ["", "Target: 0 reader errors.", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- main


def worker_main(args: list[str]) -> None:
    role, path = args[0], Path(args[1])
    if role == "build":
        result = worker_build(path, int(args[2]))
    elif role == "add":
        result = worker_add(path, int(args[2]))
    elif role == "compact":
        result = worker_compact(path, float(args[2]))
    elif role == "writer":
        result = worker_writer(path, float(args[2]))
    elif role == "reader":
        result = worker_reader(path, float(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown worker {role!r}")
    print(json.dumps(result))


#: sizes of a full run and of ``--quick``; a flag given on the command line wins over both
FULL = {"n_base": 100_000, "n_queries": 2_000, "stall_queries": 200, "latency_sizes": None,
        "ops": 500, "rss_base": 480_000, "rss_add": 20_000, "duration": 600.0}
QUICK = {"n_base": 10_000, "n_queries": 400, "stall_queries": 100, "latency_sizes": [10_000, 50_000],
         "ops": 200, "rss_base": 48_000, "rss_add": 2_000, "duration": 20.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k base, 400 queries, stores of 10k/50k, 48k + 2k for memory, "
                             "a 20 s writer run")
    parser.add_argument("--synthetic", action="store_true",
                        help="synthetic vectors instead of the embedded WordNet glosses")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--n-base", type=int, help="base vectors (100k)")
    parser.add_argument("--n-queries", type=int, help="queries per thread-count run (2000)")
    parser.add_argument("--inner-threads", type=int, default=1,
                        help="threads each library may use inside one search call in the qps "
                             "section (default 1; 0 leaves each library's default)")
    parser.add_argument("--stall-queries", type=int, help="awaited queries per adapter (200)")
    parser.add_argument("--latency-sizes", type=int, nargs="+",
                        help="store sizes for the one-document ops (the base size and 1M)")
    parser.add_argument("--ops", type=int, help="timed one-document operations (500)")
    parser.add_argument("--rss-base", type=int, help="rows of the store added to (480k)")
    parser.add_argument("--rss-add", type=int, help="rows added to it in one call (20k)")
    parser.add_argument("--build-10m", action="store_true",
                        help="also build 10M x 384 on disk and report its peak RSS")
    parser.add_argument("--build-size", type=int, default=10_000_000,
                        help="rows of the --build-10m run")
    parser.add_argument("--duration", type=float,
                        help="seconds of the writer + readers run (600)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds per memory worker (20x for --build-10m)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="result file names (default concurrency, or "
                                       "concurrency_quick with --quick), e.g. to keep a run "
                                       "of some sections beside the full one")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.latency_sizes = args.latency_sizes or [args.n_base, 1_000_000]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    started = time.perf_counter()
    load_before = os.getloadavg()
    report: dict[str, Any] = {"machine": machine(), "vecpress": source_version(),
                              "load_average_start": load_before, "k": K}
    base = queries = texts = None
    if {"qps", "stall", "latency", "rw"} & set(args.sections):
        base, queries, texts, described = load_data(args.n_base, args.n_queries,
                                                    synthetic=args.synthetic, quick=args.quick)
        report["data"] = f"{described}: {len(base):,} base, {len(queries):,} queries"
        print(f"{report['data']}; load average {load_before[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("VECPRESS_SCALE_TMP")) as tmp:
        workdir = Path(tmp)
        if "qps" in args.sections:
            report["qps"] = measure_qps(base, queries, workdir, args.inner_threads)
        if "stall" in args.sections:
            report["stall"] = measure_stalls(base, queries, texts, workdir, args.stall_queries)
        if "latency" in args.sections:
            report["latency"] = [row for n in args.latency_sizes for row in
                                 measure_point_ops(n, base, workdir, args.ops,
                                                   base_is_real=not args.synthetic)]
        if "rss" in args.sections:
            report["rss"] = measure_peaks(workdir, args.rss_base, args.rss_add,
                                          args.build_size if args.build_10m else None,
                                          args.timeout)
        if "rw" in args.sections:
            report["rw"] = measure_writer_readers(base, workdir, args.duration)
    load_after = os.getloadavg()
    report["load_average_end"] = load_after
    report["wall_s"] = time.perf_counter() - started
    report["header"] = (f"{report.get('data', 'synthetic data only')}; k={K}; vecpress: "
                        f"{report['vecpress']}; {report['machine']}; load average (1 min) "
                        f"{load_before[0]:.2f} at start, {load_after[0]:.2f} at end")
    table = markdown(report)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("concurrency_quick" if args.quick else "concurrency")
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}/{stem}.* in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
