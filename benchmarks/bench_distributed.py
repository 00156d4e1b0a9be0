"""ShardedCollection on a local Ray cluster: 1, 2 and 4 shards beside one Collection, on real
embeddings.

Data: WordNet glosses embedded with all-MiniLM-L6-v2 (``benchmarks/datasets.py``), queries held
out of the base, cosine, k=10. Every store has the same codes (``--bits``, default 4) and lives
on disk in a temporary directory. Reported per store:

- build: documents per second of ``upsert`` in batches of 10,000 (for the sharded stores: the
  driver routes each batch, the shards encode and write their parts at once);
- latency: median and 99th percentile of one query, one at a time from the driver;
- batch QPS: queries per second with 8 driver threads searching at once;
- driver cost: per query, the sharded search's wall time minus the slowest shard's own time
  in that same call (timed inside the actor, packing its answer included): fan-out, Ray's
  transport and the merge; and the driver process's CPU time per query (all its threads,
  Ray's own included), which does not count time spent waiting for a core;
- recall@10 against the exact top-10, and how many queries return exactly the single
  Collection's top-10 (same ids, same order).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_distributed                 # 100k base, 300 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_distributed --base 1000000  # (synthetic above 117k)
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_distributed --quick         # 20k base, 100 queries

Writes ``benchmarks/results/distributed.md`` and ``distributed.json`` (``distributed_quick.*``
for --quick, ``distributed_1m.*`` for ``--base 1000000``, ``distributed_bits32.*`` for
``--bits 32``: exact codes, where every top-10 must equal the single Collection's). Above the
110k glosses used as the base, ``--base`` draws vectors around them (a gloss plus Gaussian
noise, renormalised): the same dimension and spread, not real texts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as `python benchmarks/bench_distributed.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, recall_at, source_version
from benchmarks.datasets import ground_truth, load_embeddings

K = 10
BUILD_BATCH = 10_000
THREADS = 8
WORDNET_SIZE = 110_000  # glosses used as real vectors (the rest of the ~117k stay queries)


def vectors_for(n_base: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Base and query vectors; past the corpus, noisy copies of the glosses (said in the label)."""
    real = min(n_base, WORDNET_SIZE)
    base, queries, _, _ = load_embeddings(real, n_queries, progress=False)
    if n_base <= real:
        return base, queries, f"{n_base:,} WordNet glosses"
    rng = np.random.default_rng(1)
    extra = base[rng.integers(0, real, n_base - real)]
    extra = extra + rng.standard_normal(extra.shape).astype(np.float32) * 0.03
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return (np.concatenate([base, extra]).astype(np.float32), queries,
            f"{real:,} WordNet glosses + {n_base - real:,} noisy copies of them")


def build(store: Any, base: np.ndarray) -> float:
    """Seconds to upsert ``base`` in batches (ids are the row numbers as strings)."""
    start = time.perf_counter()
    for first in range(0, len(base), BUILD_BATCH):
        rows = range(first, min(first + BUILD_BATCH, len(base)))
        store.upsert([str(i) for i in rows], base[rows.start:rows.stop])
    return time.perf_counter() - start


def latencies(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> np.ndarray:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def batch_qps(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(search, queries[:THREADS]))  # warm every thread
        start = time.perf_counter()
        list(pool.map(search, queries))
        return len(queries) / (time.perf_counter() - start)


def sharded_latencies(store: Any, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Wall times of one-at-a-time searches and, for the same calls, each shard's own time
    inside its actor, and the driver process's CPU time per query (every thread, Ray's
    included): ``(wall ms (q,), shard ms (q, shards), driver CPU ms)``."""
    import ray

    ray.get([actor.search_times.remote() for actor in store._actors])  # start afresh
    cpu = time.process_time()
    wall = latencies(lambda q: store.search(q, K), queries)
    cpu = (time.process_time() - cpu) * 1000 / len(queries)
    shards = ray.get([actor.search_times.remote() for actor in store._actors])
    return wall, np.array(shards).T, cpu


def measure(name: str, store: Any, build_s: float, queries: np.ndarray, truth: np.ndarray,
            reference: list[list[str]] | None, n: int) -> tuple[dict[str, Any], list[list[str]]]:
    def search(query: np.ndarray) -> list[str]:
        return [hit.id for hit in store.search(query, K)]

    for query in queries[:20]:  # warm-up
        search(query)
    found = [search(q) for q in queries]
    sharded = hasattr(store, "_actors")
    if sharded:
        wall, shards, driver_cpu = sharded_latencies(store, queries)
    else:
        wall = latencies(search, queries)
    row = {"store": name, "build_docs_per_s": n / build_s,
           "p50_ms": float(np.median(wall)), "p99_ms": float(np.percentile(wall, 99)),
           "qps_8_threads": batch_qps(search, queries),
           "recall@10": recall_at(np.array([[int(i) for i in f] for f in found]), truth, K)}
    if sharded:
        slowest = shards.max(axis=1)
        row["slowest_shard_p50_ms"] = float(np.median(slowest))
        row["driver_p50_ms"] = float(np.median(wall - slowest))
        row["driver_p99_ms"] = float(np.percentile(wall - slowest, 99))
        row["driver_cpu_ms"] = driver_cpu
    if reference is not None:
        row["same_top10_as_collection"] = sum(f == r for f, r in zip(found, reference))
    return row, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--shards-per-actor", type=int, default=1,
                        help="shards one actor holds (the slowest shard's time is then the "
                             "slowest actor's)")
    parser.add_argument("--quick", action="store_true", help="20k base, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.base, args.queries = 20_000, 100
    suffix = ("_quick" if args.quick else "") + ("" if args.bits == 4 else f"_bits{args.bits}")
    suffix += "" if args.shards_per_actor == 1 else f"_{args.shards_per_actor}_per_actor"
    if not args.quick and args.base != 100_000:  # (--base 1000000 writes distributed_1m.*)
        suffix += f"_{args.base // 1_000_000}m" if args.base % 1_000_000 == 0 else f"_{args.base}"
    header = machine()

    import ray
    from threadpoolctl import threadpool_limits

    from vecpress import Collection

    # Ray starts its workers with OMP_NUM_THREADS=1 (one BLAS thread for the exact rerank's
    # products); the one-process Collection gets the same, so both run the same kernels
    threadpool_limits(limits=1, user_api="blas")
    from vecpress.distributed import ShardedCollection

    base, queries, label = vectors_for(args.base, args.queries)
    truth = ground_truth(base, queries, k=K, metric="cosine")[1]
    print(f"{label}, {len(queries)} queries, dim {base.shape[1]}, bits={args.bits}; {header}",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="vecpress-bench-distributed-"))
    rows = []
    single = Collection(base.shape[1], path=workdir / "single", bits=args.bits)
    row, reference = measure("Collection (one process)", single, build(single, base), queries,
                             truth, None, len(base))
    single.close()
    rows.append(row)
    print(row, flush=True)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    for count in [int(s) for s in args.shards.split(",")]:
        store = ShardedCollection(base.shape[1], workdir / f"sharded-{count}", shards=count,
                                  bits=args.bits, shards_per_actor=args.shards_per_actor)
        actors = -(-count // args.shards_per_actor)
        row, _ = measure(f"ShardedCollection, {count} shard{'s' * (count > 1)} in {actors} "
                         f"actor{'s' * (actors > 1)}", store,
                         build(store, base), queries, truth, reference, len(base))
        store.close()
        rows.append(row)
        print(row, flush=True)
    ray.shutdown()
    header += f", {os.getloadavg()[0]:.1f} at end"

    lines = [f"{label} (all-MiniLM-L6-v2, 384-d), {len(queries)} held-out queries, k={K}, "
             f"bits={args.bits}, cosine, on disk; Ray local cluster on this machine, shards as "
             f"actors; one BLAS thread everywhere (Ray's default in its workers); {header}; "
             f"vecpress {source_version()}.", "",
             "| store | build docs/s | p50 ms | p99 ms | QPS (8 threads) | slowest shard p50 ms "
             "| driver p50 ms | driver p99 ms | driver CPU ms | recall@10 | top-10 = Collection's |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        def cell(key: str, fmt: str) -> str:
            return format(row[key], fmt) if key in row else "–"
        same = (f"{row['same_top10_as_collection']} / {len(queries)}"
                if "same_top10_as_collection" in row else "(reference)")
        lines.append(f"| {row['store']} | {row['build_docs_per_s']:,.0f} | {row['p50_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {row['qps_8_threads']:,.0f} | "
                     f"{cell('slowest_shard_p50_ms', '.2f')} | {cell('driver_p50_ms', '.2f')} | "
                     f"{cell('driver_p99_ms', '.2f')} | {cell('driver_cpu_ms', '.2f')} | "
                     f"{row['recall@10']:.4f} | {same} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"distributed{suffix}.md").write_text(table + "\n")
    (args.out / f"distributed{suffix}.json").write_text(json.dumps(
        {"machine": header, "data": label, "n_base": len(base), "n_queries": len(queries),
         "bits": args.bits, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
