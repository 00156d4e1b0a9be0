"""Calibrated relevance: one threshold for every query, and "nothing relevant" as an answer.

Data: 100,000 WordNet glosses embedded with all-MiniLM-L6-v2 (``benchmarks.datasets``) in a
vecpress ``Collection`` (bits=4, exact rerank). Answerable queries: three labelled sets of
``benchmarks/wordnet_queries.py``, 600 each drawn with seed 0 (``--kinds``):

- ``synonyms``: a synset's other lemma names, relevant its own gloss (mostly one per query);
- ``senses``: one word, relevant every gloss of a synset that has it (2+ per query);
- ``neighbours``: a held-out gloss, relevant the glosses one WordNet pointer away (2+).

Per set, the first ``--fit-queries`` (50) are the labels ``Collection.calibrate`` fits on, the
rest are evaluated. Off-topic queries, whose right answer is nothing: sentences of the licence
texts Debian ships in ``/usr/share/common-licenses`` and first sentences of docstrings of
Python's standard library (another domain than word definitions), 150 of each, drawn with
seed 0; the same 300 join every set's evaluation.

Every query returns its top ``--k`` (10) hits with their exact scores, relevance and score
statistics. A hit is relevant when its gloss is labelled relevant to the query (off-topic
queries have none). The scorers swept over every threshold:

1. raw cosine (what a ``score_threshold`` on LangChain's ``(1 + cos) / 2`` does in any store);
2. the per-query standardized score ``(score - median) / spread``;
3. the calibrated relevance with the unsupervised default parameters (and, as ablations,
   the same without the gate, and the previous defaults, without the candidate terms);
4. the calibrated relevance fitted on the 50 labelled queries of the set (the gate stays the
   default's: those labels hold no off-topic query), and on those plus 50 off-topic package
   description sentences (the gate fitted too).

Per scorer: precision and recall of the returned sets (recall = kept relevant hits / relevant
hits in the top k, so 1 at the lowest threshold), the best F1 of one global threshold, the
precision at the threshold where recall is still >= 90% (and its ratio to raw cosine's), and
the share of off-topic queries returning nothing at that threshold. Also the cost per query of
the statistics (a seeded sample of 2,048 rows) against numpy over all exact scores, and the
sample statistics' error against the full distribution.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_relevance          # writes results/relevance.*
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_relevance --fit-defaults   # the defaults' fit

``--fit-defaults`` fits the parameters on queries of the three kinds drawn with seed 1 whose
texts are not among the benchmark's (the same corpus family: WordNet) plus 600 sentences of
the installed Debian packages' descriptions (off-topic, a genre the evaluation does not use),
and prints them (``vecpress.core.relevance.DEFAULT_PARAMS`` holds the result): logistic fits
first, then a direct search for what this benchmark measures (:func:`fit_for_threshold`).
It also prints, per kind, the fit *without* that kind's queries, to show how the defaults
carry to an unseen kind of query.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, source_version
from benchmarks.datasets import embed_corpus, load_embeddings, release_model
from benchmarks.wordnet_queries import labelled_queries

LICENCES = Path("/usr/share/common-licenses")
LICENCE_FILES = ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-3", "Artistic", "GFDL-1.3")
STDLIB_MODULES = ("os", "os.path", "json", "collections", "itertools", "functools", "string",
                  "re", "pathlib", "shutil", "subprocess", "threading", "socket", "zipfile",
                  "tarfile", "logging", "argparse", "datetime", "decimal", "fractions",
                  "heapq", "bisect", "csv", "sqlite3", "email", "http.client", "urllib.parse",
                  "tempfile", "textwrap", "io", "gzip", "hashlib", "hmac", "base64", "struct")
SCORERS = ("raw cosine", "standardized", "relevance (defaults)",
           "relevance (defaults, no gate)", "relevance (previous defaults, no candidate terms)",
           "relevance (fitted on 50)", "relevance (fitted on 50 + 50 off-topic)")
KINDS = ("synonyms", "senses", "neighbours")
DPKG_STATUS = Path("/var/lib/dpkg/status")


# ---------------------------------------------------------------------- off-topic text


def licence_sentences() -> list[str]:
    """Sentences of 8-40 words from the licence texts Debian ships."""
    out = []
    for name in LICENCE_FILES:
        path = LICENCES / name
        if path.is_file():
            text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace"))
            out += [s for s in re.split(r"(?<=[.;:])\s+", text) if 8 <= len(s.split()) <= 40]
    return out


def docstring_sentences() -> list[str]:
    """First sentences (5+ words) of the docstrings of public functions and classes of some
    standard-library modules."""
    import importlib

    out = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            doc = inspect.getdoc(value) or ""
            first = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
            if len(first.split()) >= 5 and first not in out:
                out.append(first)
    return out


def package_sentences() -> list[str]:
    """Sentences (6-40 words) of the long descriptions of the installed Debian packages: the
    off-topic queries that fitting sees (never the evaluated ones)."""
    out: list[str] = []
    text = DPKG_STATUS.read_text(encoding="utf-8", errors="replace")
    for block in text.split("\n\n"):
        lines = block.split("\nDescription: ", 1)[1].split("\n") if "\nDescription: " in block \
            else []
        body = " ".join(line.strip() for line in lines[1:] if line.startswith(" ")
                        and line.strip() != ".")
        out += [s for s in re.split(r"(?<=[.;:])\s+", body) if 6 <= len(s.split()) <= 40
                and s not in out]
    return out


def dev_off_topic(count: int, seed: int = 1) -> list[str]:
    pool = package_sentences()
    if len(pool) < count:
        raise RuntimeError(f"only {len(pool)} package description sentences, need {count}")
    return [pool[i] for i in sorted(np.random.default_rng(seed).choice(len(pool), count,
                                                                        replace=False))]


def off_topic_queries(count: int, seed: int = 0) -> list[str]:
    """``count`` off-topic sentences, half from licences, half from docstrings."""
    rng = np.random.default_rng(seed)
    pools = [licence_sentences(), docstring_sentences()]
    picked = []
    for pool, n in zip(pools, (count // 2, count - count // 2)):
        if len(pool) < n:
            raise RuntimeError(f"only {len(pool)} off-topic sentences available, need {n}")
        picked += [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
    return picked


# ---------------------------------------------------------------------- evaluation


def sweep(scores: np.ndarray, labels: np.ndarray, off_topic: np.ndarray,
          points: int = 400) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and the off-topic empty share at every threshold (quantiles of
    the scores); ``scores``/``labels`` are (queries, k), ``off_topic`` flags rows."""
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points)))
    total = max(int(labels.sum()), 1)
    precision, recall, empty = [], [], []
    for t in thresholds:
        keep = scores >= t
        kept, hits = int(keep.sum()), int((keep & labels).sum())
        precision.append(hits / kept if kept else 1.0)
        recall.append(hits / total)
        empty.append(float((~keep[off_topic].any(axis=1)).mean()) if off_topic.any() else 0.0)
    p, r = np.array(precision), np.array(recall)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return {"threshold": thresholds, "precision": p, "recall": r, "f1": f1,
            "off_topic_empty": np.array(empty)}


def summary(curve: dict[str, np.ndarray], recall_target: float = 0.9) -> dict[str, float]:
    best = int(np.argmax(curve["f1"]))
    at = int(np.nonzero(curve["recall"] >= recall_target)[0][-1])  # highest such threshold
    return {"best_f1": float(curve["f1"][best]),
            "best_threshold": float(curve["threshold"][best]),
            "best_precision": float(curve["precision"][best]),
            "best_recall": float(curve["recall"][best]),
            "best_off_topic_empty": float(curve["off_topic_empty"][best]),
            "r90_threshold": float(curve["threshold"][at]),
            "r90_precision": float(curve["precision"][at]),
            "r90_recall": float(curve["recall"][at]),
            "r90_off_topic_empty": float(curve["off_topic_empty"][at])}


def at_threshold(scores: np.ndarray, labels: np.ndarray, off_topic: np.ndarray,
                 threshold: float) -> dict[str, float]:
    """Precision, recall and off-topic empty share of one fixed threshold."""
    keep = scores >= threshold
    return {"threshold": threshold,
            "precision": float((keep & labels).sum() / max(keep.sum(), 1)),
            "recall": float((keep & labels).sum() / max(labels.sum(), 1)),
            "off_topic_empty": float((~keep[off_topic].any(axis=1)).mean())}


def run_queries(collection, vectors: np.ndarray, k: int) -> list:
    return [collection.search(v, k, relevance=True) for v in vectors]


def score_table(results: list, fitted: dict[str, Any], metric: str,
                k: int) -> dict[str, np.ndarray]:
    """(queries, k) arrays per scorer (``fitted``: the parameters of each relevance scorer);
    queries with fewer than k hits are padded with -inf."""
    tables = {name: np.full((len(results), k), -np.inf) for name in SCORERS}
    for i, hits in enumerate(results):
        scores = np.array([h.score for h in hits])
        n = len(scores)
        if n == 0:
            continue
        tables["raw cosine"][i, :n] = scores
        tables["standardized"][i, :n] = hits.stats.standardized(scores)
        for name, params in fitted.items():
            tables[name][i, :n] = params.relevance(scores, hits.stats, metric)
    return tables


def label_table(results: list, relevant: list[set[str]], k: int) -> np.ndarray:
    labels = np.zeros((len(results), k), dtype=bool)
    for i, hits in enumerate(results):
        for j, h in enumerate(hits):
            labels[i, j] = h.id in relevant[i]
    return labels


def statistics_check(collection, base: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Cost per query of the sample statistics vs numpy over all exact scores, and their
    error (in units of the full distribution's spread)."""
    from vecpress.core.relevance import score_stats

    sample = collection._score_sample()
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    sample_ms, full_ms, errors = [], [], {"median": [], "spread": [], "upper": []}
    for q in queries:
        started = time.perf_counter()
        estimated = score_stats(sample.scores(q), sample.rows)
        sample_ms.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        full = score_stats(np.einsum("ij,j->i", unit, q / np.linalg.norm(q)), len(unit))
        full_ms.append((time.perf_counter() - started) * 1e3)
        for name in errors:
            errors[name].append(abs(getattr(estimated, name) - getattr(full, name)) / full.spread)
    search_ms, relevance_ms = [], []
    for q in queries:
        for times, relevance in ((search_ms, False), (relevance_ms, True)):
            started = time.perf_counter()
            collection.search(q, 10, relevance=relevance)
            times.append((time.perf_counter() - started) * 1e3)
    return {"sample_rows": int(len(sample.ids)), "stats_ms_median": float(np.median(sample_ms)),
            "numpy_all_ms_median": float(np.median(full_ms)),
            "search_ms_median": float(np.median(search_ms)),
            "search_with_relevance_ms_median": float(np.median(relevance_ms)),
            **{f"error_{name}_median": float(np.median(v)) for name, v in errors.items()},
            **{f"error_{name}_max": float(np.max(v)) for name, v in errors.items()}}


# ---------------------------------------------------------------------- report


def compact_json(report: dict[str, Any]) -> str:
    """The report as JSON, indented, with each curve's long arrays on one line."""
    head = json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=1)
    return head[:-2] + ',\n "curves": ' + json.dumps(report["curves"]) + "\n}\n"


def markdown(report: dict[str, Any]) -> str:
    lines = [report["header"]]
    for kind, part in report["sets"].items():
        lines += ["", f"### {kind}: {part['description']}", "",
                  "| scorer | best F1 | its threshold | P / R there | off-topic empty there | "
                  "P at R >= 0.9 | vs raw | off-topic empty at R >= 0.9 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        raw = part["scorers"]["raw cosine"]["r90_precision"]
        for name, s in part["scorers"].items():
            lines.append(
                f"| {name} | {s['best_f1']:.3f} | {s['best_threshold']:.3f} | "
                f"{s['best_precision']:.3f} / {s['best_recall']:.3f} | "
                f"{s['best_off_topic_empty']:.0%} | {s['r90_precision']:.3f} | "
                f"{s['r90_precision'] / raw:.2f}x | {s['r90_off_topic_empty']:.0%} |")
        lines.append("")
        for d in part["default_thresholds"]:
            lines.append(f"Relevance (defaults) at `min_relevance={d['threshold']}`: precision "
                         f"{d['precision']:.3f}, recall {d['recall']:.3f}, off-topic queries "
                         f"returning nothing {d['off_topic_empty']:.0%}.  ")
    c = report["statistics"]
    lines += ["", f"Default parameters: `{report['defaults']}`.",
              "", f"Statistics from a sample of {c['sample_rows']:,} rows: "
                  f"{c['stats_ms_median']:.3f} ms per query (median) against "
                  f"{c['numpy_all_ms_median']:.2f} ms for numpy (einsum) over all exact scores; a "
                  f"search (k=10) takes {c['search_ms_median']:.2f} ms, "
                  f"{c['search_with_relevance_ms_median']:.2f} ms with relevance. Error in units of the "
                  f"full distribution's spread, median (max): median "
                  f"{c['error_median_median']:.3f} ({c['error_median_max']:.3f}), spread "
                  f"{c['error_spread_median']:.3f} ({c['error_spread_max']:.3f}), 99th "
                  f"percentile {c['error_upper_median']:.3f} ({c['error_upper_max']:.3f})."]
    return "\n".join(lines) + "\n"


def draw(curves: dict[str, dict[str, dict[str, np.ndarray]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.8), squeeze=False)
    for ax, (kind, by_scorer) in zip(axes[0], curves.items()):
        for name, curve in by_scorer.items():
            if name != "relevance (defaults, no gate)":
                ax.plot(curve["recall"], curve["precision"], label=name)
        ax.axvline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("recall (relevant hits kept / relevant hits in the top k)")
        ax.set_title(f"{kind} queries", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("precision of the returned hits")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


DESCRIPTIONS = {
    "synonyms": "a synset's other lemma names; relevant: its own gloss (mostly one)",
    "senses": "one word; relevant: every gloss of a synset holding it (2 or more)",
    "neighbours": "a held-out gloss; relevant: the glosses one WordNet pointer away (2 or more)",
}


def fit_defaults(collection, base_texts: list[str], taken: set[str], kinds: tuple[str, ...],
                 count: int, k: int) -> None:
    """Fit and print the default parameters (see the module docstring)."""
    off_texts = dev_off_topic(count)
    off = np.asarray(embed_corpus(off_texts, corpus_name="offtopic-packages", progress=False),
                     dtype=np.float32)
    searches: dict[str, list] = {}
    for kind in kinds:
        dev = labelled_queries(base_texts, count, seed=1, kind=kind, progress=False)
        keep = [i for i, t in enumerate(dev.texts) if t not in taken]
        rows = [set(map(str, dev.relevant[i].tolist())) for i in keep]
        searches[kind] = [([h.score for h in r], r.stats, [h.id in rel for h in r], True)
                          for r, rel in zip(run_queries(collection, dev.vectors[keep], k), rows)]
    off_searches = [([h.score for h in r], r.stats, [False] * len(r), False)
                    for r in run_queries(collection, off, k)]
    metric = collection.metric
    everything = {kind: searches[kind] for kind in kinds}
    print(f"{sum(map(len, everything.values()))} dev WordNet queries "
          f"({', '.join(f'{k}: {len(searches[k])}' for k in kinds)}) + {len(off_searches)} "
          f"package sentences:", fit_for_threshold(everything, off_searches, metric), flush=True)
    for kind in kinds:
        print(f"  without {kind}:", fit_for_threshold(
            {other: searches[other] for other in kinds if other != kind}, off_searches, metric),
            flush=True)


def fit_for_threshold(searches: dict[str, list], off_searches: list, metric: str,
                      recall: float = 0.9, empty: float = 0.9, penalty: float = 20.0,
                      calibration: float = 1.0) -> Any:
    """Parameters (with candidate terms) fitted to what the benchmark measures: starting from
    the logistic fits (the first factor on the answerable hits, the gate on answerable and
    off-topic queries weighed equally), a derivative-free search (scipy's Powell, then
    Nelder-Mead) maximises the mean over the kinds of log(precision / raw cosine's) at the
    threshold keeping ``recall`` of the relevant hits, less ``penalty`` times the shortfall of
    off-topic queries left empty there below ``empty`` (0.9: on the fitting queries 0.85 left
    the evaluated ones below 80%), less ``calibration`` times the rise of the two logistic
    losses above the logistic fits' (without it the search can drive ``weight_score`` to
    the thousands, a step, not a probability; with it the losses rose by 0.01 for the same
    precision). Weights that must stay positive are searched as logs."""
    from scipy.optimize import minimize

    from vecpress.core.relevance import (
        PARAM_KEYS, RelevanceParams, _sigmoid, calibrated_params, candidate_stats, fit_gate,
        hit_features, query_features)

    every = [s for part in searches.values() for s in part]
    start = calibrated_params(every, metric, RelevanceParams(1.0, 0.0, 0.0, 0.0),
                              prior_strength=0.0)
    gate = fit_gate([query_features(candidate_stats(st, sc), metric, with_candidates=True)
                     for sc, st, _, _ in every + off_searches],
                    [True] * len(every) + [False] * len(off_searches), balanced=True)
    hits_X = np.vstack([hit_features(sc, st, metric, with_candidates=True)
                        for sc, st, lb, _ in every if len(lb)])
    hits_y = np.concatenate([np.asarray(lb, dtype=float) for _, _, lb, _ in every if len(lb)])
    gate_X = np.stack([query_features(candidate_stats(st, sc), metric, with_candidates=True)
                       for sc, st, _, _ in every + off_searches])
    gate_y = np.r_[np.ones(len(every)), np.zeros(len(off_searches))]
    gate_w = np.where(gate_y > 0, 0.5 / gate_y.mean(), 0.5 / (1 - gate_y.mean()))

    def log_loss(w: np.ndarray, g: np.ndarray) -> float:
        p = np.clip(_sigmoid(hits_X @ w), 1e-12, 1 - 1e-12)
        q = np.clip(_sigmoid(gate_X @ g), 1e-12, 1 - 1e-12)
        return float(-np.mean(hits_y * np.log(p) + (1 - hits_y) * np.log(1 - p))
                     - np.sum(gate_w * (gate_y * np.log(q) + (1 - gate_y) * np.log(1 - q)))
                     / gate_w.sum())

    tables = []
    k = max(len(scores) for scores, *_ in every + off_searches)
    for part in searches.values():
        chosen = part + off_searches
        H = np.stack([np.pad(hit_features(sc, st, metric, with_candidates=True),
                             ((0, k - len(sc)), (0, 0))) for sc, st, _, _ in chosen])
        Q = np.stack([query_features(candidate_stats(st, sc), metric, with_candidates=True)
                      for sc, st, _, _ in chosen])
        labels = np.array([np.pad(np.asarray(lb, bool), (0, k - len(lb))) for *_, lb, _ in
                           chosen])
        present = np.array([np.arange(k) < len(sc) for sc, *_ in chosen])
        off_topic = np.arange(len(chosen)) >= len(part)
        raw = np.where(present, H[..., 0], -np.inf)
        tables.append((H, Q, labels, present, off_topic, _at_recall(raw, labels, off_topic,
                                                                      recall)[0]))
    width = len(PARAM_KEYS)
    positive = [0, width + 2]  # weight_score, weight_rank

    def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = v[:width + 3].copy()
        w[positive] = np.exp(w[positive])
        return w, v[width + 3:]

    def loss(v: np.ndarray) -> float:
        w, g = unpack(v)
        total = calibration * (log_loss(w, g) - start_loss)
        for H, Q, labels, present, off_topic, raw in tables:
            scores = np.where(present, _sigmoid(H @ w) * _sigmoid(Q @ g)[:, None], -np.inf)
            precision, emptied = _at_recall(scores, labels, off_topic, recall)
            total += -np.log(precision / raw) / len(tables) + penalty * max(0.0, empty - emptied)
        return total

    v = np.r_[[getattr(start, n) for n in PARAM_KEYS], start.candidates[:3], gate]
    start_loss = log_loss(v[:width + 3], v[width + 3:])
    v[positive] = np.log(np.maximum(v[positive], 1e-3))
    v = minimize(loss, v, method="Powell", options={"maxiter": 20000, "xtol": 1e-3,
                                                    "ftol": 1e-5}).x
    v = minimize(loss, v, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-4,
                                                         "fatol": 1e-6, "adaptive": True}).x
    w, g = unpack(v)
    return RelevanceParams(*map(float, w[:width]), fitted_on=0, gate=tuple(map(float, g[:3])),
                           candidates=(*map(float, w[width:]), float(g[3])))


def _at_recall(scores: np.ndarray, labels: np.ndarray, off_topic: np.ndarray,
               recall: float) -> tuple[float, float]:
    """Precision and the share of off-topic rows left empty at the highest threshold keeping
    ``recall`` of the relevant entries of ``scores`` (rows: queries)."""
    order = np.argsort(-scores.reshape(-1), kind="stable")
    flat = labels.reshape(-1)[order]
    at = int(np.searchsorted(np.cumsum(flat), np.ceil(recall * flat.sum())))
    keep = scores >= scores.reshape(-1)[order][at]
    return float((keep & labels).sum() / keep.sum()), float((~keep[off_topic].any(axis=1)).mean())


def main(argv: list[str] | None = None) -> None:
    from vecpress import Collection
    from vecpress.core.relevance import DEFAULT_PARAMS, RelevanceParams

    # the defaults vecpress shipped before the candidate terms (logistic fits, src 1377b36)
    PREVIOUS_DEFAULTS = RelevanceParams(weight_score=10.99, weight_median=9.19,
                                        weight_upper=-13.40, bias=-5.20,
                                        gate=(61.71, 46.27, -12.81))

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", dest="n_base", type=int, default=100_000)
    parser.add_argument("--labelled", type=int, default=600)
    parser.add_argument("--fit-queries", type=int, default=50)
    parser.add_argument("--off-topic", type=int, default=300)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--fit-defaults", action="store_true",
                        help="fit the parameters on dev queries (seed 1) and print them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    kinds = tuple(args.kinds)
    started = time.perf_counter()
    base, _, base_texts, _ = load_embeddings(args.n_base, 1000, progress=False)
    sets = {kind: labelled_queries(base_texts, args.labelled, kind=kind, progress=False)
            for kind in kinds}
    off_texts = off_topic_queries(args.off_topic)
    off_vectors = np.asarray(embed_corpus(off_texts, corpus_name="offtopic-licences-docstrings",
                                          progress=False), dtype=np.float32)
    dev_off = np.asarray(embed_corpus(dev_off_topic(args.fit_queries),
                                      corpus_name="offtopic-packages", progress=False),
                         dtype=np.float32)
    collection = Collection(dim=base.shape[1], bits=args.bits)
    collection.upsert([str(i) for i in range(len(base))], base)
    if args.fit_defaults:
        taken = {text for labelled in sets.values() for text in labelled.texts}
        fit_defaults(collection, base_texts, taken, kinds, args.labelled, args.k)
        release_model()
        return
    release_model()
    print(f"{len(base):,} glosses, {', '.join(f'{len(q)} {k}' for k, q in sets.items())} "
          f"+ {len(off_texts)} off-topic queries; ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    off_results = run_queries(collection, off_vectors, args.k)
    fit = slice(0, args.fit_queries)
    report_sets: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    evaluated_vectors = []
    for kind, labelled in sets.items():
        relevant = [set(map(str, rows.tolist())) for rows in labelled.relevant]
        collection.set_relevance_params(None)
        params = collection.calibrate(labelled.vectors[fit], [sorted(r) for r in relevant[fit]],
                                      k=args.k)
        collection.set_relevance_params(None)
        with_off_topic = collection.calibrate(
            np.vstack([labelled.vectors[fit], dev_off]),
            [sorted(r) for r in relevant[fit]] + [[] for _ in dev_off], k=args.k)
        collection.set_relevance_params(None)
        print(f"{kind}: fitted {params}\n  with off-topic {with_off_topic}", flush=True)
        evaluated = labelled.vectors[args.fit_queries:]
        evaluated_vectors.append(evaluated)
        results = run_queries(collection, evaluated, args.k) + off_results
        eval_relevant = relevant[args.fit_queries:] + [set()] * len(off_texts)
        labels = label_table(results, eval_relevant, args.k)
        off_topic = np.arange(len(results)) >= len(evaluated)
        tables = score_table(results, {
            "relevance (defaults)": DEFAULT_PARAMS,
            "relevance (defaults, no gate)": DEFAULT_PARAMS.without_gate(),
            "relevance (previous defaults, no candidate terms)": PREVIOUS_DEFAULTS,
            "relevance (fitted on 50)": params,
            "relevance (fitted on 50 + 50 off-topic)": with_off_topic}, collection.metric, args.k)
        curves[kind] = {name: sweep(tables[name], labels, off_topic) for name in SCORERS}
        counts = np.array([len(r) for r in labelled.relevant[args.fit_queries:]])
        report_sets[kind] = {
            "description": (f"{DESCRIPTIONS[kind]}; {len(evaluated)} queries evaluated "
                            f"({counts.mean():.2f} relevant glosses per query in the base, "
                            f"{int(labels.sum())} relevant hits in their top {args.k}), "
                            f"{args.fit_queries} used for `calibrate`"),
            "fitted": params.to_json(), "fitted_with_off_topic": with_off_topic.to_json(),
            "scorers": {name: summary(curve) for name, curve in curves[kind].items()},
            "default_thresholds": [at_threshold(tables["relevance (defaults)"], labels,
                                                off_topic, t) for t in (0.05, 0.1, 0.5)]}
    stats = statistics_check(collection, base, np.vstack(evaluated_vectors + [off_vectors])[::9][:200])
    header = (f"{len(base):,} WordNet glosses (all-MiniLM-L6-v2, 384-d), vecpress bits="
              f"{args.bits} with exact rerank, k={args.k}; {len(off_texts)} off-topic queries "
              f"(licence sentences, stdlib docstrings) join every set; {machine()}; "
              f"source {source_version()}.")
    report = {"header": header, "k": args.k, "n_base": len(base),
              "defaults": DEFAULT_PARAMS.to_json(), "sets": report_sets, "statistics": stats,
              "curves": {kind: {name: {key: np.round(value, 5).tolist()
                                       for key, value in curve.items()}
                                for name, curve in by_scorer.items()}
                         for kind, by_scorer in curves.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relevance.json").write_text(compact_json(report))
    text = markdown(report)
    (args.out / "relevance.md").write_text(text)
    draw(curves, args.out / "relevance_precision_recall.png",
         f"all-MiniLM-L6-v2, {len(base):,} WordNet glosses, k={args.k}, "
         f"+{len(off_texts)} off-topic queries: one global threshold")
    print(text)


if __name__ == "__main__":
    main()
