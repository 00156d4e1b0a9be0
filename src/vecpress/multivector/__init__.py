"""Multi-vector (late-interaction) retrieval: token matrices -> MUVERA fixed-dimensional
encodings in a quantized :class:`~vecpress.Index`, tokens float16 on disk, exact MaxSim rerank.

    from vecpress.multivector import MultiVectorCollection
    store = MultiVectorCollection(dim=384, path="mv")
    store.upsert(["a"], [token_matrix], texts=["..."], metadatas=[{"lang": "en"}])
    hits = store.search(query_tokens, k=10, where={"lang": "en"})
"""

from .fde import FDEConfig, FDEEncoder
from .maxsim import maxsim_brute_force, maxsim_scores
from .store import MultiVectorCollection

__all__ = ["FDEConfig", "FDEEncoder", "MultiVectorCollection", "maxsim_brute_force", "maxsim_scores"]
