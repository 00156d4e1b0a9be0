"""Cold start of a search in a fresh process: ``import vecpress``, open a store, first query.

:func:`measure_cold_start` starts fresh interpreters that each import vecpress, open an
existing store read-only and run two searches, timing each step from inside (the interpreter's
own start-up is reported apart, as ``process`` minus the steps). The demo and
``benchmarks/bench_cold_start.py`` use it. The embedding model is not part of it: the query
vector comes from a ``.npy`` file, so the timings are vecpress's alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS = ("import", "open", "first_query", "second_query")

# run with `python -c`: `python -m vecpress.<module>` would import vecpress before the clock starts
_PROBE = """
import sys, time
start = time.perf_counter()
import vecpress
imported = time.perf_counter()
import json
import numpy as np
query = np.load(sys.argv[2])
loaded = time.perf_counter()
collection = vecpress.Collection.open(sys.argv[1], read_only=True)
opened = time.perf_counter()
hits = collection.search(query, int(sys.argv[3]))
first = time.perf_counter()
collection.search(query, int(sys.argv[3]))
second = time.perf_counter()
print(json.dumps({"import": imported - start, "open": opened - loaded, "first_query": first - opened,
                  "second_query": second - first, "hits": [hit.id for hit in hits]}))
"""


def run_once(store: str | Path, query_file: str | Path, k: int = 5) -> dict[str, Any]:
    """One fresh interpreter: the step timings it reports, plus ``process`` (its wall time)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, str(store), str(query_file), str(k)],
                          capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cold-start probe failed (exit {done.returncode}):\n{done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process"] = elapsed
    return result


def measure_cold_start(store: str | Path, query_file: str | Path, *, runs: int = 5, k: int = 5) -> dict[str, Any]:
    """Median seconds of each step over ``runs`` fresh processes, after one warm-up run (which
    compiles and caches the numba kernels if the cache is empty); every run under ``"runs"``."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    run_once(store, query_file, k)
    results = [run_once(store, query_file, k) for _ in range(runs)]
    summary: dict[str, Any] = {step: statistics.median(r[step] for r in results) for step in (*STEPS, "process")}
    summary["total"] = statistics.median(r["import"] + r["open"] + r["first_query"] for r in results)
    summary["runs"] = results
    return summary
