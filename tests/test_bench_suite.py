"""The benchmark suite's --quick smoke run and the pieces it is built from.

No performance thresholds: the smoke run checks that every method produces a well-formed row
and that the files are written, wherever ``--out`` points (never the committed results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.wordnet_queries import build_queries, ndcg_at, synset_lemmas
from vecpress.core.index import DEFAULT_OVERSAMPLE

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_METHODS = [
    "faiss IndexFlatIP (exact)", "faiss SQ8", "faiss SQ4", "faiss IndexPQ 48x8",
    "faiss RaBitQ 1-bit", "faiss RaBitQ 1-bit + RefineFlat x10", "faiss RaBitQ 2-bit",
    f"faiss RaBitQ 2-bit + RefineFlat x{DEFAULT_OVERSAMPLE[2]}", "faiss RaBitQ 4-bit",
    "faiss RaBitQ 4-bit + RefineFlat x3", "faiss IVFRaBitQ 1-bit nprobe=32/256",
    "faiss IVFRaBitQ 1-bit nprobe=32/256 + RefineFlat x10", "faiss HNSWFlat M=32 ef=64",
    "hnswlib M=16 ef=64", "usearch f32 M=16 ef=64", "usearch i8 M=16 ef=64",
    "usearch b1 M=16 ef=64", "vecpress 1-bit", "vecpress 1-bit + rerank x10", "vecpress 2-bit",
    f"vecpress 2-bit + rerank x{DEFAULT_OVERSAMPLE[2]}", "vecpress 4-bit",
    "vecpress 4-bit + rerank x3",
    "vecpress 8-bit", "vecpress 8-bit + rerank x2", "LangChain InMemoryVectorStore",
    "LlamaIndex SimpleVectorStore",
]
SWEPT = {"vecpress 1-bit + rerank x10": "oversample", "vecpress 4-bit + rerank x3": "oversample",
         "faiss RaBitQ 1-bit + RefineFlat x10": "k_factor", "faiss HNSWFlat M=32 ef=64": "efSearch",
         "hnswlib M=16 ef=64": "ef", "faiss IVFRaBitQ 1-bit nprobe=32/256": "nprobe"}


def test_ndcg_counts_rank_and_relevant_set():
    relevant = [np.array([7]), np.array([1, 2])]
    perfect = np.array([[7] + [0] * 9, [1, 2] + [9] * 8])
    assert ndcg_at(perfect, relevant) == pytest.approx(1.0)
    second = np.array([[0, 7] + [0] * 8, [3] * 10])  # rank 2 for the first, nothing for the next
    assert ndcg_at(second, relevant) == pytest.approx((1 / np.log2(3)) / 2)
    beyond_k = np.array([[0] * 10 + [7], [0] * 10 + [1]])
    assert ndcg_at(beyond_k, relevant) == 0.0


def test_labelled_queries_are_synonyms_whose_synsets_are_relevant():
    from vecpress.wordnet import read_glosses

    glosses = read_glosses()[::10]  # a base of every tenth gloss
    texts = [gloss.text for gloss in glosses]
    queries, relevant = build_queries(texts, 50, seed=3)
    assert len(queries) == len(relevant) == 50 and len(set(queries)) > 40
    lemmas = synset_lemmas()
    for query, rows in zip(queries, relevant):
        words = {word.lower() for word in query.split(", ")}
        assert len(rows) >= 1 and rows.max() < len(texts)
        for row in rows:  # every relevant document's synset has every query word as a lemma
            names = {name.lower() for name in lemmas[(glosses[row].pos, glosses[row].offset)]}
            assert words <= names
        # the query is other lemma names than the one the source document starts with
        assert any(words != {glosses[row].lemma.lower()} for row in rows)
    again, relevant_again = build_queries(texts, 50, seed=3)
    assert again == queries
    assert all(np.array_equal(a, b) for a, b in zip(relevant_again, relevant))
    assert build_queries(texts, 50, seed=4)[0] != queries


@pytest.mark.slow
def test_quick_suite_writes_a_row_for_every_method(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_suite", "--quick",
                             "--pq-iterations", "2", "--slow-queries", "4",
                             "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("suite_quick.md", "suite_quick.json", "suite_quick_recall_vs_ram.png",
                 "suite_quick_latency_vs_recall.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for plot in tmp_path.glob("*.png"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "suite_quick.json").read_text())
    assert report["n_base"] == 10_000 and report["n_queries"] == 200
    rows = {row["method"]: row for row in report["rows"]}
    missing = [name for name in EXPECTED_METHODS if name not in rows]
    assert not missing, f"no row for {missing}"
    table = (tmp_path / "suite_quick.md").read_text()
    for name, row in rows.items():
        assert f"| {name} " in table
        for key in ("recall@10", "ndcg@10"):
            assert 0.0 <= row[key] <= 1.0, (name, key, row[key])
        assert row["latency_p50_ms_1t"] > 0 and row["latency_p50_ms_all"] > 0
        assert row["build_s"] >= 0 and np.isfinite(row["rss_anon_bytes_per_vector"])
    assert rows["faiss IndexFlatIP (exact)"]["recall@10"] == 1.0
    for name, knob in SWEPT.items():
        points = rows[name]["sweep"]
        assert len(points) >= 4 and all(knob in p and 0 <= p["recall@10"] <= 1 for p in points)
    slow = rows["LangChain InMemoryVectorStore"]
    assert slow["slow"] and slow["queries"] == 4 and slow["batch_qps"] is None


def test_partitions_bench_reports_each_rows_median_over_runs():
    """``bench_partitions --repeat``: each row keeps the first run's fields and the median of
    the runs' p50s (odd and even counts), with every run's p50 beside it."""
    from benchmarks.bench_partitions import median_rows

    runs = [[{"method": "a", "nprobe": 4, "p50_ms": p50, "recall@10": 0.9},
             {"method": "b", "nprobe": 8, "p50_ms": 10 * p50, "recall@10": 0.8}]
            for p50 in (3.0, 1.0, 2.0, 7.0)]
    three = median_rows(runs[:3])
    assert [r["p50_ms"] for r in three] == [2.0, 20.0]
    assert three[0]["p50_ms_runs"] == [3.0, 1.0, 2.0]
    assert [r["method"] for r in three] == ["a", "b"] and three[1]["recall@10"] == 0.8
    assert [r["p50_ms"] for r in median_rows(runs)] == [2.5, 25.0]
    assert "p50_ms_runs" not in median_rows(runs[:1])[0]


def test_partitions_bench_compares_curves_at_equal_recall_within_each_run():
    """``equal_recall_ratios``: at each recall of the peer's sweep, the method's p50 read off
    its own sweep of the same run (log-linear), over the peer's; the median over runs. Recalls
    below the floor, beyond the method's best, and the method's default row are left out."""
    from benchmarks.bench_partitions import equal_recall_ratios

    def run(speed: float) -> list[dict]:
        mine = [(4, 0.80, 1.0), (8, 0.92, 2.0), (16, 0.96, 8.0)]
        peer = [(4, 0.85, 3.0), (8, 0.94, 2.0), (16, 0.95, 4.0), (32, 0.99, 9.0)]
        rows = [{"method": "me", "nprobe": n, "recall@10": r, "p50_ms": speed * ms,
                 "p50_cold_ms": 2 * speed * ms} for n, r, ms in mine]
        rows.append({"method": "me", "nprobe": "9 (default)", "recall@10": 0.94,
                     "p50_ms": 100.0, "p50_cold_ms": 100.0})
        rows += [{"method": "peer", "nprobe": n, "recall@10": r, "p50_ms": ms,
                  "p50_cold_ms": ms} for n, r, ms in peer]
        return rows

    ratios = equal_recall_ratios([run(1.0), run(3.0), run(2.0)], "me", peer="peer")
    assert [r["peer_nprobe"] for r in ratios] == [8, 16]  # (0.85 < floor, 0.99 > 0.96)
    at_094 = float(np.exp(np.log(2.0) + 0.5 * (np.log(8.0) - np.log(2.0))))  # (halfway: 4)
    assert ratios[0]["warm_runs"] == pytest.approx([at_094 / 2.0 * s for s in (1, 3, 2)])
    assert ratios[0]["warm"] == pytest.approx(2 * at_094 / 2.0)
    assert ratios[0]["cold"] == pytest.approx(2 * ratios[0]["warm"])
    at_095 = float(np.exp(np.log(2.0) + 0.75 * (np.log(8.0) - np.log(2.0))))
    assert ratios[1]["warm"] == pytest.approx(2 * at_095 / 4.0)


@pytest.mark.parametrize("n_queries", [1, 7, 45])
def test_partitions_bench_times_every_setting_on_every_query_with_its_own_setup(n_queries):
    """``bench_partitions``' warm and cold timings: each setting's search is timed once per
    query, always right after its own setup (a peer's nprobe is set on a shared object), warm
    in blocks of consecutive queries, cold with every timed call following another setting's
    call."""
    from benchmarks import bench_partitions as bench

    for helper in (bench._blocked_p50_ms, bench._interleaved_p50_ms):
        state = {"current": None}
        calls: list[tuple[str, int]] = []

        def setting(name: str):
            def setup() -> None:
                state["current"] = name

            def search(j: int) -> None:
                assert state["current"] == name  # (its setup ran since another's)
                calls.append((name, j))
            return setup, search

        names = ["a", "b", "c"]
        p50 = helper([setting(n) for n in names], n_queries)
        assert len(p50) == 3 and all(ms >= 0 for ms in p50)
        blocks = -(-n_queries // bench.WARM_BLOCK)
        untimed = min(2, n_queries) if helper is bench._interleaved_p50_ms else blocks
        for name in names:
            seen = [j for n, j in calls if n == name]
            assert set(seen) == set(range(n_queries)) and len(seen) == n_queries + untimed
        if helper is bench._interleaved_p50_ms:
            timed = calls[3 * min(2, n_queries):]  # after two warm-up calls per setting
            assert len(timed) == 3 * n_queries
            assert all(a[0] != b[0] for a, b in zip(timed, timed[1:]))
        else:
            runs = [n for n, _ in calls]
            switches = sum(a != b for a, b in zip(runs, runs[1:]))
            assert switches == 3 * blocks - 1
