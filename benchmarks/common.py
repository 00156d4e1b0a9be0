"""Helpers every benchmark shares: where results go, the machine, recall, threads, memory."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's true top-``k`` found in its first ``k`` results."""
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def set_threads(count: int) -> None:
    """Threads for numba's kernels, FAISS's OpenMP loops and (with threadpoolctl installed)
    the BLAS under numpy's matrix products alike."""
    import faiss
    import numba

    numba.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=count, user_api="blas")


def machine() -> str:
    """CPU model, cores, Python version and the current load (for every benchmark header)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at start")


def memory() -> dict[str, int]:
    """Resident set, anonymous and file-backed parts and the peak resident set so far
    (``VmHWM``), in bytes (Linux), after a garbage collection and after handing freed heap
    pages back to the system (so that memory a store no longer holds is not counted)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def source_version() -> str:
    """Which vecpress is measured: ``src/`` at a commit of this repository (and whether it has
    uncommitted changes, in which case the figures match no commit), or the folder it was
    imported from when that is outside the repository."""
    import vecpress

    package = Path(vecpress.__file__).resolve().parent
    repository = Path(__file__).resolve().parent.parent
    if repository not in package.parents:
        return f"vecpress imported from {package}"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repository, capture_output=True,
                              text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "src")
    return f"src/ at {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes" if changed else "")
