"""vecpress.evaluate and `vecpress bench`: recall of a store on its own vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vecpress import Collection, Index
from vecpress.cli import main
from vecpress.evaluate import bench_index

from conftest import clustered_vectors, reference_topk


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_bench_recall_matches_a_brute_force_count(metric):
    data = clustered_vectors(3000, 48, seed=3)
    index = Index(48, metric=metric, bits=1, rerank_dtype="float32")
    ids = index.add(data)
    result = bench_index(index, n_queries=40, k=5, seed=1)
    # recompute the codes-only recall by hand: same queries, own row left out
    picked = np.sort(np.random.default_rng(1).choice(len(ids), 40, replace=False))
    stored = data / np.linalg.norm(data, axis=1, keepdims=True) if metric == "cosine" else data
    allowed = np.ones(len(ids), bool)
    hits = 0
    for row in picked:
        allowed[:] = True
        allowed[row] = False
        _, truth = reference_topk(stored, stored[row:row + 1], 5, metric, allowed=allowed)
        _, found = index.search(stored[row:row + 1], 6, oversample=1)
        found = [f for f in found[0] if f != ids[row]][:5]
        hits += len(set(found) & set(ids[truth[0]].tolist()))
    assert result.recall_codes == pytest.approx(hits / (40 * 5))
    assert result.recall_codes < 1.0  # 1-bit codes alone miss some neighbours
    assert result.recall_rerank >= result.recall_codes
    assert result.count == 3000 and result.queries == 40 and result.latency_ms_codes > 0


def test_bench_sweeps_nprobe_on_a_partitioned_store(capsys):
    data = clustered_vectors(3000, 32, seed=6)
    index = Index(32, bits=4, partitions=16, rerank_dtype="float32")
    ids = index.add(data)
    result = bench_index(index, n_queries=30, k=5, seed=2)
    stats = index.stats()
    assert (result.lists, result.nprobe) == (16, stats["nprobe"])
    assert result.list_rows == stats["list_rows"]
    tried = [run["nprobe"] for run in result.nprobe_sweep]
    assert stats["nprobe"] in tried and tried[-1] == 16 and tried == sorted(set(tried))
    # each recall recomputed by hand: the same queries, own row left out, exact reference
    picked = np.sort(np.random.default_rng(2).choice(len(ids), 30, replace=False))
    stored = data / np.linalg.norm(data, axis=1, keepdims=True)
    for run in result.nprobe_sweep:
        hits = 0
        for row in picked:
            allowed = np.ones(len(ids), bool)
            allowed[row] = False
            _, truth = reference_topk(stored, stored[row:row + 1], 5, "cosine", allowed=allowed)
            _, found = index.search(stored[row:row + 1], 6, nprobe=int(run["nprobe"]))
            found = [f for f in found[0] if f != ids[row]][:5]
            hits += len(set(found) & set(ids[truth[0]].tolist()))
        assert run["recall"] == pytest.approx(hits / (30 * 5))
    assert result.nprobe_sweep[-1]["recall"] >= result.nprobe_sweep[0]["recall"]
    table = result.table()
    assert "16 inverted lists" in table and "(default)" in table


def test_bench_refuses_a_store_without_originals():
    index = Index(16, bits=4, rerank=False)
    index.add(clustered_vectors(100, 16, seed=4))
    with pytest.raises(ValueError, match="keeps no original vectors"):
        bench_index(index)


def test_bench_command_prints_the_table_and_json(capsys, tmp_path):
    with Collection(dim=32, path=tmp_path / "store", bits=2) as collection:
        collection.upsert(None, clustered_vectors(500, 32, seed=5))
    assert main(["bench", str(tmp_path / "store"), "--queries", "20", "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "recall@k" in out and "codes + exact rerank" in out
    assert "flat scan" in out  # 500 rows: below the size where lists pay
    assert main(["bench", str(tmp_path / "store"), "--queries", "20", "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert 0.0 <= numbers["recall_codes"] <= numbers["recall_rerank"] <= 1.0
    assert main(["bench", str(tmp_path / "nowhere")]) == 1
    assert "vecpress index" in capsys.readouterr().err
