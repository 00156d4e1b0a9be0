"""A new user's first hour (issue 16): warm-up and the compile notice, binary input, one-line
CLI errors before any model loads, progress that moves, and per-vector figures that agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress import Collection, cli
from vecpress.chunking import decode_text, looks_binary
from vecpress.cli import main, printable
from vecpress.core.index import ram_bytes_per_vector
from vecpress.evaluate import bench_index
from vecpress.pipeline import PROGRESS_STEP, add_texts

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeEmbedder:
    """Deterministic 16-d vectors from a hash of each word: no model, no torch."""

    dim = 16
    metric = "cosine"
    model_name = "fake-hash-16"
    batch_size = 1000

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, np.float32)
        for word in text.lower().split():
            vector[zlib.crc32(word.encode()) % self.dim] += 1.0
        return vector + 1e-3

    def embed_documents(self, texts, *, batch_size=None, progress=None):
        self.calls.append(len(texts))
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text):
        return self._vector(text)


@pytest.fixture
def fake_model(monkeypatch):
    """``vecpress.cli`` loads the fake embedder; ``loaded`` counts the loads."""
    embedder = FakeEmbedder()
    loads: list[str | None] = []

    def load(model):
        loads.append(model)
        return embedder

    monkeypatch.setattr(cli, "load_embedder", load)
    embedder.loads = loads
    return embedder


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------- binary input


def test_decode_text_detects_binary_and_charsets():
    assert decode_text(b"plain text\n").encoding == "utf-8"
    assert decode_text(b"ELF\x7f\x00\x01\x02 some strings").binary
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    assert decode_text(noise).binary
    assert decode_text(noise.replace(b"\x00", b"a")).binary  # control bytes alone suffice
    assert looks_binary(noise.replace(b"\x00", b"a")) and not looks_binary(b"tab\tand\r\nnewlines\x0c")
    latin = "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade. " * 20
    decoded = decode_text(latin.encode("latin-1"))
    assert (decoded.text, decoded.encoding, decoded.replaced) == (latin, "cp1252", 0)
    utf16 = decode_text("h\u00e9llo w\u00f6rld".encode("utf-16"))
    assert (utf16.text, utf16.encoding, utf16.binary) == ("h\u00e9llo w\u00f6rld", "utf-16", False)
    damaged = decode_text(("gr\u00fc\u00dfe " * 50).encode() + b"\xff\xfe bad bytes")
    assert damaged.encoding == "utf-8" and damaged.replaced == 2 and not damaged.binary


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=300))
def test_any_utf8_text_round_trips(text):
    decoded = decode_text(text.encode("utf-8"))
    assert not decoded.binary and decoded.replaced == 0
    assert decoded.text == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_printable_leaves_no_control_characters(text):
    unsafe = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    shown = printable(text)
    assert all(ch in "\n\t" or unicodedata.category(ch) not in unsafe for ch in shown)
    safe_part = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in unsafe)
    assert shown.replace(" ", "") == safe_part.replace(" ", "")  # nothing else changed


def test_index_skips_binary_files_and_search_prints_no_control_bytes(capsys, tmp_path, fake_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("dogs bark at the postman\n" * 5, encoding="utf-8")
    (docs / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (docs / "latin.md").write_bytes("caf\u00e9 au lait and cr\u00e8me\n".encode("latin-1") * 4)
    (docs / "controls.txt").write_text("escape \x1b[31mred\x1b[0m and a bell \x07 in a line of text here. " * 3)
    store = tmp_path / "store"
    status, out, err = run(capsys, "index", docs, "--store", store, "--quiet")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert any("skipping" in w and "image.txt" in w and "binary" in w for w in warnings)
    assert any("latin.md" in w and "cp1252" in w for w in warnings)
    assert "indexed" in out
    with Collection.open(store, read_only=True) as collection:
        sources = {Path(hit.metadata["source"]).name for hit in collection.get()}
    assert sources == {"good.txt", "latin.md", "controls.txt"}
    status, out, _ = run(capsys, "search", store, "escape red bell", "-k", "3")
    assert status == 0
    assert "controls.txt" in out and "red" in out
    assert not any(ch in out for ch in "\x00\x07\x1b")


def test_index_of_binary_files_only_is_an_error(capsys, tmp_path, fake_model):
    blob = tmp_path / "ls.txt"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(1000))
    status, _, err = run(capsys, "index", blob, "--store", tmp_path / "store")
    assert status == 1
    assert "binary" in one_line(err.split("\n", 1)[1])
    assert fake_model.loads == [] and not (tmp_path / "store").exists()


# ---------------------------------------------------------------------- CLI errors


def _small_store(path: Path) -> None:
    embedder = FakeEmbedder()
    texts = [f"text number {i} about topic {i % 5}" for i in range(40)]
    with Collection(embedder.dim, path=path) as collection:
        collection.upsert([str(i) for i in range(40)], embedder.embed_documents(texts), texts=texts)
    (path / cli.STORE_CONFIG).write_text(json.dumps({"model": embedder.model_name, "dim": 16}))


def test_locked_store_is_one_line_before_any_model_loads(capsys, tmp_path, fake_model):
    store = tmp_path / "store"
    _small_store(store)
    doc = tmp_path / "doc.txt"
    doc.write_text("a new text about topic 3")
    with Collection.open(store):  # another writer holds the lock
        status, _, err = run(capsys, "index", doc, "--store", store)
        assert status == 1
        line = one_line(err)
        assert "open for writing in another process" in line and "--store" in line
        assert "vecpress search" in line
        assert fake_model.loads == []  # refused before the model loaded
        status, out, err = run(capsys, "search", store, "topic 3", "-k", "2", "--quiet")
        assert status == 0 and "topic 3" in out  # a reader works meanwhile
    status, _, err = run(capsys, "index", doc, "--store", store, "--quiet")
    assert status == 0, err


def test_damaged_store_is_one_line_and_debug_shows_the_traceback(capsys, tmp_path, fake_model):
    store = tmp_path / "store"
    _small_store(store)
    manifest = next(p for p in (store / "index").iterdir() if p.name.startswith("manifest"))
    manifest.write_text("{ not json")
    status, _, err = run(capsys, "stats", store)
    assert status == 1
    line = one_line(err)
    assert line.startswith("vecpress stats: error:") and "--store" in line
    with pytest.raises(Exception) as raised:
        main(["stats", str(store), "--debug"])
    assert "manifest" in str(raised.value)


def test_unwritable_new_store_is_refused_before_the_model_loads(capsys, tmp_path, fake_model):
    if os.geteuid() == 0:
        target = Path("/proc/vecpress-store")  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "store"
    doc = tmp_path / "doc.txt"
    doc.write_text("some text")
    status, _, err = run(capsys, "index", doc, "--store", target)
    assert status == 1 and "not writable" in one_line(err) and "--store" in err
    assert fake_model.loads == []


def test_quiet_silences_status_lines_not_results(capsys, tmp_path, fake_model):
    doc = tmp_path / "doc.txt"
    doc.write_text("quiet please")
    status, out, err = run(capsys, "index", doc, "--store", tmp_path / "a")
    assert status == 0 and "indexing 1 chunks" in err
    status, out, err = run(capsys, "--quiet", "index", doc, "--store", tmp_path / "b")
    assert status == 0 and err == "" and "indexed 1 chunks" in out
    assert "VECPRESS_QUIET" not in os.environ  # restored after the command


# ---------------------------------------------------------------------- progress


class CountingBar:
    def __init__(self) -> None:
        self.updates: list[int] = []

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix_str(self, text="", refresh=True):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class SeededEmbedder(FakeEmbedder):
    """A random vector seeded by each text's own number: every text has its own vector."""

    def _vector(self, text: str) -> np.ndarray:
        return np.random.default_rng(int(text.split()[1])).standard_normal(self.dim).astype(np.float32)


def test_indexing_progress_moves_every_64_texts(monkeypatch):
    bar = CountingBar()
    monkeypatch.setattr("vecpress.pipeline.progress_bar", lambda total, enabled, desc: bar)
    embedder = SeededEmbedder()
    texts = [f"text {i} " + "word " * (i % 13) for i in range(1000)]
    collection = Collection(embedder.dim)
    add_texts(collection, embedder, texts, ids=[str(i) for i in range(1000)], write_batch=300)
    assert sum(bar.updates) == 1000 and max(bar.updates) <= PROGRESS_STEP
    assert max(embedder.calls) <= PROGRESS_STEP
    # texts go to the model sorted by length; each must still be stored with its own vector
    for i in (0, 7, 500, 999):
        assert collection.search(embedder.embed_query(texts[i]), 1)[0].id == str(i)


# ---------------------------------------------------------------------- figures


def test_figures_agree_across_stats_cli_and_bench(capsys, tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, 384)).astype(np.float32)
    store = tmp_path / "store"
    with Collection(384, path=store) as collection:
        for start in range(0, 400, 100):  # grown in steps: spare capacity in the writer
            collection.upsert([str(i) for i in range(start, start + 100)], vectors[start:start + 100])
        live = collection.stats()
    assert live["ram_reserved_bytes"] > 0  # the case that made the demo say 288 B and stats 213 B
    assert live["ram_bytes_per_vector"] == pytest.approx(
        (live["ram_bytes"] - live["ram_fixed_bytes"]) / 400)
    assert live["ram_bytes_per_vector"] == ram_bytes_per_vector(live["ram_bytes"], live["ram_fixed_bytes"], 400)
    with Collection.open(store, read_only=True) as reopened:
        again = reopened.stats()
        bench = bench_index(reopened.index, n_queries=20, k=5)
    # the writer's spare capacity is reported apart, so writer and reader agree
    assert again["ram_bytes_per_vector"] == pytest.approx(live["ram_bytes_per_vector"])
    assert bench.ram_bytes_per_vector == pytest.approx(again["ram_bytes_per_vector"])
    status, out, _ = run(capsys, "stats", store, "--json")
    cli_info = json.loads(out)
    assert status == 0 and cli_info["ram_bytes_per_vector"] == pytest.approx(again["ram_bytes_per_vector"])
    status, out, _ = run(capsys, "stats", store)
    assert f"{again['ram_bytes_per_vector']:,.1f} B per vector" in out
    status, out, _ = run(capsys, "bench", store, "--queries", "10", "-k", "5")
    assert f"{again['ram_bytes_per_vector']:,.1f} B per vector" in out
    # 400 vectors of 384 dims: the codec's fixed state (PCA) outweighs the codes, so no ratio
    status, out, _ = run(capsys, "stats", store)
    ram_line = next(line for line in out.splitlines() if line.strip().startswith("RAM"))
    assert "× more" not in ram_line and "No ratio yet" in ram_line


def test_ratio_compares_totals(capsys):
    info = {"count": 100_000, "dim": 384, "ram_bytes": 100_000 * 200 + 500_000,
            "ram_fixed_bytes": 500_000, "ram_reserved_bytes": 0,
            "ram_bytes_per_vector": 200.0}
    line = cli.ram_summary(info)
    expected = 100_000 * 1536 / info["ram_bytes"]
    assert f"{expected:.1f}× more" in line and "200.0 B per vector" in line


# ---------------------------------------------------------------------- warm-up


PROBE = """
import sys
import numpy as np
import vecpress
from vecpress.warmup import install_compile_notice
listener = install_compile_notice()
rng = np.random.default_rng(3)
vectors = rng.standard_normal((1500, 384)).astype(np.float32)
with vecpress.Collection(384, path=sys.argv[1]) as c:
    c.upsert([str(i) for i in range(1500)], vectors, metadatas=[{"n": i % 4} for i in range(1500)])
with vecpress.Collection.open(sys.argv[1], read_only=True) as c:
    hits = c.search(vectors[7], 3)
    c.search(vectors[8], 3, where={"n": 1})
print(hits[0].id, len(listener.compiled))
"""


@pytest.mark.slow
def test_warmup_fills_an_empty_cache_so_the_next_process_compiles_nothing(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": str(SRC)}
    env.pop("VECPRESS_QUIET", None)
    warm = subprocess.run([sys.executable, "-m", "vecpress.cli", "warmup"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr
    assert "compiled" in warm.stdout and "kernels" in warm.stdout
    assert warm.stderr.count("vecpress: compiling the numba kernels") == 1  # once, not per kernel
    assert any((tmp_path / "numba").rglob("*.nbi"))
    again = subprocess.run([sys.executable, "-m", "vecpress.cli", "warmup"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to compile" in again.stdout
    first = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "store")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["7", "0"]  # right answer, zero kernels compiled
    assert "compiling" not in first.stderr


def test_upkeep_steps_are_named_to_the_waiting_thread():
    from vecpress.core import activity

    heard: list[str] = []
    collection = Collection(16)
    vectors = np.random.default_rng(5).standard_normal((2000, 16)).astype(np.float32)
    with activity.listening(heard.append):
        collection.upsert([str(i) for i in range(100)], vectors[:100])  # fitted on 100 rows
        collection.upsert([str(i) for i in range(100, 2000)], vectors[100:])  # grown 20-fold
        assert any(line.startswith("refitting the codec") and "2,000 rows" in line for line in heard)
        collection.delete(ids=[str(i) for i in range(1200)])
        assert any(line.startswith("compacting") for line in heard)
    count = len(heard)
    collection.delete(ids=[str(i) for i in range(1200, 1900)])  # nobody listening: no call
    assert len(heard) == count


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8))
def test_search_json_is_the_same_value_without_terminal_controls(value):
    text = cli.terminal_safe_json(value)
    assert json.loads(text) == value
    assert not any(ch in text for ch in "\x00\x1b\x7f\x9b\u202e")


def test_warmup_refuses_bad_bits_before_doing_anything(capsys):
    from vecpress.warmup import warmup

    for bad in ((), (9,), (True,), ("4",)):
        with pytest.raises(ValueError, match="bits"):
            warmup(bad)
    with pytest.raises(SystemExit):
        main(["warmup", "--bits", "9"])
    assert "bits must be 1-8, 16 or 32" in capsys.readouterr().err


def test_warmup_every_kernel_goes_through_the_other_codecs_and_restores_thresholds(capsys):
    from vecpress.core.codecs import scanning

    before = scanning.PARALLEL_MIN_ROWS, scanning.PARALLEL_MIN_ROWS_ONE_QUERY
    assert main(["warmup", "--bits", "4", "--every-kernel"]) == 0
    assert "every other kernel: rabitq, int8" in capsys.readouterr().err
    assert (scanning.PARALLEL_MIN_ROWS, scanning.PARALLEL_MIN_ROWS_ONE_QUERY) == before
