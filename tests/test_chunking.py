"""Chunking of text files for `vecpress index`: coverage, sizes, overlap, file discovery."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress.chunking import chunk_text, find_text_files, iter_file_chunks

words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda w: w.split() == [w]
)
separators = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n "])


@st.composite
def documents(draw):
    parts = draw(st.lists(st.tuples(words, separators), max_size=80))
    return draw(separators) * draw(st.booleans()) + "".join(w + s for w, s in parts)


@settings(max_examples=200, deadline=None)
@given(text=documents(), chunk_size=st.integers(1, 120), overlap_fraction=st.floats(0, 0.9))
def test_chunks_cover_every_word_within_size_and_overlap(text, chunk_size, overlap_fraction):
    overlap = min(int(chunk_size * overlap_fraction), chunk_size - 1)
    chunks = chunk_text(text, chunk_size, overlap)
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not spans:
        assert chunks == []
        return
    assert [c.number for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < chunk.end - chunk.start <= chunk_size
        assert chunk.text == chunk.text.strip()
    # every word that fits a chunk is inside one chunk whole; longer words are cut, not lost
    for start, end in spans:
        if end - start <= chunk_size:
            assert any(c.start <= start and end <= c.end for c in chunks), (start, end)
        else:
            assert any(c.start == start for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        assert after.start > before.start  # progress
        assert before.end - after.start <= overlap  # shared text is at most `overlap` characters


def test_overlap_repeats_the_tail_words():
    text = " ".join(f"w{i:02d}" for i in range(30))  # 3-character words, 1 space
    chunks = chunk_text(text, chunk_size=23, overlap=8)
    assert chunks[0].text == "w00 w01 w02 w03 w04 w05"
    assert chunks[1].text.startswith("w04 w05 ")  # the last two words again (7 characters)
    assert " ".join(c.text for c in chunks).split()[-1] == "w29"
    assert chunk_text(text, chunk_size=23, overlap=0)[1].text.startswith("w06")


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_text("a b", 0)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b", 10, 10)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b", 10, -1)


def test_find_text_files(tmp_path):
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.TXT").write_text("beta")
    (tmp_path / "sub" / "c.pdf").write_text("not text")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "d.md").write_text("hidden")
    (tmp_path / "sub" / ".e.txt").write_text("hidden")
    (tmp_path / "notes.rst").write_text("given by name")
    found = find_text_files([tmp_path, tmp_path / "a.md", tmp_path / "notes.rst"])
    assert found == sorted([(tmp_path / "a.md").resolve(), (tmp_path / "sub" / "b.TXT").resolve(),
                            (tmp_path / "notes.rst").resolve()])
    assert find_text_files([tmp_path / "sub" / "c.pdf"]) == [(tmp_path / "sub" / "c.pdf").resolve()]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_text_files([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_text_files([empty]) == []


def test_iter_file_chunks_reads_utf8_with_bom(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("\ufeffcafé au lait".encode("utf-8") + b" \xff end")
    chunks = list(iter_file_chunks([path], 100, 10))
    assert [c.text for _, c in chunks] == ["café au lait \ufffd end"]
