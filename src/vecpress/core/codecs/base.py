"""The base class of every codec, the checks of a codec's saved state and the tiled code
layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from .scanning import RowFilter, Spans


class Codec:
    """Base class: shared bookkeeping for every codec."""

    name = "base"
    #: True when codes lose information, so keeping originals for a rerank pays off
    lossy = True

    def __init__(self, dim: int, bits: int, metric: str) -> None:
        self.dim = dim
        self.bits = bits
        self.metric = metric  # "ip" or "l2"

    # -- state ------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (the manifest stores them)."""
        return {"name": self.name, "dim": self.dim, "bits": self.bits, "metric": self.metric}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the codec needs to decode (saved as .npy files)."""
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned (``ValueError`` when it is inconsistent)."""

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype (``dtype.str``) of each array :meth:`load_state` accepts, so a
        stored state can be checked before it is read."""
        return {}

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, vectors: np.ndarray) -> None:
        """Learn data-dependent state from a sample (no-op for data-oblivious codecs)."""

    # -- codes ------------------------------------------------------------------------------
    @property
    def factor_count(self) -> int:
        return 2 if self.metric == "l2" else 1

    def code_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def code_dtype(self) -> np.dtype:
        raise NotImplementedError

    def code_bytes(self) -> int:
        return int(np.prod(self.code_shape())) * np.dtype(self.code_dtype).itemsize

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def tile_sign_words(self) -> int | None:
        """How ``scan`` wants codes laid out in RAM: ``None`` for plain rows (n, *code_shape),
        or the number of leading words of each row that :func:`tile_codes` puts side by side
        in tiles of ``kernels.TILE_ROWS`` rows."""
        return None

    def scan_layout(self, codes: np.ndarray) -> np.ndarray:
        """Encoded rows as :meth:`scan` reads them (see :attr:`tile_sign_words`)."""
        if self.tile_sign_words is None:
            return codes
        return tile_codes(codes, self.tile_sign_words)

    def scan(self, codes: np.ndarray, factors: np.ndarray, queries: np.ndarray, k: int,
             flt: RowFilter, spans: Spans | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows per query by estimated score: (q, k) scores and rows, -1 padded.
        ``codes`` are in the layout of :meth:`scan_layout`. With ``spans`` (see
        :func:`run_scan`) query ``i`` considers only the rows of its spans."""
        raise NotImplementedError


#: state arrays that are orthonormal matrices: no entry exceeds 1 in magnitude
_ORTHONORMAL = frozenset({"rotation", "projection"})


def _check_state(codec: Codec, arrays: dict[str, np.ndarray], *, finite: tuple[str, ...],
                 complete: bool = False) -> None:
    """``ValueError`` unless ``arrays`` match ``codec.state_layout()`` (all of them when
    ``complete``) and the ``finite`` ones hold no NaN or infinity."""
    layout = codec.state_layout()
    unknown = sorted(set(arrays) - set(layout))
    missing = sorted(set(layout) - set(arrays)) if complete else []
    if unknown or missing:
        raise ValueError(f"state arrays {unknown} are unknown and {missing} are missing")
    for name, array in arrays.items():
        shape, dtype = layout[name]
        if array.shape != shape or array.dtype.str != dtype:
            raise ValueError(f"state array {name} is {array.dtype.str}{list(array.shape)}, "
                             f"expected {dtype}{list(shape)}")
        if name in finite and not np.isfinite(array).all():
            raise ValueError(f"state array {name} holds NaN or infinity")
        if name in _ORTHONORMAL and array.size and np.abs(array).max() > 1.001:
            raise ValueError(f"state array {name} is not orthonormal (an entry exceeds 1)")


def tile_codes(codes: np.ndarray, sign_words: int) -> np.ndarray:
    """Code rows (n, width) in the tiled layout a codec with ``tile_sign_words`` scans
    (see ``kernels.write_tiles``); the last tile is padded with zero rows."""
    n, width = codes.shape
    tiles = np.zeros((-(-n // kernels.TILE_ROWS), kernels.TILE_ROWS * width), dtype=codes.dtype)
    kernels.write_tiles(tiles, 0, np.ascontiguousarray(codes), sign_words)
    return tiles
