"""Benchmark suite: vecpress against the peers on the same real embeddings, in one run.

Data as in ``bench_core``: WordNet glosses embedded with all-MiniLM-L6-v2 (384-d, normalised),
held-out queries, exact float32 top-10 as ground truth; and labelled synonym queries
(``benchmarks/wordnet_queries.py``) for nDCG@10. Methods: vecpress ``Index`` at 1, 2, 4 and 8
bits with and without rerank; FAISS ``IndexFlatIP``, ``IndexScalarQuantizer`` SQ8/SQ4,
``IndexPQ`` 48x8, ``IndexRaBitQ`` 1/2/4 bits with and without ``IndexRefineFlat`` (k-factor =
vecpress's oversample for that width), ``IndexIVFRaBitQ`` 1-bit (nlist = 4·sqrt(n), at most
n/39) with and without ``IndexRefineFlat``, ``IndexHNSWFlat`` (M=32, efSearch 64); hnswlib
(M=16, ef 64), usearch (f32, i8, b1), LangChain ``InMemoryVectorStore`` and LlamaIndex
``SimpleVectorStore`` (through their own APIs, precomputed embeddings) and LanceDB (IVF_PQ,
IVF_RQ; with and without refine) when installed (``pip install vecpress[bench]``; LanceDB
separately: ``pip install lancedb``).

Figures per method:

- recall@10 against exact, over all held-out queries; nDCG@10 over the labelled queries
  (the exact float32 row is the reference: an index that returns the exact top-10
  scores the same, an approximate one usually less and, by chance, sometimes a little more);
- single-query latency p50/p99 on 1 thread and p50/p99 on all threads (2 on the reference
  machine), one query per call; batch QPS (all queries in one call, all threads);
- build time (all threads, training included) and build throughput = n / build time;
- RAM bytes per vector, accounted: vecpress ``stats()["ram_bytes"]`` (codes, factors, ids,
  codec state; kept originals are memory-mapped from disk when rerank is on), for FAISS /
  hnswlib / usearch the size of the serialized index (codes, graphs, codebooks and, for
  ``IndexRefineFlat``, the float32 originals), for LanceDB the size of its vector index;
- RSS bytes per vector, measured: growth of this process's anonymous resident memory
  (``RssAnon`` in ``/proc/self/status``, after a garbage collection and ``malloc_trim``) from
  just before the build to after the build and the batch search, divided by n. File-backed
  pages (vecpress's memory-mapped originals, LanceDB's files) are left out; they are page
  cache the kernel can drop, and are in the JSON as ``rss_file_bytes_per_vector``;
- disk bytes per vector where the method writes a file.

The LangChain and LlamaIndex stores answer about one query per second per 100k vectors (each
query walks every stored vector in Python), so they run on the first ``--slow-queries``
queries only (20 by default) for recall, nDCG and latency alike, and have no batch QPS.
LanceDB is queried one vector at a time on its own thread pool: its thread counts are not
pinned.

Sweeps: where a method has a search knob (vecpress oversample, FAISS RefineFlat k-factor,
HNSW efSearch, IVF nprobe) the same built index is also measured at several settings
(recall@10 over all queries, latency p50 on 1 thread over ``--sweep-latency-queries``
queries); the points are in the JSON under ``sweep`` and drawn as curves in the
latency-vs-recall plot. The table keeps one representative setting per method.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_suite            # 100k base, 1000 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_suite --quick    # 10k base, 200 queries

``--quick`` embeds only the 10,200 glosses it needs when the embedding cache is empty (about a
minute on 2 cores). Writes ``suite.md``, ``suite.json``, ``suite_recall_vs_ram.png`` and
``suite_latency_vs_recall.png`` (``suite_quick.*`` with ``--quick``) under
``benchmarks/results/``, or under ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

if not __package__:  # run as `python benchmarks/bench_suite.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import (RESULTS, machine, memory, recall_at, set_threads,
                               source_version)
from benchmarks.datasets import ground_truth, load_embeddings, release_model
from benchmarks.wordnet_queries import LabelledQueries, labelled_queries, ndcg_at

K = 10
OVERSAMPLE_SWEEP = (1, 2, 3, 5, 10, 20)  # vecpress oversample and FAISS RefineFlat k-factor
EF_SWEEP = (16, 32, 64, 128, 256)  # HNSW efSearch / expansion_search
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)  # IVF lists visited
IVF_NPROBE = 32  # the table's setting


@dataclass
class Method:
    """One configuration: ``build()`` returns an index, ``search(index, queries, threads)``
    returns (q, K) ids, ``sizes(index, n)`` returns accounted (RAM, disk) bytes per vector
    (``None`` where there is no such figure). ``knob`` names a search setting, ``sweep`` the
    values it is measured at and ``configure(index, value)`` sets it on a built index.
    ``slow`` stores answer only the first ``--slow-queries`` queries, one call each."""

    name: str
    family: str
    build: Callable[[], Any]
    search: Callable[[Any, np.ndarray, int], np.ndarray]
    sizes: Callable[[Any, int], tuple[float | None, float | None]]
    knob: str | None = None
    sweep: Sequence[Any] = ()
    configure: Callable[[Any, Any], None] | None = None
    slow: bool = False


def timed_queries(search: Callable[[np.ndarray], np.ndarray],
                  queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query in its own call after one untimed warm-up call: (seconds per query, the
    (q, K) ids found, -1 where fewer than K came back)."""
    search(queries[:1])
    times = np.empty(len(queries))
    found = np.full((len(queries), K), -1, dtype=np.int64)
    for i, query in enumerate(queries):
        start = time.perf_counter()
        ids = np.asarray(search(query[None])).reshape(-1)[:K]
        times[i] = time.perf_counter() - start
        found[i, :len(ids)] = ids
    return times, found


def percentile_ms(times: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``times`` (seconds), in milliseconds."""
    return float(np.percentile(times, q) * 1000)


def run(method: Method, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
        labelled: LabelledQueries, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Build ``method``'s index and measure every figure of one table row (and its sweep)."""
    n = len(base)
    began = time.perf_counter()
    set_threads(threads)
    before = memory()
    start = time.perf_counter()
    index = method.build()
    # rows that share one built index (LanceDB with and without refine) report its build time
    build_seconds = getattr(index, "build_seconds", time.perf_counter() - start)

    def search_on(threads_now: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda q: method.search(index, q, threads_now)

    if method.slow:
        count = args.slow_queries
        set_threads(1)
        times_1t, found = timed_queries(search_on(1), queries[:count])
        after = memory()
        set_threads(threads)
        times_all, _ = timed_queries(search_on(threads), queries[:count])
        truth_used, batch_qps, labelled = truth[:count], None, labelled.subset(count)
    else:
        method.search(index, queries[:8], threads)  # warm up before the timed batch
        start = time.perf_counter()
        found = method.search(index, queries, threads)
        batch_qps = len(queries) / (time.perf_counter() - start)
        after = memory()
        set_threads(1)
        times_1t, _ = timed_queries(search_on(1), queries[:args.latency_queries])
        set_threads(threads)
        times_all, _ = timed_queries(search_on(threads), queries[:args.latency_queries])
        truth_used = truth
    ranked = method.search(index, labelled.vectors, threads)
    ram, disk = method.sizes(index, n)
    row = {"method": method.name, "family": method.family, "slow": method.slow,
           "queries": len(truth_used), "labelled_queries": len(labelled),
           "recall@10": recall_at(np.asarray(found), truth_used, K),
           "ndcg@10": ndcg_at(np.asarray(ranked), labelled.relevant, K),
           "latency_p50_ms_1t": percentile_ms(times_1t, 50),
           "latency_p99_ms_1t": percentile_ms(times_1t, 99),
           "latency_p50_ms_all": percentile_ms(times_all, 50),
           "latency_p99_ms_all": percentile_ms(times_all, 99),
           "batch_qps": batch_qps, "build_s": build_seconds,
           "build_vectors_per_s": n / build_seconds if build_seconds > 0 else None,
           "ram_bytes_per_vector": ram,
           "rss_anon_bytes_per_vector": (after["RssAnon"] - before["RssAnon"]) / n,
           "rss_file_bytes_per_vector": (after["RssFile"] - before["RssFile"]) / n,
           "disk_bytes_per_vector": disk}
    if method.configure is not None:
        row["knob"] = method.knob
        row["sweep"] = sweep(method, index, queries, truth, args, threads)
    row["measured_in_s"] = time.perf_counter() - began
    print(f"  {method.name:<44} recall@10 {row['recall@10']:.4f}  nDCG@10 {row['ndcg@10']:.4f}  "
          f"p50 {row['latency_p50_ms_1t']:.2f} / {row['latency_p50_ms_all']:.2f} ms  "
          f"qps {_number(batch_qps)}  build {build_seconds:.1f} s  ram {_number(ram, '.1f')} B  "
          f"rss {row['rss_anon_bytes_per_vector']:.1f} B  disk {_number(disk, '.1f')} B  "
          f"({row['measured_in_s']:.1f} s)",
          flush=True)
    return row


def sweep(method: Method, index: Any, queries: np.ndarray, truth: np.ndarray,
          args: argparse.Namespace, threads: int) -> list[dict[str, Any]]:
    """Recall@10 (all queries), batch QPS and 1-thread latency p50 at each knob setting."""
    points = []
    for value in method.sweep:
        method.configure(index, value)
        set_threads(threads)
        start = time.perf_counter()
        found = method.search(index, queries, threads)
        seconds = time.perf_counter() - start
        set_threads(1)
        times, _ = timed_queries(lambda q: method.search(index, q, 1),
                                 queries[:args.sweep_latency_queries])
        points.append({method.knob: value, "recall@10": recall_at(np.asarray(found), truth, K),
                       "latency_p50_ms_1t": percentile_ms(times, 50),
                       "batch_qps": len(queries) / seconds})
    set_threads(threads)
    return points


def _padded(rows: list[list[int]]) -> np.ndarray:
    """(q, K) int64 ids from per-query lists, -1 where a list is short."""
    ids = np.full((len(rows), K), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row[:K])] = row[:K]
    return ids


def _number(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class _Oversampled:
    """A vecpress ``Index`` and the oversample its searches ask for (``None``: its default)."""

    index: Any
    oversample: int | None = None


def vecpress_methods(base: np.ndarray, bits_list: list[int], workdir: Path) -> list[Method]:
    from vecpress import Index
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    dim = base.shape[1]

    def search(tuned: _Oversampled, q: np.ndarray, threads: int) -> np.ndarray:
        return tuned.index.search(q, K, oversample=tuned.oversample)[1]

    def sizes(tuned: _Oversampled, n: int) -> tuple[float, float | None]:
        stats = tuned.index.stats()
        return stats["ram_bytes"] / n, (stats["disk_bytes"] / n if tuned.index.path else None)

    def set_oversample(tuned: _Oversampled, value: int) -> None:
        tuned.oversample = value

    # the first full-size build in a process grows numba's worker threads' heaps once (about
    # 0.7 KB per vector at 100k); a throwaway build keeps that out of the first row's RSS
    throwaway = Index(dim, metric="ip", bits=min(bits_list), rerank=False)
    throwaway.add(base)
    throwaway.search(base[:1000], K)
    del throwaway
    methods = []
    for bits in bits_list:
        for rerank in (False, True):  # compile and load this width's kernels untimed
            warm = Index(dim, metric="ip", bits=bits, rerank=rerank,
                         path=workdir / f"warm-{bits}" if rerank else None)
            # big enough for the parallel paths, whose first use starts numba's threads
            warm.add(base[:4096])
            warm.search(base[:64], K)
            warm.search(base[:1], K)
            del warm
        for rerank in (False, True):
            # the rerank originals live in a memory-mapped file, so that store gets a directory
            path = workdir / f"vp-{bits}" if rerank else None

            def build(bits=bits, rerank=rerank, path=path) -> _Oversampled:
                index = Index(dim, metric="ip", bits=bits, rerank=rerank, path=path)
                index.add(base)
                return _Oversampled(index)

            swept = rerank and bits in (1, 4)
            name = f"vecpress {bits}-bit" + (f" + rerank x{DEFAULT_OVERSAMPLE[bits]}"
                                             if rerank else "")
            methods.append(Method(name, "vecpress + rerank" if rerank else "vecpress", build,
                                  search, sizes, knob="oversample" if swept else None,
                                  sweep=OVERSAMPLE_SWEEP if swept else (),
                                  configure=set_oversample if swept else None))
    return methods


def faiss_methods(base: np.ndarray, bits_list: list[int],
                  pq_iterations: int = 25) -> list[Method]:
    """FAISS indexes; ``pq_iterations`` k-means iterations train ``IndexPQ`` (FAISS's default
    25; ``--quick`` uses fewer, as its training dominates a 10k run)."""
    import faiss
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    dim = base.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT

    def search(index, q, threads):
        return index.search(np.ascontiguousarray(q, dtype=np.float32), K)[1]

    def sizes(index, n):
        serialized = float(faiss.serialize_index(index).size) / n
        return serialized, serialized

    def trained(make: Callable[[], Any], after: Callable[[Any], None] | None = None):
        def build():
            index = make()
            index.train(base)
            index.add(base)
            if after is not None:
                after(index)
            return index
        return build

    def set_k_factor(index, value):
        index.k_factor = value

    def set_ef(index, value):
        index.hnsw.efSearch = value

    def set_nprobe(index, value):
        faiss.extract_index_ivf(index).nprobe = value

    def hnsw():
        index = faiss.IndexHNSWFlat(dim, 32, ip)
        index.hnsw.efConstruction = 128
        index.hnsw.efSearch = 64
        index.add(base)
        return index

    def product_quantizer():
        index = faiss.IndexPQ(dim, 48, 8, ip)
        index.pq.cp.niter = pq_iterations
        return index

    methods = [
        Method("faiss IndexFlatIP (exact)", "faiss Flat", trained(lambda: faiss.IndexFlatIP(dim)),
               search, sizes),
        Method("faiss SQ8", "faiss SQ", trained(lambda: faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_8bit, ip)), search, sizes),
        Method("faiss SQ4", "faiss SQ", trained(lambda: faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_4bit, ip)), search, sizes),
        Method("faiss IndexPQ 48x8", "faiss PQ", trained(product_quantizer), search, sizes),
    ]
    for bits in [b for b in bits_list if b in (1, 2, 4)]:
        make = (lambda bits=bits: faiss.IndexRaBitQ(dim, ip, bits))
        methods.append(Method(f"faiss RaBitQ {bits}-bit", "faiss RaBitQ", trained(make),
                              search, sizes))
        k_factor = DEFAULT_OVERSAMPLE[bits]
        swept = bits in (1, 4)
        methods.append(Method(
            f"faiss RaBitQ {bits}-bit + RefineFlat x{k_factor}", "faiss RaBitQ + RefineFlat",
            trained(lambda make=make: faiss.IndexRefineFlat(make()),
                    lambda index, k_factor=k_factor: set_k_factor(index, k_factor)),
            search, sizes, knob="k_factor" if swept else None,
            sweep=OVERSAMPLE_SWEEP if swept else (), configure=set_k_factor if swept else None))
    # IVF: about 4 sqrt(n) lists, but at least 39 training points per list (FAISS's minimum)
    nlist = max(1, min(int(4 * np.sqrt(len(base))), len(base) // 39))
    nprobe = min(IVF_NPROBE, nlist)
    for refine in (None, DEFAULT_OVERSAMPLE[1]):
        spec = f"IVF{nlist},RaBitQ" + (",RFlat" if refine else "")

        def settings(index, refine=refine):
            set_nprobe(index, nprobe)
            if refine:
                set_k_factor(index, refine)

        methods.append(Method(
            f"faiss IVFRaBitQ 1-bit nprobe={nprobe}/{nlist}"
            + (f" + RefineFlat x{refine}" if refine else ""),
            "faiss IVFRaBitQ" + (" + RefineFlat" if refine else ""),
            trained(lambda spec=spec: faiss.index_factory(dim, spec, ip), settings), search,
            sizes, knob="nprobe", sweep=[p for p in NPROBE_SWEEP if p <= nlist],
            configure=set_nprobe))
    methods.append(Method("faiss HNSWFlat M=32 ef=64", "graph (HNSW)", hnsw, search, sizes,
                          knob="efSearch", sweep=EF_SWEEP, configure=set_ef))
    return methods


def hnswlib_methods(base: np.ndarray, workdir: Path) -> list[Method]:
    try:
        import hnswlib
    except ImportError:
        print("  hnswlib not installed (pip install hnswlib): skipped")
        return []
    dim = base.shape[1]

    def build():
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=len(base), M=16, ef_construction=128)
        index.add_items(base, np.arange(len(base)), num_threads=os.cpu_count() or 1)
        index.set_ef(64)
        return index

    def search(index, q, threads):
        return index.knn_query(q, k=K, num_threads=threads)[0]

    def sizes(index, n):
        path = workdir / "hnswlib.bin"
        index.save_index(str(path))
        on_disk = path.stat().st_size / n
        path.unlink()
        return on_disk, on_disk

    return [Method("hnswlib M=16 ef=64", "graph (HNSW)", build, search, sizes, knob="ef",
                   sweep=EF_SWEEP, configure=lambda index, value: index.set_ef(value))]


def usearch_methods(base: np.ndarray, workdir: Path) -> list[Method]:
    try:
        from usearch.index import Index as UIndex
    except ImportError:
        print("  usearch not installed (pip install usearch): skipped")
        return []
    dim = base.shape[1]

    def set_expansion(index, value):
        index.expansion_search = value

    methods = []
    for dtype in ("f32", "i8", "b1"):
        # b1 is sign bits under Hamming distance; usearch takes them packed
        encode = ((lambda x: np.packbits(x > 0, axis=1)) if dtype == "b1"
                  else (lambda x: np.ascontiguousarray(x, dtype=np.float32)))
        metric = "hamming" if dtype == "b1" else "ip"

        def build(dtype=dtype, encode=encode, metric=metric):
            index = UIndex(ndim=dim, metric=metric, dtype=dtype, connectivity=16,
                           expansion_add=128, expansion_search=64)
            index.add(np.arange(len(base)), encode(base), threads=os.cpu_count() or 1)
            return index

        def search(index, q, threads, encode=encode):
            return index.search(encode(q), K, threads=threads).keys.reshape(len(q), K)

        def sizes(index, n):
            serialized = index.serialized_length / n
            return serialized, serialized

        swept = dtype == "f32"
        methods.append(Method(f"usearch {dtype} M=16 ef=64", "usearch", build, search, sizes,
                              knob="expansion_search" if swept else None,
                              sweep=EF_SWEEP if swept else (),
                              configure=set_expansion if swept else None))
    return methods


def framework_methods(base: np.ndarray, base_texts: list[str]) -> list[Method]:
    """LangChain's ``InMemoryVectorStore`` and LlamaIndex's ``SimpleVectorStore``, each fed the
    precomputed vectors and queried by vector through its own API (slow: a query subset)."""
    methods = []

    def no_sizes(store, n):
        return None, None

    try:
        from langchain_core.vectorstores import InMemoryVectorStore

        from benchmarks.bench_langchain import lookup_embeddings
    except ImportError:
        print("  langchain-core not installed (pip install langchain-core): skipped")
    else:
        def build_langchain():
            store = InMemoryVectorStore(lookup_embeddings(base_texts, base))
            store.add_texts(base_texts, ids=[str(i) for i in range(len(base))])
            return store

        def search_langchain(store, q, threads):
            return _padded([[int(doc.id) for doc in store.similarity_search_by_vector(
                v.tolist(), k=K)] for v in q])

        methods.append(Method("LangChain InMemoryVectorStore", "framework default (exact)",
                              build_langchain, search_langchain, no_sizes, slow=True))
    try:
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores import SimpleVectorStore
        from llama_index.core.vector_stores.types import VectorStoreQuery
    except ImportError:
        print("  llama-index-core not installed (pip install llama-index-core): skipped")
    else:
        def build_llama():
            store = SimpleVectorStore()
            store.add([TextNode(text=text, id_=str(i), embedding=vector.tolist())
                       for i, (text, vector) in enumerate(zip(base_texts, base))])
            return store

        def search_llama(store, q, threads):
            return _padded([[int(i) for i in store.query(VectorStoreQuery(
                query_embedding=v.tolist(), similarity_top_k=K)).ids] for v in q])

        methods.append(Method("LlamaIndex SimpleVectorStore", "framework default (exact)",
                              build_llama, search_llama, no_sizes, slow=True))
    return methods


class _LanceIndex:
    """A LanceDB table with one vector index, and the search settings of one row."""

    def __init__(self, table: Any, directory: Path, build_seconds: float,
                 refine_factor: int | None) -> None:
        self.table, self.directory = table, directory
        self.build_seconds, self.refine_factor = build_seconds, refine_factor


def lancedb_methods(base: np.ndarray, workdir: Path) -> list[Method]:
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        print("  lancedb not installed (pip install lancedb): skipped")
        return []
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    dim = base.shape[1]
    partitions = max(1, int(np.sqrt(len(base))))
    nprobes = 20
    built: dict[str, tuple[Any, Path, float]] = {}

    def table_with(index_type: str) -> tuple[Any, Path, float]:
        # both rows of one index type (with and without refine) search the same table
        if index_type not in built:
            directory = workdir / f"lance-{index_type}"
            start = time.perf_counter()
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), dim)
            table = lancedb.connect(directory).create_table(
                "t", pa.table({"id": pa.array(np.arange(len(base))), "vector": vectors}))
            options = {"num_sub_vectors": 48} if index_type == "IVF_PQ" else {"num_bits": 1}
            table.create_index(metric="dot", index_type=index_type,
                               num_partitions=partitions, **options)
            built[index_type] = (table, directory, time.perf_counter() - start)
        return built[index_type]

    def search(index, q, threads):
        found = np.full((len(q), K), -1, dtype=np.int64)
        for i, vector in enumerate(q):
            query = index.table.search(vector).metric("dot").limit(K).nprobes(nprobes)
            if index.refine_factor:
                query = query.refine_factor(index.refine_factor)
            # asking for _distance too avoids a deprecation warning on every query
            ids = query.select(["id", "_distance"]).to_arrow()["id"].to_numpy()
            found[i, :len(ids)] = ids
        return found

    def sizes(index, n):
        # resident: the vector index (IVF centroids and codes), which LanceDB caches on
        # search; the float32 column stays on disk and is read for refine, as vecpress does
        resident = sum(config.size_bytes or 0 for config in index.table.list_indices())
        on_disk = sum(f.stat().st_size for f in index.directory.rglob("*") if f.is_file())
        return resident / n, on_disk / n

    methods = []
    for index_type, label, refine in (("IVF_PQ", "IVF_PQ 48x8", None),
                                      ("IVF_PQ", "IVF_PQ 48x8", 3),
                                      ("IVF_RQ", "IVF_RQ 1-bit", None),
                                      ("IVF_RQ", "IVF_RQ 1-bit", DEFAULT_OVERSAMPLE[1])):
        def build(index_type=index_type, refine=refine):
            table, directory, seconds = table_with(index_type)
            return _LanceIndex(table, directory, seconds, refine)

        name = (f"lancedb {label} nprobes={nprobes}/{partitions}"
                + (f" + refine x{refine}" if refine else ""))
        methods.append(Method(name, "lancedb (IVF, disk)", build, search, sizes))
    return methods


LANCE_NOTE = ("LanceDB rows with refine search the table and index built for the row above "
              "them: their build time is that build's, and their RSS covers only their own "
              "searches.")


def markdown(rows: list[dict[str, Any]], header: str, threads: int,
             slow_queries: int) -> str:
    """The results table: one row per method, its representative setting."""
    lines = [header, "",
             f"| method | recall@10 | nDCG@10 | p50 ms 1 thread | p99 ms 1 thread | "
             f"p50 ms {threads} threads | batch QPS | build s | build vectors/s | "
             f"RAM B/vector | RSS B/vector | disk B/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        name = row["method"] + (" †" if row["slow"] else "")
        lines.append(
            f"| {name} | {row['recall@10']:.4f} | {row['ndcg@10']:.4f} | "
            f"{row['latency_p50_ms_1t']:.2f} | {row['latency_p99_ms_1t']:.2f} | "
            f"{row['latency_p50_ms_all']:.2f} | {_number(row['batch_qps'])} | "
            f"{row['build_s']:.1f} | {_number(row['build_vectors_per_s'])} | "
            f"{_number(row['ram_bytes_per_vector'], '.1f')} | "
            f"{row['rss_anon_bytes_per_vector']:.1f} | "
            f"{_number(row['disk_bytes_per_vector'], '.1f')} |")
    if any(row["slow"] for row in rows):
        lines += ["", f"† Too slow for the whole query set (about 1 s per query per 100k "
                      f"vectors): recall@10, nDCG@10 and latency over the first {slow_queries} "
                      f"queries (and {slow_queries} labelled queries); no batch API, so no "
                      f"batch QPS. Their build includes making the framework's documents/nodes."]
    if any(row["family"].startswith("lancedb") for row in rows):
        lines += ["", LANCE_NOTE]
    lines += ["", "RAM B/vector is accounted (vecpress `stats()['ram_bytes']`; FAISS, hnswlib "
                  "and usearch: serialized index size; LanceDB: its vector index). RSS B/vector "
                  "is measured: growth of the process's anonymous resident memory (RssAnon) "
                  "from just before the build to just after the batch search, divided by n; "
                  "memory-mapped files (vecpress's rerank originals, LanceDB's data) are page "
                  "cache and not in it. Sweeps over each method's search knob are in the JSON "
                  "and the latency plot."]
    return "\n".join(lines)


def _ram_for_plot(row: dict[str, Any]) -> float:
    ram = row["ram_bytes_per_vector"]
    return ram if ram is not None else row["rss_anon_bytes_per_vector"]


def plot_recall_vs_ram(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """recall@10 against accounted RAM per vector (measured RSS where nothing is accounted),
    one line per family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    colours = iter(plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors)
    for family, items in _families(rows).items():
        items = sorted(items, key=_ram_for_plot)
        vecpress = family.startswith("vecpress")
        ax.plot([_ram_for_plot(r) for r in items], [r["recall@10"] for r in items], marker="o",
                label=family, color=next(colours), linestyle="-" if vecpress else "--",
                linewidth=2 if vecpress else 1.2)
        for r in items:
            ax.annotate(r["method"].split(" ", 1)[1], (_ram_for_plot(r), r["recall@10"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _finish(ax, fig, "RAM bytes per vector (log scale)", "recall@10 vs exact", title, path)


def plot_latency_vs_recall(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Latency p50 (1 thread) against recall@10: a curve per swept method (its knob's values
    marked), the other rows as points coloured by family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 6.5))
    colours = iter(plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors)
    fixed = [row for row in rows if "sweep" not in row]
    for family, items in _families(fixed).items():
        ax.scatter([r["recall@10"] for r in items], [r["latency_p50_ms_1t"] for r in items],
                   color=next(colours), marker="s", s=22, label=family, zorder=3)
        for r in items:
            ax.annotate(r["method"].split(" ", 1)[1], (r["recall@10"], r["latency_p50_ms_1t"]),
                        fontsize=5, xytext=(3, 3), textcoords="offset points")
    for row in rows:
        points = row.get("sweep")
        if not points:
            continue
        knob = row["knob"]
        vecpress = row["family"].startswith("vecpress")
        ax.plot([p["recall@10"] for p in points], [p["latency_p50_ms_1t"] for p in points],
                marker="o", markersize=3, color=next(colours), linestyle="-" if vecpress else "--",
                linewidth=2 if vecpress else 1.2,
                label=f"{row['method']}: {knob} {points[0][knob]}..{points[-1][knob]}")
        for p in points:
            ax.annotate(str(p[knob]), (p["recall@10"], p["latency_p50_ms_1t"]), fontsize=5,
                        xytext=(2, -7), textcoords="offset points")
    ax.set_yscale("log")
    _finish(ax, fig, "recall@10 vs exact", "single-query latency p50, 1 thread (ms, log scale)",
            title, path)


def _families(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    families: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    return families


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(ax, fig, x_label: str, y_label: str, title: str, path: Path) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def draw_plots(rows: list[dict[str, Any]], n_base: int, out: Path, stem: str) -> None:
    """Both PNG plots of one run, as ``<stem>_recall_vs_ram.png`` and
    ``<stem>_latency_vs_recall.png`` in ``out``."""
    title = f"all-MiniLM-L6-v2 on {n_base:,} WordNet glosses, k={K}"
    plot_recall_vs_ram(rows, title, out / f"{stem}_recall_vs_ram.png")
    plot_latency_vs_recall(rows, title, out / f"{stem}_latency_vs_recall.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k vectors, 200 queries, a 10,200-gloss corpus")
    parser.add_argument("--n-base", type=int, default=100_000)
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=1000)
    parser.add_argument("--labelled-queries", type=int, default=1000,
                        help="labelled synonym queries for nDCG@10")
    parser.add_argument("--slow-queries", type=int, default=20,
                        help="queries for the LangChain / LlamaIndex in-memory stores")
    parser.add_argument("--sweep-latency-queries", type=int, default=200)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--pq-iterations", type=int, default=25,
                        help="k-means iterations for IndexPQ's training (FAISS's default)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plots from the JSON already in --out, run nothing")
    args = parser.parse_args(argv)
    stem = "suite_quick" if args.quick else "suite"
    if args.replot:
        report = json.loads((args.out / f"{stem}.json").read_text())
        draw_plots(report["rows"], report["n_base"], args.out, stem)
        return
    corpus_size = None
    if args.quick:
        args.n_base, args.n_queries, args.latency_queries = 10_000, 200, 100
        args.labelled_queries, args.sweep_latency_queries = 200, 30
        # (fewer if asked for: the test suite's smoke run wants every row, not good figures)
        args.slow_queries, args.pq_iterations = min(args.slow_queries, 10), min(args.pq_iterations, 8)
        corpus_size = args.n_base + args.n_queries
    started = time.perf_counter()
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()
    host = machine()  # describes the load at the start
    source = source_version()
    base, queries, base_texts, _ = load_embeddings(args.n_base, args.n_queries,
                                                   corpus_size=corpus_size)
    _, truth = ground_truth(base, queries, k=K, metric="ip")
    labelled = labelled_queries(base_texts, args.labelled_queries)
    release_model()
    print(f"{len(base)} base vectors, {len(queries)} held-out queries, {len(labelled)} "
          f"labelled queries, dim {base.shape[1]}, load average {load_before[0]:.2f}; data "
          f"ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        methods = (faiss_methods(base, args.bits, args.pq_iterations)
                   + hnswlib_methods(base, workdir) + usearch_methods(base, workdir)
                   + lancedb_methods(base, workdir)
                   + vecpress_methods(base, args.bits, workdir)
                   + framework_methods(base, base_texts))
        # everything imported and loaded so far stays: the collections before and after each
        # build (for the RSS figures) then walk only what the methods create
        gc.freeze()
        for method in methods:
            rows.append(run(method, base, queries, truth, labelled, args, threads))
    load_after = os.getloadavg()
    described = (f"{host}; load average (1 min) {load_before[0]:.2f} at start, "
                 f"{load_after[0]:.2f} at end")
    exact_ndcg = next((row["ndcg@10"] for row in rows if "exact" in row["method"]), None)
    header = (f"{len(base):,} WordNet glosses (all-MiniLM-L6-v2, 384-d), {len(queries)} held-out "
              f"queries, k={K}; nDCG@10 over {len(labelled)} labelled synonym queries "
              f"(`benchmarks/wordnet_queries.py`; exact float32 search scores "
              f"{_number(exact_ndcg, '.4f')}, the reference); latency over "
              f"{min(args.latency_queries, len(queries))} single queries on 1 and on {threads} "
              f"threads, batch QPS and build on {threads} threads"
              + (f"; IndexPQ trained with {args.pq_iterations} k-means iterations"
                 if args.pq_iterations != 25 else "") + f"; vecpress: {source}; {described}")
    table = markdown(rows, header, threads, args.slow_queries)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(table + "\n")
    wall = time.perf_counter() - started
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"machine": host, "vecpress": source, "load_average_start": load_before,
         "load_average_end": load_after,
         "threads": threads, "n_base": len(base), "n_queries": len(queries),
         "labelled_queries": len(labelled), "ndcg_exact": exact_ndcg, "k": K,
         "wall_s": wall, "rows": rows}, indent=1))
    draw_plots(rows, len(base), args.out, stem)
    print(f"\nwrote {args.out}/{stem}.* in {wall:.0f} s")


if __name__ == "__main__":
    main()
