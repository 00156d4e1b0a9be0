"""Cold start of a search in a fresh process: ``import vecpress``, open a store, first query.

:func:`measure_cold_start` starts fresh interpreters that each import vecpress, open an
existing store read-only and run two searches, timing each step from inside (the interpreter's
own start-up is reported apart, as ``process`` minus the steps), in wall-clock seconds and in
CPU seconds of the process (``cpu_*``; steadier than wall time on a busy machine). The demo and
``benchmarks/bench_cold_start.py`` use it. The embedding model is not part of it: the query
vector comes from a ``.npy`` file, so the timings are vecpress's alone.

:func:`measure_first_use` times the same steps on a never-used machine: each run gets an
empty numba cache (``NUMBA_CACHE_DIR`` pointed at a new folder), so the kernels compile where
the user waits; and, for comparison, ``vecpress warmup`` into an empty cache followed by a
fresh process that finds the kernels cached.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = ("import", "open", "first_query", "second_query")
CPU_STEPS = tuple("cpu_" + step for step in STEPS)

# run with `python -c`: `python -m vecpress.<module>` would import vecpress before the clock starts
_PROBE = """
import sys, time
clock = lambda: (time.perf_counter(), time.process_time())
start = clock()
import vecpress
imported = clock()
import json
import numpy as np
query = np.load(sys.argv[2])
loaded = clock()
collection = vecpress.Collection.open(sys.argv[1], read_only=True)
opened = clock()
hits = collection.search(query, int(sys.argv[3]))
first = clock()
collection.search(query, int(sys.argv[3]))
second = clock()
steps = {"import": (start, imported), "open": (loaded, opened), "first_query": (opened, first),
         "second_query": (first, second)}
result = {name: b[0] - a[0] for name, (a, b) in steps.items()}
result.update({"cpu_" + name: b[1] - a[1] for name, (a, b) in steps.items()})
result["hits"] = [hit.id for hit in hits]
print(json.dumps(result))
"""


def run_once(store: str | Path, query_file: str | Path, k: int = 5,
             numba_cache_dir: str | Path | None = None) -> dict[str, Any]:
    """One fresh interpreter: the step timings it reports, plus ``process`` (its wall time).
    ``numba_cache_dir``: the ``NUMBA_CACHE_DIR`` of that process (default: inherited)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if numba_cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(numba_cache_dir)
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
    summary: dict[str, Any] = {step: statistics.median(r[step] for r in results)
                               for step in (*STEPS, *CPU_STEPS, "process")}
    summary["total"] = statistics.median(r["import"] + r["open"] + r["first_query"] for r in results)
    summary["cpu_total"] = statistics.median(r["cpu_import"] + r["cpu_open"] + r["cpu_first_query"]
                                             for r in results)
    summary["runs"] = results
    return summary


def _timed_warmup(numba_cache_dir: Path) -> float:
    """Wall seconds of ``vecpress warmup`` in a fresh process with this numba cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache_dir), "VECPRESS_QUIET": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vecpress.cli", "warmup"], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vecpress warmup failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return time.perf_counter() - start


def measure_first_use(store: str | Path, query_file: str | Path, *, runs: int = 3,
                      k: int = 5) -> dict[str, Any]:
    """A never-used machine, ``runs`` times over (medians; every run under ``"runs"``):

    - ``empty``: a fresh process with an empty numba cache: import, open, first query (the
      kernels compile inside the first query);
    - ``warmup``: seconds of ``vecpress warmup`` into another empty cache;
    - ``after_warmup``: then a fresh process on that cache: import, open, first query.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="vecpress-numba-") as empty, \
                tempfile.TemporaryDirectory(prefix="vecpress-numba-") as warmed:
            cold = run_once(store, query_file, k, numba_cache_dir=empty)
            seconds = _timed_warmup(Path(warmed))
            after = run_once(store, query_file, k, numba_cache_dir=warmed)
        results.append({"empty": cold, "warmup": seconds, "after_warmup": after})

    def median_of(key: str) -> dict[str, float]:
        rows = [r[key] for r in results]
        summary = {step: statistics.median(row[step] for row in rows) for step in (*STEPS, "process")}
        summary["total"] = statistics.median(row["import"] + row["open"] + row["first_query"]
                                             for row in rows)
        return summary

    return {"empty": median_of("empty"), "after_warmup": median_of("after_warmup"),
            "warmup": statistics.median(r["warmup"] for r in results), "runs": results}
