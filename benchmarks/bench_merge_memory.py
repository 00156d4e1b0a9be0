"""Peak memory of the write side: merges, compaction and a large build (issue #12).

Each measurement runs in a fresh interpreter so that its peak is its own. It reports the peak
anonymous RSS (``RssAnon``, sampled every few milliseconds by a thread) and the kernel's peak
total RSS (``VmHWM``, reset with ``/proc/self/clear_refs`` before the operation), each above
the RAM the finished store reports (``stats()["ram_bytes"]``) and above what the process held
before the operation. Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_merge_memory.py --dir /tmp/vp-mem add compact build

``add``: a 20k-row add into a 480k-row store built in 20k batches; ``merge``: one merge of
every segment of a 480k-row store (built in 100k batches) into one, as the largest merge a
growing store runs; ``compact``: compaction of a 500k-row store (10% removed first);
``build``: 1M rows of dim 384 in 100k batches, with originals.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DIM = 384
BATCH = 100_000


def _status() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


class _AnonPeak:
    """Samples RssAnon in a thread (the kernel keeps no peak for it)."""

    def __init__(self) -> None:
        self.peak = _status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status()["RssAnon"])
            time.sleep(0.002)

    def __enter__(self) -> "_AnonPeak":
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM
            handle.write("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status()["RssAnon"])


def _batches(rows: int, seed: int, batch: int = BATCH):
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        yield rng.standard_normal((min(batch, rows - start), DIM), dtype=np.float32)


def _build(path: Path, rows: int, batch: int = BATCH) -> None:
    from vecpress import Index

    shutil.rmtree(path, ignore_errors=True)
    with Index(DIM, path=path) as index:
        for vectors in _batches(rows, seed=1, batch=batch):
            index.add(vectors)


def _merge_everything(index) -> None:
    """One merge of all segments (the policy's own trigger aside), old or new code."""
    if hasattr(index, "_merge_run"):
        index._merge_run(0, len(index._manifest["segments"]))
    else:  # the binary counter before issue #12: a ratio of 0 merges the whole tail
        import vecpress.core.index as module
        module.MERGE_RATIO = 0.0
        index._merge_segments()


def _measure(operation: str, path: Path) -> dict[str, object]:
    """Runs in the child: prepare is done; time and measure one operation."""
    from vecpress import Index

    index = None
    if operation != "build":
        index = Index.load(path)
        if operation == "compact":
            index.remove(np.arange(0, len(index), 10))
        before_segments = index.stats()["segments"]
    else:
        before_segments = 0
    before = _status()
    started = time.perf_counter()
    with _AnonPeak() as peak:
        if operation == "add":
            index.add(next(_batches(20_000, seed=7, batch=20_000)))
        elif operation == "merge":
            _merge_everything(index)
        elif operation == "compact":
            index.compact()
        else:
            shutil.rmtree(path, ignore_errors=True)
            index = Index(DIM, path=path)
            for vectors in _batches(1_000_000, seed=1):
                index.add(vectors)
    seconds = time.perf_counter() - started
    after = _status()
    stats = index.stats()
    index.close()
    mb = 1 << 20
    return {"operation": operation, "seconds": round(seconds, 1),
            "rows": stats["rows"], "segments_before": before_segments,
            "segments_after": stats["segments"],
            "ram_bytes_MB": round(stats["ram_bytes"] / mb, 1),
            "anon_before_MB": round(before["RssAnon"] / mb, 1),
            "peak_anon_MB": round(peak.peak / mb, 1),
            "peak_anon_above_store_MB": round((peak.peak - stats["ram_bytes"]) / mb, 1),
            "peak_anon_above_before_MB": round((peak.peak - before["RssAnon"]) / mb, 1),
            "VmHWM_MB": round(after["VmHWM"] / mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("operations", nargs="+", choices=["add", "merge", "compact", "build"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vecpress-merge-memory"))
    parser.add_argument("--buffer-mb", type=int, default=None,
                        help="segments.MERGE_BUFFER_BYTES for the measured operation, in MiB")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.buffer_mb is not None:
            from vecpress.core import segments
            segments.MERGE_BUFFER_BYTES = args.buffer_mb << 20
        print(json.dumps(_measure(args.operations[0], args.dir)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    sizes = {"add": (480_000, 20_000), "merge": (480_000, BATCH), "compact": (500_000, BATCH)}
    for operation in args.operations:
        path = args.dir / operation
        if operation in sizes:  # prepared in its own process, not measured
            rows, batch = sizes[operation]
            subprocess.run([sys.executable, "-c",
                            "import sys; sys.path[:0] = ['benchmarks', '.'];"
                            "from pathlib import Path; from bench_merge_memory import _build;"
                            f"_build(Path({str(path)!r}), {rows}, {batch})"],
                           check=True, env=os.environ)
        budget = [] if args.buffer_mb is None else ["--buffer-mb", str(args.buffer_mb)]
        out = subprocess.run([sys.executable, __file__, "--child", "--dir", str(path), *budget,
                              operation], check=True, capture_output=True, text=True,
                             env=os.environ).stdout
        print(out.strip().splitlines()[-1], flush=True)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
