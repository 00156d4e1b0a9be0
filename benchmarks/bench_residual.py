"""Residual codes or not: does encoding each vector relative to its list's mean pay?

FAISS's IVF codes encode ``x - centroid``; vecpress's lists group the codes of the whole-store
codec (one PCA and one centre for every row). This measures what residual codes would buy on
the real corpus, without building them into the index: for each held-out query, the rows of
its ``nprobe`` nearest lists are scored by

- ``global``: the store's codec (``SegmentCodec`` fitted on all rows), as the index scores them;
- ``residual``: a codec fitted on the residuals ``x - mean(list of x)``, plus the exact
  ``<q, mean>`` of each row's list (what a residual index would compute per list).

Reported per bit width and nprobe: the spread (std) of the estimate's error against the exact
inner product, the recall@10 of the codes alone within the probed rows, and how often the
exact top-10 of those rows lies in the codes' top 30 (what the default rerank, oversample 3,
needs). Accuracy only: no timings, so a busy machine does not change the figures.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_residual            # about 10 minutes

Writes ``benchmarks/results/residual.md`` and ``residual.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/bench_residual.py`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, source_version
from benchmarks.datasets import load_embeddings

K = 10
OVERSAMPLE = 3


def list_means(base: np.ndarray, labels: np.ndarray, n_lists: int) -> np.ndarray:
    """The mean of each list's rows (zeros for an empty list)."""
    sums = np.zeros((n_lists, base.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, base)
    return (sums / np.maximum(np.bincount(labels, minlength=n_lists), 1)[:, None]).astype(
        np.float32)


def compare(base: np.ndarray, queries: np.ndarray, bits: int, n_lists: int,
            nprobes: list[int], seed: int = 0) -> list[dict[str, float]]:
    """One row of figures per nprobe for codes of ``bits`` bits (see the module docstring)."""
    from vecpress.core import clustering
    from vecpress.core.codecs import SegmentCodec

    rng = np.random.default_rng(seed)
    sample = base[rng.choice(len(base), min(len(base), 64 * n_lists), replace=False)]
    centroids = clustering.train_centroids(sample, n_lists, "ip", seed=seed)
    labels = clustering.assign(base, centroids, "ip")
    means = list_means(base, labels, n_lists)
    whole = SegmentCodec(base.shape[1], bits, "ip")
    whole.fit(base)
    whole_codes, whole_factors = whole.encode(base)
    residuals = np.ascontiguousarray(base - means[labels])
    residual = SegmentCodec(base.shape[1], bits, "ip")
    residual.fit(residuals)
    residual_codes, residual_factors = residual.encode(residuals)
    order = np.argsort(-(queries @ centroids.T), axis=1)
    rows_out = []
    for nprobe in nprobes:
        figures = {name: {"error": [], "recall": [], "in_top": []} for name in ("global", "residual")}
        for q, query in enumerate(queries):
            rows = np.nonzero(np.isin(labels, order[q, :nprobe]))[0]
            exact = base[rows] @ query
            truth = set(rows[np.argsort(-exact, kind="stable")[:K]].tolist())
            estimates = {
                "global": whole.estimate(whole_codes[rows], whole_factors[rows], query[None])[0],
                "residual": residual.estimate(residual_codes[rows], residual_factors[rows],
                                              query[None])[0] + means[labels[rows]] @ query,
            }
            for name, estimate in estimates.items():
                ranked = rows[np.argsort(-estimate, kind="stable")]
                figures[name]["error"].append(float(np.std(estimate - exact)))
                figures[name]["recall"].append(len(truth & set(ranked[:K].tolist())) / K)
                figures[name]["in_top"].append(
                    len(truth & set(ranked[:K * OVERSAMPLE].tolist())) / K)
        row = {"bits": bits, "nprobe": nprobe}
        for name, values in figures.items():
            for key, series in values.items():
                row[f"{name}_{key}"] = float(np.mean(series))
        rows_out.append(row)
        print(f"bits {bits} nprobe {nprobe}: {row}", flush=True)
    return rows_out


def markdown(rows: list[dict[str, float]], header: str) -> str:
    lines = [header, "",
             "| bits | nprobe | error std, global | error std, residual | codes-only recall@10, "
             "global | codes-only recall@10, residual | top-10 within the codes' top-30, global "
             "| same, residual |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['bits']} | {r['nprobe']} | {r['global_error']:.4f} | "
                     f"{r['residual_error']:.4f} | {r['global_recall']:.4f} | "
                     f"{r['residual_recall']:.4f} | {r['global_in_top']:.4f} | "
                     f"{r['residual_in_top']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--lists", type=int, default=256)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 119])
    args = parser.parse_args(argv)
    base, queries, _, _ = load_embeddings(args.base, args.queries)
    rows = [row for bits in args.bits
            for row in compare(base, queries, bits, args.lists, args.nprobe)]
    header = (f"WordNet glosses, all-MiniLM-L6-v2 (384-d, cosine), {len(base):,} rows in "
              f"{args.lists} lists, {len(queries)} held-out glosses as queries; residual = codes "
              f"of x - mean(list); vecpress: {source_version()}; {machine()}")
    text = markdown(rows, header)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "residual.md").write_text(text)
    (RESULTS / "residual.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
