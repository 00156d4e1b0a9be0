"""Plain-text and Markdown files cut into overlapping chunks, for ``vecpress index``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: file name endings ``vecpress index`` picks up when it walks a folder
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_OVERLAP = 200

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    """``text`` is ``source_text[start:end]``; ``number`` counts from 0 within its file."""

    number: int
    start: int
    end: int
    text: str


def chunk_text(text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """Cut ``text`` into chunks of at most ``chunk_size`` characters at word boundaries.

    Consecutive chunks share about ``overlap`` characters (whole words), so a sentence cut at
    a chunk end is whole in the next chunk. A word longer than ``chunk_size`` makes a chunk of its
    first ``chunk_size`` characters. Whitespace-only text gives no chunks.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be an integer in [0, chunk_size), got {overlap!r}")
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    chunks: list[Chunk] = []
    first = 0
    while first < len(words):
        start = words[first][0]
        last = first
        while last + 1 < len(words) and words[last + 1][1] - start <= chunk_size:
            last += 1
        end = min(words[last][1], start + chunk_size)
        chunks.append(Chunk(len(chunks), start, end, text[start:end]))
        if last + 1 >= len(words):
            break
        # the next chunk starts at the first word that ends within `overlap` of this chunk's end,
        # always at least one word further on
        following = last + 1
        while following - 1 > first and end - words[following - 1][0] <= overlap:
            following -= 1
        first = following
    return chunks


def find_text_files(paths: Iterable[str | Path]) -> list[Path]:
    """The text files named by ``paths``: files as given, folders walked for :data:`TEXT_SUFFIXES`
    (hidden files and folders skipped). Sorted, without duplicates.

    ``FileNotFoundError`` for a path that does not exist.
    """
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            found[path.resolve()] = None
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES:
                    found[file.resolve()] = None
        else:
            raise FileNotFoundError(f"{str(given)!r} does not exist")
    return sorted(found)


def read_text_file(path: Path) -> str:
    """The file's text as UTF-8 (undecodable bytes replaced, a BOM dropped)."""
    return path.read_text(encoding="utf-8-sig", errors="replace")


def iter_file_chunks(
    files: Iterable[Path], chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP
) -> Iterator[tuple[Path, Chunk]]:
    for file in files:
        for chunk in chunk_text(read_text_file(file), chunk_size, overlap):
            yield file, chunk
