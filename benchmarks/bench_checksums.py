"""What the lazy checksums of the kept originals cost on the default search (issue #13).

A persistent store's originals are memory-mapped; with ``verify=True`` (the default) each block
of 4,096 rows is CRC-checked the first time a rerank reads from it, so a flipped bit gives an
error naming the file instead of a wrong score. This measures that against ``verify=False``
(sizes and structure only) on the default index (4-bit saq codes + float16 rerank x3) over
real embeddings, opening the store afresh for each round so every round pays its first checks:

- ``open ms``: ``Index.load`` (CRC32 of the files read into RAM with verification on);
- ``first query ms``: the first single query after the open;
- ``first 100 queries ms``: the first 100 single queries (most blocks are checked by then);
- ``p50 ms``: the median single query afterwards, every block verified;
- recall@10 of the steady queries against exact search (the checks never change results).

Rounds alternate between the two settings; the table gives medians over rounds.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_checksums              # 100k base, 1000 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_checksums --quick      # 10k base, 200 queries

Writes ``benchmarks/results/checksums.md`` and ``checksums.json`` (``checksums_quick.*``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/bench_checksums.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import machine, recall_at, set_threads, source_version
from benchmarks.datasets import ground_truth, load_embeddings
from vecpress import Index

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"verify=True (lazy block checks)": True, "verify=False": False}


def measure_round(path: Path, verify: bool, queries: np.ndarray, truth: np.ndarray
                  ) -> dict[str, float]:
    """One fresh open of the store and its queries, timed."""
    start = time.perf_counter()
    index = Index.load(path, read_only=True, verify=verify)
    opened = time.perf_counter()
    index.search(queries[0], k=10)
    first = time.perf_counter()
    for query in queries[1:100]:
        index.search(query, k=10)
    hundred = time.perf_counter()
    times, found = [], []
    for query in queries[100:]:
        tick = time.perf_counter()
        found.append(index.search(query, k=10)[1][0])
        times.append(time.perf_counter() - tick)
    return {"open_ms": 1e3 * (opened - start), "first_ms": 1e3 * (first - opened),
            "first_100_ms": 1e3 * (hundred - opened), "p50_ms": 1e3 * float(np.median(times)),
            "recall": recall_at(np.array(found), truth[100:], 10)}


def markdown(report: dict[str, Any]) -> str:
    lines = [report["header"], "",
             "| setting | open ms | first query ms | first 100 queries ms | p50 ms after | "
             "recall@10 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['open_ms']:.1f} | {row['first_ms']:.2f} | "
                     f"{row['first_100_ms']:.1f} | {row['p50_ms']:.3f} | {row['recall']:.4f} |")
    checked, plain = (report["rows"][name] for name in SETTINGS)
    lines += ["", f"Cost of the lazy checks: first 100 queries {checked['first_100_ms'] - plain['first_100_ms']:+.1f} ms "
              f"({checked['first_100_ms'] / plain['first_100_ms']:.2f}x), steady p50 "
              f"{checked['p50_ms'] / plain['p50_ms']:.3f}x (medians of {report['rounds']} "
              f"fresh opens each; one thread)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k base, 200 queries")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n_base, n_queries = (10_000, 200) if args.quick else (100_000, 1_000)
    set_threads(1)
    base, queries, _, _ = load_embeddings(n_base, n_queries)
    _, truth = ground_truth(base, queries, k=10, metric="ip")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        with Index(base.shape[1], path=path) as index:  # the defaults: 4-bit saq + rerank x3
            index.add(base)
        for name, verify in SETTINGS.items():  # a warm-up round each: numba, page cache
            measure_round(path, verify, queries, truth)
        for _ in range(args.rounds):
            for name, verify in SETTINGS.items():
                rows[name].append(measure_round(path, verify, queries, truth))
    report = {"machine": machine(), "vecpress": source_version(), "rounds": args.rounds,
              "n_base": n_base, "n_queries": n_queries,
              "rows": {name: {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
                       for name, runs in rows.items()},
              "all_rounds": rows}
    report["header"] = (f"WordNet glosses, all-MiniLM-L6-v2 (384-d): {n_base:,} base, "
                        f"{n_queries:,} queries, default Index on disk; vecpress: "
                        f"{report['vecpress']}; {report['machine']}")
    table = markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "checksums_quick" if args.quick else "checksums"
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
