"""vecpress: a compressed, embedded vector store for RAG.

Embeddings are quantized on insert (1-8 bits per dimension), scanned as compact codes by numba
kernels, and the best candidates are re-scored exactly from the kept originals.
"""

from .core.collection import Collection, Hit, SearchResults
from .core.index import Index
from .core.relevance import RelevanceParams, ScoreStats
from .warmup import install_compile_notice as _install_compile_notice

_install_compile_notice()  # one stderr line when a kernel compiles where a user waits

__all__ = ["Collection", "FDEConfig", "Hit", "Index", "MultiVectorCollection", "RelevanceParams",
           "ScoreStats", "SearchResults"]
__version__ = "0.1.0"

#: names imported on first use, so that ``import vecpress`` does not pay for them
_LAZY = {"MultiVectorCollection": "multivector", "FDEConfig": "multivector"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vecpress' has no attribute {name!r}")
