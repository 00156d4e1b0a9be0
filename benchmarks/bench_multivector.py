"""Multi-vector retrieval on WordNet glosses with all-MiniLM-L6-v2 token embeddings.

Reference: exact MaxSim (Chamfer) by brute force over every document's tokens. Compared side
by side, each as "candidates, then exact MaxSim rerank from the tokens":

1. MUVERA FDE + rerank: ``MultiVectorCollection`` (FDE codes in the quantized Index, tokens
   float16 on disk), and the float32 FDE inner product for the quantization's share;
2. token heuristic: each query token's ``k'`` nearest document tokens (exact inner products,
   the heuristic's best case), the union of their documents reranked;
3. mean-pooled single vectors (MiniLM's own sentence embedding) + rerank.

For each: recall@10 against the exact top 10 as a function of the candidates reranked, the
candidates needed for recall 0.95, latency, RAM (codes and fixed matrices apart) and disk per
document; nDCG@10 on the labelled WordNet synonym queries (``benchmarks.wordnet_queries``).
A float32 section measures the encoding's variants one change at a time (the previous
default, the orthogonal projection, bucket normalisation, empty-bucket filling, a mean block),
which is where the defaults come from.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_multivector          # ~10 min on 2 cores
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_multivector --quick  # 4k documents
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import RESULTS, machine
from benchmarks.datasets import CACHE_DIR
from benchmarks.multivector_data import N_BASE, load_token_benchmark
from benchmarks.wordnet_queries import ndcg_at
from vecpress.multivector import FDEConfig, FDEEncoder, MultiVectorCollection, maxsim_brute_force, maxsim_scores

CANDIDATES = (10, 25, 40, 50, 65, 80, 100, 150, 200, 400, 800)
PER_TOKEN = (1, 2, 4, 8, 16, 32, 64, 128)
TARGET = 0.95


def flat(matrices: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(matrices), np.concatenate([[0], np.cumsum([len(m) for m in matrices])])


def exact_top10(queries, tokens, offsets, name: str) -> np.ndarray:
    path = CACHE_DIR / f"maxsim-top10__{name}__{len(queries)}x{len(offsets) - 1}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    top = np.array([maxsim_brute_force(q, tokens, offsets, 10)[1] for q in queries])
    print(f"exact MaxSim ({name}): {(time.perf_counter() - started) / len(queries) * 1e3:.0f} ms/query",
          file=sys.stderr)
    np.save(path, top)
    return top


def recall_of(shortlists: list[np.ndarray], truth: np.ndarray) -> float:
    """Recall@10 after an exact rerank of each shortlist: the true top 10 found in it."""
    return float(np.mean([len(set(t.tolist()) & set(s.tolist())) / 10 for s, t in zip(shortlists, truth)]))


def needed(points: list[tuple[float, float]]) -> float | None:
    """Candidates for recall TARGET, interpolated on log(candidates) between measured points."""
    points = sorted(points)
    for (c0, r0), (c1, r1) in zip(points, points[1:]):
        if r0 >= TARGET:
            return c0
        if r1 >= TARGET:
            t = (TARGET - r0) / (r1 - r0)
            return float(np.exp(np.log(c0) + t * (np.log(c1) - np.log(c0))))
    return points[-1][0] if points and points[-1][1] >= TARGET else None


def token_heuristic(queries, tokens, owner, per_token: tuple[int, ...]) -> list[list[np.ndarray]]:
    """For each ``per_token`` value, each query's shortlist: the documents owning any of its
    tokens' ``per_token`` nearest document tokens (exact inner products)."""
    out: list[list[np.ndarray]] = [[] for _ in per_token]
    widest = max(per_token)
    for query in queries:
        sims = query @ tokens.T
        nearest = np.argpartition(-sims, widest - 1, axis=1)[:, :widest]
        nearest = np.take_along_axis(nearest, np.argsort(-np.take_along_axis(sims, nearest, 1), 1), 1)
        for slot, p in enumerate(per_token):
            out[slot].append(np.unique(owner[nearest[:, :p]]))
    return out


TIMED = True


def median_ms(function, items) -> float:
    if not TIMED:
        return float("nan")
    times = []
    for item in items:
        started = time.perf_counter()
        function(item)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


#: float32 variants: changes from the default, one at a time (the first is the previous default)
VARIANTS = {
    "previous default: 40 x 4 x 16 = 2,560 d, sign sketch, plain averages, empty buckets filled":
        dict(repetitions=40, projection="sign", normalize_buckets=False, fill_empty=True),
    "24 x 4 x 16, sign sketch, plain averages, filled":
        dict(projection="sign", normalize_buckets=False, fill_empty=True),
    "24 x 4 x 16, orthogonal, plain averages, filled": dict(normalize_buckets=False, fill_empty=True),
    "24 x 4 x 16, sign sketch, unit buckets, filled": dict(projection="sign", fill_empty=True),
    "24 x 4 x 16, orthogonal, unit buckets, filled": dict(fill_empty=True),
    "default: 24 x 4 x 16 = 1,536 d, orthogonal, unit buckets, empty ones left empty": {},
    "40 x 4 x 16 = 2,560 d, orthogonal, unit buckets": dict(repetitions=40),
    "24 x 2 x 16 = 768 d (1 SimHash bit), orthogonal, unit buckets": dict(simhash_bits=1),
    "16 x 4 x 16 = 1,024 d, orthogonal, unit buckets": dict(repetitions=16),
}
#: weight of the mean block tried beside the default (FDE + alpha * R * <sum q, unit mean of D>)
MEAN_BLOCK_ALPHA = 0.5


def float32_curves(tokens, offsets, queries, truth, dim: int) -> dict[str, list[tuple[float, float]]]:
    """Recall@10 against candidates for each variant's float32 FDE (no quantization)."""
    curves = {}
    query_tokens, query_offsets = flat(queries)
    for name, change in VARIANTS.items():
        config = FDEConfig(dim=dim, **change)
        encoder = FDEEncoder(config)
        scores = encoder.encode_queries(query_tokens, query_offsets) @ encoder.encode_documents(tokens, offsets).T
        curves[f"FDE float32: {name}"] = curve_of(scores, truth)
        if not change:
            means = np.add.reduceat(tokens, offsets[:-1], axis=0)
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
            query_sums = np.add.reduceat(query_tokens, query_offsets[:-1], axis=0)
            mixed = scores + MEAN_BLOCK_ALPHA * config.repetitions * (query_sums @ means.T)
            curves[f"FDE float32: default + mean block (alpha {MEAN_BLOCK_ALPHA})"] = curve_of(mixed, truth)
        print(f"{name}: needs {needed(curves[f'FDE float32: {name}'])}", file=sys.stderr, flush=True)
    return curves


def curve_of(scores: np.ndarray, truth: np.ndarray) -> list[tuple[float, float]]:
    order = np.argsort(-scores, axis=1)[:, :max(CANDIDATES)]
    return [(c, recall_of([o[:c] for o in order], truth)) for c in CANDIDATES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4k documents, 100 queries")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--no-variants", action="store_true", help="skip the float32 variants")
    parser.add_argument("--no-latency", action="store_true",
                        help="recall, RAM and nDCG only (no timing, so no need of the benchmark lock)")
    args = parser.parse_args()
    global TIMED
    TIMED = not args.no_latency
    n_base = 4000 if args.quick else N_BASE
    n_queries = 100 if args.quick else args.queries

    texts, sentence, base_tokens, _, query_vectors, query_tokens, labelled, labelled_tokens = load_token_benchmark()
    docs = base_tokens.matrices()[:n_base]
    sentence = np.asarray(sentence[:n_base])
    queries = query_tokens.matrices()[:n_queries]
    query_vectors = np.asarray(query_vectors[:n_queries])
    relevant = [r[r < n_base] for r in labelled.relevant]
    keep = [i for i, r in enumerate(relevant) if len(r)]
    labelled_queries = [labelled_tokens.matrices()[i] for i in keep]
    labelled_relevant = [relevant[i] for i in keep]
    labelled_vectors = labelled.vectors[keep]
    tokens, offsets = flat(docs)
    owner = np.repeat(np.arange(n_base), np.diff(offsets))
    mean_tokens = float(np.mean(np.diff(offsets)))
    truth = exact_top10(queries, tokens, offsets, "gloss-queries")
    print(f"{n_base} documents, {len(tokens)} tokens ({mean_tokens:.1f} per document), "
          f"{n_queries} held-out gloss queries", file=sys.stderr)

    results: dict = {"documents": n_base, "tokens": int(len(tokens)), "queries": n_queries,
                     "machine": machine(), "curves": {}, "latency_ms": {}, "ndcg10": {}}
    exact_ms = median_ms(lambda q: maxsim_brute_force(q, tokens, offsets, 10), queries[:10])
    results["latency_ms"]["exact MaxSim brute force"] = exact_ms

    # 1. MUVERA through the store
    config = FDEConfig(dim=tokens.shape[1])
    with tempfile.TemporaryDirectory() as directory:
        store = MultiVectorCollection(tokens.shape[1], path=Path(directory) / "mv", bits=args.bits,
                                      durability="process")
        started = time.perf_counter()
        for start in range(0, n_base, 2000):
            part = range(start, min(n_base, start + 2000))
            store.upsert([str(i) for i in part], [docs[i] for i in part], texts=[texts[i] for i in part])
        build_s = time.perf_counter() - started
        stats = store.stats()
        load_after_build = os.getloadavg()[0]
        curve = []
        for candidates in CANDIDATES:
            found = [np.array([int(h.id) for h in store.search(q, k=10, candidates=candidates)]) for q in queries]
            curve.append((candidates, recall_of(found, truth)))
            results["latency_ms"][f"MUVERA store, {candidates} candidates"] = median_ms(
                lambda q: store.search(q, k=10, candidates=candidates), queries[:50])
        results["curves"]["MUVERA FDE (store, %d-bit codes)" % args.bits] = curve
        ndcg_found = [[int(h.id) for h in store.search(q, k=10, candidates=store.candidates)]
                      for q in labelled_queries]
        results["ndcg10"][f"MUVERA store ({store.candidates} candidates) + MaxSim"] = ndcg_at(
            np.array(ndcg_found), labelled_relevant)
        disk = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
        store.close()
    results["build_s"] = build_s
    results["fde"] = config.to_dict() | {"output_dim": config.output_dim}
    results["load_after_build"] = load_after_build
    float32_tokens = mean_tokens * tokens.shape[1] * 4
    per_document = stats["ram_bytes"] / n_base
    results["memory"] = {
        "float32 tokens per document": float32_tokens,
        "FDE code bytes per document (codes only)": stats["code_bytes"],
        "RAM per document, per-row part (codes, factors, ids)": stats["ram_bytes_per_vector"],
        "RAM fixed bytes: codec state (projection, centroid)": stats["ram_fixed_bytes"] - stats["fde_fixed_bytes"],
        "RAM fixed bytes: FDE encoder matrices": stats["fde_fixed_bytes"],
        f"RAM per document at {n_base} documents, fixed matrices included": per_document,
        f"float32 tokens / RAM per document at {n_base}": float32_tokens / per_document,
        "disk bytes per document": disk / n_base,
        "token file bytes per document": stats["token_disk_bytes"] / n_base,
    }

    if not args.no_variants:
        results["curves"].update(float32_curves(tokens, offsets, queries, truth, tokens.shape[1]))

    # 2. token heuristic (exact token neighbours)
    curve = []
    for shortlists in token_heuristic(queries, tokens, owner, PER_TOKEN):
        curve.append((float(np.mean([len(s) for s in shortlists])), recall_of(shortlists, truth)))
    results["curves"]["token heuristic (exact per-token kNN)"] = curve
    per_token = next((p for p, (_, r) in zip(PER_TOKEN, curve) if r >= TARGET), PER_TOKEN[-1])

    def heuristic_search(q):
        shortlist = token_heuristic([q], tokens, owner, (per_token,))[0][0]
        lo = offsets[shortlist]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, offsets[shortlist + 1])])
        return maxsim_scores(q, tokens[rows], np.concatenate([[0], np.cumsum(offsets[shortlist + 1] - lo)]))
    results["latency_ms"][f"token heuristic, {per_token} per token (numpy brute force)"] = median_ms(
        heuristic_search, queries[:20])

    # 3. mean-pooled single vectors
    order = np.argsort(-(query_vectors @ sentence.T), axis=1)
    results["curves"]["mean-pooled MiniLM vector"] = [(c, recall_of([o[:c] for o in order], truth))
                                                      for c in CANDIDATES]

    # nDCG@10 on labelled synonym queries
    exact_found = [maxsim_brute_force(q, tokens, offsets, 10)[1] for q in labelled_queries]
    results["ndcg10"]["exact MaxSim (brute force)"] = ndcg_at(np.array(exact_found), labelled_relevant)
    single = np.argsort(-(labelled_vectors @ sentence.T), axis=1)[:, :10]
    results["ndcg10"]["single-vector MiniLM (exact cosine)"] = ndcg_at(single, labelled_relevant)
    results["needed_for_recall_0.95"] = {name: needed(curve) for name, curve in results["curves"].items()}
    write(results, "multivector_quick" if args.quick else "multivector")


def write(results: dict, name: str) -> None:
    results["latency_ms"] = {key: value for key, value in results["latency_ms"].items() if value == value}
    lines = [f"# Multi-vector retrieval: {results['documents']} WordNet glosses, all-MiniLM-L6-v2 tokens",
             "", f"{results['tokens']} document tokens; {results['queries']} held-out gloss queries; "
             f"reference = exact MaxSim top 10. Machine: {results['machine']} (shared with other jobs; "
             f"load average {results['load_after_build']:.1f} after the build).",
             f"FDE: {results['fde']}; store built in {results['build_s']:.0f} s.", "",
             "## Recall@10 against candidates reranked by exact MaxSim", "",
             "| method | " + " | ".join("cand / recall" for _ in range(len(CANDIDATES))) + " |",
             "| --- |" + " --- |" * len(CANDIDATES)]
    for method, curve in results["curves"].items():
        lines.append(f"| {method} | " + " | ".join(f"{c:.0f} / {r:.3f}" for c, r in curve) + " |")
    lines += ["", f"## Candidates needed for recall@10 >= {TARGET}", "", "| method | candidates |", "| --- | --- |"]
    for method, value in results["needed_for_recall_0.95"].items():
        lines.append(f"| {method} | {'not reached' if value is None else f'{value:.0f}'} |")
    heuristic = results["needed_for_recall_0.95"].get("token heuristic (exact per-token kNN)")
    if heuristic:
        lines += ["", f"Target: at most half the token heuristic's candidates, {heuristic / 2:.0f}."]
    lines += ["", "## Latency per query (median)", "", "| search | ms |", "| --- | --- |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in results["latency_ms"].items()]
    if not results["latency_ms"]:
        lines += ["| not measured in this run (--no-latency) | |"]
    lines += ["", "## Memory and disk", "", "| quantity | bytes |", "| --- | --- |"]
    lines += [f"| {name} | {value:,.1f} |" if value < 100 else f"| {name} | {value:,.0f} |"
              for name, value in results["memory"].items() if value is not None]
    lines += ["", "## nDCG@10 on labelled WordNet synonym queries", "", "| method | nDCG@10 |", "| --- | --- |"]
    lines += [f"| {name} | {value:.3f} |" for name, value in results["ndcg10"].items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
