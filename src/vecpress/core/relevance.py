"""Calibrated relevance: a query's own score distribution turns an exact score into [0, 1].

A raw dense score means different things for different queries: one query's relevant
documents score 0.45 while another's irrelevant ones score 0.6. This module keeps, per query,
robust statistics of the scores the query gives the whole collection (estimated from a fixed,
seeded sample of its rows, see :class:`ScoreSample`), and maps an exact score to a relevance
with one logistic whose parameters are global (:class:`RelevanceParams`)::

    relevance = sigmoid(w_score * x + w_median * x_median + w_upper * x_upper + bias)

where ``x`` is the hit's score in cosine units (see :func:`cosine_units`), ``x_median`` and
``x_upper`` the median and 99th percentile of the query's scores over the whole collection.
``w_score`` is positive, so for a fixed query the relevance rises with the score: a threshold
on it keeps a prefix of the ranked hits. The query's terms say how it sits in this
collection: a query about something the collection does not cover scores low against all of
it (measured on WordNet glosses, the median alone tells off-topic queries from answerable
ones with an AUC of 0.96). They do not depend on the other hits, so a document's relevance
is the same with or without a filter, and whatever ``k`` is.

The defaults (:data:`DEFAULT_PARAMS`) need no labels from the user; :func:`fit_params` fits
the four numbers to labelled hits (``Collection.calibrate``), and they are stored with the
collection (:meth:`RelevanceParams.to_json` / :meth:`RelevanceParams.from_json`, which checks
a stored value like the rest of a store's metadata).

Everything here is numpy on small arrays, no kernel; the only I/O is :class:`ScoreSample`
reading its rows' kept vectors through the Index.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .storage import StoreCorruptedError

#: rows of the collection scored per query for its statistics (all rows when fewer exist)
SAMPLE_ROWS = 2048
#: seed of the rows drawn for that sample: the same collection gives the same statistics
SAMPLE_SEED = 0
#: the quantile that stands for the upper tail of a query's scores
UPPER_QUANTILE = 0.99
#: median absolute deviation times this is the standard deviation of a normal distribution
MAD_TO_SIGMA = 1.482602218505602
#: largest magnitude a stored parameter may have (a fitted weight is far smaller)
MAX_PARAM = 1e6
#: ridge penalty on the weights while fitting (keeps separable labels finite)
RIDGE = 1e-6
#: metadata key under which the framework adapters keep a hit's raw score beside its relevance
RAW_SCORE_KEY = "vecpress_score"
PARAM_KEYS = ("weight_score", "weight_median", "weight_upper", "bias")


def cosine_units(scores: Any, metric: str) -> np.ndarray:
    """Scores of ``metric`` on the cosine scale (float64): cosine and inner product as they
    are, L2 scores (``-d²``) as ``1 + s / 2``, the cosine of unit vectors at that distance.
    The default parameters assume unit-length embeddings; :func:`fit_params` fits any scale."""
    values = np.asarray(scores, dtype=np.float64)
    return 1.0 + values / 2.0 if metric == "l2" else values


@dataclass(frozen=True)
class ScoreStats:
    """Robust statistics of one query's scores over the collection, in the metric's units.

    ``median`` and ``spread`` (median absolute deviation scaled to a standard deviation) are
    the location and scale, ``upper`` the 99th percentile (the upper tail), all estimated from
    ``sample_size`` of the ``rows`` rows (exact when they are equal; NaN when empty).
    """

    median: float
    spread: float
    upper: float
    sample_size: int
    rows: int

    def standardized(self, scores: Any) -> np.ndarray:
        """``(score - median) / spread``: the score in units of the query's own spread."""
        return (np.asarray(scores, dtype=np.float64) - self.median) / max(self.spread, 1e-12)


def score_stats(sample_scores: np.ndarray, rows: int) -> ScoreStats:
    """:class:`ScoreStats` of one query from its scores over a sample of the rows."""
    scores = np.asarray(sample_scores, dtype=np.float64)
    if scores.size == 0:
        nan = float("nan")
        return ScoreStats(nan, nan, nan, 0, int(rows))
    median = float(np.median(scores))
    spread = float(np.median(np.abs(scores - median)) * MAD_TO_SIGMA)
    upper = float(np.quantile(scores, UPPER_QUANTILE))
    return ScoreStats(median, spread, upper, int(scores.size), int(rows))


def sample_rows(live_ids: np.ndarray, size: int = SAMPLE_ROWS,
                seed: int = SAMPLE_SEED) -> np.ndarray:
    """A seeded, sorted sample of at most ``size`` of ``live_ids`` (all of them when fewer)."""
    live = np.asarray(live_ids, dtype=np.int64)
    if len(live) <= size:
        return np.sort(live)
    picked = np.random.default_rng(seed).choice(len(live), size=size, replace=False)
    return np.sort(live[picked])


class ScoreSample:
    """A fixed, seeded sample of an index's live rows (:func:`sample_rows`), scored against
    each query to estimate its score distribution (:class:`ScoreStats`).

    The sample's kept vectors are read once (``SAMPLE_ROWS * dim`` float32, 3 MB at 384
    dimensions) and reused until the index changes; then one query costs one small
    matrix-vector product. An index without kept vectors (``rerank=False`` with a quantized
    code) scores the sample through its own search restricted to those rows: estimated
    scores, like the hits it returns.
    """

    def __init__(self, index: Any) -> None:
        self._index = index
        self.rows = len(index)
        self.ids = sample_rows(index.ids)
        try:
            self._vectors: np.ndarray | None = index.get(self.ids) if len(self.ids) else \
                np.zeros((0, index.dim), dtype=np.float32)
        except ValueError:  # no kept vectors
            self._vectors = None

    def scores(self, query: np.ndarray) -> np.ndarray:
        """The metric's score of ``query`` (one vector) against every sampled row."""
        if self._vectors is None:
            found, ids = self._index.search(query, len(self.ids), mask=self.ids, oversample=1)
            return found[0][ids[0] >= 0]
        return exact_scores(np.asarray(query, dtype=np.float32).reshape(-1), self._vectors,
                            self._index.metric)


def exact_scores(query: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """The metric's score (higher is better) of one query against kept vectors (which the
    index normalised for cosine): cosine or inner product, or ``-d²`` for L2."""
    q = query.astype(np.float32)
    if metric == "cosine":
        q = q / np.linalg.norm(q)
    # einsum runs numpy's own single-threaded loop: a BLAS matrix-vector product would fan
    # out to every core and, on a busy server, wait for them (measured: 16 ms instead of 0.1)
    if metric == "l2":
        difference = vectors - q
        return -np.einsum("ij,ij->i", difference, difference)
    return np.einsum("ij,j->i", vectors, q)


@dataclass(frozen=True)
class RelevanceParams:
    """The global parameters of the relevance mapping (see the module docstring).

    ``fitted_on`` counts the labelled queries they were fitted on (0: the defaults).
    """

    weight_score: float
    weight_median: float
    weight_upper: float
    bias: float
    fitted_on: int = 0

    def __post_init__(self) -> None:
        for name in PARAM_KEYS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or abs(value) > MAX_PARAM:
                raise ValueError(f"{name} must be a finite number of magnitude at most "
                                 f"{MAX_PARAM:g}, got {value!r}")
        if self.weight_score <= 0:
            raise ValueError(f"weight_score must be positive (the relevance must rise with the "
                             f"score), got {self.weight_score!r}")
        if isinstance(self.fitted_on, bool) or not isinstance(self.fitted_on, int) \
                or self.fitted_on < 0:
            raise ValueError(f"fitted_on must be a non-negative integer, got {self.fitted_on!r}")

    def logit(self, scores: Any, stats: ScoreStats, metric: str) -> np.ndarray:
        """The mapping before the sigmoid, for the hits of one query (scores in the metric's
        units, as its search returned them)."""
        return hit_features(scores, stats, metric) @ np.array(
            [getattr(self, name) for name in PARAM_KEYS])

    def relevance(self, scores: Any, stats: ScoreStats, metric: str) -> np.ndarray:
        """Relevance in [0, 1] of one query's hits, rising with the score."""
        return _sigmoid(self.logit(scores, stats, metric))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any, where: Path | str) -> "RelevanceParams":
        """Parameters read from a store, checked: ``StoreCorruptedError`` naming ``where``
        and the rule when the value is not what :meth:`to_json` writes."""
        rule = None
        if not isinstance(value, dict):
            rule = f"is {type(value).__name__}, it must be a JSON object"
        elif set(value) != {*PARAM_KEYS, "fitted_on"}:
            rule = (f"has keys {sorted(map(str, value))[:8]}, it must have exactly "
                    f"{sorted({*PARAM_KEYS, 'fitted_on'})}")
        else:
            try:
                return cls(**value)
            except ValueError as exc:
                rule = str(exc)
        raise StoreCorruptedError(f"{where}: the stored relevance parameters {rule}; the "
                                  f"metadata was edited or is corrupted; calibrate again or "
                                  f"restore the store from a copy")


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    # the two branches keep exp() from overflowing for logits of either sign
    out = np.empty_like(logit, dtype=np.float64)
    positive = logit >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logit[positive]))
    e = np.exp(logit[~positive])
    out[~positive] = e / (1.0 + e)
    return out


#: unsupervised defaults: no labels from the user. Fitted once, with :func:`fit_params`, on
#: 591 WordNet synonym queries disjoint from the benchmark's and 600 off-topic sentences of
#: Debian package descriptions (as many off-topic as answerable queries; all-MiniLM-L6-v2,
#: 100k glosses, k=10;
#: ``python -m benchmarks.bench_relevance --fit-defaults``), rounded and frozen here. They
#: suit unit-length sentence embeddings; ``Collection.calibrate`` fits a collection's own.
DEFAULT_PARAMS = RelevanceParams(weight_score=13.83, weight_median=14.58, weight_upper=-7.70,
                                 bias=-9.28)


# ---------------------------------------------------------------------- fitting


def hit_features(scores: Any, stats: ScoreStats, metric: str) -> np.ndarray:
    """The mapping's inputs for one query's hits: columns ``x``, ``x_median``, ``x_upper``,
    1 (``logit = features @ parameters`` in :data:`PARAM_KEYS` order)."""
    x = np.atleast_1d(cosine_units(scores, metric))
    median = float(cosine_units(stats.median, metric))
    upper = float(cosine_units(stats.upper, metric))
    if not (math.isfinite(median) and math.isfinite(upper)):  # an empty sample: no context
        median = upper = 0.0
    return np.column_stack([x, np.full_like(x, median), np.full_like(x, upper),
                            np.ones_like(x)])


def fit_params(features: Any, labels: Any, *, fitted_on: int = 0,
               ridge: float = RIDGE) -> RelevanceParams:
    """Logistic regression of ``labels`` (1 relevant, 0 not) on ``features`` (rows from
    :func:`hit_features`), by Newton's method (a slight ridge keeps separable labels
    finite). ``ValueError`` when relevance would not rise with the score."""
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    width = len(PARAM_KEYS)
    if X.ndim != 2 or X.shape[1] != width or len(X) != len(y):
        raise ValueError(f"features must be (n, {width}) with one label each, got {X.shape} "
                         f"and {y.shape}")
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("the labelled hits must include both relevant and irrelevant ones "
                         "to fit a threshold; label more queries, or a larger k")
    full = _newton(X, y, ridge, penalised=[c != width - 1 for c in range(width)])
    if full[0] <= 0:
        raise ValueError("the labels do not rise with the score (relevant hits score no "
                         "higher than irrelevant ones); check that relevant_ids match the "
                         "queries")
    return RelevanceParams(*map(float, full), fitted_on=fitted_on)


def _newton(X: np.ndarray, y: np.ndarray, ridge: float, penalised: list[bool],
            steps: int = 100) -> np.ndarray:
    penalty = ridge * np.diag(np.asarray(penalised, dtype=np.float64)) * len(y)
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = _sigmoid(X @ w)
        gradient = X.T @ (p - y) + penalty @ w
        hessian = (X * (p * (1 - p))[:, None]).T @ X + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w
