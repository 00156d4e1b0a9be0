"""Filtered search: vecpress ``Collection`` (filter -> row mask -> scan) against LangChain's FAISS
wrapper (search ``fetch_k=20`` then drop what the filter rejects), on real embeddings.

Data: WordNet glosses embedded with all-MiniLM-L6-v2 (``benchmarks/datasets.py``), queries held
out of the base. Each document gets a synthetic attribute ``bucket``, uniform in 0..999, so
``{"bucket": {"$lt": t}}`` keeps t/1000 of the documents: 50%, 5% and 0.1%. The same dict goes
to both stores. Ground truth is the exact inner-product top-10 among the documents the filter
keeps. Reported per selectivity and method: recall@10, median and 95th-percentile latency of
one query (wall clock, and CPU time of the process, which a busy machine does not inflate),
and how many queries got fewer than 10 hits.

Rows:
- ``vecpress (filter cold)``: the filter is evaluated for every query (filter cache off);
- ``vecpress (filter cached)``: the same filter repeated, so its row mask is reused — the case
  of a fixed tenant/user/source filter;
- ``LangChain FAISS wrapper``: ``langchain_community.vectorstores.FAISS`` over ``IndexFlatIP``
  (exact scores), ``similarity_search_with_score_by_vector(k=10, filter=..., fetch_k=20)``;
- ``FAISS flat + IDSelector``: FAISS's own pre-filter (exact scan of the allowed ids), with the
  selector built once per filter — a reference for what exact pre-filtering costs.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_filters            # 100k base, 300 queries
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_filters --quick    # 50k base, 100 queries

Writes ``benchmarks/results/filters.md`` and ``filters.json`` (``filters_quick.*`` for --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as `python benchmarks/bench_filters.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import machine, set_threads
from benchmarks.datasets import load_embeddings

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
FETCH_K = 20  # LangChain FAISS default
SELECTIVITIES = {"50%": 500, "5%": 50, "0.1%": 1}  # bucket threshold out of 1000


def filtered_truth(base: np.ndarray, queries: np.ndarray, allowed: np.ndarray) -> list[np.ndarray]:
    rows = np.nonzero(allowed)[0]
    scores = queries @ base[rows].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return [rows[t] for t in top]


def run_queries(search: Callable[[np.ndarray], list[int]], queries: np.ndarray,
                truth: list[np.ndarray]) -> dict[str, Any]:
    search(queries[0])  # warm caches and compiled code
    times, cpu_times, recalls, short = [], [], [], 0
    for query, expected in zip(queries, truth):
        start, start_cpu = time.perf_counter(), time.process_time()
        found = search(query)
        cpu_times.append(time.process_time() - start_cpu)
        times.append(time.perf_counter() - start)
        recalls.append(len(set(found) & set(expected.tolist())) / len(expected))
        short += len(found) < K
    return {"recall@10": float(np.mean(recalls)), "median_ms": float(np.median(times) * 1000),
            "p95_ms": float(np.percentile(times, 95) * 1000),
            "median_cpu_ms": float(np.median(cpu_times) * 1000), "short_queries": int(short),
            "queries": len(queries)}


def build_vecpress(base: np.ndarray, texts: list[str], buckets: np.ndarray, path: Path) -> float:
    from vecpress import Collection

    col = Collection(base.shape[1], path=path, metric="cosine")
    start = time.perf_counter()
    for lo in range(0, len(base), 10_000):
        hi = min(len(base), lo + 10_000)
        col.upsert([str(i) for i in range(lo, hi)], base[lo:hi], texts=texts[lo:hi],
                   metadatas=[{"bucket": int(b)} for b in buckets[lo:hi]])
    seconds = time.perf_counter() - start
    col.close()
    return seconds


def build_langchain_faiss(base: np.ndarray, texts: list[str], buckets: np.ndarray):
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_core.documents import Document
    from langchain_core.embeddings import FakeEmbeddings

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    docstore = InMemoryDocstore({str(i): Document(page_content=t, metadata={"bucket": int(b)},
                                                  id=str(i))
                                 for i, (t, b) in enumerate(zip(texts, buckets))})
    return FAISS(embedding_function=FakeEmbeddings(size=base.shape[1]), index=index,
                 docstore=docstore, index_to_docstore_id={i: str(i) for i in range(len(base))},
                 distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT), index


def main(argv: list[str] | None = None) -> None:
    import faiss

    from vecpress import Collection

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", dest="n_base", type=int, default=100_000)
    parser.add_argument("--queries", dest="n_queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1,
                        help="numba and FAISS threads for the timed queries (default 1)")
    parser.add_argument("--quick", action="store_true", help="50k base, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_base, args.n_queries = 50_000, 100
    suffix = "_quick" if args.quick else ""
    header = machine()

    base, queries, base_texts, _ = load_embeddings(args.n_base, args.n_queries, seed=0,
                                                   progress=False)
    buckets = np.random.default_rng(0).integers(0, 1000, len(base))
    print(f"{len(base):,} base, {len(queries)} queries, dim {base.shape[1]}; {header}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="vecpress-bench-filters-"))
    ingest = build_vecpress(base, base_texts, buckets, workdir / "col")
    print(f"vecpress ingest: {ingest:.1f} s ({len(base) / ingest:,.0f} docs/s)", flush=True)
    cold = Collection.open(workdir / "col", read_only=True)  # read-only: no filter cache
    warm = Collection.open(workdir / "col")
    lc_store, flat = build_langchain_faiss(base, base_texts, buckets)
    set_threads(args.threads)

    def ids_of(hits) -> list[int]:
        return [int(h.id) for h in hits]

    rows = []
    for label, threshold in SELECTIVITIES.items():
        allowed = buckets < threshold
        where = {"bucket": {"$lt": threshold}}
        truth = filtered_truth(base, queries, allowed)
        selector = faiss.IDSelectorBatch(np.nonzero(allowed)[0].astype(np.int64))
        params = faiss.SearchParameters(sel=selector)
        methods = {
            "vecpress (filter cold)": lambda q: ids_of(cold.search(q, k=K, where=where)),
            "vecpress (filter cached)": lambda q: ids_of(warm.search(q, k=K, where=where)),
            "LangChain FAISS wrapper (fetch_k=20, post-filter)": lambda q: [
                int(d.id) for d, _ in lc_store.similarity_search_with_score_by_vector(
                    q.tolist(), k=K, filter=where, fetch_k=FETCH_K)],
            "FAISS flat + IDSelector (exact pre-filter)": lambda q: [
                int(i) for i in flat.search(q[None], K, params=params)[1][0] if i >= 0],
        }
        filter_times = []
        for _ in range(20):
            start = time.process_time()
            cold.count(where)
            filter_times.append(time.process_time() - start)
        for method, search in methods.items():
            row = {"selectivity": label, "kept": float(allowed.mean()), "method": method,
                   **run_queries(search, queries, truth)}
            if method.startswith("vecpress (filter cold)"):
                row["filter_ms"] = float(np.median(filter_times) * 1000)
            rows.append(row)
            print(f"  {label:>5} {method:<50} recall {row['recall@10']:.4f}  "
                  f"median {row['median_ms']:7.2f} ms (cpu {row['median_cpu_ms']:6.2f})  "
                  f"p95 {row['p95_ms']:7.2f} ms  "
                  f"<k: {row['short_queries']}/{row['queries']}", flush=True)
    cold.close()
    warm.close()

    lines = [f"{len(base):,} WordNet glosses (all-MiniLM-L6-v2, 384-d), {len(queries)} held-out "
             f"queries, k={K}, {args.threads} thread(s); filter `{{\"bucket\": {{\"$lt\": t}}}}` on a "
             f"uniform synthetic attribute; {header}. vecpress: bits=4, default oversample, "
             f"on disk; ingest {len(base) / ingest:,.0f} docs/s.", "",
             "| selectivity | method | recall@10 | median ms | median CPU ms | p95 ms | "
             "queries with < k hits |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        extra = (f" (filter {row['filter_ms']:.1f})" if "filter_ms" in row else "")
        lines.append(f"| {row['selectivity']} ({row['kept']:.2%}) | {row['method']} | "
                     f"{row['recall@10']:.4f} | {row['median_ms']:.2f} | "
                     f"{row['median_cpu_ms']:.2f}{extra} | {row['p95_ms']:.2f} | "
                     f"{row['short_queries']} / {row['queries']} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"filters{suffix}.md").write_text(table + "\n")
    (args.out / f"filters{suffix}.json").write_text(json.dumps(
        {"machine": header, "n_base": len(base), "n_queries": len(queries),
         "threads": args.threads, "ingest_docs_per_s": len(base) / ingest, "rows": rows},
        indent=1))


if __name__ == "__main__":
    main()
