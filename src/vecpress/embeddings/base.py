"""The embedder protocol and a streaming helper shared by every embedder."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_BATCH_SIZE = 64


@runtime_checkable
class Embedder(Protocol):
    """Turns text into float32 vectors.

    ``metric`` is the similarity the vectors are meant for: ``"cosine"`` for models whose
    output is L2-normalised, ``"ip"`` for raw dot-product models, ``"l2"`` for distances.
    """

    dim: int
    metric: str

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Return a float32 array of shape ``(len(texts), dim)``."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Return a float32 array of shape ``(dim,)``."""
        ...


def iter_document_batches(
    embedder: Embedder,
    texts: Sequence[str],
    batch_size: int | None = None,
    *,
    progress: bool | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Embed ``texts`` a batch at a time, yielding ``(start, vectors)`` for each batch.

    Memory stays bounded by one batch, so callers can write vectors to disk or into an index
    as they come. One progress bar covers the whole job; ``progress=None`` shows it only
    when stderr is a terminal.
    """
    texts = check_texts(texts, "texts")
    if batch_size is None:
        batch_size = getattr(embedder, "batch_size", DEFAULT_BATCH_SIZE)
    batch_size = check_batch_size(batch_size)
    with progress_bar(len(texts), enabled=progress, desc="embedding") as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            vectors = np.asarray(embedder.embed_documents(batch, progress=False), dtype=np.float32)
            if vectors.shape != (len(batch), embedder.dim):
                raise RuntimeError(
                    f"embedder returned shape {vectors.shape} for {len(batch)} texts, "
                    f"expected ({len(batch)}, {embedder.dim})"
                )
            bar.update(len(batch))
            yield start, vectors


def check_texts(texts: Sequence[str], name: str) -> list[str]:
    """Return ``texts`` as a list, raising ``TypeError`` naming ``name`` if it is not text."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, not a single {type(texts).__name__}")
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{position}] must be str, got {type(text).__name__}")
    return texts


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def resolve_progress(progress: bool | None) -> bool:
    """``None`` means: show progress only when a person is watching stderr (and
    ``VECPRESS_QUIET`` is not set); ``VECPRESS_QUIET`` turns every bar off."""
    from ..warmup import quiet

    if quiet():
        return False
    if progress is None:
        stream = sys.stderr
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    return bool(progress)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class _Ticker:
    """Redraws a tqdm bar every ``interval`` seconds from a daemon thread, so its elapsed time
    and rate keep moving while one long step (a model batch, a write) runs."""

    def __init__(self, bar: Any, interval: float = 1.0) -> None:
        self._bar = bar
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vecpress-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._bar.refresh()
            except Exception:  # noqa: BLE001 - a redraw failing must never break the work
                return

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def __enter__(self) -> "_Ticker":
        self._bar.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._bar.__exit__(*exc_info)


def progress_bar(total: int, *, enabled: bool | None, desc: str):
    """A tqdm bar used as a context manager, or a no-op stand-in when disabled or tqdm is absent."""
    if not resolve_progress(enabled):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    # updated at least every 64 texts by the callers, with the rate and time left that tqdm
    # shows by default; on a terminal also redrawn every second while one step runs (in a log
    # file that would add a line a second, so only there)
    bar = tqdm(total=total, desc=desc, unit="text", mininterval=0.5, maxinterval=1.0, miniters=1,
               dynamic_ncols=True)
    stream = sys.stderr
    on_terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    return _Ticker(bar) if on_terminal else bar
