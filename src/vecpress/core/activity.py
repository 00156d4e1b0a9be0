"""Say what a long write is doing while it runs: "refitting the codec", "compacting".

An upsert may trigger upkeep inside the index (a codec refit that re-encodes every row, a
compaction, a partition training, a segment merge) that takes seconds on a large store. The
index names each such step with :func:`step`; whoever waits on that thread (a progress bar of
``vecpress index``) can listen with :func:`listening`. Listeners are per thread, since a write
runs on the thread that called it, and cost nothing when no one listens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Call ``listener(description)`` at the start of each named step on this thread."""
    previous = getattr(_local, "listener", None)
    _local.listener = listener
    try:
        yield
    finally:
        _local.listener = previous


@contextmanager
def step(description: str) -> Iterator[None]:
    """Name the step the current thread runs (``description`` is a short lower-case phrase)."""
    listener = getattr(_local, "listener", None)
    if listener is not None:
        try:
            listener(description)
        except Exception:  # noqa: BLE001 - a display must never break a write
            pass
    yield


__all__ = ["listening", "step"]
