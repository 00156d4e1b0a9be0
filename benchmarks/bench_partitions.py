"""Partitioned search on real embeddings: recall@10 against latency, vecpress lists vs FAISS IVF.

The corpus is the WordNet glosses embedded with all-MiniLM-L6-v2 (384-d, cosine): the first
``--base`` of the seeded shuffle are indexed, 1,000 held-out glosses are the queries (the same
split as every other benchmark here). For each method: recall@10 against the exact top-10,
single-query latency p50 on one thread, warm and cold (``--latency-queries`` queries, one
call each; every index is built first, then the settings take turns: by blocks of 20
consecutive queries for *warm*, each call finding the caches as its own previous call left
them, and query by query for *cold*, each call following another method's search, so a noisy
minute on a shared machine slows every method alike), build seconds, and RAM bytes per vector
as the library accounts it.

- ``vecpress flat``: ``partitions=None``, the scan of every code;
- ``vecpress lists``: the default ``partitions="auto"`` (its lists and calibrated ``nprobe``),
  then the same index at other ``nprobe`` values; at the default 4 bits a coordinate and at
  2 (``LIST_BITS``): the rerank makes both exact over the probed lists, so they find the same
  rows, and 2-bit codes take 55% of the RAM;
- ``faiss IVF,RaBitQ4,RFlat``: FAISS's inverted lists over 4-bit RaBitQ codes with an exact
  refine of 3x the candidates from float32 originals in RAM, at the same list count and the
  same ``nprobe`` values;
- ``faiss IVF,Flat``: float32 lists, the recall the partitioning alone allows at each nprobe;
- ``hnswlib M=16``: a graph over float32 vectors, at several ``ef``.

The crossover section times flat against lists on prefixes of the corpus (``--crossover``),
which is how ``partitions.AUTO_MIN_ROWS`` was chosen.

``--synthetic N`` runs the same comparison on ``N`` synthetic vectors from ``bench_scale``'s
generator (fitted to this corpus's spectrum, clusters and nearest-neighbour similarities) with
1,000 queries from the generator's own stream. Recall there compares the methods on the same
vectors; it proves nothing about real text. Writes ``partitions_synthetic_<N>.*``.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_partitions                 # about 5 minutes
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_partitions --repeat 3      # medians of 3 runs
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_partitions --crossover 25000 50000 100000
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_partitions --synthetic 1000000 --no-hnswlib
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_partitions --synthetic 1000000 --no-hnswlib --add-batch 0

``--add-batch 0`` adds the vectors in one call (lists trained at the full size) and writes
``partitions_synthetic_<N>_add_all.*``. The generator draws from 1,024 clusters (12
sub-clusters each): once a method has about that many lists, its lists follow the generator's
clusters and recall at a small ``nprobe`` is far higher than on real text.

Writes ``benchmarks/results/partitions.md``, ``partitions.json`` and
``partitions_latency_vs_recall.png``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as `python benchmarks/bench_partitions.py`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, recall_at, set_threads, source_version
from benchmarks.datasets import ground_truth, load_embeddings, release_model

K = 10
NPROBES = (4, 8, 16, 32, 64, 96, 128, 192)
LARGE_NPROBES = (256, 384)  # also swept when there are more than 512 lists
HNSW_EFS = (16, 32, 64, 128)
ADD_BATCH = 10_000
#: code widths of the partitioned vecpress rows (4: the default)
LIST_BITS = (4, 2)


def _latency_ms(search, queries: np.ndarray) -> float:
    """Median wall time of one single-query call, in ms (after two warm-up calls)."""
    search(queries[:1])
    search(queries[1:2])
    times = []
    for q in range(len(queries)):
        start = time.perf_counter()
        search(queries[q:q + 1])
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _vecpress(base: np.ndarray, partitions: Any, add_batch: int = ADD_BATCH,
              bits: int = 4) -> tuple[Any, float]:
    """An index on disk (its originals memory-mapped, RAM holds the codes) built by batches
    of ``add_batch`` rows (0: one call). Lists are trained when the index first holds
    enough rows and again each time it doubles, so a build by batches ends with the
    lists of the last training (at 1M rows by 10k: trained at 524k, 1,024 lists), one call
    with the lists of its full size (1,024)."""
    import tempfile

    from vecpress import Index

    folder = tempfile.mkdtemp(prefix="vecpress-bench-partitions-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    index = Index(base.shape[1], bits=bits, partitions=partitions, path=Path(folder) / "store")
    start = time.perf_counter()
    step = add_batch or len(base)
    for lo in range(0, len(base), step):
        index.add(base[lo:lo + step])
    return index, time.perf_counter() - start


def _faiss(base: np.ndarray, description: str, lists: int) -> tuple[Any, float]:
    import faiss

    index = faiss.index_factory(base.shape[1], description.format(lists=lists),
                                faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    index.train(base)
    index.add(base)
    if "RFlat" in description:
        index.k_factor = 3
    return index, time.perf_counter() - start


def _faiss_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    faiss.extract_index_ivf(index).nprobe = nprobe


def _nprobes(lists: int) -> tuple[int, ...]:
    return NPROBES + LARGE_NPROBES if lists > 512 else NPROBES


#: one timed setting: an untimed setup (a peer's nprobe or ef, set on its shared object) and
#: the timed search of query number ``j`` alone
Timed = tuple[Callable[[], Any] | None, Callable[[int], Any]]


#: consecutive queries a setting answers in its turn when timed warm
WARM_BLOCK = 20


def _seconds(setting: Timed, j: int) -> float:
    """Wall time of one search of ``setting`` (query ``j``), its setup run first, untimed."""
    setup, search = setting
    if setup is not None:
        setup()
    start = time.perf_counter()
    search(j)
    return time.perf_counter() - start


def _blocked_p50_ms(settings: list[Timed], n_queries: int,
                    block: int = WARM_BLOCK) -> list[float]:
    """Median wall time in ms of one single-query call of each setting, warm: the settings
    take turns by blocks of ``block`` consecutive queries (after one untimed call), so each
    call finds the caches as its own previous call left them, as in a service that only
    searches, while a slow minute of a shared machine still falls on every setting alike."""
    times: list[list[float]] = [[] for _ in settings]
    for turn, first in enumerate(range(0, n_queries, block)):
        for k in range(len(settings)):
            i = (turn + k) % len(settings)
            _seconds(settings[i], first)  # (not kept: the switch from another setting)
            search_only = (None, settings[i][1])  # (its setup holds for the whole block)
            for j in range(first, min(first + block, n_queries)):
                times[i].append(_seconds(search_only, j))
    return [1e3 * float(np.median(t)) for t in times]


def _interleaved_p50_ms(settings: list[Timed], n_queries: int) -> list[float]:
    """Median wall time in ms of one single-query call of each setting over ``n_queries``
    queries, cold: the settings take turns query by query (each query's turn starting one
    setting later), so every call follows another method's search, which has evicted much
    of what this one's previous call left in the caches (as when a service runs other work,
    an embedding model or an LLM call, between its searches)."""
    for setting in settings:
        for j in range(min(2, n_queries)):
            _seconds(setting, j)  # (two warm-up calls each, not kept)
    times: list[list[float]] = [[] for _ in settings]
    for j in range(n_queries):
        for turn in range(len(settings)):
            i = (j + turn) % len(settings)
            times[i].append(_seconds(settings[i], j))
    return [1e3 * float(np.median(t)) for t in times]


def measure(base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            latency_queries: int, hnsw: bool = True,
            add_batch: int = ADD_BATCH) -> list[dict[str, Any]]:
    """Every method's rows (one per nprobe) on ``base``: every index is built first, then
    their latencies are timed warm (:func:`_blocked_p50_ms`) and cold
    (:func:`_interleaved_p50_ms`)."""
    import faiss

    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    rows: list[dict[str, Any]] = []
    timed: list[Timed] = []  # (timed[i] measures rows[i])

    flat, seconds = _vecpress(base, None, add_batch)
    rows.append({"method": "vecpress flat (4-bit saq + rerank)", "lists": 0, "nprobe": "-",
                 "recall@10": recall_at(flat.search(queries, K)[1], truth),
                 "build_s": seconds, "ram_b_per_vector": flat.stats()["ram_bytes"] / len(base)})
    timed.append((None, lambda j: flat.search(queries[j:j + 1], K)))

    for bits in LIST_BITS:
        lists, seconds = _vecpress(base, "auto", add_batch, bits)
        stats = lists.stats()
        ram = stats["ram_bytes"] / len(base)
        for nprobe in [None, *_nprobes(stats["lists"])]:
            if nprobe is not None and nprobe > stats["lists"]:
                continue
            found = lists.search(queries, K, nprobe=nprobe)[1]
            rows.append({"method": f"vecpress lists ({bits}-bit saq + rerank)",
                         "lists": stats["lists"],
                         "nprobe": f"{stats['nprobe']} (default)" if nprobe is None else nprobe,
                         "recall@10": recall_at(found, truth),
                         "build_s": seconds, "ram_b_per_vector": ram})
            timed.append((None, lambda j, n=nprobe, i=lists: i.search(queries[j:j + 1], K,
                                                                        nprobe=n)))
        n_lists = max(1, stats["lists"])

    for description, label in (("IVF{lists},RaBitQ4,RFlat", "faiss IVF,RaBitQ4,RFlat x3"),
                               ("IVF{lists},Flat", "faiss IVF,Flat (float32)")):
        index, seconds = _faiss(unit, description, n_lists)
        path = RESULTS / "_partitions_faiss.index"
        faiss.write_index(index, str(path))
        ram = path.stat().st_size / len(base)
        path.unlink()
        for nprobe in _nprobes(n_lists):
            if nprobe > n_lists:
                continue
            _faiss_nprobe(index, nprobe)
            found = index.search(unit_queries, K)[1]
            rows.append({"method": label, "lists": n_lists, "nprobe": nprobe,
                         "recall@10": recall_at(found, truth),
                         "build_s": seconds, "ram_b_per_vector": ram})
            timed.append((lambda i=index, n=nprobe: _faiss_nprobe(i, n),
                          lambda j, i=index: i.search(unit_queries[j:j + 1], K)))
    if hnsw:
        hnsw_rows, hnsw_timed = _hnswlib_rows(unit, unit_queries, truth)
        rows += hnsw_rows
        timed += hnsw_timed
    n_timed = min(latency_queries, len(queries))
    warm = _blocked_p50_ms(timed, n_timed)
    cold = _interleaved_p50_ms(timed, n_timed)
    for row, warm_ms, cold_ms in zip(rows, warm, cold):
        row["p50_ms"], row["p50_cold_ms"] = warm_ms, cold_ms
    return rows


def _hnswlib_rows(unit: np.ndarray, unit_queries: np.ndarray,
                  truth: np.ndarray) -> tuple[list[dict[str, Any]], list[Timed]]:
    import hnswlib

    rows, timed = [], []
    graph = hnswlib.Index(space="ip", dim=unit.shape[1])
    graph.init_index(max_elements=len(unit), M=16, ef_construction=128)
    start = time.perf_counter()
    graph.add_items(unit, np.arange(len(unit)), num_threads=2)
    seconds = time.perf_counter() - start
    path = RESULTS / "_partitions_hnswlib.bin"
    graph.save_index(str(path))
    ram = path.stat().st_size / len(unit)
    path.unlink()
    for ef in HNSW_EFS:
        graph.set_ef(ef)
        found = graph.knn_query(unit_queries, k=K, num_threads=1)[0]
        rows.append({"method": "hnswlib M=16 (float32 graph)", "lists": 0, "nprobe": f"ef={ef}",
                     "recall@10": recall_at(found, truth),
                     "build_s": seconds, "ram_b_per_vector": ram})
        timed.append((lambda e=ef: graph.set_ef(e),
                      lambda j: graph.knn_query(unit_queries[j:j + 1], k=K, num_threads=1)))
    return rows, timed


def crossover(base: np.ndarray, queries: np.ndarray, sizes: list[int],
              latency_queries: int) -> list[dict[str, Any]]:
    """Flat against lists (default nprobe) on the first ``n`` rows, for each size."""
    out = []
    for n in sizes:
        part = base[:n]
        truth = ground_truth(part, queries, K, "cosine")[1]
        row = {"n": n}
        for name, setting in (("flat", None), ("lists", max(16, int(np.sqrt(n))))):
            index, _ = _vecpress(part, setting)
            row[f"{name}_recall@10"] = recall_at(index.search(queries, K)[1], truth)
            row[f"{name}_p50_ms"] = _latency_ms(lambda q: index.search(q, K),
                                                queries[:latency_queries])
            if name == "lists":
                row["nprobe"] = f"{index.stats()['nprobe']}/{index.stats()['lists']}"
        out.append(row)
    return out


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The first run's rows, each with the median of the runs' p50 latencies, warm and cold
    (every run measures the same methods and settings in the same order), and the runs' p50s
    beside them."""
    rows = []
    for same in zip(*runs):
        row = dict(same[0])
        for key in ("p50_ms", "p50_cold_ms"):
            if key not in row:
                continue
            row[key] = float(np.median([r[key] for r in same]))
            if len(same) > 1:
                row[f"{key}_runs"] = [r[key] for r in same]
        rows.append(row)
    return rows


#: the peer the vecpress curves are compared with at equal recall, and the lowest recall
#: compared (issue #14: at or left of it at every recall >= 0.9)
PEER = "faiss IVF,RaBitQ4,RFlat x3"
RECALL_FLOOR = 0.9


def equal_recall_ratios(runs: list[list[dict[str, Any]]], method: str, peer: str = PEER,
                        floor: float = RECALL_FLOOR) -> list[dict[str, Any]]:
    """``method``'s latency over ``peer``'s at each recall of the peer's sweep (from
    ``floor`` up to the method's best), warm and cold: within each run, the method's p50 at
    that recall from its own sweep (log-linear between its two nearest settings, its default
    setting left out), over the peer's p50 in the same run. Reported as the median of the
    runs' ratios, with each run's: the settings of one run are timed side by side, so a ratio
    within a run survives the machine's speed changing between runs, which a ratio of two
    medians over runs does not."""
    out = []
    for r_peer in (r for r in runs[0] if r["method"] == peer):
        recall = r_peer["recall@10"]
        warm, cold = [], []
        for run in runs:
            own = sorted((r["recall@10"], r["p50_ms"], r["p50_cold_ms"]) for r in run
                         if r["method"] == method and "default" not in str(r["nprobe"]))
            if not own or not floor <= recall <= own[-1][0]:
                break
            at = [np.exp(np.interp(recall, [o[0] for o in own], np.log([o[i] for o in own])))
                  for i in (1, 2)]
            same = next(r for r in run if r["method"] == peer and r["nprobe"] == r_peer["nprobe"])
            warm.append(float(at[0] / same["p50_ms"]))
            cold.append(float(at[1] / same["p50_cold_ms"]))
        if len(warm) == len(runs):
            out.append({"method": method, "recall@10": recall, "peer_nprobe": r_peer["nprobe"],
                        "warm": float(np.median(warm)), "cold": float(np.median(cold)),
                        "warm_runs": warm, "cold_runs": cold})
    return out


def markdown(rows: list[dict[str, Any]], cross: list[dict[str, Any]], header: str,
             ratios: list[dict[str, Any]] | None = None) -> str:
    lines = [header, "",
             "| method | lists | nprobe | recall@10 | p50 ms warm | p50 ms cold | build s | "
             "RAM B/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cold = f"{r['p50_cold_ms']:.2f}" if "p50_cold_ms" in r else "-"
        lines.append(f"| {r['method']} | {r['lists'] or '-'} | {r['nprobe']} | "
                     f"{r['recall@10']:.4f} | {r['p50_ms']:.2f} | {cold} | "
                     f"{r['build_s']:.1f} | {r['ram_b_per_vector']:.1f} |")
    if ratios:
        lines += ["", f"At equal recall: vecpress's latency over {PEER}'s at the recall of each "
                  f"of its settings (the median over runs of each run's ratio; below 1: "
                  f"vecpress is faster).", "",
                  "| method | recall@10 | peer nprobe | ratio warm | ratio cold | runs warm | "
                  "runs cold |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for r in ratios:
            lines.append(f"| {r['method']} | {r['recall@10']:.4f} | {r['peer_nprobe']} | "
                         f"{r['warm']:.2f} | {r['cold']:.2f} | "
                         f"{' '.join(f'{x:.2f}' for x in r['warm_runs'])} | "
                         f"{' '.join(f'{x:.2f}' for x in r['cold_runs'])} |")
    if cross:
        lines += ["", "Crossover: flat scan against lists at the calibrated nprobe, on "
                  "prefixes of the corpus (sqrt(n) lists).", "",
                  "| n | flat recall@10 | flat p50 ms | lists nprobe | lists recall@10 | "
                  "lists p50 ms |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in cross:
            lines.append(f"| {c['n']:,} | {c['flat_recall@10']:.4f} | {c['flat_p50_ms']:.2f} | "
                         f"{c['nprobe']} | {c['lists_recall@10']:.4f} | {c['lists_p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        items = sorted((r for r in rows if r["method"] == method), key=lambda r: r["recall@10"])
        ax.plot([r["recall@10"] for r in items], [r["p50_ms"] for r in items], marker="o",
                label=method, linestyle="-" if method.startswith("vecpress") else "--")
        for r in items:
            ax.annotate(str(r["nprobe"]).split(" ")[0].replace("ef=", ""),
                        (r["recall@10"], r["p50_ms"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact")
    ax.set_ylabel("single-query latency p50, warm, 1 thread (ms, log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--crossover", type=int, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="N synthetic vectors (bench_scale's generator) instead of the corpus")
    parser.add_argument("--no-hnswlib", action="store_true", help="leave hnswlib out")
    parser.add_argument("--add-batch", type=int, default=ADD_BATCH, metavar="ROWS",
                        help="vecpress adds the vectors this many at a time (0: in one call, "
                             "so its lists are trained at the full size)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure N times and report each row's median p50 (a noisy "
                             "machine's p50s can differ by 20-80%% between runs)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plot from the --out folder's partitions.json")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give 1 or more runs")
    if args.replot:
        saved = json.loads((args.out / "partitions.json").read_text())
        plot(saved["rows"], saved["header"][:110] + "...",
             args.out / "partitions_latency_vs_recall.png")
        return
    set_threads(1)
    if args.synthetic:
        from benchmarks.bench_scale import SyntheticEmbeddings, load_spectrum

        generator = SyntheticEmbeddings(load_spectrum())
        base = np.concatenate(list(generator.stream(args.synthetic)))
        queries = generator.queries(args.queries)
        stem = f"partitions_synthetic_{args.synthetic}"
        header = (f"Synthetic 384-d vectors (bench_scale's generator, fitted to the WordNet "
                  f"MiniLM spectrum, clusters and neighbour similarities; recall compares "
                  f"methods on the same vectors, not real text), {args.synthetic:,} indexed, "
                  f"{args.queries:,} queries from the generator, k={K}, 1 thread; vecpress: "
                  f"{source_version()}; {machine()}")
    else:
        base, queries, _, _ = load_embeddings(args.base, args.queries)
        release_model()
        stem = "partitions"
        header = (f"WordNet glosses, all-MiniLM-L6-v2 (384-d, cosine), {args.base:,} indexed, "
                  f"{args.queries:,} held-out glosses as queries, k={K}, 1 thread; vecpress: "
                  f"{source_version()}; {machine()}")
    if args.add_batch != ADD_BATCH:
        stem += f"_add_{args.add_batch or 'all'}"
    header += ("; vecpress added the vectors in one call" if not args.add_batch else
               f"; vecpress added the vectors {args.add_batch:,} at a time")
    truth = ground_truth(base, queries, K, "cosine")[1]
    runs = [measure(base, queries, truth, args.latency_queries, hnsw=not args.no_hnswlib,
                    add_batch=args.add_batch) for _ in range(args.repeat)]
    rows = median_rows(runs)
    ratios = [ratio for bits in LIST_BITS for ratio in equal_recall_ratios(
        runs, f"vecpress lists ({bits}-bit saq + rerank)")]
    if args.repeat > 1:
        header += f"; p50 ms: the median of {args.repeat} runs (builds included)"
    cross = crossover(base, queries, args.crossover, args.latency_queries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(markdown(rows, cross, header, ratios))
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"header": header, "rows": rows, "crossover": cross, "equal_recall": ratios},
        indent=1))
    plot(rows, header[:110] + "...", args.out / f"{stem}_latency_vs_recall.png")
    print(markdown(rows, cross, header, ratios))


if __name__ == "__main__":
    main()
