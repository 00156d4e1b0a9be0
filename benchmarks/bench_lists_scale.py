"""Issue #14's large-scale targets in one run: a partitioned 1-bit index with originals, streamed.

Builds ``Index(384, bits=1, partitions="auto", path=...)`` from ``bench_scale``'s synthetic
generator, ``--chunk`` vectors per ``add`` (never the whole matrix in memory), and reports
what #14 asks of it at 10M:

- encoding speed: vectors per second of wall time inside ``add`` (and per CPU-second);
- RAM per vector as the index accounts it (``stats()``);
- peak resident memory of the process during the build: ``VmHWM`` (anonymous plus
  file-backed pages, the issue's measure), against the bound 2 x RAM + 2 GiB;
- the lists, the default ``nprobe`` and ``oversample`` (tuned when the lists were trained)
  and the list sizes;
- recall@10 of ``--queries`` generated queries against a brute force streamed over the same
  vectors, and single-query p50 on one thread, at the default ``nprobe`` and a few others.

The vectors are synthetic: recall here compares settings on the same vectors and proves
nothing about real text (the generator draws from 1,024 clusters; see ``bench_scale``).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_lists_scale               # 10M, about 30 min
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_lists_scale --n 1000000
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_lists_scale --partitions 256   # fixed lists

The store (7.7 GB of float16 originals at 10M) goes under the system's temporary folder or
``$VECPRESS_SCALE_TMP`` and is removed at the end. Writes
``benchmarks/results/lists_scale_<n>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/bench_lists_scale.py`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.bench_scale import SyntheticEmbeddings, load_spectrum
from benchmarks.common import RESULTS, machine, memory, recall_at, set_threads, source_version

K = 10
GIB = 1 << 30


def build(generator: SyntheticEmbeddings, n: int, chunk: int, bits: int,
          folder: Path, partitions: Any = "auto") -> tuple[Any, float, float]:
    """The index, and the wall and CPU seconds spent inside ``add`` (generation excluded)."""
    from vecpress import Index

    index = Index(generator.dim, bits=bits, partitions=partitions, path=folder / "store")
    wall = cpu = 0.0
    done = 0
    for vectors in generator.stream(n, chunk):
        start, start_cpu = time.perf_counter(), time.process_time()
        index.add(vectors)
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        done += len(vectors)
        print(f"  {done:>11,} vectors  {wall:7.1f} s in add  VmHWM "
              f"{memory()['VmHWM'] / 2**20:,.0f} MiB", flush=True)
    return index, wall, cpu


def brute_force(generator: SyntheticEmbeddings, n: int, chunk: int,
                queries: np.ndarray) -> np.ndarray:
    """Exact top-``K`` rows of each query (inner product of unit vectors), streamed."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_r = np.full((len(queries), K), -1, np.int64)
    start = 0
    for vectors in generator.stream(n, chunk):
        scores = queries @ vectors.T
        rows = np.broadcast_to(np.arange(start, start + len(vectors)), scores.shape)
        merged_s = np.concatenate([best_s, scores], axis=1)
        merged_r = np.concatenate([best_r, rows], axis=1)
        top = np.argpartition(-merged_s, K - 1, axis=1)[:, :K]
        best_s = np.take_along_axis(merged_s, top, axis=1)
        best_r = np.take_along_axis(merged_r, top, axis=1)
        start += len(vectors)
    return best_r


def timed_rows(index: Any, queries: np.ndarray, truth: np.ndarray,
               settings: list[tuple[int | None, int | None]],
               latency_queries: int) -> list[dict[str, Any]]:
    """Recall@10 and single-query p50 (one thread) at each ``(nprobe, oversample)`` (None:
    the index's default)."""
    set_threads(1)
    rows = []
    for nprobe, oversample in settings:
        options = {"nprobe": nprobe, "oversample": oversample}
        found = index.search(queries, K, **options)[1]
        index.search(queries[:1], K, **options)
        times = []
        for q in range(min(latency_queries, len(queries))):
            start = time.perf_counter()
            index.search(queries[q:q + 1], K, **options)
            times.append(time.perf_counter() - start)
        rows.append({"nprobe": nprobe, "oversample": oversample,
                     "recall@10": recall_at(found, truth),
                     "p50_ms": 1e3 * float(np.median(times))})
    return rows


def markdown(result: dict[str, Any]) -> str:
    bound = result["bound_bytes"]
    lines = [result["header"], "",
             "| figure | value | #14 target |", "| --- | --- | --- |",
             f"| build, time inside `add` | {result['build_s']:,.1f} s wall = "
             f"{result['vectors_per_s']:,.0f} vectors/s; {result['build_cpu_s']:,.1f} CPU s = "
             f"{result['vectors_per_cpu_s']:,.0f} per CPU-second | >= 100,000 vectors/s |",
             f"| RAM (`stats()`) | {result['ram_bytes'] / 2**20:,.1f} MiB, "
             f"{result['ram_bytes_per_vector']:.2f} B/vector | <= 70 B/vector at 1 bit |",
             f"| peak resident during the build (VmHWM) | "
             f"{result['build_memory']['VmHWM'] / 2**20:,.0f} MiB (RssAnon "
             f"{result['build_memory']['RssAnon'] / 2**20:,.0f}, RssFile "
             f"{result['build_memory']['RssFile'] / 2**20:,.0f} at the end) | <= 2 x RAM + 2 GiB "
             f"= {bound / 2**20:,.0f} MiB |",
             f"| lists / default nprobe / list rows min-median-max | {result['lists']} / "
             f"{result['nprobe']} / {result['list_rows']} | |", "",
             "| nprobe | oversample | recall@10 | p50 ms (1 thread) |",
             "| ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        nprobe = f"{result['nprobe']} (default)" if row["nprobe"] is None else row["nprobe"]
        oversample = (f"{result['oversample']} (default)" if row["oversample"] is None
                      else row["oversample"])
        lines.append(f"| {nprobe} | {oversample} | {row['recall@10']:.4f} | "
                     f"{row['p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors per add")
    parser.add_argument("--bits", type=int, default=1)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--oversample", type=int, nargs="*", default=[20, 40],
                        help="also search at the default nprobe with these candidates per hit")
    parser.add_argument("--partitions", default="auto",
                        help="'auto' (about sqrt(n) lists) or a fixed number of lists: fewer "
                             "lists cost each add less to assign and each query more to scan")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    partitions = args.partitions if args.partitions == "auto" else int(args.partitions)
    generator = SyntheticEmbeddings(load_spectrum())
    queries = generator.queries(args.queries)
    header = (f"Synthetic 384-d vectors (bench_scale's generator: recall compares settings on "
              f"the same vectors, not real text), {args.n:,} added {args.chunk:,} at a time, "
              f"{args.bits}-bit saq + rerank (float16 originals on disk), "
              f"partitions={partitions!r}; "
              f"{args.queries:,} generated queries; vecpress: {source_version()}; {machine()}")
    print(header, flush=True)
    folder = Path(tempfile.mkdtemp(prefix="vecpress-lists-scale-",
                                   dir=os.environ.get("VECPRESS_SCALE_TMP")))
    try:
        index, wall, cpu = build(generator, args.n, args.chunk, args.bits, folder, partitions)
        build_memory = memory()
        stats = index.stats()
        sizes = np.diff(index._lists.bounds)
        print("  brute force ...", flush=True)
        truth = brute_force(generator, args.n, args.chunk, queries)
        default = int(stats["nprobe"])
        nprobes = sorted({max(1, default // 2), default * 2, default * 4} - {default})
        settings = ([(None, None)] + [(n, None) for n in nprobes]
                    + [(nprobe, factor) for factor in args.oversample
                       for nprobe in (None, default * 2)])
        rows = timed_rows(index, queries, truth, settings, args.latency_queries)
        index.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"header": header, "n": args.n, "build_s": wall, "build_cpu_s": cpu,
              "vectors_per_s": args.n / wall, "vectors_per_cpu_s": args.n / cpu,
              "ram_bytes": stats["ram_bytes"], "ram_bytes_per_vector": stats["ram_bytes"] / args.n,
              "build_memory": build_memory, "bound_bytes": 2 * stats["ram_bytes"] + 2 * GIB,
              "lists": stats["lists"], "nprobe": default, "oversample": stats["oversample"],
              "list_rows": f"{sizes.min():,} - {int(np.median(sizes)):,} - {sizes.max():,}",
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"lists_scale_{args.n}" + ("" if partitions == "auto" else f"_lists_{partitions}")
    (args.out / f"{stem}.md").write_text(markdown(result))
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=int))
    print(markdown(result))


if __name__ == "__main__":
    main()
