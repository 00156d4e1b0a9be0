"""Cold start of an index file, vecpress against the peers: a fresh process imports the library,
loads the saved index of 100k glosses and answers a first and a second query.

Used by ``bench_cold_start`` (``--peers``). Each library saves its own file once (reused while
the base size matches); each measured run is a new interpreter that times, from inside, the
import, the load and the two queries (a precomputed query vector, k = 10). vecpress opens its
directory (codes in RAM, originals memory-mapped); FAISS reads its file with ``read_index``;
hnswlib and usearch load theirs into RAM.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: per library: how to save an index of ``base`` to ``path``, and the code a fresh process runs
#: to load it (``PATH``, ``DIM`` and ``QUERY`` are filled in) and search with ``search(q)``
_LOADERS: dict[str, str] = {
    "vecpress 4-bit + rerank (Index.load)": """
import vecpress
index = vecpress.Index.load(PATH, read_only=True)
search = lambda q: index.search(q, 10)
""",
    "faiss IndexRaBitQ 4-bit (read_index)": """
import faiss
index = faiss.read_index(PATH)
search = lambda q: index.search(q, 10)
""",
    "faiss IndexFlatIP (read_index)": """
import faiss
index = faiss.read_index(PATH)
search = lambda q: index.search(q, 10)
""",
    "hnswlib M=16 (load_index)": """
import hnswlib
index = hnswlib.Index(space="ip", dim=DIM)
index.load_index(PATH)
index.set_ef(64)
search = lambda q: index.knn_query(q, k=10)
""",
    "usearch i8 M=16 (restore)": """
from usearch.index import Index
index = Index.restore(PATH)
search = lambda q: index.search(q, 10)
""",
}

_PROBE = """
import time, json
t0 = time.perf_counter()
import numpy as np
query = np.load(QUERY)[None, :].astype(np.float32)
{loader}
t1 = time.perf_counter()
search(query)
t2 = time.perf_counter()
search(query)
t3 = time.perf_counter()
print(json.dumps({{"import_and_load": t1 - t0, "first_query": t2 - t1, "second_query": t3 - t2}}))
"""


def save_indexes(base: np.ndarray, directory: Path) -> dict[str, Path]:
    """Save one index per library (skipping libraries that are not installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"n{len(base)}"
    fresh = not stamp.exists()
    paths: dict[str, Path] = {}
    for name in _LOADERS:
        path = directory / name.split(" (")[0].replace(" ", "_").replace("+", "plus")
        try:
            if fresh or not path.exists():
                _save(name, base, path)
        except ImportError:
            continue
        paths[name] = path
    stamp.touch()
    return paths


def _save(name: str, base: np.ndarray, path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    dim = base.shape[1]
    if name.startswith("vecpress"):
        from vecpress import Index

        index = Index(dim, metric="ip", bits=4, path=path)
        index.add(base)
        index.close()
    elif name.startswith("faiss"):
        import faiss

        index = (faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT, 4) if "RaBitQ" in name
                 else faiss.IndexFlatIP(dim))
        index.train(base)
        index.add(base)
        faiss.write_index(index, str(path))
    elif name.startswith("hnswlib"):
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=len(base), M=16, ef_construction=100)
        index.add_items(base)
        index.save_index(str(path))
    else:
        from usearch.index import Index as UIndex

        index = UIndex(ndim=dim, metric="ip", dtype="i8", connectivity=16)
        index.add(np.arange(len(base)), base)
        index.save(str(path))


def measure(paths: dict[str, Path], query_file: Path, dim: int, runs: int) -> list[dict[str, Any]]:
    """Median timings of ``runs`` fresh processes per library (after one warm-up run)."""
    rows = []
    for name, path in paths.items():
        code = _PROBE.format(loader=_LOADERS[name]).replace("PATH", repr(str(path))).replace(
            "DIM", str(dim)).replace("QUERY", repr(str(query_file)))
        results = []
        for attempt in range(runs + 1):
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if attempt:  # the first run warms the page cache (and numba's)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        timing = {key: statistics.median(r[key] for r in results) for key in results[0]}
        rows.append({"method": name, **timing,
                     "file_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                     if path.is_dir() else path.stat().st_size})
        print(f"  {name:<40} import+load {timing['import_and_load'] * 1000:7.0f} ms  first query "
              f"{timing['first_query'] * 1000:7.1f} ms  second {timing['second_query'] * 1000:6.2f} ms",
              flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], n: int, runs: int) -> list[str]:
    lines = ["", f"## Index files, vecpress against the peers ({n:,} vectors, median of {runs} "
             "fresh processes)", "",
             "| index | import + load (ms) | first query (ms) | second query (ms) | "
             "file MB |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['import_and_load'] * 1000:,.0f} | "
                     f"{row['first_query'] * 1000:,.1f} | {row['second_query'] * 1000:,.2f} | "
                     f"{row['file_bytes'] / 1e6:,.1f} |")
    return lines
