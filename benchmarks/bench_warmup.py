"""First use on a never-used machine: empty numba cache, `vecpress warmup`, warm cache.

A fresh Python process imports vecpress, opens a store of WordNet glosses (the cached
all-MiniLM-L6-v2 embeddings of ``benchmarks.datasets``, the store of ``bench_cold_start``) and
runs its first query (a precomputed query vector: the embedding model is not part of it):

- with an empty numba cache (``NUMBA_CACHE_DIR`` pointed at a new folder): the kernels
  compile inside the first query, where a user waits;
- after ``vecpress warmup`` filled another empty cache (its own time is a column);
- with the cache warm (median of ``--runs`` processes after a warm-up run).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_warmup                 # 10k store, 3 runs
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_warmup --size 10000 --runs 1

Prints the table and writes benchmarks/results/warmup.md and warmup.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/bench_warmup.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from benchmarks.bench_cold_start import RESULTS, build_store, machine


def first_use_rows(first: dict, warm: dict) -> list[tuple[str, dict]]:
    """(label, step timings) of the three cases, in the order a user meets them."""
    return [("empty numba cache (never-used machine)", first["empty"]),
            ("after `vecpress warmup` (empty cache before it)", first["after_warmup"]),
            ("numba cache warm (any later process)", warm)]


def table(first: dict, warm: dict, documents: int) -> list[str]:
    """The Markdown table of :func:`first_use_rows`, milliseconds."""
    ms = lambda seconds: f"{seconds * 1000:,.0f}"  # noqa: E731
    lines = [
        f"| fresh process, {documents:,}-document store | import vecpress | open store | first query "
        "| import + open + first query |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, t in first_use_rows(first, warm):
        lines.append(f"| {label} | {ms(t['import'])} | {ms(t['open'])} | {ms(t['first_query'])} "
                     f"| **{ms(t['total'])}** |")
    lines.append(f"| `vecpress warmup` itself, empty cache | | | | {ms(first['warmup'])} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    from vecpress.coldstart import measure_cold_start, measure_first_use

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="documents in the store")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (median)")
    args = parser.parse_args(argv)

    env = machine()
    store, query_file = build_store(args.size, 4)
    first = measure_first_use(store, query_file, runs=args.runs)
    warm = measure_cold_start(store, query_file, runs=args.runs)
    lines = table(first, warm, args.size)
    print("\n".join(lines))
    busy = env["load_average"][0] > 1
    report = [
        "# First use: empty numba cache, `vecpress warmup`, warm cache",
        "",
        f"Median of {args.runs} runs per case, wall-clock milliseconds, timed inside each fresh "
        "process (the interpreter's own start-up apart). Store: WordNet glosses, all-MiniLM-L6-v2 "
        "vectors (384 d), 4-bit codes, opened read-only, k = 5, precomputed query vector.",
        "",
        *lines,
        "",
        f"Machine: {env['cpus']} CPUs, Python {env['python']}, numba {env['numba']}, load average "
        f"at the start {', '.join(f'{x:.1f}' for x in env['load_average'])}"
        + (" (shared with other jobs: compile times are pessimistic)." if busy else "."),
        "",
        "Run: `HF_HUB_OFFLINE=1 python -m benchmarks.bench_warmup`.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "warmup.md").write_text("\n".join(report) + "\n")
    (RESULTS / "warmup.json").write_text(json.dumps(
        {"machine": env, "documents": args.size, "runs": args.runs,
         "first_use": {k: v for k, v in first.items() if k != "runs"}, "warm": {
             k: v for k, v in warm.items() if k != "runs"}}, indent=1) + "\n")
    print(f"wrote {RESULTS / 'warmup.md'}")


if __name__ == "__main__":
    main()
