"""The cold-start comparison of index files (benchmarks/cold_start_peers.py) on a tiny index."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import cold_start_peers


@pytest.mark.slow
def test_every_library_saves_loads_and_answers_in_a_fresh_process(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((600, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "query.npy", vectors[0])
    paths = cold_start_peers.save_indexes(vectors, tmp_path / "peers")
    assert len(paths) == len(cold_start_peers._LOADERS)  # faiss, hnswlib, usearch are dev deps
    rows = cold_start_peers.measure(paths, tmp_path / "query.npy", 32, runs=1)
    for row in rows:
        assert 0 < row["import_and_load"] < 60 and row["first_query"] > 0
        assert row["second_query"] > 0 and row["file_bytes"] > 600 * 32 // 8
    table = "\n".join(cold_start_peers.markdown(rows, 600, 1))
    assert table.count("\n| ") == len(rows) + 2  # header, rule and one line per library
