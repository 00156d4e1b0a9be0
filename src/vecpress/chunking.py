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


#: bytes read to decide whether a file is text (a NUL or many control bytes there: binary)
SNIFF_BYTES = 65_536
#: undecodable bytes above this fraction of a UTF-8 file make it binary
BINARY_FRACTION = 0.10
#: control bytes (other than tab, newlines, form feed, escape, backspace) above this fraction
#: of the sniffed bytes make a file binary (random bytes have about 10%, text almost none)
CONTROL_FRACTION = 0.02
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v\b\x1b")
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


@dataclass(frozen=True)
class DecodedFile:
    """A file's text and how it was read. ``binary`` files have no text (``""``);
    ``replaced`` counts undecodable bytes turned into U+FFFD."""

    text: str
    encoding: str
    replaced: int = 0
    binary: bool = False


def looks_binary(data: bytes) -> bool:
    """True for bytes that are not text: a NUL, or more than :data:`CONTROL_FRACTION` control
    bytes, in the first :data:`SNIFF_BYTES` (call it only on data without a UTF-16/32 BOM)."""
    head = data[:SNIFF_BYTES]
    if b"\x00" in head:
        return True
    controls = sum(1 for byte in head if byte < 32 and byte not in _TEXT_CONTROLS)
    return controls > CONTROL_FRACTION * max(len(head), 1)


def decode_text(data: bytes) -> DecodedFile:
    """Decode a file's bytes: a BOM's charset, else UTF-8; a file with no valid UTF-8 multi-byte
    sequence but invalid bytes is taken as a legacy 8-bit file (cp1252, which covers Latin-1
    text). Binary data (see :func:`looks_binary`, or mostly undecodable) is flagged, not decoded."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data.decode(encoding, errors="replace")
            return DecodedFile(text, encoding, text.count("\ufffd"))
    if looks_binary(data):
        return DecodedFile("", "binary", binary=True)
    try:
        return DecodedFile(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    if not _has_utf8_sequences(text):  # no valid multi-byte sequence at all: legacy 8-bit text
        legacy = data.decode("cp1252", errors="replace")
        return DecodedFile(legacy, "cp1252", legacy.count("\ufffd"))
    if replaced > BINARY_FRACTION * len(data) and replaced > 8:
        return DecodedFile("", "binary", binary=True)
    return DecodedFile(text, "utf-8", replaced)


def _has_utf8_sequences(text: str) -> bool:
    """Whether some non-ASCII character other than U+FFFD decoded: then the file is UTF-8."""
    return any(ord(ch) > 127 and ch != "\ufffd" for ch in text)


def read_file(path: Path) -> DecodedFile:
    """The file read and decoded by :func:`decode_text`."""
    return decode_text(Path(path).read_bytes())


def read_text_file(path: Path) -> str:
    """The file's text (see :func:`decode_text`; undecodable bytes replaced, a BOM dropped,
    ``""`` for a binary file)."""
    return read_file(path).text


def iter_file_chunks(
    files: Iterable[Path], chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP
) -> Iterator[tuple[Path, Chunk]]:
    for file in files:
        for chunk in chunk_text(read_text_file(file), chunk_size, overlap):
            yield file, chunk
