"""The `vecpress` command on a folder of small real text files, against a brute-force reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from vecpress import Collection
from vecpress.chunking import chunk_text
from vecpress.cli import STORE_CONFIG, format_hits, main

pytest.importorskip("sentence_transformers")

CHUNK_SIZE, OVERLAP = 240, 60

FILES = {
    "animals/dogs.md": """# Dogs

The domestic dog is a descendant of the grey wolf and was the first animal people tamed.
Puppies are born blind and deaf; they open their eyes after about two weeks.
Dogs bark to warn their owners, and many breeds were bred for herding sheep or for hunting.
A young dog needs short walks, a lot of sleep and patient training with rewards.
""",
    "animals/birds.txt": """Birds are warm-blooded animals with feathers, beaks and wings.
Most birds can fly, but penguins and ostriches cannot. Penguins swim in cold southern seas
and catch fish under water. Many songbirds migrate south in autumn and come back in spring
to build their nests.
""",
    "music/instruments.md": """## String instruments

A guitar has six strings that the player plucks or strums; a harp has many more strings,
plucked with the fingers. The violin is played with a bow drawn across four strings.
## Percussion

Drums are struck with sticks or hands; a timpani can be tuned to a definite pitch.
""",
    "health/lungs.txt": """Asthma is a long-term disease of the airways of the lungs. During an attack the airways
narrow, and breathing becomes hard; people wheeze and cough. Pneumonia is an infection that
fills the air sacs of the lungs with fluid. Smoking damages the lungs over many years.
""",
    "notes/README.pdf": "not a text file: skipped when a folder is walked",
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def embedder():
    from vecpress.embeddings import default_embedder

    return default_embedder()


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def reference_chunks(root: Path):
    """(id, text, source, number) of every chunk, as `vecpress index` should make them."""
    rows = []
    for name in sorted(FILES):
        if not name.endswith((".md", ".txt")):
            continue
        path = (root / name).resolve()
        for chunk in chunk_text(path.read_text(encoding="utf-8"), CHUNK_SIZE, OVERLAP):
            rows.append((f"{path}#{chunk.number}", chunk.text, str(path), chunk.number))
    return rows


@pytest.fixture(scope="module")
def reference(docs, embedder):
    rows = reference_chunks(docs)
    return rows, embedder.embed_documents([r[1] for r in rows])


@pytest.fixture(scope="module")
def store(docs, tmp_path_factory, embedder):
    path = tmp_path_factory.mktemp("stores") / "notes"
    status = main(["index", str(docs), "--store", str(path), "--chunk-size", str(CHUNK_SIZE),
                   "--overlap", str(OVERLAP), "--no-progress"])
    assert status == 0
    return path


def test_index_writes_every_chunk_with_source_and_number(store, docs):
    expected = reference_chunks(docs)
    with Collection.open(store, read_only=True) as collection:
        assert len(collection) == len(expected)
        hits = collection.get([row[0] for row in expected])
    assert [(h.id, h.text, h.metadata["source"], h.metadata["chunk"]) for h in hits] == expected
    config = json.loads((store / STORE_CONFIG).read_text())
    assert config == {"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384}


@pytest.mark.parametrize("question, expected_file", [
    ("an illness that makes it hard to breathe", "health/lungs.txt"),
    ("which instruments have strings?", "music/instruments.md"),
    ("birds that cannot fly", "animals/birds.txt"),
    ("how to look after a puppy", "animals/dogs.md"),
])
def test_search_ranks_like_brute_force(capsys, store, docs, embedder, reference, question, expected_file):
    status, out, _ = run(capsys, "search", store, question, "-k", 3, "--json")
    assert status == 0
    hits = json.loads(out)
    rows, vectors = reference
    scores = vectors @ embedder.embed_query(question)
    order = np.argsort(-scores)
    assert [h["id"] for h in hits] == [rows[i][0] for i in order[:3]]
    np.testing.assert_allclose([h["score"] for h in hits], scores[order[:3]], atol=2e-3)
    assert hits[0]["metadata"]["source"] == str((docs / expected_file).resolve())


def test_search_table_shows_rank_score_source_and_text(capsys, store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    status, out, err = run(capsys, "search", store, "penguins swim", "-k", 2)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "score", "source", "text"]
    assert lines[1].split()[0] == "1" and "birds.txt #" in lines[1] and "Penguins swim" in lines[1]
    assert len(lines) == 3 and "2 hit(s)" in err
    monkeypatch.setenv("COLUMNS", "90")
    lines = run(capsys, "search", store, "penguins swim", "-k", 2)[1].splitlines()
    assert all(len(line) <= 90 for line in lines) and lines[1].endswith("…")


def test_format_hits_truncates_to_width():
    from vecpress import Hit

    table = format_hits([Hit("a", 0.5, "word " * 100, {"source": "/x/y.md", "chunk": 3})], width=80)
    assert all(len(line) <= 80 for line in table.splitlines())
    assert table.splitlines()[1].endswith("…")
    assert format_hits([]) == "  (no hits)"


def test_search_filter_mode_and_rerank_options(capsys, store, docs):
    lungs = str((docs / "health/lungs.txt").resolve())
    status, out, _ = run(capsys, "search", store, "animals", "-k", 2, "--json", "--where",
                         json.dumps({"source": lungs}))
    assert status == 0 and {h["metadata"]["source"] for h in json.loads(out)} == {lungs}
    status, out, _ = run(capsys, "search", store, "timpani", "--mode", "text", "--json")
    assert status == 0 and "timpani" in json.loads(out)[0]["text"]
    dense = json.loads(run(capsys, "search", store, "sheep herding", "--json")[1])
    for rerank in ("exact", "embed"):
        status, out, _ = run(capsys, "search", store, "sheep herding", "--rerank", rerank, "--json")
        assert status == 0
        assert [h["id"] for h in json.loads(out)] == [h["id"] for h in dense]
    status, _, err = run(capsys, "search", store, "x", "--where", "{not json")
    assert status == 1 and "--where must be JSON" in err


def test_stats(capsys, store, docs):
    status, out, _ = run(capsys, "stats", store, "--json")
    assert status == 0
    info = json.loads(out)
    count = len(reference_chunks(docs))
    assert info["count"] == info["documents"] == count
    assert info["bits"] == 4 and info["dim"] == 384 and info["code_bytes"] == 384 * 4 // 8
    assert info["ram_bytes_per_vector"] == pytest.approx((info["ram_bytes"] - info["ram_fixed_bytes"]) / count)
    assert info["float32_bytes_per_vector"] == 1536
    status, out, _ = run(capsys, "stats", store)
    assert status == 0
    for label in ("documents", "vectors", "codes", "RAM", "disk, index", "disk, documents", "model"):
        assert f"  {label}" in out
    assert "4 bits per dimension" in out and "per vector" in out


def test_reindexing_a_shorter_file_drops_its_old_chunks(capsys, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    path = folder / "story.txt"
    path.write_text(" ".join(f"Sentence number {i} of a long story about ships." for i in range(30)))
    store = tmp_path / "store"
    assert run(capsys, "index", folder, "--store", store, "--chunk-size", 200, "--overlap", 20)[0] == 0
    before = len(chunk_text(path.read_text(), 200, 20))
    path.write_text("A short story about ships.")
    status, out, _ = run(capsys, "index", path, "--store", store, "--chunk-size", 200, "--overlap", 20)
    assert status == 0 and before > 1
    with Collection.open(store, read_only=True) as collection:
        assert [h.text for h in collection.get()] == ["A short story about ships."]


def test_errors_are_one_clear_line(capsys, tmp_path, docs):
    status, _, err = run(capsys, "search", tmp_path / "nowhere", "q")
    assert status == 1 and "does not exist" in err and "vecpress index" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run(capsys, "index", tmp_path / "empty", "--store", tmp_path / "s1")
    assert status == 1 and "no .txt or .md files" in err
    assert not (tmp_path / "s1").exists()
    status, _, err = run(capsys, "index", tmp_path / "missing", "--store", tmp_path / "s1")
    assert status == 1 and "does not exist" in err
    (tmp_path / "blank.txt").write_text("  \n ")
    status, _, err = run(capsys, "index", tmp_path / "blank.txt", "--store", tmp_path / "s1")
    assert status == 1 and "empty" in err
    status, _, err = run(capsys, "stats", tmp_path / "empty")
    assert status == 1 and "holds no vecpress store" in err
    status, _, err = run(capsys, "index", docs, "--store", docs)
    assert status == 1 and "not a vecpress store" in err
    status, _, err = run(capsys, "index", docs, "--store", tmp_path / "s2", "--chunk-size", 50, "--overlap", 50)
    assert status == 1 and "--overlap" in err


def test_index_refuses_another_model_for_an_existing_store(capsys, store, docs):
    status, _, err = run(capsys, "index", docs, "--store", store, "--model", "sentence-transformers/all-mpnet-base-v2")
    assert status == 1 and "was built with 'sentence-transformers/all-MiniLM-L6-v2'" in err


def test_store_of_another_dimension(capsys, tmp_path, docs):
    other = tmp_path / "other"
    with Collection(dim=8, path=other) as collection:
        collection.upsert(["a"], np.ones((1, 8), dtype=np.float32), texts=["eight dims"])
    status, _, err = run(capsys, "search", other, "question")
    assert status == 1 and "8-dimensional" in err and "384-dimensional" in err and "--model" in err
    status, _, err = run(capsys, "index", docs, "--store", other)
    assert status == 1 and "8-dimensional" in err
    with Collection.open(other, read_only=True) as collection:
        assert len(collection) == 1


def test_empty_store(capsys, tmp_path):
    Collection(dim=384, path=tmp_path / "s").close()
    status, _, err = run(capsys, "search", tmp_path / "s", "q")
    assert status == 1 and "is empty" in err


def test_demo_without_wordnet_says_how_to_install(capsys, tmp_path):
    status, _, err = run(capsys, "demo", "--wordnet-dir", tmp_path, "--store", tmp_path / "store")
    assert status == 1 and "apt-get install wordnet-base" in err


@pytest.mark.parametrize("command", [[], ["index"], ["search"], ["stats"], ["demo"]])
def test_help_everywhere(command):
    done = subprocess.run([sys.executable, "-m", "vecpress.cli", *command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: vecpress")
    for word in {(): ["index", "search", "stats", "demo"], ("index",): ["--store", "--chunk-size", "--overlap"],
                 ("search",): ["-k", "--rerank", "--where"], ("stats",): ["--json"],
                 ("demo",): ["--limit", "--store", "wordnet-base"]}[tuple(command)]:
        assert word in done.stdout


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("vecpress")
    if exe is None:
        pytest.skip("the vecpress console script is not on PATH")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("vecpress ")
    done = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "required" in done.stderr


WORDNET = Path("/usr/share/wordnet/data.noun")


@pytest.mark.slow
@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet is not installed (apt-get install wordnet-base)")
def test_demo_end_to_end_and_idempotent(capsys, tmp_path):
    store = tmp_path / "demo"
    status, out, _ = run(capsys, "demo", "--limit", 40, "--store", store, "--cold-runs", 1, "-k", 2, "--no-progress")
    assert status == 0, out
    assert "40 WordNet glosses" in out and "indexed 40 glosses" in out
    assert out.count("Q: ") == 5 and out.count("wordnet ") >= 10
    assert "store stats:" in out and "cold start" in out and "first query" in out
    status, out, _ = run(capsys, "demo", "--limit", 40, "--store", store, "--cold-runs", 0, "--no-progress")
    assert status == 0 and "already indexed" in out and "cold start" not in out
    status, out, _ = run(capsys, "demo", "--limit", 30, "--store", store, "--cold-runs", 0, "--no-progress")
    assert status == 0
    with Collection.open(store, read_only=True) as collection:
        assert len(collection) == 30
