"""vecpress: a compressed, embedded vector store for RAG.

Embeddings are quantized on insert (1-8 bits per dimension), scanned as compact codes by numba
kernels, and the best candidates are re-scored exactly from the kept originals.
"""

from .core.collection import Collection, Hit, SearchResults
from .core.index import Index
from .core.relevance import RelevanceParams, ScoreStats
from .warmup import install_compile_notice as _install_compile_notice

_install_compile_notice()  # one stderr line when a kernel compiles where a user waits

__all__ = ["Collection", "Hit", "Index", "RelevanceParams", "ScoreStats", "SearchResults"]
__version__ = "0.1.0"
