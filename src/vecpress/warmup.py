"""Compile the numba kernels ahead of time, and say so when a compile happens where a user waits.

numba compiles each kernel on its first call and keeps the machine code in its on-disk cache
(``cache=True``: next to the package, or under ``NUMBA_CACHE_DIR``). On a never-used machine
the first search therefore pays many seconds of compilation. :func:`warmup` (the command
``vecpress warmup``) runs the code paths of a default store on throw-away data, so every
kernel they need is compiled, or loaded from the cache, before a user asks a question.

:func:`install_compile_notice` (done by ``import vecpress``) prints one line on stderr the
first time a vecpress kernel really compiles in a process (loading from the cache is silent),
with the expected wait and the command that avoids it. ``VECPRESS_QUIET=1`` silences it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numba.core import event as numba_event

#: the notice's estimate of a full compile of the default store's kernels, on 2 cores
#: (measured by ``benchmarks/bench_warmup.py``; see the README's "First run" section)
EXPECTED_COMPILE = "10-80 s on 2 cores, once per machine"

#: environment variable that silences progress bars and notices (``vecpress --quiet`` sets it)
QUIET_ENV = "VECPRESS_QUIET"

_PACKAGE = __name__.split(".")[0]


def quiet() -> bool:
    """True when ``VECPRESS_QUIET`` is set to anything but ``""``/``0``: scripts want no chatter."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def _kernel_name(dispatcher: Any) -> str | None:
    """``module.function`` of a vecpress numba dispatcher, ``None`` for anyone else's."""
    func = getattr(dispatcher, "py_func", None)
    module = getattr(func, "__module__", "") or ""
    if module != _PACKAGE and not module.startswith(_PACKAGE + "."):
        return None
    return f"{module.rsplit('.', 1)[-1]}.{func.__name__}"


class _CompileListener(numba_event.Listener):
    """numba ``numba:compile`` listener: records which vecpress kernels compiled and for how
    long, and calls ``on_first`` once, at the start of the first one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self.compiled: list[tuple[str, float]] = []
        self.on_first: Callable[[str], None] | None = None
        self._announced = False

    def on_start(self, event: Any) -> None:
        name = _kernel_name(event.data["dispatcher"])
        if name is None:
            return
        with self._lock:
            self._started[id(event.data["dispatcher"])] = time.perf_counter()
            announce = not self._announced and self.on_first is not None
            self._announced = True
        if announce:
            self.on_first(name)  # type: ignore[misc]

    def on_end(self, event: Any) -> None:
        name = _kernel_name(event.data["dispatcher"])
        if name is None:
            return
        with self._lock:
            started = self._started.pop(id(event.data["dispatcher"]), None)
            if started is not None:
                self.compiled.append((name, time.perf_counter() - started))


_LISTENER: _CompileListener | None = None
_INSTALL_LOCK = threading.Lock()


def _print_notice(kernel: str) -> None:
    if quiet():
        return
    print(f"vecpress: compiling the numba kernels for this machine ({kernel} first; "
          f"{EXPECTED_COMPILE}, cached afterwards). `vecpress warmup` does it ahead of time.",
          file=sys.stderr, flush=True)


def install_compile_notice() -> _CompileListener:
    """Register (once per process) the listener that announces the first real kernel compile."""
    global _LISTENER
    with _INSTALL_LOCK:
        if _LISTENER is None:
            listener = _CompileListener()
            listener.on_first = _print_notice
            numba_event.register("numba:compile", listener)
            _LISTENER = listener
        return _LISTENER


@dataclass
class WarmupReport:
    """What :func:`warmup` did: seconds in all, and the kernels it had to compile (empty when
    everything came from numba's cache)."""

    seconds: float
    compiled: list[tuple[str, float]] = field(default_factory=list)
    cache_dir: str = ""

    def summary(self) -> str:
        if not self.compiled:
            return (f"kernels loaded from numba's cache in {self.seconds:.1f} s "
                    f"(nothing to compile; cache {self.cache_dir})")
        slowest = sorted(self.compiled, key=lambda item: -item[1])[:3]
        named = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest)
        return (f"compiled {len(self.compiled)} kernels in {self.seconds:.1f} s (slowest: {named}); "
                f"cached in {self.cache_dir} for every later process")


def numba_cache_dir() -> str:
    """Where numba keeps vecpress's compiled kernels: ``NUMBA_CACHE_DIR`` or the package's
    ``__pycache__`` folders."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return configured
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "core", "kernels", "__pycache__")


#: code sizes ``vecpress warmup`` prepares by default: the default store's
DEFAULT_WARMUP_BITS = (4,)
_WARMUP_DIM = 384  # the default model's; kernels do not specialise on it, codecs' plans might
_WARMUP_ROWS = 1_200  # past the codec's first fit (1,024 rows)
_WARMUP_LISTS = 4


def warmup(bits: tuple[int, ...] | list[int] = DEFAULT_WARMUP_BITS, *,
           status: Callable[[str], None] | None = None, every_kernel: bool = False) -> WarmupReport:
    """Compile (or load from numba's cache) every kernel a store of these ``bits`` uses.

    Builds small throw-away stores in a temporary folder and goes through what a user's
    store does: insert, a flat and a partitioned search, filtered and not, reopening from disk
    read-only and writable, removal and compaction. Safe to run any number of times and from
    several processes (numba's cache is written atomically).

    Args:
        bits: code sizes to prepare (1-8, 16, 32); the CLI's default is the default store's 4.
        status: called with a short line before each step (the CLI prints it).
        every_kernel: also compile what other stores use: the ``rabitq`` and ``int8`` codecs, 16-bit
            (float16) codes, the scans split over threads (which a store uses from 50,000
            rows), and multi-vector encodings. The test suite warms up this way, so no test
            pays a compile.
    """
    from .core.collection import Collection

    bits = tuple(bits)
    if not bits:
        raise ValueError("bits must name at least one code size, e.g. bits=(4,)")
    for value in bits:
        if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= 8 or value in (16, 32)):
            raise ValueError(f"bits must be 1-8, 16 or 32, got {value!r}")
    listener = install_compile_notice()
    first_compiled = len(listener.compiled)
    say = status or (lambda line: None)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((_WARMUP_ROWS, _WARMUP_DIM)).astype(np.float32)
    queries = vectors[:2] + 0.01
    ids = [str(i) for i in range(_WARMUP_ROWS)]
    metadatas = [{"n": i % 7} for i in range(_WARMUP_ROWS)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vecpress-warmup-") as scratch:
        for code_bits in bits:
            for name, options in (("flat", {}), ("partitioned", {"partitions": _WARMUP_LISTS})):
                say(f"{code_bits}-bit codes, {name} search")
                path = os.path.join(scratch, f"{code_bits}-{name}")
                with Collection(_WARMUP_DIM, path=path, bits=code_bits, **options) as collection:
                    collection.upsert(ids, vectors, metadatas=metadatas)
                    _search_paths(collection, queries)
                    collection.delete(ids=ids[: _WARMUP_ROWS // 2 + 1])  # past half: compacts
                    _search_paths(collection, queries)
                with Collection.open(path, read_only=True) as reopened:
                    _search_paths(reopened, queries)
        if every_kernel:
            say("every other kernel: rabitq, int8, 16-bit codes, threaded scans, multi-vector")
            _other_kernels(vectors, queries)
    seconds = time.perf_counter() - started
    return WarmupReport(seconds, listener.compiled[first_compiled:], numba_cache_dir())


def _other_kernels(vectors: np.ndarray, queries: np.ndarray) -> None:
    """Kernels no default store of a few rows reaches: other codecs, the threaded scans
    and the FDE encoders. The scans' row thresholds are zero, process-wide, while these run
    (they only choose between paths that give the same answers) and restored after."""
    from .core.codecs import scanning
    from .core.index import Index
    from .multivector.fde import SERIAL_BELOW, FDEConfig, FDEEncoder

    thresholds = scanning.PARALLEL_MIN_ROWS, scanning.PARALLEL_MIN_ROWS_ONE_QUERY
    scanning.PARALLEL_MIN_ROWS = scanning.PARALLEL_MIN_ROWS_ONE_QUERY = 0
    try:
        for options in ({"bits": 4}, {"bits": 1, "codec": "rabitq"}, {"bits": 4, "codec": "rabitq"},
                        {"bits": 16}, {"bits": 8, "codec": "int8"}):
            index = Index(vectors.shape[1], **options)
            index.add(vectors)
            index.search(queries, 5)
            index.search(queries[:1], 5)
    finally:
        scanning.PARALLEL_MIN_ROWS, scanning.PARALLEL_MIN_ROWS_ONE_QUERY = thresholds
    rng = np.random.default_rng(1)
    tokens = [rng.standard_normal((5, 16)).astype(np.float32) for _ in range(SERIAL_BELOW + 1)]
    for config in (FDEConfig(dim=16), FDEConfig(dim=16, final_dim=64)):
        encoder = FDEEncoder(config)
        encoder.encode_documents(tokens)  # the threaded encoder
        encoder.encode_documents(tokens[:1])  # the serial one
        encoder.encode_queries(tokens[:1])


def _search_paths(collection: Any, queries: np.ndarray) -> None:
    """A plain, a filtered and a batch-sized search: each code path of the scan."""
    for query in queries:
        collection.search(query, 5)
        collection.search(query, 5, where={"n": 3})


__all__ = ["DEFAULT_WARMUP_BITS", "EXPECTED_COMPILE", "QUIET_ENV", "WarmupReport",
           "install_compile_notice", "numba_cache_dir", "quiet", "warmup"]
