"""Which per-query features could a calibrated relevance use? An offline study for issue #17.

``python -m benchmarks.bench_relevance`` measures what vecpress ships. This study asks what
richer inputs would have bought, on the same data but without the store: exact top-100 lists
by brute force (numpy over the 100,000 unit-normalised WordNet glosses), the same seeded
2,048-row sample for the statistics, k=10.

Evaluated: the three labelled sets of ``benchmarks/wordnet_queries.py`` (queries 50-599 drawn
with seed 0) plus the benchmark's 300 off-topic queries. Fitted on: queries of the three
kinds drawn with seed 1 (texts not among the evaluated ones) plus 600 package description
sentences, like ``bench_relevance --fit-defaults``. Rows, per set (precision at 90% recall
and its ratio to raw cosine's, and the off-topic queries left empty there):

- raw cosine; raw cosine with every off-topic hit dropped (a perfect gate: the most a
  query-level gate can add to the precision); the best any per-query cutoff could do (an
  oracle that knows the labels: how far a query-dependent threshold could go in principle);
- logistics on candidate features (the best exact score ``top1``, the 10th ``top10``, the
  mean of the top 100 ``meanC``, ``-log rank``), with and without a gate;
- the shipped form (hit ``x, median, p99`` times gate ``median, p99``), fitted on all kinds
  or without the evaluated kind (how it carries to an unseen kind of query);
- an oracle gate that drops every query without a relevant hit in its top k (off-topic or
  not), with raw cosine or the gap to the query's best score inside a query: the most a
  query-level factor could add, with the ordering inside a query the raw score's;
- the form vecpress ships now (candidate terms: the best score, the mean of the best 10 and
  ``-log rank`` in the first factor, the best score in the gate), fitted as
  ``bench_relevance --fit-defaults`` does (for the threshold), and by logistic fits alone;
- a gradient-boosted model monotone in the score on every feature (scikit-learn, when
  installed): a ceiling for these features;
- the shipped form fitted on another corpus family, to see whether defaults fitted on
  WordNet are flattered by it: the documents are the sentences of the installed Debian
  packages' long descriptions (``/var/lib/dpkg/status``), a query is a package's synopsis
  line and relevant are its own sentences (packages with two or more); off-topic queries for
  that corpus are held-out WordNet glosses that no evaluated set uses.

    HF_HUB_OFFLINE=1 python -m benchmarks.relevance_features   # results/relevance_features.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.bench_relevance import KINDS, dev_off_topic, off_topic_queries
from benchmarks.common import RESULTS, machine, source_version
from benchmarks.datasets import embed_corpus, load_embeddings, release_model
from benchmarks.wordnet_queries import labelled_queries

K = 10
CANDIDATES = 100
QUERY_FEATURES = ("median", "p99", "top1", "top10", "meanC")


def query_table(vectors: np.ndarray, relevant: list[np.ndarray], unit: np.ndarray,
                sample: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: exact top-k scores, their labels, ranks and the query features."""
    q = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = q @ unit.T
    top = np.argpartition(-scores, CANDIDATES, axis=1)[:, :CANDIDATES]
    top_scores = np.take_along_axis(scores, top, 1)
    order = np.argsort(-top_scores, axis=1)
    top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
    sampled = scores[:, sample]
    labels = np.array([np.isin(top[i, :K], relevant[i]) for i in range(len(q))])
    return {"x": top_scores[:, :K], "labels": labels, "median": np.median(sampled, axis=1),
            "p99": np.quantile(sampled, 0.99, axis=1), "top1": top_scores[:, 0],
            "top10": top_scores[:, K - 1], "meanC": top_scores.mean(axis=1),
            "lograng": np.broadcast_to(-np.log(np.arange(1, K + 1)), (len(q), K))}


def join(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}


def hit_matrix(t: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(queries * k, features + 1) rows for a per-hit logistic."""
    n = len(t["x"])
    cols = [np.broadcast_to(t[name] if t[name].ndim == 2 else t[name][:, None], (n, K))
            for name in names]
    return np.column_stack([c.reshape(-1) for c in cols] + [np.ones(n * K)])


def query_matrix(t: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.column_stack([t[name] for name in names] + [np.ones(len(t["x"]))])


def logistic(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    from vecpress.core.relevance import _newton

    return _newton(X, y.astype(np.float64), 1e-6, [True] * (X.shape[1] - 1) + [False],
                   weights=weights)


def sigmoid(z: np.ndarray) -> np.ndarray:
    from vecpress.core.relevance import _sigmoid

    return _sigmoid(z)


def at_recall(scores: np.ndarray, labels: np.ndarray, off: np.ndarray,
              target: float = 0.9) -> tuple[float, float]:
    """Precision and off-topic empty share at the highest threshold keeping ``target``."""
    order = np.argsort(-scores.reshape(-1), kind="stable")
    flat = labels.reshape(-1)[order]
    kept_relevant = np.cumsum(flat)
    at = int(np.searchsorted(kept_relevant, np.ceil(target * flat.sum())))
    threshold = scores.reshape(-1)[order][at]
    keep = scores >= threshold
    precision = (keep & labels).sum() / keep.sum()
    return float(precision), float((~keep[off].any(axis=1)).mean()) if off.any() else 1.0


def oracle(labels: np.ndarray, target: float = 0.9) -> float:
    """Best precision of per-query prefix cutoffs keeping ``target`` of the relevant hits
    (Lagrangian sweep: each query keeps the prefix minimising length - mu * relevant)."""
    gains = np.concatenate([np.zeros((len(labels), 1)), np.cumsum(labels, axis=1)], axis=1)
    best = 0.0
    for mu in np.linspace(0.01, 30, 3000):
        cut = (np.arange(K + 1)[None, :] - mu * gains).argmin(axis=1)
        gain = gains[np.arange(len(labels)), cut].sum()
        if gain >= target * labels.sum() and cut.sum():
            best = max(best, gain / cut.sum())
    return best


def gated(fit: dict, fit_off: dict, hit: tuple[str, ...], gate: tuple[str, ...] | None,
          evaluate: dict) -> np.ndarray:
    """Fit a hit logistic on answerable queries and a balanced gate; score ``evaluate``."""
    w = logistic(hit_matrix(fit, hit), fit["labels"].reshape(-1))
    scores = sigmoid(hit_matrix(evaluate, hit) @ w).reshape(-1, K)
    if gate is None:
        return scores
    both = join([fit, fit_off])
    answerable = np.r_[np.ones(len(fit["x"])), np.zeros(len(fit_off["x"]))]
    weights = np.where(answerable > 0, 0.5 / answerable.mean(), 0.5 / (1 - answerable.mean()))
    g = logistic(query_matrix(both, gate), answerable, weights)
    return scores * sigmoid(query_matrix(evaluate, gate) @ g)[:, None]


def as_searches(t: dict[str, np.ndarray], answerable: bool) -> list:
    """The table's queries as ``(scores, stats, labels, answerable)``, what
    ``vecpress.core.relevance.calibrated_params`` and ``bench_relevance`` fit on."""
    from vecpress.core.relevance import ScoreStats

    return [(t["x"][i], ScoreStats(float(t["median"][i]), 0.0, float(t["p99"][i]), 2048,
                                   100_000, float(t["top1"][i]), float(t["x"][i].mean())),
             t["labels"][i], answerable) for i in range(len(t["x"]))]


def shipped_scores(params, t: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([params.relevance(scores, stats, "cosine")
                     for scores, stats, _, _ in as_searches(t, True)])


def boosted(fit: dict, fit_off: dict, evaluate: dict) -> np.ndarray | None:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        return None
    names = ("x", *QUERY_FEATURES, "lograng")
    both = join([fit, fit_off])
    model = HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
        monotonic_cst=[1] + [0] * len(QUERY_FEATURES) + [1], random_state=0)
    model.fit(hit_matrix(both, names)[:, :-1], both["labels"].reshape(-1))
    return model.predict_proba(hit_matrix(evaluate, names)[:, :-1])[:, 1].reshape(-1, K)


def package_corpus() -> tuple[list[str], list[str], list[np.ndarray]]:
    """Sentences of the installed packages' long descriptions (unique, 6-40 words), and per
    package with two or more of them its synopsis and their positions."""
    import re

    from benchmarks.bench_relevance import DPKG_STATUS

    sentences: list[str] = []
    position: dict[str, int] = {}
    synopses, relevant = [], []
    for block in DPKG_STATUS.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        if "\nDescription: " not in block:
            continue
        lines = block.split("\nDescription: ", 1)[1].split("\n")
        body = " ".join(line.strip() for line in lines[1:] if line.startswith(" ")
                        and line.strip() != ".")
        own = [s for s in re.split(r"(?<=[.;:])\s+", body) if 6 <= len(s.split()) <= 40]
        for sentence in own:
            if sentence not in position:
                position[sentence] = len(sentences)
                sentences.append(sentence)
        rows = sorted({position[s] for s in own})
        if len(rows) >= 2:
            synopses.append(lines[0].strip())
            relevant.append(np.array(rows, dtype=np.int64))
    return sentences, synopses, relevant


def other_family_fit(off_texts: list[str], off_vectors: np.ndarray
                     ) -> tuple[dict, dict]:
    """Query tables of the package corpus (answerable, and off-topic ``off_texts``)."""
    from vecpress.core.relevance import sample_rows

    sentences, synopses, relevant = package_corpus()
    docs = np.asarray(embed_corpus(sentences, corpus_name="package-sentences", progress=False))
    queries = np.asarray(embed_corpus(synopses, corpus_name="package-synopses", progress=False))
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    sample = sample_rows(np.arange(len(docs)))
    return (query_table(queries, relevant, unit, sample),
            query_table(off_vectors, [np.zeros(0, np.int64)] * len(off_texts), unit, sample))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=int, default=600)
    parser.add_argument("--fit-queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from vecpress.core.relevance import sample_rows

    base, held_out, texts, held_out_texts = load_embeddings(100_000, 1000, progress=False)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    sample = sample_rows(np.arange(len(base)))
    evaluated, dev = {}, {}
    used: set[str] = set()
    for kind in KINDS:
        test = labelled_queries(texts, args.labelled, kind=kind, progress=False)
        other = labelled_queries(texts, args.labelled, seed=1, kind=kind, progress=False)
        keep = [i for i, t in enumerate(other.texts) if t not in set(test.texts)]
        used.update(test.texts, other.texts)
        cut = slice(args.fit_queries, None)
        evaluated[kind] = query_table(test.vectors[cut], test.relevant[cut], unit, sample)
        dev[kind] = query_table(other.vectors[keep], [other.relevant[i] for i in keep], unit,
                                sample)
    off_texts = off_topic_queries(300)
    off = query_table(np.asarray(embed_corpus(off_texts, corpus_name="offtopic-licences-"
                                              "docstrings", progress=False)),
                      [np.zeros(0, np.int64)] * len(off_texts), unit, sample)
    dev_texts = dev_off_topic(600)
    dev_off = query_table(np.asarray(embed_corpus(dev_texts, corpus_name="offtopic-packages",
                                                  progress=False)),
                          [np.zeros(0, np.int64)] * len(dev_texts), unit, sample)
    free = [i for i, t in enumerate(held_out_texts) if t not in used][:600]
    package_fit, package_off = other_family_fit([held_out_texts[i] for i in free],
                                                held_out[free])
    release_model()
    fit_all = join([dev[kind] for kind in KINDS])
    from benchmarks.bench_relevance import fit_for_threshold
    from vecpress.core.relevance import RelevanceParams, calibrated_params, fit_gate, \
        query_features

    off_searches = as_searches(dev_off, False)
    fitted_now = fit_for_threshold({kind: as_searches(dev[kind], True) for kind in KINDS},
                                   off_searches, "cosine")
    every = [s for kind in KINDS for s in as_searches(dev[kind], True)]
    first = calibrated_params(every, "cosine", RelevanceParams(1.0, 0.0, 0.0, 0.0),
                              prior_strength=0.0)
    *gate, gate_best = fit_gate([query_features(st, "cosine", with_candidates=True)
                                 for _, st, _, _ in every + off_searches],
                                [True] * len(every) + [False] * len(off_searches),
                                balanced=True)
    logistic_now = RelevanceParams(first.weight_score, first.weight_median, first.weight_upper,
                                   first.bias, gate=tuple(gate),
                                   candidates=(*first.candidates[:3], gate_best))
    packages_now = fit_for_threshold({"packages": as_searches(package_fit, True)},
                                     as_searches(package_off, False), "cosine")
    print("fitted for the threshold:", fitted_now, "\nlogistic:", logistic_now,
          "\non package descriptions:", packages_now, flush=True)
    rows: dict[str, dict[str, tuple[float, float] | None]] = {}
    for kind in KINDS:
        answerable = evaluated[kind]
        t = join([answerable, off])
        is_off = np.arange(len(t["x"])) >= len(answerable["x"])
        fit_others = join([dev[k] for k in KINDS if k != kind])
        raw = at_recall(t["x"], t["labels"], is_off)
        perfect_gate = at_recall(answerable["x"], answerable["labels"],
                                 np.zeros(len(answerable["x"]), dtype=bool))
        candidates = ("x", "median", "p99", "top1", "top10")
        results = {
            "raw cosine": raw,
            "raw cosine, off-topic hits dropped (a perfect gate)": (perfect_gate[0], 1.0),
            "oracle per-query cutoff (knows the labels)": (oracle(t["labels"]), 1.0),
            "hit x, median, p99 (no gate)": at_recall(
                gated(fit_all, dev_off, ("x", "median", "p99"), None, t), t["labels"], is_off),
            "shipped: hit x, median, p99 * gate median, p99": at_recall(
                gated(fit_all, dev_off, ("x", "median", "p99"), ("median", "p99"), t),
                t["labels"], is_off),
            "shipped form, fitted without this kind": at_recall(
                gated(fit_others, dev_off, ("x", "median", "p99"), ("median", "p99"), t),
                t["labels"], is_off),
            f"shipped form, fitted on Debian package descriptions ({len(package_fit['x'])} "
            f"synopses + {len(package_off['x'])} glosses)": at_recall(
                gated(package_fit, package_off, ("x", "median", "p99"), ("median", "p99"), t),
                t["labels"], is_off),
            "hit + top1, top10 (no gate)": at_recall(
                gated(fit_all, dev_off, candidates, None, t), t["labels"], is_off),
            "hit + top1, top10 * gate median, p99, top1": at_recall(
                gated(fit_all, dev_off, candidates, ("median", "p99", "top1"), t),
                t["labels"], is_off),
            "hit + top1, meanC, -log rank * gate median, p99, top1": at_recall(
                gated(fit_all, dev_off, ("x", "median", "p99", "top1", "meanC", "lograng"),
                      ("median", "p99", "top1"), t), t["labels"], is_off),
        }
        has_relevant = t["labels"].any(axis=1)
        results["oracle gate: queries without a relevant hit in their top k dropped (knows "
                "the labels)"] = (at_recall(np.where(has_relevant[:, None], t["x"], -9.0),
                                            t["labels"], is_off)[0], 1.0)
        results["that oracle gate + the gap to the query's best score"] = (at_recall(
            np.where(has_relevant[:, None], t["x"] - t["top1"][:, None], -9.0), t["labels"],
            is_off)[0], 1.0)
        results["shipped now: candidate terms (top1, mean of the top 10, -log rank; top1 in "
                "the gate) fitted for the threshold"] = at_recall(
            shipped_scores(fitted_now, t), t["labels"], is_off)
        results["the same form, logistic fits only (what calibrate does)"] = at_recall(
            shipped_scores(logistic_now, t), t["labels"], is_off)
        results["the same form fitted for the threshold without this kind"] = at_recall(
            shipped_scores(fit_for_threshold({k: as_searches(dev[k], True) for k in KINDS
                                              if k != kind}, off_searches, "cosine"), t),
            t["labels"], is_off)
        results["the same form fitted for the threshold on Debian package descriptions"] = \
            at_recall(shipped_scores(packages_now, t), t["labels"], is_off)
        boost = boosted(fit_all, dev_off, t)
        results["gradient boosting, monotone in x, every feature"] = \
            None if boost is None else at_recall(boost, t["labels"], is_off)
        rows[kind] = results
    lines = [f"Offline study (exact top-{CANDIDATES} lists by brute force, k={K}; 100,000 "
             f"WordNet glosses, all-MiniLM-L6-v2; fitted on {len(fit_all['x'])} dev queries "
             f"of the three kinds + {len(dev_off['x'])} package sentences; {machine()}; "
             f"source {source_version()}). Per set: precision at 90% recall (vs raw cosine) "
             f"/ off-topic queries empty there.", "",
             "| scorer | " + " | ".join(KINDS) + " |", "| --- |" + " ---: |" * len(KINDS)]
    for name in rows[KINDS[0]]:
        cells = []
        for kind in KINDS:
            value, raw_precision = rows[kind][name], rows[kind]["raw cosine"][0]
            cells.append("n/a (no scikit-learn)" if value is None else
                         f"{value[0]:.3f} ({value[0] / raw_precision:.2f}x) / {value[1]:.0%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relevance_features.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
