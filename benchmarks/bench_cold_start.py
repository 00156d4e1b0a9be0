"""Cold start: a fresh Python process imports vecpress, opens an existing store, runs a query.

The store holds WordNet glosses (text, metadata, 4-bit codes, float16 originals) embedded with
the default model (the cached embeddings of ``benchmarks.datasets``). Each measured run is a new
interpreter (``vecpress.coldstart``) that times, from inside, ``import vecpress``, opening the
store read-only and the first and second query (a precomputed query vector, so the embedding
model is not part of it). One warm-up run first fills the numba cache if needed; then the median
of ``--runs``. For context it also times, in fresh processes, what a first *question* adds:
loading the embedding model (torch, sentence-transformers) and embedding the question. And side
by side with the peers (``benchmarks/cold_start_peers.py``): the same cold start for index files
of 100k vectors from vecpress, FAISS, hnswlib and usearch.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_cold_start            # 10k and 100k stores, peers
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_cold_start --sizes 10000 --runs 3

Writes benchmarks/results/cold_start.md and cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/bench_cold_start.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.datasets import REPO_ROOT, load_embeddings

STORE_DIR = REPO_ROOT / ".cache" / "bench-cold-start"
RESULTS = REPO_ROOT / "benchmarks" / "results"

_MODEL_PROBE = """
import time
start = time.perf_counter()
from vecpress.embeddings import default_embedder
embedder = default_embedder()
loaded = time.perf_counter()
embedder.embed_query("What do you call a young dog?")
embedded = time.perf_counter()
import json
print(json.dumps({"model_load": loaded - start, "embed_question": embedded - loaded}))
"""


def build_store(n: int, bits: int) -> tuple[Path, Path]:
    """A persistent collection of ``n`` glosses (reused when complete) and a query vector file."""
    from vecpress import Collection

    path = STORE_DIR / f"wordnet-{n}-{bits}bit"
    query_file = STORE_DIR / f"query-{n}.npy"
    base, queries, texts, _ = load_embeddings(n, 10)
    STORE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(query_file, queries[0])
    if (path / "docs.sqlite").exists():
        with Collection.open(path, read_only=True) as existing:
            if len(existing) == n and existing.bits == bits:
                return path, query_file
        import shutil

        shutil.rmtree(path)
    started = time.perf_counter()
    with Collection(base.shape[1], path=path, bits=bits) as collection:
        for start in range(0, n, 10_000):
            stop = min(start + 10_000, n)
            collection.upsert([f"g{i}" for i in range(start, stop)], base[start:stop], texts=texts[start:stop],
                              metadatas=[{"row": i} for i in range(start, stop)])
    print(f"built {path} ({n} documents) in {time.perf_counter() - started:.1f} s", flush=True)
    return path, query_file


def model_probe(runs: int) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _MODEL_PROBE], capture_output=True, text=True, env=env,
                              check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def machine() -> dict[str, object]:
    import numba

    import vecpress

    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "vecpress": vecpress.__version__, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform()}


def write_report(rows: list[dict], model: dict[str, float] | None, env: dict, runs: int,
                 peers: dict | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cold_start.json").write_text(json.dumps({"machine": env, "runs": runs, "stores": rows,
                                                         "model": model, "peers": peers},
                                                        indent=1) + "\n")
    ms = lambda seconds: f"{seconds * 1000:,.0f}"  # noqa: E731
    lines = [
        "# Cold start: fresh process, `import vecpress`, open a store, first query",
        "",
        f"Median of {runs} fresh interpreters per store after one warm-up run (numba cache warm), "
        "timed from inside each process. Store: WordNet glosses with text and metadata, "
        "all-MiniLM-L6-v2 vectors (384 d), cosine, 4-bit codes in RAM, float16 originals on disk; "
        "opened read-only; k = 5; the query vector is precomputed (the embedding model is not part of it).",
        "",
        "Wall-clock milliseconds, with the process's CPU milliseconds in parentheses (steadier on a "
        "busy machine: wall time there includes waiting for a core).",
        "",
        "| documents | import vecpress | open store | first query | second query "
        "| import + open + first query | whole process incl. interpreter start |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        t = row["timing"]
        both = lambda step: f"{ms(t[step])} ({ms(t['cpu_' + step])})"  # noqa: E731
        lines.append(f"| {row['documents']:,} | {both('import')} | {both('open')} | {both('first_query')} "
                     f"| {t['second_query'] * 1000:.1f} ({t['cpu_second_query'] * 1000:.1f}) | **{both('total')}** "
                     f"| {ms(t['process'])} |")
    first_use = [row for row in rows if row.get("first_use")]
    if first_use:
        runs_first = len(first_use[0]["first_use"]["runs"])
        lines += [
            "",
            f"On a never-used machine (empty numba cache: `NUMBA_CACHE_DIR` pointed at a new folder), "
            f"median of {runs_first}: the kernels compile inside the first query unless "
            "`vecpress warmup` ran first (`benchmarks/bench_warmup.py`).",
            "",
            "| documents | empty cache: import + open + first query | of which first query "
            "| `vecpress warmup` (empty cache) | after warmup: import + open + first query |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in first_use:
            f = row["first_use"]
            lines.append(f"| {row['documents']:,} | {ms(f['empty']['total'])} | {ms(f['empty']['first_query'])} "
                         f"| {ms(f['warmup'])} | {ms(f['after_warmup']['total'])} |")
    if model:
        lines += [
            "",
            "What a first *question* adds in a fresh process (not vecpress: torch + sentence-transformers), "
            f"median of {model['runs']}:",
            "",
            f"- load the default embedding model: {ms(model['model_load'])} ms",
            f"- embed the question: {ms(model['embed_question'])} ms",
        ]
    if peers:
        from benchmarks.cold_start_peers import markdown as peer_markdown

        lines += peer_markdown(peers["rows"], peers["n"], runs)
    lines += [
        "",
        f"Machine: {env['cpus']} CPUs, Python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, "
        f"load average at the start {', '.join(f'{x:.1f}' for x in env['load_average'])}"
        + (" (other jobs were running: absolute numbers are pessimistic, compare rows)."
           if env["load_average"][0] > 1 else ". CPU above wall time: numba and BLAS start threads."),
        "",
        "Run: `HF_HUB_OFFLINE=1 python -m benchmarks.bench_cold_start` (needs the cached embeddings of "
        "`python -m benchmarks.datasets`).",
    ]
    (RESULTS / "cold_start.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    from vecpress.coldstart import measure_cold_start, measure_first_use

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated store sizes (documents)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per store (median)")
    parser.add_argument("--first-use-runs", type=int, default=1,
                        help="runs with an empty numba cache per store (never-used machine; 0: skip)")
    parser.add_argument("--model-runs", type=int, default=3, help="fresh processes timing the model load (0: skip)")
    parser.add_argument("--peers", type=int, default=100_000,
                        help="vectors in the index files of the peer comparison (0: skip it)")
    args = parser.parse_args(argv)

    env = machine()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        store, query_file = build_store(n, args.bits)
        timing = measure_cold_start(store, query_file, runs=args.runs)
        rows.append({"documents": n, "store": str(store), "timing": timing})
        if args.first_use_runs:
            first = measure_first_use(store, query_file, runs=args.first_use_runs)
            rows[-1]["first_use"] = first
            print(f"{n:>7,} documents, empty numba cache: {first['empty']['total']:.2f} s "
                  f"(first query {first['empty']['first_query']:.2f} s); vecpress warmup "
                  f"{first['warmup']:.1f} s, then {first['after_warmup']['total']:.2f} s", flush=True)
        print(f"{n:>7,} documents: import {timing['import']:.3f} s, open {timing['open']:.3f} s, "
              f"first query {timing['first_query'] * 1000:.1f} ms, second {timing['second_query'] * 1000:.1f} ms, "
              f"total {timing['total']:.3f} s, CPU {timing['cpu_total']:.3f} s (process {timing['process']:.3f} s)",
              flush=True)
    model = None
    if args.model_runs:
        model = {**model_probe(args.model_runs), "runs": args.model_runs}
        print(f"model load {model['model_load']:.2f} s, embed question {model['embed_question'] * 1000:.0f} ms")
    peers = None
    if args.peers:
        from benchmarks import cold_start_peers

        base, _, _, _ = load_embeddings(args.peers, 10)
        paths = cold_start_peers.save_indexes(base, STORE_DIR / "peers")
        print(f"index files of {args.peers:,} vectors, vecpress and the peers:", flush=True)
        peers = {"n": args.peers, "rows": cold_start_peers.measure(
            paths, STORE_DIR / f"query-{args.peers}.npy", base.shape[1], args.runs)}
    write_report(rows, model, env, args.runs, peers)
    print(f"wrote {RESULTS / 'cold_start.md'}")


if __name__ == "__main__":
    main()
