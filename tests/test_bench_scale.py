"""The scale benchmark's synthetic data and a small smoke run of its subprocess workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_scale import SyntheticEmbeddings, load_spectrum

ROOT = Path(__file__).resolve().parent.parent


def test_synthetic_vectors_follow_the_fitted_spectrum_and_repeat_by_seed():
    spec = load_spectrum()
    generator = SyntheticEmbeddings(spec, seed=5)
    first = generator.chunk(0, 20_000)
    assert first.shape == (20_000, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    again = SyntheticEmbeddings(spec, seed=5)
    np.testing.assert_array_equal(generator.chunk(3, 500), again.chunk(3, 500))
    assert not np.allclose(generator.chunk(3, 500), generator.chunk(4, 500))
    eigenvalues = np.linalg.eigvalsh(np.cov(first.T))[::-1]
    fitted = np.asarray(spec["eigenvalues"])
    # top of the spectrum within 20%, total variance within 5%: anisotropic like the real data
    np.testing.assert_allclose(eigenvalues[:10], fitted[:10], rtol=0.2)
    assert eigenvalues.sum() == pytest.approx(fitted.sum(), rel=0.05)
    assert eigenvalues[0] / eigenvalues[200] > 5
    chunks = list(generator.stream(250_000 // 10, chunk=10_000))
    assert [len(c) for c in chunks] == [10_000, 10_000, 5_000]


@pytest.mark.slow
def test_scale_smoke_run_measures_each_method_in_its_own_process(tmp_path):
    methods = ["vecpress 1-bit", "vecpress 1-bit + rerank x10", "faiss RaBitQ 1-bit"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--sizes", "20000", "--methods",
         *methods, "--latency-queries", "20", "--batch-queries", "20", "--out", str(tmp_path)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [row["method"] for row in report["rows"]] == methods
    for row in report["rows"]:
        assert row["n"] == 20_000 and row["build_s"] > 0 and row["batch_qps"] > 0
        assert row["rss_anon_bytes"] > 0 and row["peak_rss_bytes"] > row["rss_anon_bytes"]
        assert "recall" not in json.dumps(row)  # synthetic data: never a quality claim
    rerank = report["rows"][1]
    assert rerank["disk_bytes_per_vector"] > 384 * 2  # float16 originals on disk
    assert "| 20,000 | vecpress 1-bit |" in (tmp_path / "scale.md").read_text()


def test_lists_scale_brute_force_streams_the_exact_top_10():
    from benchmarks.bench_lists_scale import brute_force

    generator = SyntheticEmbeddings(load_spectrum(), seed=2)
    queries = generator.queries(7)
    whole = np.concatenate(list(generator.stream(2_500, chunk=600)))
    expected = np.argsort(-(queries @ whole.T), axis=1, kind="stable")[:, :10]
    found = brute_force(generator, 2_500, 600, queries)
    assert [sorted(f) for f in found] == [sorted(e) for e in expected]


@pytest.mark.slow
def test_lists_scale_smoke_run_reports_the_targets_figures(tmp_path):
    from benchmarks.bench_lists_scale import main

    main(["--n", "70000", "--chunk", "35000", "--queries", "20", "--latency-queries", "3",
          "--out", str(tmp_path)])
    result = json.loads((tmp_path / "lists_scale_70000.json").read_text())
    assert result["lists"] >= 16 and 1 <= result["nprobe"] <= result["lists"]
    assert result["ram_bytes_per_vector"] < 100  # (1 bit: a 48-byte code and its extras)
    assert result["build_memory"]["VmHWM"] > 0 and result["bound_bytes"] > result["ram_bytes"]
    assert result["rows"][0]["nprobe"] is None and len(result["rows"]) >= 2
    assert [r["oversample"] for r in result["rows"]].count(40) == 2  # (default nprobe and 2x)
    assert all(0.5 <= row["recall@10"] <= 1.0 for row in result["rows"])
    assert "#14 target" in (tmp_path / "lists_scale_70000.md").read_text()
