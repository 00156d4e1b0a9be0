"""The concurrency benchmark at tiny sizes, and its event-loop stall meter.

The benchmark's ``--quick`` mode takes about two minutes, too long for CI, so the smoke run
shrinks every size further (3k vectors, a 4 s writer run; about 30 s) and checks that each
section produces well-formed rows and that the files are written where ``--out`` points. No
speed thresholds, and the reader errors it counts are not asserted here (that is
``test_concurrency.py``'s reader-process test).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_concurrency import longest_gaps

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["vecpress 4-bit + rerank x3 (default), on disk", "vecpress 1-bit + rerank x10, on disk",
           "faiss IndexRaBitQ 4-bit", "faiss IndexRaBitQ 4-bit + RefineFlat x3",
           "hnswlib M=16 ef=64"]


def test_longest_gaps_sees_a_call_that_blocks_the_loop():
    async def blocking() -> None:
        time.sleep(0.2)  # holds the event loop's thread: no tick for 200 ms

    async def yielding() -> None:
        await asyncio.sleep(0.06)  # the ticker runs all along

    blocked, free = asyncio.run(longest_gaps([blocking, yielding]))
    assert blocked >= 0.2
    assert free < blocked


@pytest.mark.slow
def test_concurrency_benchmark_tiny_run_writes_every_section(tmp_path):
    command = [sys.executable, "-m", "benchmarks.bench_concurrency", "--quick", "--synthetic",
               "--n-base", "3000", "--n-queries", "100", "--stall-queries", "20",
               "--latency-sizes", "3000", "--ops", "20", "--rss-base", "5000", "--rss-add",
               "500", "--duration", "4", "--out", str(tmp_path)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "concurrency_quick.json").read_text())
    table = (tmp_path / "concurrency_quick.md").read_text()
    assert "src/ at" in report["vecpress"] and "cores" in report["machine"]

    assert [row["method"] for row in report["qps"]] == METHODS
    for row in report["qps"]:
        assert all(row[f"qps_{t}t"] > 0 for t in (1, 2, 4)), row
        assert math.isclose(row["ratio_2t_1t"], row["qps_2t"] / row["qps_1t"])
        assert 0.0 <= row["recall@10"] <= 1.0 and row["method"] in table
    # with the rerank, vecpress returns the exact top-10 whatever the load
    assert all(row["recall@10"] > 0.95 for row in report["qps"][:2])

    assert [row["call"].split()[0] for row in report["stall"]] == ["idle", "LangChain",
                                                                    "LlamaIndex"]
    assert all(0 < row["stall_p50_ms"] <= row["stall_max_ms"] for row in report["stall"])

    operations = {(row["store"], row["op"]) for row in report["latency"]}
    assert len(operations) == len(report["latency"]) == 12  # 4 ops x memory, disk, process
    assert all(0 < row["p50_ms"] <= row["p99_ms"] for row in report["latency"])

    assert [row["operation"].split()[0] for row in report["rss"]] == ["build", "add", "compact()"]
    assert all(row["VmHWM"] >= row["RssAnon"] > 0 and row["ram_bytes"] > 0
               for row in report["rss"])

    roles = [row["role"] for row in report["rw"]]
    assert roles == ["writer", "reader", "reader"], report["rw"]
    assert report["rw"][0]["writes"] > 0
    assert all(row["opens"] > 0 for row in report["rw"][1:])
