"""Calibrated relevance: a query's own score distribution turns an exact score into [0, 1].

A raw dense score means different things for different queries: one query's relevant
documents score 0.45 while another's irrelevant ones score 0.6. This module keeps, per query,
robust statistics of the scores the query gives the whole collection (estimated from a fixed,
seeded sample of its rows, see :class:`ScoreSample`) and of its own best candidates, and maps
an exact score to a relevance with two logistics whose parameters are global
(:class:`RelevanceParams`)::

    relevance = sigmoid(w_score * x + w_median * x_median + w_upper * x_upper + bias
                        + w_best * x_best + w_mean * x_mean + w_rank * -log(rank))
              * sigmoid(g_median * x_median + g_upper * x_upper + g_bias + g_best * x_best)

where ``x`` is the hit's score in cosine units (see :func:`cosine_units`), ``x_median`` and
``x_upper`` the median and 99th percentile of the query's scores over the whole collection,
``x_best`` and ``x_mean`` the best exact score of the query's candidates and the mean of the
best :data:`CANDIDATES` (10), and ``rank`` the hit's rank among them. The first factor is the
chance that a hit is relevant *given* that the collection can answer the query; the second,
the **gate**, the chance that it can: a query about something the collection does not cover
scores low against all of it (on WordNet glosses the median alone tells off-topic queries from
answerable ones with an AUC of 0.96), so the gate lowers every relevance of an off-topic query
at once and one threshold returns nothing for it. The candidate terms tell hits apart *within*
a query: how far a hit falls below the query's best, and how crowded the top is
(``benchmarks/results/relevance_features.md`` measures what each buys).

``w_score`` is positive, ``w_rank`` not negative, and the other terms are the same for every
hit of the query, so for a fixed query the relevance rises with the score: a threshold on it
keeps a prefix of the ranked hits. A search with relevance ranks at least :data:`CANDIDATES`
documents whatever its ``k``, so a hit's relevance does not depend on ``k``; with a filter,
the candidates are the documents the filter lets through (relevance then answers "how
relevant among what was asked for", at no extra search; parameters without candidate terms,
``candidates=None``, give a relevance that does not depend on the filter either).

The defaults (:data:`DEFAULT_PARAMS`) need no labels from the user; :func:`fit_params` fits
the first factor to labelled hits of answerable queries and :func:`fit_gate` the gate to
answerable and off-topic queries (``Collection.calibrate`` does both, see
:func:`calibrated_params`), and they are stored with the collection
(:meth:`RelevanceParams.to_json` / :meth:`RelevanceParams.from_json`, which checks a stored
value like the rest of a store's metadata; parameters stored before the gate or the candidate
terms existed read back without them).

Everything here is numpy on small arrays, no kernel; the only I/O is :class:`ScoreSample`
reading its rows' kept vectors through the Index.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .index.config import _normalized
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
#: how many labelled hits the current parameters weigh as when ``calibrate`` fits new ones
#: (fitted on 50 WordNet queries, 500 hits, 2 to 50 all did better than 0: 10 chosen)
PRIOR_STRENGTH = 10.0
#: metadata key under which the framework adapters keep a hit's raw score beside its relevance
RAW_SCORE_KEY = "vecpress_score"
PARAM_KEYS = ("weight_score", "weight_median", "weight_upper", "bias")
#: the query's best candidates the candidate features read: a search with relevance ranks at
#: least this many whatever its ``k``, so a hit's relevance does not depend on ``k``
CANDIDATES = 10
#: the gate's parameters, in :func:`query_features` order
GATE_KEYS = ("gate_median", "gate_upper", "gate_bias")
#: the candidate terms' parameters (:attr:`RelevanceParams.candidates`): weights of the
#: query's best score, the mean of its best :data:`CANDIDATES` and the hit's ``-log rank`` in
#: the first factor, and of the best score in the gate
CANDIDATE_KEYS = ("weight_best", "weight_mean", "weight_rank", "gate_best")


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

    ``best`` and ``best_mean`` describe the query's own candidates, the exact scores of the
    documents its search ranked first (at least :data:`CANDIDATES` of them, whatever ``k``,
    among the documents a filter lets through): the best score and the mean of the best
    :data:`CANDIDATES`. NaN when the search found nothing, or when the statistics were made
    without candidates; then :meth:`RelevanceParams.relevance` reads them off the hits given.
    """

    median: float
    spread: float
    upper: float
    sample_size: int
    rows: int
    best: float = math.nan
    best_mean: float = math.nan

    def standardized(self, scores: Any) -> np.ndarray:
        """``(score - median) / spread``: the score in units of the query's own spread."""
        return (np.asarray(scores, dtype=np.float64) - self.median) / max(self.spread, 1e-12)


def score_stats(sample_scores: np.ndarray, rows: int,
                candidates: Any = None) -> ScoreStats:
    """:class:`ScoreStats` of one query from its scores over a sample of the rows, and the
    exact scores of its ``candidates`` (the documents its search ranked first, any order)."""
    scores = np.asarray(sample_scores, dtype=np.float64)
    best, best_mean = candidate_summary(() if candidates is None else candidates)
    if scores.size == 0:
        nan = float("nan")
        return ScoreStats(nan, nan, nan, 0, int(rows), best, best_mean)
    median = float(np.median(scores))
    spread = float(np.median(np.abs(scores - median)) * MAD_TO_SIGMA)
    upper = float(np.quantile(scores, UPPER_QUANTILE))
    return ScoreStats(median, spread, upper, int(scores.size), int(rows), best, best_mean)


def candidate_summary(scores: Any) -> tuple[float, float]:
    """The best of ``scores`` and the mean of the best :data:`CANDIDATES` (NaN when empty),
    in the metric's units: :attr:`ScoreStats.best` and :attr:`ScoreStats.best_mean`."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return math.nan, math.nan
    top = -np.sort(-values)[:CANDIDATES]
    return float(top[0]), float(top.mean())


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
    if metric == "cosine":  # (scaled as the index scales its queries)
        q = _normalized(q[None, :], "query")[0]
    # einsum runs numpy's own single-threaded loop: a BLAS matrix-vector product would fan
    # out to every core and, on a busy server, wait for them (measured: 16 ms instead of 0.1)
    if metric == "l2":
        difference = vectors - q
        return -np.einsum("ij,ij->i", difference, difference)
    return np.einsum("ij,j->i", vectors, q)


@dataclass(frozen=True)
class RelevanceParams:
    """The global parameters of the relevance mapping (see the module docstring).

    ``fitted_on`` counts the labelled queries they were fitted on (0: the defaults). ``gate``
    is ``(g_median, g_upper, g_bias)``, or None for no gate (the factor is 1: parameters
    stored before the gate existed read back this way). ``candidates`` is ``(w_best, w_mean,
    w_rank, g_best)`` (:data:`CANDIDATE_KEYS`), the weights of the query's own candidates, or
    None for none (parameters stored before they existed); ``w_rank`` is not negative, so the
    relevance still rises with the score, and ``g_best`` applies only with a gate.
    """

    weight_score: float
    weight_median: float
    weight_upper: float
    bias: float
    fitted_on: int = 0
    gate: tuple[float, float, float] | None = None
    candidates: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        for field, keys in (("gate", GATE_KEYS), ("candidates", CANDIDATE_KEYS)):
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, (tuple, list)) or len(value) != len(keys):
                raise ValueError(f"{field} must be None or {len(keys)} numbers {keys}, got "
                                 f"{value!r}")
            object.__setattr__(self, field, tuple(value))
            for name, number in zip(keys, value):
                _check_param(f"{field}[{name}]", number)
        for name in PARAM_KEYS:
            _check_param(name, getattr(self, name))
        if self.weight_score <= 0:
            raise ValueError(f"weight_score must be positive (the relevance must rise with the "
                             f"score), got {self.weight_score!r}")
        if self.candidates is not None and self.candidates[2] < 0:
            raise ValueError(f"candidates[weight_rank] must not be negative (the relevance "
                             f"must rise with the score, and a better score has a better "
                             f"rank), got {self.candidates[2]!r}")
        if isinstance(self.fitted_on, bool) or not isinstance(self.fitted_on, int) \
                or self.fitted_on < 0:
            raise ValueError(f"fitted_on must be a non-negative integer, got {self.fitted_on!r}")

    def logit(self, scores: Any, stats: ScoreStats, metric: str) -> np.ndarray:
        """The first factor before the sigmoid, for the hits of one query (scores in the
        metric's units, as its search returned them)."""
        if self.candidates is None:
            return hit_features(scores, stats, metric) @ self._hit_weights()
        return hit_features(scores, stats, metric, with_candidates=True) @ np.array(
            [*self._hit_weights(), *self.candidates[:3]])

    def gate_probability(self, stats: ScoreStats, metric: str) -> float:
        """The gate: the chance that the collection answers the query at all (1 without a
        gate). With candidate weights it reads ``stats.best`` (0 when NaN: give the
        statistics of a search, or use :meth:`relevance`, which falls back on the hits)."""
        if self.gate is None:
            return 1.0
        logit = query_features(stats, metric) @ np.array(self.gate)
        if self.candidates is not None:
            best = float(cosine_units(stats.best, metric))
            logit += self.candidates[3] * (best if math.isfinite(best) else 0.0)
        return float(_sigmoid(logit))

    def relevance(self, scores: Any, stats: ScoreStats, metric: str) -> np.ndarray:
        """Relevance in [0, 1] of one query's hits, rising with the score. ``scores`` are the
        hits' (a ranked prefix of the query's candidates: a hit's rank is one plus the number
        of higher scores given); without candidate statistics in ``stats`` (NaN), the best
        and the mean of the best :data:`CANDIDATES` are taken from ``scores``."""
        stats = candidate_stats(stats, scores)
        return _sigmoid(self.logit(scores, stats, metric)) * self.gate_probability(stats, metric)

    def without_gate(self) -> "RelevanceParams":
        """The same parameters with no gate (the first factor alone)."""
        return RelevanceParams(*(getattr(self, name) for name in PARAM_KEYS),
                               fitted_on=self.fitted_on, candidates=self.candidates)

    def _hit_weights(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in PARAM_KEYS])

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["gate"] = None if self.gate is None else list(self.gate)
        if self.candidates is None:
            del out["candidates"]  # what a store written before candidate weights holds
        else:
            out["candidates"] = list(self.candidates)
        return out

    @classmethod
    def from_json(cls, value: Any, where: Path | str) -> "RelevanceParams":
        """Parameters read from a store, checked: ``StoreCorruptedError`` naming ``where``
        and the rule when the value is not what :meth:`to_json` writes."""
        rule = None
        optional = {"gate", "candidates"}
        if not isinstance(value, dict):
            rule = f"is {type(value).__name__}, it must be a JSON object"
        elif set(value) - optional != {*PARAM_KEYS, "fitted_on"}:
            rule = (f"has keys {sorted(map(str, value))[:8]}, it must have exactly "
                    f"{sorted({*PARAM_KEYS, 'fitted_on', *optional})} ('gate' and "
                    f"'candidates' may be absent)")
        else:
            try:
                return cls(**value)
            except ValueError as exc:
                rule = str(exc)
        raise StoreCorruptedError(f"{where}: the stored relevance parameters {rule}; the "
                                  f"metadata was edited or is corrupted; calibrate again or "
                                  f"restore the store from a copy")


def candidate_stats(stats: ScoreStats, scores: Any) -> ScoreStats:
    """``stats``, with the candidate statistics taken from ``scores`` when it has none."""
    if math.isfinite(stats.best) and math.isfinite(stats.best_mean):
        return stats
    return replace(stats, **dict(zip(("best", "best_mean"), candidate_summary(scores))))


def _check_param(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or abs(value) > MAX_PARAM:
        raise ValueError(f"{name} must be a finite number of magnitude at most "
                         f"{MAX_PARAM:g}, got {value!r}")


def _sigmoid(logit: Any) -> np.ndarray:
    # the two branches keep exp() from overflowing for logits of either sign
    logit = np.asarray(logit, dtype=np.float64)
    out = np.empty_like(logit)
    positive = logit >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logit[positive]))
    e = np.exp(logit[~positive])
    out[~positive] = e / (1.0 + e)
    return out


#: unsupervised defaults: no labels from the user. Fitted once with
#: ``python -m benchmarks.bench_relevance --fit-defaults`` (all-MiniLM-L6-v2, 100k WordNet
#: glosses, k=10), rounded and frozen here: 1,703 WordNet queries of the three kinds of
#: ``benchmarks/wordnet_queries.py`` (synonyms, senses, neighbours) drawn apart from the
#: benchmark's, and 600 off-topic sentences of Debian package descriptions (a genre the
#: benchmark does not use); logistic fits first (the gate weighing both classes equally),
#: then a direct search for the precision at 90% recall with 90% of the off-topic queries
#: empty (``benchmarks.bench_relevance.fit_for_threshold``). The corpus is the benchmark's own
#: family (WordNet), which flatters them (``benchmarks/relevance_features.py`` measures how
#: they carry to an unseen kind of query and to another corpus). They suit unit-length
#: sentence embeddings; ``Collection.calibrate`` fits a collection's own.
DEFAULT_PARAMS = RelevanceParams(weight_score=16.05, weight_median=2.80, weight_upper=-8.40,
                                 bias=-3.28, gate=(70.76, 23.75, -15.76),
                                 candidates=(-1.48, -7.63, 0.085, 12.68))


# ---------------------------------------------------------------------- fitting


def hit_features(scores: Any, stats: ScoreStats, metric: str, *,
                 with_candidates: bool = False) -> np.ndarray:
    """The first factor's inputs for one query's hits: columns ``x``, ``x_median``,
    ``x_upper``, 1 (``logit = features @ parameters`` in :data:`PARAM_KEYS` order), and with
    ``with_candidates`` also ``x_best``, ``x_mean`` (``stats.best``, ``stats.best_mean``, or
    from ``scores`` when NaN) and ``-log rank``, a hit's rank being one plus the number of
    higher ``scores`` (ties share it, so equal scores get equal relevance)."""
    x = np.atleast_1d(cosine_units(scores, metric))
    median = float(cosine_units(stats.median, metric))
    upper = float(cosine_units(stats.upper, metric))
    if not (math.isfinite(median) and math.isfinite(upper)):  # an empty sample: no context
        median = upper = 0.0
    columns = [x, np.full_like(x, median), np.full_like(x, upper), np.ones_like(x)]
    if with_candidates:
        best, best_mean = _candidate_units(candidate_stats(stats, scores), metric)
        ascending = np.sort(x)
        rank = 1 + len(x) - np.searchsorted(ascending, x, side="right")
        columns += [np.full_like(x, best), np.full_like(x, best_mean), -np.log(rank)]
    return np.column_stack(columns)


def _candidate_units(stats: ScoreStats, metric: str) -> tuple[float, float]:
    best = float(cosine_units(stats.best, metric))
    best_mean = float(cosine_units(stats.best_mean, metric))
    if not (math.isfinite(best) and math.isfinite(best_mean)):  # no candidates: no context
        return 0.0, 0.0
    return best, best_mean


def query_features(stats: ScoreStats, metric: str, *,
                   with_candidates: bool = False) -> np.ndarray:
    """The gate's inputs for one query: ``x_median``, ``x_upper``, 1 (:data:`GATE_KEYS`
    order; zeros and 1 for an empty sample), and with ``with_candidates`` also ``x_best``
    (``stats.best``; 0 when NaN)."""
    features = hit_features([0.0], stats, metric)[0, 1:]
    if with_candidates:
        features = np.append(features, _candidate_units(stats, metric)[0])
    return features


def fit_gate(features: Any, answerable: Any, *, balanced: bool = False,
             ridge: float = RIDGE) -> tuple[float, ...]:
    """The gate's parameters: logistic regression of ``answerable`` (1: the collection holds
    a document relevant to the query, 0: an off-topic query) on per-query ``features``
    (rows of :func:`query_features`: 3 columns, or 4 with candidates, giving 3 or 4
    parameters). ``balanced`` weighs both classes equally (an off-topic query as likely as
    an answerable one); otherwise the mix given is the prior.
    """
    w = _fit_logistic(features, answerable, (len(GATE_KEYS), len(GATE_KEYS) + 1), 2, ridge,
                      balanced=balanced,
                      one_class="fitting the gate needs both answerable queries and off-topic "
                                "ones (queries with no relevant document)")
    return tuple(float(v) for v in w)


def calibrated_params(searches: Sequence[tuple[Any, ScoreStats, Sequence[bool], bool]],
                      metric: str, fallback: RelevanceParams, *,
                      prior_strength: float = PRIOR_STRENGTH) -> RelevanceParams:
    """Parameters fitted to labelled searches, ``(hit scores, stats, hit labels,
    answerable)`` per query (``answerable``: the query has relevant documents at all).

    The first factor, with candidate weights, is fitted on the answerable queries' hits
    (:func:`fit_params`), pulled towards ``fallback``'s with ``prior_strength`` (a handful
    of labels adjusts the current parameters rather than replacing them; many labels
    outweigh it); the gate on every query (:func:`fit_gate`) when there are both
    answerable and off-topic ones, and otherwise kept from ``fallback`` with its weight of
    the best score (one cannot learn "nothing relevant" without examples of it).
    """
    hits = [(hit_features(scores, stats, metric, with_candidates=True), labels)
            for scores, stats, labels, answerable in searches if answerable and len(labels)]
    if not hits:
        raise ValueError("no answerable query found documents to label: give some queries "
                         "non-empty relevant ids, and add documents first")
    params = fit_params(np.vstack([f for f, _ in hits]),
                        np.concatenate([np.asarray(y, dtype=bool) for _, y in hits]),
                        fitted_on=len(searches), prior=fallback, strength=prior_strength)
    kinds = {bool(answerable) for *_, answerable in searches}
    gate = fallback.gate
    gate_best = fallback.candidates[3] if fallback.candidates and gate is not None else 0.0
    if len(kinds) == 2:
        *gate, gate_best = fit_gate(
            np.vstack([query_features(candidate_stats(stats, scores), metric,
                                      with_candidates=True)
                       for scores, stats, _, _ in searches]),
            np.array([bool(a) for *_, a in searches]))
    assert params.candidates is not None
    return RelevanceParams(*(getattr(params, name) for name in PARAM_KEYS),
                           fitted_on=len(searches), gate=None if gate is None else tuple(gate),
                           candidates=(*params.candidates[:3], gate_best))


def fit_params(features: Any, labels: Any, *, fitted_on: int = 0, ridge: float = RIDGE,
               prior: RelevanceParams | None = None, strength: float = 0.0) -> RelevanceParams:
    """Logistic regression of ``labels`` (1 relevant, 0 not) on ``features`` (rows from
    :func:`hit_features`, with or without candidates), by Newton's method (a slight ridge
    keeps separable labels finite; ``strength`` > 0 pulls the weights towards ``prior``'s,
    a prior worth about ``strength`` labelled hits). With candidates, a negative weight of
    the rank is held at 0 (the fit is redone without it) so that relevance still rises with
    the score. ``ValueError`` when relevance would not rise with the score."""
    width = len(PARAM_KEYS)
    one_class = ("the labelled hits must include both relevant and irrelevant ones to fit a "
                 "threshold; label more queries, or a larger k")
    center = None
    if prior is not None:
        center = np.r_[prior._hit_weights(), prior.candidates[:3] if prior.candidates
                       else np.zeros(3)][:np.shape(features)[1]]
    full = _fit_logistic(features, labels, (width, width + 3), 3, ridge, one_class=one_class,
                         center=center, strength=strength)
    if len(full) > width and full[-1] < 0:
        full = np.append(_fit_logistic(np.asarray(features)[:, :-1], labels, (width + 2,), 3,
                                       ridge, one_class=one_class,
                                       center=None if center is None else center[:-1],
                                       strength=strength), 0.0)
    if full[0] <= 0:
        raise ValueError("the labels do not rise with the score (relevant hits score no "
                         "higher than irrelevant ones); check that relevant_ids match the "
                         "queries")
    candidates = None if len(full) == width else (*map(float, full[width:]), 0.0)
    return RelevanceParams(*map(float, full[:width]), fitted_on=fitted_on, candidates=candidates)


def _fit_logistic(features: Any, labels: Any, widths: tuple[int, ...], bias: int,
                  ridge: float, *, one_class: str, balanced: bool = False,
                  center: np.ndarray | None = None, strength: float = 0.0) -> np.ndarray:
    """Weights of a logistic regression of ``labels`` on ``features`` (n, one of
    ``widths``), column ``bias`` the unpenalised bias; ``one_class`` is the error when the
    labels are all alike. ``balanced`` weighs both classes equally; ``strength`` pulls the
    weights towards ``center`` (a prior worth about that many labelled rows)."""
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] not in widths or len(X) != len(y):
        raise ValueError(f"features must be (n, {' or '.join(map(str, widths))}) with one "
                         f"label each, got {X.shape} and {y.shape}")
    if len(y) == 0 or y.min() == y.max():
        raise ValueError(one_class)
    weights = None
    if balanced:
        positive = y.mean()
        weights = np.where(y > 0, 0.5 / positive, 0.5 / (1 - positive))
    return _newton(X, y, ridge, penalised=[c != bias for c in range(X.shape[1])],
                   weights=weights, center=center, strength=strength)


def _newton(X: np.ndarray, y: np.ndarray, ridge: float, penalised: list[bool],
            steps: int = 100, weights: np.ndarray | None = None,
            center: np.ndarray | None = None, strength: float = 0.0) -> np.ndarray:
    """Logistic weights by Newton's method: a ridge of ``ridge`` per row on the ``penalised``
    weights, plus ``strength`` (in all) pulling every weight towards ``center``."""
    penalty = ridge * np.diag(np.asarray(penalised, dtype=np.float64)) * len(y)
    weight = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    center = np.zeros(X.shape[1]) if center is None else np.asarray(center, dtype=np.float64)
    prior = strength * np.eye(X.shape[1])
    w = center.copy() if strength > 0 else np.zeros(X.shape[1])
    for _ in range(steps):
        p = _sigmoid(X @ w)
        gradient = X.T @ (weight * (p - y)) + penalty @ w + prior @ (w - center)
        hessian = (X * (weight * p * (1 - p))[:, None]).T @ X + penalty + prior \
            + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w
