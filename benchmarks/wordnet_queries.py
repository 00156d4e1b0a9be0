"""Labelled WordNet queries: synonyms that must find their synset's gloss, and two sets with
several relevant glosses per query (word senses, concept neighbourhoods).

Three kinds (``labelled_queries(..., kind=...)``); every one is built from Debian's
``wordnet-base`` files alone, drawn with a seeded generator, and relevance is binary.

``"synonyms"`` (nDCG@10 of the benchmark suite, and the first set of the relevance benchmark),
exactly:

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

``"senses"``: the query is one word (a lemma name, as WordNet spells it) that names at least
``MIN_RELEVANT`` synsets whose documents are in the base; every such synset is relevant ("all
the senses of *bank*"). Only some of them carry the word in their text: a document shows its
synset's *first* lemma only. Eligible lemmas are listed in base order of their first synset,
then drawn.

``"neighbours"``: the query is the document text of a synset that is *not* in the base (a
held-out gloss, ``"dog: a member of the genus Canis ..."``); relevant are the base documents
of the synsets one WordNet pointer away (:data:`NEIGHBOUR_POINTERS`: hypernyms and hyponyms,
instance ones too, "similar to", "also see", verb group, attribute, derivationally related
form), at least ``MIN_RELEVANT`` of them. The question is "which concepts are this
definition's immediate relatives"; deeper relatives (a hyponym's hyponym) count as
irrelevant, so the labels are conservative.

The queries are embedded with the default model and cached like the synonym queries
(``wordnet-senses-queries`` / ``wordnet-neighbours-queries`` in the file name).

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
KINDS = ("synonyms", "senses", "neighbours")
#: the fewest relevant base documents a "senses" or "neighbours" query has
MIN_RELEVANT = 2
#: WordNet pointer symbols a "neighbours" query's relevant synsets are reached by
NEIGHBOUR_POINTERS = frozenset({"@", "@i", "~", "~i", "&", "^", "$", "=", "+"})
_POS_OF_POINTER = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


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


def synset_pointers(wordnet_dir: Path | str = WORDNET_DIR
                    ) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """Synsets one :data:`NEIGHBOUR_POINTERS` pointer away from every synset, keyed and
    valued by ``(part of speech, offset)``."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for pos in PARTS_OF_SPEECH:
        with open(Path(wordnet_dir) / f"data.{pos}", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("  "):
                    continue
                fields = line.split(" | ", 1)[0].split()
                at = 4 + 2 * int(fields[3], 16)
                count = int(fields[at])
                targets = set()
                for i in range(count):  # symbol offset pos source/target
                    symbol, offset, target_pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                    if symbol in NEIGHBOUR_POINTERS and (offset, target_pos) != (fields[0], pos[0]):
                        targets.add((_POS_OF_POINTER[target_pos], offset))
                out[(pos, fields[0])] = targets
    return out


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


def _checked_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _draw(eligible: list, n: int, seed: int, what: str) -> list:
    if n > len(eligible):
        raise ValueError(f"only {len(eligible)} eligible {what} in this base, asked for {n}")
    return [eligible[i] for i in np.random.default_rng(seed).choice(len(eligible), size=n,
                                                                    replace=False)]


def build_sense_queries(base_texts: list[str], n: int, seed: int = 0, *,
                        wordnet_dir: Path | str = WORDNET_DIR
                        ) -> tuple[list[str], list[np.ndarray]]:
    """``"senses"`` queries (see the module docstring): a word, relevant = all its synsets."""
    _checked_count(n)
    lemmas = synset_lemmas(wordnet_dir)
    row_of_text = {text: row for row, text in enumerate(base_texts)}
    rows_of: dict[str, set[int]] = {}
    first_row: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for gloss in read_glosses(wordnet_dir):
        row = row_of_text.get(gloss.text)
        if row is None:
            continue
        for name in lemmas[(gloss.pos, gloss.offset)]:
            key = name.lower()
            rows_of.setdefault(key, set()).add(row)
            first_row[key] = min(first_row.get(key, row), row)
            spelling.setdefault(key, name)
    eligible = sorted((first_row[key], key) for key, rows in rows_of.items()
                      if len(rows) >= MIN_RELEVANT)
    picked = _draw(eligible, n, seed, "words")
    return ([spelling[key] for _, key in picked],
            [np.array(sorted(rows_of[key]), dtype=np.int64) for _, key in picked])


def build_neighbour_queries(base_texts: list[str], n: int, seed: int = 0, *,
                            wordnet_dir: Path | str = WORDNET_DIR
                            ) -> tuple[list[str], list[np.ndarray]]:
    """``"neighbours"`` queries (see the module docstring): a held-out gloss, relevant = the
    base glosses of the synsets one pointer away."""
    _checked_count(n)
    pointers = synset_pointers(wordnet_dir)
    row_of_text = {text: row for row, text in enumerate(base_texts)}
    glosses = read_glosses(wordnet_dir)
    row_of_synset = {(g.pos, g.offset): row_of_text[g.text] for g in glosses
                     if g.text in row_of_text}
    eligible = []
    for gloss in glosses:  # WordNet order: nouns, verbs, adjectives, adverbs
        if gloss.text in row_of_text:
            continue
        rows = {row_of_synset[s] for s in pointers[(gloss.pos, gloss.offset)]
                if s in row_of_synset}
        if len(rows) >= MIN_RELEVANT:
            eligible.append((gloss.text, rows))
    picked = _draw(eligible, n, seed, "held-out synsets")
    return ([text for text, _ in picked],
            [np.array(sorted(rows), dtype=np.int64) for _, rows in picked])


BUILDERS = {"synonyms": build_queries, "senses": build_sense_queries,
            "neighbours": build_neighbour_queries}


def labelled_queries(base_texts: list[str], n: int, seed: int = 0, *,
                     kind: str = "synonyms", cache_dir: Path | str = CACHE_DIR,
                     progress: bool | None = True) -> LabelledQueries:
    """The queries of ``kind`` (:data:`KINDS`) plus their embeddings (computed once, cached)."""
    if kind not in BUILDERS:
        raise ValueError(f"kind={kind!r} is unknown; use one of {', '.join(KINDS)}")
    texts, relevant = BUILDERS[kind](base_texts, n, seed)
    vectors = embed_corpus(texts, cache_dir=cache_dir, progress=progress,
                           corpus_name=QUERY_CORPUS_NAME if kind == "synonyms"
                           else f"wordnet-{kind}-queries")
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
