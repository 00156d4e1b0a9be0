"""Labelled queries for nDCG@10: WordNet synonyms that must find their synset's gloss.

How the set is built, exactly:

1. Every synset line of Debian's ``wordnet-base`` data files (``data.noun``, ``data.verb``,
   ``data.adj``, ``data.adv``) gives its lemma names in order (underscores become spaces,
   adjective markers such as ``(a)`` are dropped). The corpus document of a synset is its
   gloss text ``"first lemma: gloss"`` (:func:`vecpress.wordnet.read_glosses`).
2. A synset is eligible when its document is in the benchmark's base set and it has at least
   one *other* lemma that differs from the first one ignoring case. The other lemmas are the
   query, joined by ``", "`` (``"auto, automobile, machine, motorcar"`` for the synset whose
   document is ``"car: a motor vehicle with four wheels; ..."``): a synonym look-up, where
   the query words are mostly absent from the document that answers it.
3. ``n`` eligible synsets are drawn with a seeded generator (seed 0 by default), without
   replacement, in base order before the draw (so the set depends only on the base and seed).
4. Relevance is binary: a base document is relevant to a query when its synset has every
   query lemma among its own lemma names (case-insensitive). The source synset always is;
   other synsets with the same synonyms (another sense of the same word group) are too.
5. The queries are embedded with the default model (all-MiniLM-L6-v2, normalised) and cached
   under ``.cache/embeddings/`` like the corpus (``wordnet-lemma-queries`` in the file name).

nDCG@10 uses gain 1 for a relevant document at rank ``r`` (1-based) discounted by
``1 / log2(r + 1)``, divided by the ideal DCG of ``min(10, relevant count)`` hits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.datasets import CACHE_DIR, embed_corpus
from vecpress.wordnet import PARTS_OF_SPEECH, WORDNET_DIR, read_glosses

QUERY_CORPUS_NAME = "wordnet-lemma-queries"


@dataclass
class LabelledQueries:
    """Query texts, their vectors and, per query, the base rows that are relevant."""

    texts: list[str]
    vectors: np.ndarray
    relevant: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, count: int) -> "LabelledQueries":
        """The first ``count`` queries (for stores too slow to answer them all)."""
        return LabelledQueries(self.texts[:count], self.vectors[:count], self.relevant[:count])


def synset_lemmas(wordnet_dir: Path | str = WORDNET_DIR) -> dict[tuple[str, str], list[str]]:
    """Lemma names of every synset, keyed by ``(part of speech, offset)``, in WordNet's order."""
    lemmas: dict[tuple[str, str], list[str]] = {}
    for pos in PARTS_OF_SPEECH:
        with open(Path(wordnet_dir) / f"data.{pos}", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("  "):  # licence header
                    continue
                # offset lex_filenum ss_type w_cnt (hex) then w_cnt pairs of (word, lex_id)
                fields = line.split(" | ", 1)[0].split()
                count = int(fields[3], 16)
                words = fields[4:4 + 2 * count:2]
                lemmas[(pos, fields[0])] = [_clean(word) for word in words]
    return lemmas


def _clean(word: str) -> str:
    if word.endswith(")") and "(" in word:  # adjective markers: "galore(ip)", "aforesaid(a)"
        word = word[:word.rindex("(")]
    return word.replace("_", " ")


def build_queries(base_texts: list[str], n: int, seed: int = 0, *,
                  wordnet_dir: Path | str = WORDNET_DIR) -> tuple[list[str], list[np.ndarray]]:
    """Query texts and relevant base rows, built as the module docstring says (steps 1-4)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    lemmas = synset_lemmas(wordnet_dir)
    row_of_text = {text: row for row, text in enumerate(base_texts)}
    base_lemmas: list[tuple[int, list[str]]] = []  # (base row, lemma names), base order
    for gloss in read_glosses(wordnet_dir):
        row = row_of_text.get(gloss.text)
        if row is not None:
            base_lemmas.append((row, lemmas[(gloss.pos, gloss.offset)]))
    base_lemmas.sort()
    rows_with_lemma: dict[str, set[int]] = {}
    for row, names in base_lemmas:
        for name in names:
            rows_with_lemma.setdefault(name.lower(), set()).add(row)
    eligible = []
    for row, names in base_lemmas:
        others = [name for name in names[1:] if name.lower() != names[0].lower()]
        if others:
            eligible.append(others)
    if n > len(eligible):
        raise ValueError(f"only {len(eligible)} eligible synsets in this base, asked for {n}")
    picked = np.random.default_rng(seed).choice(len(eligible), size=n, replace=False)
    texts, relevant = [], []
    for position in picked:
        others = eligible[position]
        rows = set.intersection(*(rows_with_lemma[name.lower()] for name in others))
        texts.append(", ".join(others))
        relevant.append(np.array(sorted(rows), dtype=np.int64))
    return texts, relevant


def labelled_queries(base_texts: list[str], n: int, seed: int = 0, *,
                     cache_dir: Path | str = CACHE_DIR,
                     progress: bool | None = True) -> LabelledQueries:
    """:func:`build_queries` plus the queries' embeddings (computed once, cached)."""
    texts, relevant = build_queries(base_texts, n, seed)
    vectors = embed_corpus(texts, cache_dir=cache_dir, progress=progress,
                           corpus_name=QUERY_CORPUS_NAME)
    return LabelledQueries(texts, np.ascontiguousarray(vectors, dtype=np.float32), relevant)


def ndcg_at(found: np.ndarray, relevant: list[np.ndarray], k: int = 10) -> float:
    """Mean binary nDCG@``k`` of ranked ids ``found`` (q, >=k) against relevant ids per query."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for ranked, rows in zip(found, relevant):
        gains = np.isin(np.asarray(ranked[:k]), rows)
        ideal = discounts[:min(k, len(rows))].sum()
        total += float(discounts[:len(gains)][gains].sum()) / ideal
    return total / len(relevant)
