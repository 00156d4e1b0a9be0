"""How a :class:`~vecpress.core.collection.Collection` searches: dense (filter to a row mask,
then the index's scan and rerank), text (SQLite FTS5, BM25), hybrid (the two fused) and maximal
marginal relevance, with the cached filter masks and calibrated relevance they use."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .. import filters as filters_module
from .. import relevance as relevance_module
from ..index.config import _normalized
from ..relevance import ScoreSample, ScoreStats
from ..validate import as_matrix, as_positive_int
from .results import Hit
from .validation import _checked_relevance

SEARCH_MODES = ("dense", "text", "hybrid")
FUSIONS = ("rrf", "weighted")
#: reciprocal rank fusion constant (Cormack et al. 2009)
RRF_K = 60


def checked_search_options(k: Any, mode: Any, relevance: Any, min_relevance: Any, fusion: Any,
                           alpha: Any, fetch_k: Any) -> tuple[int, bool, float | None, int | None]:
    """A search's options checked before anything runs (one rule for ``Collection`` and
    ``ShardedCollection``): ``(k, relevance, min_relevance, fetch_k)``, where ``relevance``
    is also true when a ``min_relevance`` is given."""
    k = as_positive_int(k, "k")
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {', '.join(SEARCH_MODES)}")
    if min_relevance is not None:
        min_relevance = _checked_relevance(min_relevance, "min_relevance")
    if not isinstance(relevance, bool):
        raise TypeError(f"relevance must be True or False, got {relevance!r}")
    relevance = relevance or min_relevance is not None
    if relevance and mode != "dense":
        raise ValueError(f"relevance and min_relevance apply to mode='dense' (calibrated "
                         f"vector scores), but mode={mode!r}; drop them or search densely")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is unknown; use 'rrf' or 'weighted'")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if fetch_k is not None:
        fetch_k = as_positive_int(fetch_k, "fetch_k")
    return k, relevance, min_relevance, fetch_k


def maximal_marginal_relevance(query: np.ndarray, candidates: np.ndarray, k: int,
                               lambda_mult: float) -> list[int]:
    """Indices of ``k`` candidates chosen greedily by ``lambda * sim(query, d) - (1 - lambda) *
    max sim(d, chosen)``, with cosine similarity (Carbonell & Goldstein 1998)."""
    if len(candidates) == 0:
        return []
    unit = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    relevance = unit @ q
    chosen = [int(np.argmax(relevance))]
    redundancy = unit @ unit[chosen[0]]
    while len(chosen) < min(k, len(candidates)):
        value = lambda_mult * relevance - (1.0 - lambda_mult) * redundancy
        value[chosen] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return chosen


def fuse_rankings(dense: list[tuple[Any, float]], text: list[tuple[Any, float]], k: int,
                  alpha: float, fusion: str, *, dense_scores: Any, text_scores: Any
                  ) -> list[tuple[Any, float]]:
    """The hybrid ranking: the best ``k`` ``(key, fused score)`` of two ranked lists of
    ``(key, score)`` (best first), ties broken by key.

    ``"rrf"`` scores ``alpha / (60 + dense rank) + (1 - alpha) / (60 + text rank)``;
    ``"weighted"`` scores ``alpha * dense + (1 - alpha) * text`` over every candidate, with the
    dense scores min-max scaled and BM25 divided by its maximum; it asks
    ``dense_scores(keys, known)`` (a dict holding every key) and ``text_scores(keys)`` (a dict;
    absent keys do not match) for the scores the two lists do not give. Keys are row ids in a
    :class:`Collection`, string ids in a sharded one.
    """
    fused: dict[Any, float] = {}
    if fusion == "rrf":
        for weight, ranked in ((alpha, dense), (1.0 - alpha, text)):
            for rank, (key, _) in enumerate(ranked, start=1):
                fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank)
    else:
        keys = list(dict.fromkeys([key for key, _ in dense] + [key for key, _ in text]))
        dense_of = dense_scores(keys, dict(dense))
        text_of = text_scores(keys)
        d = np.array([dense_of[key] for key in keys])
        t = np.array([text_of.get(key, 0.0) for key in keys])
        span = d.max() - d.min() if len(d) else 0.0
        d = (d - d.min()) / span if span > 0 else np.ones_like(d)
        t = t / t.max() if len(t) and t.max() > 0 else np.zeros_like(t)
        fused = dict(zip(keys, (alpha * d + (1.0 - alpha) * t).tolist()))
    order = sorted(fused, key=lambda key: (-fused[key], key))[:k]
    return [(key, fused[key]) for key in order]



class _Search:
    """The :class:`~vecpress.core.collection.Collection` methods behind its searches."""

    # ------------------------------------------------------------------ internals: search
    def _query_vector(self, vector: Any) -> np.ndarray:
        query = as_matrix(vector, self.dim, "vector", allow_1d=True)
        if len(query) != 1:
            raise ValueError(f"vector must be one query vector of shape ({self.dim},), got shape "
                             f"{np.shape(vector)}")
        return query

    def _at_most_documents(self, k: int) -> int:
        """``k``, or the number of documents when fewer exist (counted in SQLite only when
        ``k`` exceeds the Index size: a read-only view's Index may lag the database)."""
        bound = len(self._index)
        if k > bound:
            bound = max(bound, self._store.count())
        return min(k, bound)

    def _matching(self, node: filters_module.Filter) -> np.ndarray:
        """Sorted row ids of the documents matching a filter (cached until the next write)."""
        return self._filter_entry(node)[0]

    def _filter_entry(self, node: filters_module.Filter) -> list:
        """``[sorted row ids, Index row mask or None]`` of a filter, from the cache if there."""
        key = repr(node)  # repr tells True, 1 and 1.0 apart; equality and hashing do not
        entry = self._cached(key)
        if entry is None:
            rowids = filters_module.evaluate(node, self._store.selected_rowids, self._universe)
            entry = self._remember(key, [rowids, None])
        return entry

    def _universe(self) -> np.ndarray:
        entry = self._cached("")
        if entry is None:
            entry = self._remember("", [self._store.rowids(), None])
        return entry[0]

    def _cached(self, key: str) -> list | None:
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
            return entry

    def _remember(self, key: str, entry: list) -> list:
        if self._cache_size:
            with self._cache_lock:
                self._cache[key] = entry
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return entry

    def _row_mask(self, entry: list) -> np.ndarray:
        """A boolean mask over the Index rows allowing the entry's row ids (kept with it)."""
        if entry[1] is not None:
            return entry[1]
        allowed = entry[0]
        row_ids = self._index.row_ids
        size = max(int(row_ids.max(initial=-1)), int(allowed.max())) + 1
        table = np.zeros(size, dtype=np.bool_)
        table[allowed] = True
        mask = table[np.maximum(row_ids, 0)] & (row_ids >= 0)
        entry[1] = mask
        return mask

    def _dense(self, query: np.ndarray, k: int, node: filters_module.Filter | None,
               oversample: int | None,
               nprobe: int | None = None) -> list[tuple[int, float, tuple]]:
        """``(rowid, score, (id, text, metadata JSON))``, best first, for documents that exist."""
        mask = None
        if node is not None:
            entry = self._filter_entry(node)
            if len(entry[0]) == 0:
                return []
            mask = self._row_mask(entry)
        # no search can return more rows than the index holds, so no request is sized past it
        limit = len(self._index)
        want = min(k, limit)
        if want == 0:
            return []
        while True:
            scores, ids = self._index.search(query, want, mask=mask, oversample=oversample,
                                             nprobe=nprobe)
            keep = ids[0] >= 0
            found_ids, found_scores = ids[0][keep], scores[0][keep]
            docs = self._store.by_rowid(found_ids.tolist())
            ranked = [(int(r), float(s), docs[int(r)]) for r, s in zip(found_ids, found_scores)
                      if int(r) in docs]
            # Vectors without a document exist only in a read-only view of a store being
            # written; ask for more until k documents are found or the index is exhausted.
            if len(ranked) >= k or len(found_ids) < want or want >= limit:
                return ranked[:k]
            want = min(2 * want, limit)

    def _text(self, match: str | None, k: int,
              node: filters_module.Filter | None) -> list[tuple[int, float, tuple]]:
        if match is None:
            return []
        allowed = None
        if node is not None:
            allowed = self._matching(node)
            if len(allowed) == 0:
                return []
        return [(r, s, (i, t, m))
                for r, s, i, t, m in self._store.text_search(match, k, allowed)]

    def _hybrid(self, query: np.ndarray, match: str | None, k: int,
                node: filters_module.Filter | None, fetch_k: int, alpha: float, fusion: str,
                oversample: int | None,
                nprobe: int | None = None) -> list[tuple[int, float, tuple]]:
        dense = self._dense(query, max(fetch_k, k), node, oversample, nprobe)
        text = self._text(match, max(fetch_k, k), node)
        docs = {r: d for r, _, d in dense}
        docs.update({r: d for r, _, d in text})
        fused = fuse_rankings(
            [(r, s) for r, s, _ in dense], [(r, s) for r, s, _ in text], k, alpha, fusion,
            dense_scores=lambda rowids, known: self._dense_scores(query[0], rowids, known),
            text_scores=lambda rowids: (self._store.text_scores(match, rowids)
                                        if match is not None else {}))
        return [(r, score, docs[r]) for r, score in fused]

    def _dense_scores(self, query: np.ndarray, rowids: list[int],
                      known: dict[int, float]) -> dict[int, float]:
        """Exact dense scores of ``rowids`` (from the kept vectors when not already known).

        Rows without a kept vector get the lowest score among the others (the floor): with
        ``rerank=False`` no vectors are kept, and a read-only view's Index lacks the rows
        written after it was opened (see :meth:`refresh`) although SQLite finds their text.
        """
        scores = dict(known)
        missing = [r for r in rowids if r not in scores]
        present = self._index.contains(missing) if missing else []
        held = [r for r, p in zip(missing, present) if p]
        if held:
            try:
                scores.update(zip(held, self._exact_scores(query, held)))
            except ValueError:  # no kept vectors (rerank=False): outside the dense top list
                pass
        floor = min(scores.values()) if scores else 0.0
        scores.update((r, floor) for r in missing if r not in scores)
        return scores

    def _exact_scores(self, query: np.ndarray, rowids: list[int]) -> list[float]:
        """The metric's score of ``query`` against the kept vectors of ``rowids``."""
        vectors = self._index.get(rowids)
        q = query.astype(np.float32)
        if self.metric == "cosine":  # (scaled as the index scales its queries)
            q = _normalized(q[None, :], "query")[0]
        if self.metric == "l2":
            values = -np.sum((vectors - q) ** 2, axis=1)
        else:
            values = vectors @ q
        return values.astype(float).tolist()

    def _vectors(self, rowids: list[int], purpose: str) -> np.ndarray:
        try:
            return self._index.get(rowids)
        except ValueError as exc:
            raise ValueError(f"{purpose} needs the exact vectors: {exc}") from None

    def _attach_vectors(self, hits: list[Hit], rowids: list[int]) -> None:
        present = self._index.contains(rowids)  # (a lookup, not a scan of every id)
        wanted = [r for r, p in zip(rowids, present) if p]
        vectors = iter(self._vectors(wanted, "include_vectors") if wanted else [])
        for hit, p in zip(hits, present):
            hit.vector = next(vectors) if p else None

    def _hits(self, ranked: list[tuple[int, float, tuple]], include_vectors: bool) -> list[Hit]:
        hits = [Hit(doc[0], score, doc[1], json.loads(doc[2])) for _, score, doc in ranked]
        if include_vectors and hits:
            self._attach_vectors(hits, [r for r, _, _ in ranked])
        return hits

    def _clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._sample = None

    def _score_sample(self) -> ScoreSample:
        """The rows a query's score statistics come from, drawn after each write."""
        with self._cache_lock:
            sample = self._sample
        if sample is None:
            sample = ScoreSample(self._index)  # (two threads may both draw it: same rows)
            with self._cache_lock:
                self._sample = sample
        return sample

    def _with_relevance(self, query: np.ndarray, ranked: list[tuple[int, float, tuple]],
                        k: int, min_relevance: float | None
                        ) -> tuple[list[tuple[int, float, tuple]], list[float], ScoreStats]:
        """The first ``k`` of ``ranked`` (the query's candidates, best first) with the
        relevance of each hit (those below ``min_relevance`` dropped: a suffix, since
        relevance rises with the score) and the query's statistics (with the candidates')."""
        sample = self._score_sample()
        stats = relevance_module.score_stats(sample.scores(query[0]), sample.rows,
                                             [s for _, s, _ in ranked])
        ranked = ranked[:k]
        params = self._relevance
        values = params.relevance([s for _, s, _ in ranked], stats, self.metric).tolist() \
            if ranked else []
        if min_relevance is not None:
            keep = [i for i, v in enumerate(values) if v >= min_relevance]
            ranked, values = [ranked[i] for i in keep], [values[i] for i in keep]
        return ranked, values, stats


# ---------------------------------------------------------------------- validation helpers
