"""Core engine benchmark: vecpress ``Index`` against FAISS at the same code size, in one run.

Real data: WordNet glosses embedded with all-MiniLM-L6-v2 (see ``benchmarks/datasets.py``),
queries held out of the base set, exact float32 top-10 as ground truth. Reports recall@10
with and without rerank for 1, 2, 4 and 8 bits, encode throughput (median of three builds),
median single-query
latency on one thread and on all threads, and RAM bytes per vector.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_core            # 100k base, 1000 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_core --quick    # 10k base, 200 queries

Writes ``benchmarks/results/core.md``, ``core.json`` and ``core_recall_vs_ram.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from itertools import count
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import RESULTS, machine, recall_at, set_threads
from benchmarks.datasets import ground_truth, load_embeddings

#: builds per method; encode throughput is the median (the first is also kept in the JSON)
BUILD_REPEATS = 3


def median_latency_ms(search: Callable[[np.ndarray], Any], queries: np.ndarray,
                      repeats: int = 1) -> float:
    search(queries[:1])  # warm caches and compiled code
    times = []
    for _ in range(repeats):
        for query in queries:
            start = time.perf_counter()
            search(query[None])
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def measure(name: str, bits: int | None, build: Callable[[], Any],
            search: Callable[[Any, np.ndarray], np.ndarray], ram: Callable[[Any], float],
            base: np.ndarray, queries: np.ndarray, truth: np.ndarray, latency_queries: int,
            threads: int) -> dict[str, Any]:
    set_threads(threads)
    build_seconds = []
    for _ in range(BUILD_REPEATS):  # fresh memory makes a process's first big build slow
        start = time.perf_counter()
        index = build()
        build_seconds.append(time.perf_counter() - start)
    found = search(index, queries)
    row = {"method": name, "bits": bits, "recall@10": recall_at(found, truth),
           "encode_vec_per_s": len(base) / float(np.median(build_seconds)),
           "encode_vec_per_s_first": len(base) / build_seconds[0],
           "ram_bytes_per_vector": ram(index)}
    sample = queries[:latency_queries]
    set_threads(1)
    row["latency_ms_1t"] = median_latency_ms(lambda q: search(index, q), sample)
    set_threads(threads)
    row["latency_ms_all"] = median_latency_ms(lambda q: search(index, q), sample)
    print(f"  {name:<34} recall@10 {row['recall@10']:.4f}  "
          f"lat {row['latency_ms_1t']:.2f}/{row['latency_ms_all']:.2f} ms  "
          f"enc {row['encode_vec_per_s']:,.0f}/s  ram {row['ram_bytes_per_vector']:.1f} B", flush=True)
    return row


def vecpress_rows(base, queries, truth, bits_list, latency_queries, threads, workdir,
                  codec="saq"):
    """Rows for vecpress ``Index`` with ``codec`` (the default ``"saq"``, or plain
    ``"rabitq"`` codes for comparison), with and without rerank."""
    from vecpress import Index

    rows = []
    for bits in bits_list:
        # warm the compiled kernels for this width outside the timed build
        Index(base.shape[1], metric="ip", bits=bits, codec=codec).add(base[:64])
        for rerank in (False, True):
            paths = (Path(workdir) / f"vp-{codec}-{bits}-{int(rerank)}-{n}" for n in count())

            def build(bits=bits, rerank=rerank, paths=paths):
                path = next(paths) if rerank else None
                index = Index(base.shape[1], metric="ip", bits=bits, rerank=rerank, path=path,
                              codec=codec)
                index.add(base)
                return index

            def ram(index):
                stats = index.stats()
                return stats["ram_bytes_per_vector"]  # the figure `vecpress stats` prints

            name = "vecpress" if codec == "saq" else f"vecpress {codec}"
            label = f"{name} {bits}-bit" + (f" + rerank x{_oversample(bits)}" if rerank else "")
            row = measure(label, bits, build, lambda index, q: index.search(q, 10)[1], ram,
                          base, queries, truth, latency_queries, threads)
            row["rerank"] = rerank
            row["codec"] = codec
            rows.append(row)
    return rows


def _oversample(bits: int) -> int:
    from vecpress.core.index import DEFAULT_OVERSAMPLE

    return DEFAULT_OVERSAMPLE[bits]


def faiss_rows(base, queries, truth, bits_list, latency_queries, threads):
    import faiss

    dim = base.shape[1]
    rows = []

    def search(index, q):
        return index.search(np.ascontiguousarray(q, dtype=np.float32), 10)[1]

    def ram(index):
        return float(index.sa_code_size()) if hasattr(index, "sa_code_size") else float("nan")

    def flat():
        index = faiss.IndexFlatIP(dim)
        index.add(base)
        return index

    rows.append(measure("faiss IndexFlatIP (exact)", 32, flat, search,
                        lambda index: 4.0 * dim, base, queries, truth, latency_queries, threads))
    for bits in bits_list:
        def rabitq(bits=bits):
            index = faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT, bits)
            index.train(base)
            index.add(base)
            return index

        rows.append(measure(f"faiss IndexRaBitQ {bits}-bit", bits, rabitq, search, ram,
                            base, queries, truth, latency_queries, threads))
        sq_type = {4: faiss.ScalarQuantizer.QT_4bit, 8: faiss.ScalarQuantizer.QT_8bit}.get(bits)
        if sq_type is not None:
            def scalar(sq_type=sq_type):
                index = faiss.IndexScalarQuantizer(dim, sq_type, faiss.METRIC_INNER_PRODUCT)
                index.train(base)
                index.add(base)
                return index

            rows.append(measure(f"faiss IndexScalarQuantizer SQ{bits}", bits, scalar, search,
                                ram, base, queries, truth, latency_queries, threads))
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| method | recall@10 | latency 1 thread (ms) | latency all threads (ms) | "
             "encode (vectors/s, median of 3 builds) | RAM bytes/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['recall@10']:.4f} | {row['latency_ms_1t']:.2f} | "
                     f"{row['latency_ms_all']:.2f} | {row['encode_vec_per_s']:,.0f} | "
                     f"{row['ram_bytes_per_vector']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        family = row["method"].split(" ")[0] + (" " + row["method"].split(" ")[1]
                                                if row["method"].startswith("faiss") else "")
        if row["method"].startswith("vecpress rabitq"):
            family = "vecpress rabitq"
        if row.get("rerank"):
            family = "vecpress + rerank (RAM: codes only)"
            if row.get("codec") != "saq":
                continue
        groups.setdefault(family, []).append(row)
    for family, items in groups.items():
        items = sorted(items, key=lambda r: r["ram_bytes_per_vector"])
        ax.plot([r["ram_bytes_per_vector"] for r in items], [r["recall@10"] for r in items],
                marker="o", label=family)
    ax.set_xscale("log")
    ax.set_xlabel("RAM bytes per vector (log scale)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title("all-MiniLM-L6-v2 on WordNet glosses")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors, 200 queries")
    parser.add_argument("--n-base", type=int, default=100_000)
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--codecs", nargs="+", default=["saq", "rabitq"],
                        help="vecpress codecs to run (default: the default saq and plain rabitq)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_base, args.n_queries, args.latency_queries = 10_000, 200, 50
    threads = os.cpu_count() or 1
    base, queries, _, _ = load_embeddings(args.n_base, args.n_queries)
    _, truth = ground_truth(base, queries, k=10, metric="ip")
    print(f"{len(base)} base vectors, {len(queries)} held-out queries, dim {base.shape[1]}")
    with tempfile.TemporaryDirectory() as workdir:
        rows = faiss_rows(base, queries, truth, args.bits, args.latency_queries, threads)
        for codec in args.codecs:
            rows += vecpress_rows(base, queries, truth, args.bits, args.latency_queries, threads,
                                  workdir, codec)
    header = (f"{len(base):,} WordNet glosses (all-MiniLM-L6-v2, 384-d), {len(queries)} held-out "
              f"queries, k=10; {machine()}")
    table = markdown(rows, header)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"core{suffix}.md").write_text(table + "\n")
    (args.out / f"core{suffix}.json").write_text(json.dumps(
        {"machine": machine(), "n_base": len(base), "n_queries": len(queries), "rows": rows},
        indent=1))
    plot(rows, args.out / f"core_recall_vs_ram{suffix}.png")


if __name__ == "__main__":
    main()
