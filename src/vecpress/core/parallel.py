"""numba's threading layer, chosen so that parallel kernels are safe from many threads and after fork.

numba runs ``parallel=True`` kernels on one of three layers, picked at the first parallel launch:

- ``tbb``: safe when several Python threads launch kernels at once, and after ``fork``;
- ``omp`` (GNU OpenMP on Linux): safe with threads, but a process forked after a parallel
  kernel ran is killed by libgomp (gunicorn, multiprocessing with fork);
- ``workqueue``: aborts the process when two threads launch kernels at once.

vecpress depends on the ``tbb`` package where wheels exist and asks numba for it, unless the
user chose a layer (``NUMBA_THREADING_LAYER``) or a parallel kernel already ran. Where TBB is
missing, :func:`parallel_section` serialises parallel launches while the layer in use is not
thread-safe, so concurrent searches slow down instead of aborting.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

from numba import config

#: layers that accept parallel launches from several threads at once
THREAD_SAFE_LAYERS = ("tbb", "omp")

_launch_lock = threading.Lock()
_layer_in_use: str | None = None


def _tbb_available() -> bool:
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (loads libtbb, or fails)
    except ImportError:
        return False
    return True


def _launched_already() -> bool:
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return False
    return bool(getattr(parallel, "_is_initialized", False))


def configure_threading_layer() -> str:
    """Ask numba for TBB when the user has not chosen a layer; returns the requested layer."""
    if os.environ.get("NUMBA_THREADING_LAYER") or _launched_already():
        return str(config.THREADING_LAYER)
    if str(config.THREADING_LAYER) == "default" and _tbb_available():
        config.THREADING_LAYER = "tbb"
    return str(config.THREADING_LAYER)


def threading_layer() -> str | None:
    """The layer numba runs parallel kernels on, or None before the first parallel launch."""
    global _layer_in_use
    if _layer_in_use is None:
        try:
            import numba

            _layer_in_use = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return None
    return _layer_in_use


@contextlib.contextmanager
def parallel_section() -> Iterator[None]:
    """Hold this around a launch of a ``parallel=True`` kernel.

    Free on a thread-safe layer; otherwise (``workqueue``, and the very first launch, before
    the layer is known) one launch at a time.
    """
    if threading_layer() in THREAD_SAFE_LAYERS:
        yield
        return
    with _launch_lock:
        yield
