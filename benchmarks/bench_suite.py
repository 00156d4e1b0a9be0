"""Benchmark suite: vecpress against the peers on the same real embeddings, in one run.

Data as in ``bench_core``: WordNet glosses embedded with all-MiniLM-L6-v2 (384-d, normalised),
held-out queries, exact float32 top-10 as ground truth. Methods: vecpress ``Index`` at 1, 2, 4
and 8 bits with and without rerank; FAISS ``IndexFlatIP``, ``IndexScalarQuantizer`` SQ8/SQ4,
``IndexPQ`` 48x8, ``IndexRaBitQ`` 1/2/4 bits with and without ``IndexRefineFlat`` (k-factor =
vecpress's oversample for that width), ``IndexHNSWFlat`` (M=32, efSearch 64); hnswlib (M=16,
ef 64), usearch (f32, i8, b1) and LanceDB (IVF_PQ, IVF_RQ; with and without refine) when
installed (``pip install vecpress[bench]``; LanceDB separately: ``pip install lancedb``).

Figures per method: recall@10; single-query latency p50/p99 on one thread; batch QPS (all
queries in one call, all threads); build time (all threads); RAM bytes per vector; disk bytes
per vector where the method writes a file. RAM is everything resident: vecpress
``stats()["ram_bytes"]`` (codes, factors, ids, codec state; kept originals are memory-mapped
from disk when rerank is on), for FAISS / hnswlib / usearch the size of the serialized index
(codes, graphs, codebooks and, for ``IndexRefineFlat``, the float32 originals), for LanceDB
the size of its vector index (the float32 column stays on disk). LanceDB is queried one
vector at a time on its own thread pool: its "1 thread" latency and batch QPS are not pinned.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_suite            # 100k base, 1000 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_suite --quick    # 10k base, 200 queries

Writes ``benchmarks/results/suite.md``, ``suite.json``, ``suite_recall_vs_ram.png`` and
``suite_latency_vs_recall.png`` (``suite_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as `python benchmarks/bench_suite.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, recall_at, set_threads
from benchmarks.datasets import ground_truth, load_embeddings

K = 10


@dataclass
class Method:
    """One configuration: ``build()`` returns an index, ``search(index, queries, threads)``
    returns (q, K) ids, ``sizes(index, n)`` returns (RAM, disk) bytes per vector."""

    name: str
    family: str
    build: Callable[[], Any]
    search: Callable[[Any, np.ndarray, int], np.ndarray]
    sizes: Callable[[Any, int], tuple[float, float | None]]


def latency_percentiles_ms(search: Callable[[np.ndarray], Any],
                           queries: np.ndarray) -> tuple[float, float]:
    search(queries[:1])  # warm caches and compiled code
    times = np.empty(len(queries))
    for i, query in enumerate(queries):
        start = time.perf_counter()
        search(query[None])
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def run(method: Method, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
        latency_queries: int, threads: int) -> dict[str, Any]:
    set_threads(threads)
    start = time.perf_counter()
    index = method.build()
    # rows that share one built index (LanceDB with and without refine) report its build time
    build_seconds = getattr(index, "build_seconds", time.perf_counter() - start)
    method.search(index, queries[:8], threads)  # warm up before the timed batch
    start = time.perf_counter()
    found = method.search(index, queries, threads)
    batch_seconds = time.perf_counter() - start
    set_threads(1)
    p50, p99 = latency_percentiles_ms(lambda q: method.search(index, q, 1),
                                      queries[:latency_queries])
    set_threads(threads)
    ram, disk = method.sizes(index, len(base))
    row = {"method": method.name, "family": method.family,
           "recall@10": recall_at(np.asarray(found), truth, K),
           "latency_p50_ms_1t": p50, "latency_p99_ms_1t": p99,
           "batch_qps": len(queries) / batch_seconds, "build_s": build_seconds,
           "ram_bytes_per_vector": ram, "disk_bytes_per_vector": disk}
    disk_text = f"{disk:.1f}" if disk is not None else "-"
    print(f"  {method.name:<40} recall@10 {row['recall@10']:.4f}  p50 {p50:.2f} p99 {p99:.2f} ms  "
          f"qps {row['batch_qps']:,.0f}  build {build_seconds:.1f} s  ram {ram:.1f} B  "
          f"disk {disk_text} B", flush=True)
    del index
    return row


def vecpress_methods(base: np.ndarray, bits_list: list[int], workdir: Path) -> list[Method]:
    from vecpress import Index
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    dim = base.shape[1]
    methods = []
    for bits in bits_list:
        Index(dim, metric="ip", bits=bits).add(base[:64])  # compile this width's kernels untimed
        for rerank in (False, True):
            # the rerank originals live in a memory-mapped file, so that store gets a directory
            path = workdir / f"vp-{bits}" if rerank else None

            def build(bits=bits, rerank=rerank, path=path):
                index = Index(dim, metric="ip", bits=bits, rerank=rerank, path=path)
                index.add(base)
                return index

            def sizes(index, n):
                stats = index.stats()
                return stats["ram_bytes"] / n, (stats["disk_bytes"] / n if index.path else None)

            name = f"vecpress {bits}-bit" + (f" + rerank x{DEFAULT_OVERSAMPLE[bits]}"
                                             if rerank else "")
            methods.append(Method(name, "vecpress + rerank" if rerank else "vecpress", build,
                                  lambda index, q, threads: index.search(q, K)[1], sizes))
    return methods


def faiss_methods(base: np.ndarray, bits_list: list[int]) -> list[Method]:
    import faiss
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    dim = base.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT

    def search(index, q, threads):
        return index.search(np.ascontiguousarray(q, dtype=np.float32), K)[1]

    def sizes(index, n):
        serialized = float(faiss.serialize_index(index).size) / n
        return serialized, serialized

    def trained(make: Callable[[], Any]) -> Callable[[], Any]:
        def build():
            index = make()
            index.train(base)
            index.add(base)
            return index
        return build

    def refined(make: Callable[[], Any], k_factor: int) -> Callable[[], Any]:
        def build():
            index = faiss.IndexRefineFlat(make())
            index.k_factor = k_factor
            index.train(base)
            index.add(base)
            return index
        return build

    def hnsw():
        index = faiss.IndexHNSWFlat(dim, 32, ip)
        index.hnsw.efConstruction = 128
        index.hnsw.efSearch = 64
        index.add(base)
        return index

    methods = [
        Method("faiss IndexFlatIP (exact)", "faiss Flat", trained(lambda: faiss.IndexFlatIP(dim)),
               search, sizes),
        Method("faiss SQ8", "faiss SQ", trained(lambda: faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_8bit, ip)), search, sizes),
        Method("faiss SQ4", "faiss SQ", trained(lambda: faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_4bit, ip)), search, sizes),
        Method("faiss IndexPQ 48x8", "faiss PQ", trained(lambda: faiss.IndexPQ(dim, 48, 8, ip)),
               search, sizes),
    ]
    for bits in [b for b in bits_list if b in (1, 2, 4)]:
        make = (lambda bits=bits: faiss.IndexRaBitQ(dim, ip, bits))
        methods.append(Method(f"faiss RaBitQ {bits}-bit", "faiss RaBitQ", trained(make),
                              search, sizes))
        k_factor = DEFAULT_OVERSAMPLE[bits]
        methods.append(Method(f"faiss RaBitQ {bits}-bit + RefineFlat x{k_factor}",
                              "faiss RaBitQ + RefineFlat", refined(make, k_factor), search,
                              sizes))
    methods.append(Method("faiss HNSWFlat M=32 ef=64", "graph (HNSW)", hnsw, search, sizes))
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

    return [Method("hnswlib M=16 ef=64", "graph (HNSW)", build, search, sizes)]


def usearch_methods(base: np.ndarray, workdir: Path) -> list[Method]:
    try:
        from usearch.index import Index as UIndex
    except ImportError:
        print("  usearch not installed (pip install usearch): skipped")
        return []
    dim = base.shape[1]
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

        methods.append(Method(f"usearch {dtype} M=16 ef=64", "usearch", build, search, sizes))
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


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| method | recall@10 | p50 ms (1 thread) | p99 ms (1 thread) | batch QPS | "
             "build s | RAM B/vector | disk B/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        disk = row["disk_bytes_per_vector"]
        lines.append(f"| {row['method']} | {row['recall@10']:.4f} | "
                     f"{row['latency_p50_ms_1t']:.2f} | {row['latency_p99_ms_1t']:.2f} | "
                     f"{row['batch_qps']:,.0f} | {row['build_s']:.1f} | "
                     f"{row['ram_bytes_per_vector']:.1f} | "
                     f"{'-' if disk is None else f'{disk:.1f}'} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], x_key: str, y_key: str, x_label: str, y_label: str,
         title: str, path: Path, log_x: bool = False, log_y: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    families: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    for family, items in families.items():
        items = sorted(items, key=lambda r: r[x_key])
        ax.plot([r[x_key] for r in items], [r[y_key] for r in items], marker="o",
                label=family, linestyle="-" if family.startswith("vecpress") else "--")
        for r in items:
            ax.annotate(r["method"].split(" ", 1)[1], (r[x_key], r[y_key]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors, 200 queries")
    parser.add_argument("--n-base", type=int, default=100_000)
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_base, args.n_queries, args.latency_queries = 10_000, 200, 200
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()
    base, queries, _, _ = load_embeddings(args.n_base, args.n_queries)
    _, truth = ground_truth(base, queries, k=K, metric="ip")
    print(f"{len(base)} base vectors, {len(queries)} held-out queries, dim {base.shape[1]}, "
          f"load average {load_before[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        methods = (faiss_methods(base, args.bits) + hnswlib_methods(base, workdir)
                   + usearch_methods(base, workdir) + lancedb_methods(base, workdir)
                   + vecpress_methods(base, args.bits, workdir))
        for method in methods:
            rows.append(run(method, base, queries, truth, args.latency_queries, threads))
    load_after = os.getloadavg()
    described = (f"{machine()}; load average (1 min) {load_before[0]:.2f} at start, "
                 f"{load_after[0]:.2f} at end")
    header = (f"{len(base):,} WordNet glosses (all-MiniLM-L6-v2, 384-d), {len(queries)} held-out "
              f"queries, k={K}; latency over {min(args.latency_queries, len(queries))} single "
              f"queries on 1 thread, batch QPS and build on {threads} threads; {described}")
    table = markdown(rows, header)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "suite_quick" if args.quick else "suite"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"machine": machine(), "load_average_start": load_before, "load_average_end": load_after,
         "threads": threads, "n_base": len(base), "n_queries": len(queries), "k": K,
         "rows": rows}, indent=1))
    title = f"all-MiniLM-L6-v2 on {len(base):,} WordNet glosses, k={K}"
    plot(rows, "ram_bytes_per_vector", "recall@10", "RAM bytes per vector (log scale)",
         "recall@10 vs exact", title, args.out / f"{stem}_recall_vs_ram.png", log_x=True)
    plot(rows, "recall@10", "latency_p50_ms_1t", "recall@10 vs exact",
         "single-query latency p50, 1 thread (ms, log scale)", title,
         args.out / f"{stem}_latency_vs_recall.png", log_y=True)


if __name__ == "__main__":
    main()
