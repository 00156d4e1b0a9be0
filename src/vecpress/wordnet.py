"""WordNet glosses from Debian's ``wordnet-base`` package: the real corpus of ``vecpress demo``.

Every synset of WordNet 3.0 gives one short text, ``"first lemma: gloss"`` (about 117k of
them). The files are read, never downloaded: ``apt-get install wordnet-base`` puts them in
``/usr/share/wordnet``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
INSTALL_HINT = "install them with `apt-get install wordnet-base` (Debian/Ubuntu)"

# adjective lemmas may carry a syntactic marker: "galore(ip)", "aforesaid(a)"
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Gloss:
    """One synset: ``id`` is ``"<pos>:<offset>"``, unique and stable across runs."""

    pos: str
    offset: str
    lemma: str
    gloss: str

    @property
    def id(self) -> str:
        return f"{self.pos}:{self.offset}"

    @property
    def text(self) -> str:
        return f"{self.lemma}: {self.gloss}"

    @property
    def metadata(self) -> dict[str, str]:
        return {"source": f"wordnet {self.pos} {self.offset}", "pos": self.pos, "lemma": self.lemma}


def read_glosses(wordnet_dir: str | Path = WORDNET_DIR) -> list[Gloss]:
    """Every synset with a gloss, nouns then verbs, adjectives, adverbs, in file order;
    a text that repeats an earlier one exactly is left out.

    ``FileNotFoundError`` with the install command when the files are missing.
    """
    wordnet_dir = Path(wordnet_dir)
    paths = [wordnet_dir / f"data.{pos}" for pos in PARTS_OF_SPEECH]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet data files not found: {', '.join(missing)}; {INSTALL_HINT}")
    glosses: list[Gloss] = []
    seen: set[str] = set()
    for pos, path in zip(PARTS_OF_SPEECH, paths):
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("  "):  # licence header
                    continue
                synset, separator, gloss = line.partition(" | ")
                gloss = gloss.strip()
                if not separator or not gloss:
                    continue
                # synset line: offset lex_filenum ss_type w_cnt word lex_id ...
                fields = synset.split()
                lemma = _ADJECTIVE_MARKER.sub("", fields[4]).replace("_", " ")
                entry = Gloss(pos, fields[0], lemma, gloss)
                if entry.text not in seen:
                    seen.add(entry.text)
                    glosses.append(entry)
    return glosses


def sample_glosses(limit: int | None, wordnet_dir: str | Path = WORDNET_DIR) -> tuple[list[Gloss], int]:
    """``limit`` glosses spread evenly over the whole of WordNet (every part of speech and
    topic, not just the first nouns), and the total count. ``None`` keeps them all."""
    glosses = read_glosses(wordnet_dir)
    total = len(glosses)
    if limit is None or limit >= total:
        return glosses, total
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return [glosses[(i * total) // limit] for i in range(limit)], total
