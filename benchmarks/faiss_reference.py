"""FAISS reference numbers on the WordNet-gloss embeddings, to calibrate vecpress against.

    HF_HUB_OFFLINE=1 python -m benchmarks.faiss_reference [--base 100000] [--queries 1000]

For each FAISS flat index: recall@10 against the exact inner-product top-10, recall@10 after an
exact rerank of the top ``k * oversample`` candidates (what vecpress does with its kept
originals), median single-query latency with 1 and 2 OpenMP threads, train + add time, and
bytes per vector (code size, and the serialized index divided by the count).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/faiss_reference.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import recall_at
from benchmarks.datasets import ground_truth, load_embeddings, load_wordnet_glosses


def _rabitq(nb_bits: int, qb: int):
    def build(faiss, dim):
        return faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT, nb_bits)

    def search_params(faiss):
        params = faiss.RaBitQSearchParameters()
        params.qb = qb
        return params

    return build, search_params


def _factory(description: str):
    def build(faiss, dim):
        return faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)

    return build, lambda faiss: None


def configurations(qbs: list[int]) -> list[tuple[str, object, object]]:
    configs = [("IndexFlatIP (float32)", *_factory("Flat"))]
    for nb_bits in (1, 2, 4, 8):
        for qb in qbs:
            label = f"IndexRaBitQ nb_bits={nb_bits}, qb={qb}" + (" (fp32 query)" if qb == 0 else "")
            configs.append((label, *_rabitq(nb_bits, qb)))
    configs += [
        ("IndexScalarQuantizer QT_4bit (SQ4)", *_factory("SQ4")),
        ("IndexScalarQuantizer QT_8bit (SQ8)", *_factory("SQ8")),
        ("IndexScalarQuantizer QT_fp16", *_factory("SQfp16")),
    ]
    return configs


def exact_rerank(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    reranked = np.empty((len(queries), k), dtype=np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates)):
        ids = ids[ids >= 0]
        scores = base[ids] @ query
        reranked[row] = ids[np.argsort(-scores, kind="stable")[:k]]
    return reranked


def median_latency_ms(faiss, index, queries: np.ndarray, k: int, params, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    index.search(queries[:1], k, params=params)  # warm up
    times = []
    for query in queries:
        query = query[None, :]
        started = time.perf_counter()
        index.search(query, k, params=params)
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--latency-queries", type=int, default=300, help="queries timed one by one")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--oversample", type=int, default=5, help="rerank the top k*oversample")
    parser.add_argument("--qb", type=int, nargs="+", default=[4, 8],
                        help="RaBitQ query bits to try; 4 is FAISS 1.15's default; 0 (fp32 query) is ~100x slower")
    args = parser.parse_args(argv)

    n_base = min(args.base, len(load_wordnet_glosses()) - args.queries)
    base, queries, _, _ = load_embeddings(n_base, args.queries)
    _, truth = ground_truth(base, queries, k=100, metric="ip")
    k, shortlist = args.k, args.k * args.oversample
    timed = queries[: args.latency_queries]
    print(f"faiss {faiss.__version__}; base {base.shape}, queries {queries.shape}, "
          f"metric inner product, k={k}, rerank shortlist {shortlist}, "
          f"latency = median over {len(timed)} single-query searches", flush=True)

    rows = []
    for label, build, make_params in configurations(args.qb):
        faiss.omp_set_num_threads(2)
        index = build(faiss, base.shape[1])
        params = make_params(faiss)
        started = time.perf_counter()
        index.train(base)
        index.add(base)
        encode_s = time.perf_counter() - started
        _, found = index.search(queries, shortlist, params=params)
        recall = recall_at(found, truth, k)
        recall_reranked = recall_at(exact_rerank(base, queries, found, k), truth, k)
        latency_1 = median_latency_ms(faiss, index, timed, k, params, threads=1)
        latency_2 = median_latency_ms(faiss, index, timed, k, params, threads=2)
        code_bytes = index.sa_code_size()
        serialized_bytes = len(faiss.serialize_index(index)) / index.ntotal
        rows.append((label, code_bytes, serialized_bytes, recall, recall_reranked, latency_1, latency_2, encode_s))
        print(f"  done: {label}", file=sys.stderr, flush=True)
        del index

    print()
    print(f"| index | code B/vec | serialized B/vec | recall@{k} | recall@{k} rerank {shortlist} "
          "| p50 ms (1 thr) | p50 ms (2 thr) | train+add s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, code_bytes, serialized_bytes, recall, reranked, latency_1, latency_2, encode_s in rows:
        print(f"| {label} | {code_bytes} | {serialized_bytes:.1f} | {recall:.3f} | {reranked:.3f} "
              f"| {latency_1:.2f} | {latency_2:.2f} | {encode_s:.2f} |")


if __name__ == "__main__":
    main()
