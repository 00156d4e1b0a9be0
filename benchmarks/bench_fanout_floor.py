"""The driver's cost of a fan-out on a local Ray cluster, with shards that do no work (each
returns a fixed k=10 answer to a 384-d query), three ways:

- direct: the driver calls every shard actor and fetches them with one ``ray.get`` (what
  ShardedCollection does);
- merger: the driver calls one merging actor, which calls the shards and merges (two-level);
- grouped: the shards are hosted two per actor, each actor merging its own (N/2 calls).

Per way and shard count: wall p50/p99 of a query and the driver thread's CPU per query
(time.thread_time), 300 queries after 30 warm-up ones, the whole sequence run twice.

    python -m benchmarks.bench_fanout_floor
"""
import os, sys, time, json
import numpy as np, ray

print("load at the start:", os.popen("uptime").read().strip())

ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)

@ray.remote(num_cpus=0, max_concurrency=4)
class Shard:
    def __init__(self, i):
        self.ids = np.array([f"doc-{i}-{j}" for j in range(10)], dtype=object)
        self.scores = np.linspace(1, 0.5, 10)
    def search(self, q, k):
        return self.ids[:k], self.scores[:k]

@ray.remote(num_cpus=0, max_concurrency=4)
class Group:
    def __init__(self, first, count):
        self.parts = [(np.array([f"doc-{i}-{j}" for j in range(10)], dtype=object),
                       np.linspace(1, 0.5, 10)) for i in range(first, first + count)]
    def search(self, q, k):
        ids = np.concatenate([p[0][:k] for p in self.parts])
        sc = np.concatenate([p[1][:k] for p in self.parts])
        order = np.lexsort((ids, -sc))[:k]
        return ids[order], sc[order]

@ray.remote(num_cpus=0, max_concurrency=4)
class Merger:
    def __init__(self, shards):
        self.shards = shards
    def search(self, q, k):
        parts = ray.get([s.search.remote(q, k) for s in self.shards])
        ids = np.concatenate([p[0] for p in parts]); sc = np.concatenate([p[1] for p in parts])
        order = np.lexsort((ids, -sc))[:k]
        return ids[order], sc[order]

def direct(shards, q, k):
    parts = ray.get([s.search.remote(q, k) for s in shards])
    ids = np.concatenate([p[0] for p in parts]); sc = np.concatenate([p[1] for p in parts])
    order = np.lexsort((ids, -sc))[:k]
    return ids[order], sc[order]

def via(merger, q, k):
    return ray.get(merger.search.remote(q, k))

rng = np.random.default_rng(0)
qs = rng.standard_normal((300, 384)).astype(np.float32)
out = {}
for n in (1, 2, 4):
    shards = [Shard.remote(i) for i in range(n)]
    merger = Merger.remote(shards)
    groups = [Group.remote(i, 2) for i in range(0, n, 2)] if n > 1 else []
    ray.get([s.search.remote(qs[0], 10) for s in shards + groups]); ray.get(merger.search.remote(qs[0], 10))
    ways = [("direct", direct, shards), ("merger", via, merger)]
    if groups:
        ways.append(("grouped", direct, groups))
    for name, fn, target in ways * 2:
        for q in qs[:30]:
            fn(target, q, 10)
        walls, cpus = [], []
        for q in qs:
            w, c = time.perf_counter(), time.thread_time()
            fn(target, q, 10)
            cpus.append(time.thread_time() - c); walls.append(time.perf_counter() - w)
        out.setdefault(f"{n} {name}", []).append((np.median(walls) * 1e3, np.percentile(walls, 99) * 1e3, np.mean(cpus) * 1e3))
    for a in shards + groups + [merger]:
        ray.kill(a)
print("load at the end:", os.popen("uptime").read().strip())
for key, runs in out.items():
    print(key, "  ".join(f"p50 {a:.2f} ms p99 {b:.2f} ms driver CPU {c:.2f} ms" for a, b, c in runs))
