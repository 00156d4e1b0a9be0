"""The driver's cost of a fan-out on a local Ray cluster, with shards that do no work (each
returns a fixed k=10 answer to a 384-d query), three ways:

- direct: the driver calls every shard actor and fetches them with one ``ray.get`` (what
  ShardedCollection does);
- merger: the driver calls one merging actor, which calls the shards and merges (two-level);
- grouped: the shards are hosted two per actor, each actor merging its own (N/2 calls; what
  ``ShardedCollection(shards_per_actor=2)`` does).

Per way and shard count: wall p50/p99 of a query and the driver thread's CPU per query
(time.thread_time), ``--queries`` queries after 30 warm-up ones, the whole sequence run
``--repeats`` times (one figure per run in each cell). Writes
``benchmarks/results/distributed_fanout_floor.{md,json}``.

    python -m benchmarks.bench_fanout_floor
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
WARMUP = 30


def merged(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several (ids, scores) answers, ties by id (as the driver merges)."""
    ids = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


def fixed_answer(shard: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([f"doc-{shard}-{j}" for j in range(K)], dtype=object),
            np.linspace(1.0, 0.5, K))


@ray.remote(num_cpus=0, max_concurrency=4)
class NoOpShard:
    """A shard that does no work: its answer is fixed."""

    def __init__(self, shard: int) -> None:
        self.answer = fixed_answer(shard)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.answer[0][:k], self.answer[1][:k]


@ray.remote(num_cpus=0, max_concurrency=4)
class NoOpGroup:
    """Several no-op shards in one actor, merged there (one call for all of them)."""

    def __init__(self, first: int, count: int) -> None:
        self.answers = [fixed_answer(s) for s in range(first, first + count)]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return merged(self.answers, k)


@ray.remote(num_cpus=0, max_concurrency=4)
class Merger:
    """The second level of a two-level fan-out: calls the shards, merges, answers."""

    def __init__(self, shards: list[Any]) -> None:
        self.shards = shards

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return merged(ray.get([s.search.remote(query, k) for s in self.shards]), k)


def direct(actors: list[Any], query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return merged(ray.get([a.search.remote(query, k) for a in actors]), k)


def via_merger(merger: Any, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return ray.get(merger.search.remote(query, k))


def timed(call: Callable[[Any, np.ndarray, int], Any], target: Any,
          queries: np.ndarray) -> tuple[float, float, float]:
    """(wall p50 ms, wall p99 ms, driver-thread CPU ms per query) after a warm-up."""
    for query in queries[:WARMUP]:
        call(target, query, K)
    walls, cpus = [], []
    for query in queries:
        wall, cpu = time.perf_counter(), time.thread_time()
        call(target, query, K)
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return (float(np.median(walls) * 1e3), float(np.percentile(walls, 99) * 1e3),
            float(np.mean(cpus) * 1e3))


def measure(shard_counts: list[int], queries: np.ndarray,
            repeats: int) -> dict[str, list[tuple[float, float, float]]]:
    """Every way at every shard count, ``repeats`` times in turn (keys "<shards> <way>")."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for n in shard_counts:
        shards = [NoOpShard.remote(i) for i in range(n)]
        merger = Merger.remote(shards)
        groups = [NoOpGroup.remote(i, min(2, n - i)) for i in range(0, n, 2)] if n > 1 else []
        ray.get([a.search.remote(queries[0], K) for a in shards + groups + [merger]])
        ways = [("direct", direct, shards), ("merger", via_merger, merger)]
        if groups:
            ways.append((f"grouped ({len(groups)} actor{'s' if len(groups) > 1 else ''})",
                         direct, groups))
        for name, call, target in ways * repeats:
            out.setdefault(f"{n} {name}", []).append(timed(call, target, queries))
        for actor in shards + groups + [merger]:
            ray.kill(actor)
    return out


def markdown(out: dict[str, list[tuple[float, float, float]]], header: str) -> str:
    lines = [header, "", "| shards | way | p50 ms | p99 ms | driver CPU ms |",
             "| ---: | --- | --- | --- | --- |"]
    for key, runs in out.items():
        shards, way = key.split(" ", 1)
        cells = [" / ".join(f"{run[i]:.2f}" for run in runs) for i in range(3)]
        lines.append(f"| {shards} | {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        queries = np.random.default_rng(0).standard_normal(
            (args.queries, 384)).astype(np.float32)
        out = measure(args.shards, queries, args.repeats)
    finally:
        ray.shutdown()
    header = (f"# The driver's floor: a fan-out to shards that do no work\n\n"
              f"`python -m benchmarks.bench_fanout_floor`: `ray.init(num_cpus=4)` on a "
              f"{os.cpu_count()}-core machine, 384-d queries, each shard answers a fixed k={K} "
              f"list; {args.queries} queries after {WARMUP} warm-up ones, one at a time; every "
              f"way run {args.repeats} times in turn (one figure per run in each cell). Load "
              f"average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.")
    table = markdown(out, header)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed_fanout_floor.md").write_text(table)
    (args.out / "distributed_fanout_floor.json").write_text(json.dumps(
        {"load": [load_before, os.getloadavg()[0]], "queries": args.queries,
         "rows": {key: runs for key, runs in out.items()}}, indent=1))


if __name__ == "__main__":
    main()
