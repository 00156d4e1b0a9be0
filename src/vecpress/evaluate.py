"""How good and how fast is a store on its own data? (``vecpress bench STORE``)

Users choose ``bits`` and ``oversample`` on numbers from someone else's corpus; this measures
them on theirs. Queries are stored vectors picked at random (each one's own row is left out of
its answers), the reference is exact float32 search over the kept originals, and the store is
searched through its public ``Index.search``: once with the code scan alone (``oversample=1``,
what ``rerank=False`` would return) and once as configured (scan, then exact rerank). A
partitioned store is also searched at other ``nprobe`` values (a quarter, half and twice its
calibrated one, and every list), so users see what the knob buys on their data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .core.index import Index

#: stored vectors read per chunk for the exact reference (float32, so 64k x 384 = 100 MB)
REFERENCE_CHUNK = 65_536


@dataclass
class StoreBench:
    """Recall against exact search and median single-query latency, per search mode."""

    count: int
    dim: int
    queries: int
    k: int
    oversample: int
    recall_codes: float
    recall_rerank: float
    latency_ms_codes: float
    latency_ms_rerank: float
    ram_bytes_per_vector: float
    #: partitioned stores: lists, the calibrated nprobe, list sizes (min, median, max) and
    #: recall / latency (with the rerank) per nprobe tried; 0 and empty while flat
    lists: int = 0
    nprobe: int = 0
    list_rows: dict[str, int] = field(default_factory=dict)
    nprobe_sweep: list[dict[str, float]] = field(default_factory=list)

    def table(self) -> str:
        """A small Markdown table of the figures."""
        return "\n".join([
            f"{self.count:,} vectors, {self.queries} stored vectors as queries "
            f"(their own row left out), recall@{self.k} against exact float32 search",
            "",
            "| search | recall@k | median latency (ms) |",
            "| --- | ---: | ---: |",
            f"| codes only (oversample 1) | {self.recall_codes:.4f} | {self.latency_ms_codes:.2f} |",
            f"| codes + exact rerank (oversample {self.oversample}) | {self.recall_rerank:.4f} | "
            f"{self.latency_ms_rerank:.2f} |",
            "",
            f"RAM: {self.ram_bytes_per_vector:,.1f} B per vector (codes and per-row data, as "
            f"`vecpress stats` counts it; fixed costs apart) against float32's {4 * self.dim:,} B",
            *self._lists_table(),
        ])

    def _lists_table(self) -> list[str]:
        """The partitioning and the nprobe sweep (nothing for a flat store)."""
        if not self.lists:
            return ["", "Search: a flat scan of every code (the store is below the size where "
                        "lists pay; see Index(partitions=...))"]
        sizes = self.list_rows
        lines = ["", f"Search: {self.lists:,} inverted lists of {sizes.get('min', 0):,} / "
                     f"{sizes.get('median', 0):,} / {sizes.get('max', 0):,} rows (min / median "
                     f"/ max); {self.nprobe:,} probed per query by default",
                 "", "| nprobe | recall@k (with rerank) | median latency (ms) |",
                 "| ---: | ---: | ---: |"]
        for run in self.nprobe_sweep:
            mark = " (default)" if run["nprobe"] == self.nprobe else ""
            lines.append(f"| {int(run['nprobe']):,}{mark} | {run['recall']:.4f} | "
                         f"{run['latency_ms']:.2f} |")
        return lines


def bench_index(index: Index, n_queries: int = 200, k: int = 10, seed: int = 0) -> StoreBench:
    """Measure ``index`` on queries drawn from its own vectors (see the module docstring).

    Raises ``ValueError`` when the index keeps no originals (``rerank=False`` with quantized
    codes: there is nothing exact to compare with) or holds fewer than ``k + 1`` vectors.
    """
    ids = index.ids
    if len(ids) < k + 1:
        raise ValueError(f"the store holds {len(ids)} vectors; bench needs at least k + 1 = "
                         f"{k + 1}")
    picked = np.sort(np.random.default_rng(seed).choice(len(ids), min(n_queries, len(ids)),
                                                        replace=False))
    query_ids = ids[picked]
    queries = index.get(query_ids)  # ValueError when no originals are kept
    truth = _exact_top(index, ids, queries, query_ids, k)
    stats = index.stats()
    oversample = stats["oversample"]  # (a search's default: the lists' when tuned above)
    runs = {}
    for name, factor in (("codes", 1), ("rerank", oversample)):
        found, latency = _search(index, queries, query_ids, k, factor)
        runs[name] = (_recall(found, truth), latency)
    sweep = []
    for nprobe in _nprobe_values(stats["nprobe"], stats["lists"]):
        found, latency = _search(index, queries, query_ids, k, oversample, nprobe)
        sweep.append({"nprobe": nprobe, "recall": _recall(found, truth), "latency_ms": latency})
    return StoreBench(count=len(ids), dim=index.dim, queries=len(queries), k=k,
                      oversample=oversample,
                      recall_codes=runs["codes"][0], recall_rerank=runs["rerank"][0],
                      latency_ms_codes=runs["codes"][1], latency_ms_rerank=runs["rerank"][1],
                      ram_bytes_per_vector=stats["ram_bytes_per_vector"] or 0.0,
                      lists=stats["lists"], nprobe=stats["nprobe"],
                      list_rows=dict(stats["list_rows"]), nprobe_sweep=sweep)


def _nprobe_values(nprobe: int, lists: int) -> list[int]:
    """The nprobe values a partitioned store is tried at: a quarter, half, once and twice the
    calibrated one, and every list (none while flat)."""
    if not lists:
        return []
    return sorted({max(1, nprobe // 4), max(1, nprobe // 2), nprobe, min(2 * nprobe, lists),
                   lists})


def _exact_top(index: Index, ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray,
               k: int) -> np.ndarray:
    """Ids of the exact top ``k`` per query among all stored vectors but the query's own."""
    best_scores = np.full((len(queries), 0), -np.inf)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), REFERENCE_CHUNK):
        chunk_ids = ids[start:start + REFERENCE_CHUNK]
        scores = _scores(index.metric, queries, index.get(chunk_ids))
        scores[query_ids[:, None] == chunk_ids[None, :]] = -np.inf
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, np.broadcast_to(chunk_ids, scores.shape)], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
    return best_ids


def _scores(metric: str, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Exact higher-is-better scores (the kept originals are already normalised for cosine)."""
    ip = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    if metric == "l2":
        return 2 * ip - (vectors.astype(np.float64) ** 2).sum(axis=1)[None, :]
    return ip


def _search(index: Index, queries: np.ndarray, query_ids: np.ndarray, k: int,
            oversample: int, nprobe: int | None = None) -> tuple[np.ndarray, float]:
    """Top ``k`` ids per query (own id left out) and the median latency of one query."""
    index.search(queries[:1], k + 1, oversample=oversample, nprobe=nprobe)  # warm the kernels
    found = np.empty((len(queries), k), dtype=np.int64)
    times = []
    for i, query in enumerate(queries):
        start = time.perf_counter()
        _, hits = index.search(query[None], k + 1, oversample=oversample, nprobe=nprobe)
        times.append(time.perf_counter() - start)
        found[i] = [h for h in hits[0] if h != query_ids[i]][:k]
    return found, float(np.median(times) * 1000)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


__all__ = ["StoreBench", "bench_index"]
