"""MultiVectorCollection: mutations against a dict model with a brute-force MaxSim reference,
filters, kill -9 during writes, torn and crafted token files, bad input, threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecpress.core.storage import StoreCorruptedError
from vecpress.multivector import MultiVectorCollection, maxsim_scores
from vecpress.multivector.store import TOKENS_FILE, TOKENS_KEY
from vecpress.multivector.tokens import HEADER_BYTES

DIM = 8
SMALL_FDE = {"repetitions": 4, "simhash_bits": 2, "projection_dim": 4}


def tokens_of(doc_id: str, version: int) -> np.ndarray:
    """A deterministic token matrix per (id, version), 1-9 rows, float16-exact values."""
    seed = zlib.crc32(doc_id.encode()) * 1000 + version
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((1 + seed % 9, DIM))
    return matrix.astype(np.float16).astype(np.float32)


def brute_force(model: dict, query: np.ndarray, k: int, keep=lambda meta: True) -> list[tuple[str, float]]:
    ids = [i for i, (_, meta) in model.items() if keep(meta)]
    if not ids:
        return []
    matrices = [model[i][0] for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in matrices])])
    scores = maxsim_scores(query, np.concatenate(matrices), offsets)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


def check_against(store: MultiVectorCollection, model: dict, rng: np.random.Generator) -> None:
    assert len(store) == len(model)
    got = {h.id: h for h in store.get(include_tokens=True)}
    assert set(got) == set(model)
    for doc_id, (matrix, meta) in model.items():
        np.testing.assert_array_equal(got[doc_id].vector, matrix)
        assert got[doc_id].metadata == meta and TOKENS_KEY not in got[doc_id].metadata
    if model:
        query = rng.standard_normal((3, DIM)).astype(np.float32)
        # every document a candidate: the rerank alone decides, so it must equal brute force
        hits = store.search(query, k=4, candidates=len(model))
        want = brute_force(model, query, 4)
        assert [h.score for h in hits] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-4)
        assert {h.id for h in hits if h.score > want[-1][1] + 1e-3} <= {i for i, _ in want}


operations = st.lists(st.tuples(st.sampled_from(["upsert", "delete", "reopen", "delete_where"]),
                                st.lists(st.sampled_from([f"d{i}" for i in range(8)]), min_size=1,
                                         max_size=3, unique=True)), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, durability=st.sampled_from(["full", "process"]))
def test_mutations_match_a_dict_model(tmp_path_factory, ops, durability):
    path = tmp_path_factory.mktemp("mv") / "store"
    store = MultiVectorCollection(DIM, path=path, fde=SMALL_FDE, durability=durability)
    model: dict[str, tuple[np.ndarray, dict]] = {}
    rng = np.random.default_rng(0)
    try:
        for step, (kind, ids) in enumerate(ops):
            if kind == "upsert":
                matrices = [tokens_of(i, step) for i in ids]
                metas = [{"step": step, "even": step % 2 == 0} for _ in ids]
                store.upsert(ids, matrices, texts=[f"{i}@{step}" for i in ids], metadatas=metas)
                model.update({i: (m, meta) for i, m, meta in zip(ids, matrices, metas)})
            elif kind == "delete":
                assert store.delete(ids) == sum(i in model for i in ids)
                for i in ids:
                    model.pop(i, None)
            elif kind == "delete_where":
                doomed = [i for i, (_, meta) in model.items() if meta["even"]]
                assert store.delete(where={"even": True}) == len(doomed)
                for i in doomed:
                    del model[i]
            else:
                store.close()
                store = MultiVectorCollection.open(path, durability=durability)
            check_against(store, model, rng)
    finally:
        store.close()


def test_in_memory_store_and_filters():
    store = MultiVectorCollection(DIM, fde=SMALL_FDE)
    model = {}
    for n in range(40):
        doc_id = f"doc{n}"
        matrix, meta = tokens_of(doc_id, 0), {"group": n % 3, "tags": ["a"] if n % 2 else ["b"]}
        store.upsert([doc_id], [matrix], texts=[doc_id], metadatas=[meta])
        model[doc_id] = (matrix, meta)
    rng = np.random.default_rng(1)
    check_against(store, model, rng)
    query = rng.standard_normal((4, DIM)).astype(np.float32)
    for where, keep in (({"group": 1}, lambda m: m["group"] == 1),
                        ({"group": {"$in": [0, 2]}}, lambda m: m["group"] in (0, 2))):
        hits = store.search(query, k=5, where=where, candidates=40)
        want = brute_force(model, query, 5, keep)
        assert [h.id for h in hits] == [i for i, _ in want]
        assert all(keep(h.metadata) for h in hits)
    # few candidates: still only matching documents, still exact MaxSim scores
    hits = store.search(query, k=3, where={"group": 2}, candidates=3)
    assert len(hits) == 3 and all(h.metadata["group"] == 2 for h in hits)
    for h in hits:
        assert h.score == pytest.approx(brute_force({h.id: model[h.id]}, query, 1)[0][1], rel=1e-5)


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    store = MultiVectorCollection(DIM, path=tmp_path / "s", fde=SMALL_FDE)
    store.upsert(["ok"], [tokens_of("ok", 0)])
    rows = store.stats()["token_rows"]
    good = tokens_of("x", 0)
    bad_calls = [
        (lambda: store.upsert(["a", "b"], [good, np.zeros((2, DIM + 1))]), ValueError, r"tokens\[1\]"),
        (lambda: store.upsert(["a"], [np.full((2, DIM), np.nan)]), ValueError, "NaN"),
        (lambda: store.upsert(["a"], [np.full((2, DIM), 1e6)]), ValueError, "float16"),
        (lambda: store.upsert(["a"], [np.zeros((0, DIM))]), ValueError, "empty"),
        (lambda: store.upsert(["a"], good), TypeError, "one document"),
        (lambda: store.upsert(["a"], [good], metadatas=[{TOKENS_KEY: 1}]), ValueError, "reserved"),
        (lambda: store.upsert(["a"], [good], metadatas=[{"x": object()}]), TypeError, "metadatas"),
        (lambda: store.upsert(["a", "a"], [good, good]), ValueError, "repeats"),
        (lambda: store.search(np.zeros((2, DIM + 1))), ValueError, "query"),
        (lambda: store.search(good, k=0), ValueError, "k"),
        (lambda: store.search(good, candidates=-1), ValueError, "candidates"),
        (lambda: store.add_texts(["hi"]), ValueError, "embedder"),
    ]
    for call, error, message in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert len(store) == 1 and store.stats()["token_rows"] == rows
    store.close()
    with pytest.raises(ValueError, match="dim"):
        MultiVectorCollection(DIM + 1, path=tmp_path / "s")
    with pytest.raises(ValueError, match="fde"):
        MultiVectorCollection(DIM, path=tmp_path / "s", fde={"repetitions": 5})
    with pytest.raises(TypeError, match="unknown fde"):
        MultiVectorCollection(DIM, fde={"reps": 5})


def test_read_only_second_open_sees_writes_and_cannot_write(tmp_path):
    path = tmp_path / "s"
    writer = MultiVectorCollection(DIM, path=path, fde=SMALL_FDE)
    writer.upsert(["a"], [tokens_of("a", 0)], texts=["first"])
    reader = MultiVectorCollection.open(path, read_only=True)
    writer.upsert(["b"], [tokens_of("b", 0)], texts=["second"])
    reader.refresh()
    got = {h.id: h for h in reader.get(include_tokens=True)}
    np.testing.assert_array_equal(got["b"].vector, tokens_of("b", 0))
    assert reader.search(tokens_of("b", 0), k=1, candidates=2)[0].id == "b"
    with pytest.raises(PermissionError):
        reader.upsert(["c"], [tokens_of("c", 0)])
    reader.close()
    writer.close()


def test_a_store_from_before_the_orthogonal_encoding_opens_with_its_own(tmp_path):
    """A manifest without ``projection`` / ``normalize_buckets`` (written before they existed)
    opens with the sign sketch and plain averages it was built with (else the fingerprint of
    the drawn matrices would not match and opening would refuse), and keeps encoding new
    documents that way."""
    from vecpress.multivector import FDEConfig
    from vecpress.multivector.store import MANIFEST
    path = tmp_path / "s"
    legacy = dict(SMALL_FDE, projection="sign", normalize_buckets=False)
    with MultiVectorCollection(DIM, path=path, fde=legacy) as store:
        store.upsert(["a", "b"], [tokens_of("a", 0), tokens_of("b", 0)])
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["fde"]["projection"], manifest["fde"]["normalize_buckets"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with MultiVectorCollection.open(path) as store:
        assert store.fde_config == FDEConfig(DIM, **legacy)
        store.upsert(["c"], [tokens_of("c", 0)])
        assert store.search(tokens_of("c", 0), k=1, candidates=3)[0].id == "c"
    with MultiVectorCollection(DIM, path=tmp_path / "new", fde=SMALL_FDE) as fresh:
        assert (fresh.fde_config.projection, fresh.fde_config.normalize_buckets) == ("orthogonal", True)


def test_torn_tail_is_ignored_and_overwritten(tmp_path):
    path = tmp_path / "s"
    store = MultiVectorCollection(DIM, path=path, fde=SMALL_FDE)
    store.upsert(["a"], [tokens_of("a", 0)])
    store.close()
    with open(path / TOKENS_FILE, "ab") as handle:  # half a row, as a crash mid-append leaves
        handle.write(b"\x01" * (DIM * 2 // 2 + 1))
    store = MultiVectorCollection.open(path)
    store.upsert(["b"], [tokens_of("b", 0)])
    got = {h.id: h.vector for h in store.get(include_tokens=True)}
    np.testing.assert_array_equal(got["a"], tokens_of("a", 0))
    np.testing.assert_array_equal(got["b"], tokens_of("b", 0))
    store.close()
    size = os.path.getsize(path / TOKENS_FILE)
    assert (size - HEADER_BYTES) % (DIM * 2) == 0


@pytest.mark.parametrize("damage, message", [
    ("magic", "magic"), ("dim", "dimensional"), ("short", "header"), ("symlink", "symbolic link"),
    ("fingerprint", "seed"), ("truncated", "outside"), ("manifest", "JSON"),
    ("huge run", "token run"),
])
def test_crafted_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "s"
    store = MultiVectorCollection(DIM, path=path, fde=SMALL_FDE)
    store.upsert(["a", "b"], [tokens_of("a", 0), tokens_of("b", 0)])
    store.close()
    tokens = path / TOKENS_FILE
    manifest_path = path / "multivector.json"
    if damage == "magic":
        with open(tokens, "r+b") as handle:
            handle.write(b"NOTTOKEN")
    elif damage == "dim":
        with open(tokens, "r+b") as handle:
            handle.seek(12)
            handle.write((DIM + 1).to_bytes(4, "little"))
    elif damage == "short":
        tokens.write_bytes(b"VPTOKEN1")
    elif damage == "symlink":
        target = tmp_path / "elsewhere"
        tokens.rename(target)
        tokens.symlink_to(target)
    elif damage == "fingerprint":
        manifest = json.loads(manifest_path.read_text())
        manifest["fde"]["seed"] += 1
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "truncated":  # documents point past the end: not something a crash leaves
        os.truncate(tokens, HEADER_BYTES + DIM * 2)
    elif damage == "manifest":
        manifest_path.write_text("{not json")
    elif damage == "huge run":  # a crafted database: one document claims 2**40 token rows
        import sqlite3
        db = sqlite3.connect(path / "fde" / "docs.sqlite")
        with db:
            db.execute("UPDATE docs SET metadata = ?", (json.dumps({TOKENS_KEY: [0, 2**40]}),))
        db.close()
    with pytest.raises(StoreCorruptedError, match=message):
        reopened = MultiVectorCollection.open(path, read_only=True)
        try:
            reopened.get(include_tokens=True)
            reopened.search(tokens_of("a", 0), k=2)
        finally:
            reopened.close()


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_multivector_store import DIM, SMALL_FDE, tokens_of
    from vecpress.multivector import MultiVectorCollection
    store = MultiVectorCollection(DIM, path={path!r}, fde=SMALL_FDE, durability={durability!r})
    for step in range(100000):
        doc_id = f"d{{step % 7}}"
        store.upsert([doc_id], [tokens_of(doc_id, step)], metadatas=[{{"step": step}}])
        print(step, flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("durability, acks, delay", [("full", 5, 0.0), ("full", 20, 0.007),
                                                     ("process", 40, 0.003)])
def test_kill_9_during_writes(tmp_path, durability, acks, delay):
    """Every acknowledged upsert is there after kill -9, with its exact tokens; the one in
    flight is whole or absent; the store takes writes again."""
    path = tmp_path / "s"
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(path), durability=durability)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = -1
    try:
        while last + 1 < acks:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer died: {proc.stderr.read()}")
            last = int(line)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        # the lines readline() already buffered are in proc.stdout, not in communicate()'s
        rest = proc.stdout.read()
        proc.wait()
        proc.stderr.close()
    for line in rest.split():
        last = int(line)
    expected = {f"d{step % 7}": step for step in range(last + 1)}
    in_flight = dict(expected, **{f"d{(last + 1) % 7}": last + 1})
    store = MultiVectorCollection.open(path)
    try:
        got = {h.id: h for h in store.get(include_tokens=True)}
        steps = {i: h.metadata["step"] for i, h in got.items()}
        assert steps in (expected, in_flight)
        for doc_id, hit in got.items():
            np.testing.assert_array_equal(hit.vector, tokens_of(doc_id, steps[doc_id]))
        store.upsert(["after"], [tokens_of("after", 0)])  # and it takes writes again
        query = tokens_of("after", 0)
        hits = {h.id: h.score for h in store.search(query, k=len(store), candidates=len(store))}
        assert hits["after"] == pytest.approx(float((query @ query.T).max(1).sum()), rel=1e-4)
    finally:
        store.close()


def test_eight_threads_search_while_one_writes():
    store = MultiVectorCollection(DIM, fde=SMALL_FDE)
    store.upsert([f"base{i}" for i in range(20)], [tokens_of(f"base{i}", 0) for i in range(20)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        rng = np.random.default_rng(threading.get_ident() % 1000)
        try:
            while not stop.is_set():
                query = rng.standard_normal((2, DIM)).astype(np.float32)
                hits = store.search(query, k=5, candidates=8)
                assert len(hits) == 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(8)]
    for thread in threads:
        thread.start()
    for i in range(60):
        store.upsert([f"w{i % 10}"], [tokens_of(f"w{i % 10}", i)])
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store) == 30


def test_top_level_export():
    """``from vecpress import MultiVectorCollection, FDEConfig`` works (imported lazily)."""
    import vecpress
    from vecpress.multivector import FDEConfig
    assert vecpress.MultiVectorCollection is MultiVectorCollection and vecpress.FDEConfig is FDEConfig
    assert {"MultiVectorCollection", "FDEConfig"} <= set(vecpress.__all__)
    with pytest.raises(AttributeError, match="no attribute"):
        vecpress.NotAThing  # noqa: B018


def test_partitioned_store_probes_lists_and_reopens_with_them(tmp_path):
    rng = np.random.default_rng(21)
    model = {f"d{i}": (tokens_of(f"d{i}", 1), {"even": i % 2 == 0}) for i in range(600)}
    store = MultiVectorCollection(DIM, path=tmp_path / "store", fde=SMALL_FDE, partitions=8)
    for start in range(0, 600, 150):  # lists are trained once 8 x 16 documents are in
        batch = list(model)[start:start + 150]
        store.upsert(batch, [model[i][0] for i in batch], metadatas=[model[i][1] for i in batch])
    stats = store.stats()
    assert stats["lists"] == 8 and 1 <= stats["nprobe"] <= 8
    store.close()
    store = MultiVectorCollection.open(tmp_path / "store")
    assert store.stats()["lists"] == 8
    flat = MultiVectorCollection(DIM, fde=SMALL_FDE)  # the same documents, scanned flat
    flat.upsert(list(model), [m for m, _ in model.values()])
    found = flat_found = want = 0
    for _ in range(10):
        query = rng.standard_normal((3, DIM)).astype(np.float32)
        # every list probed and every document a candidate: exactly the brute force
        hits = store.search(query, k=5, candidates=600, nprobe=8)
        exact = brute_force(model, query, 5)
        assert [h.score for h in hits] == pytest.approx([s for _, s in exact], rel=1e-4, abs=1e-4)
        # one list: its hits are a subset of what the lists hold, filtered hits obey the filter
        one = store.search(query, k=5, candidates=600, nprobe=1, where={"even": True})
        assert one and all(model[h.id][1]["even"] for h in one)
        truth = {i for i, _ in exact}
        found += len({h.id for h in store.search(query, k=5, candidates=50)} & truth)
        flat_found += len({h.id for h in flat.search(query, k=5, candidates=50)} & truth)
        want += len(exact)
    # the default nprobe loses little against the flat scan of the same FDE codes (random
    # 8-d tokens and a 4-repetition FDE: both recalls are low, about 0.5)
    assert found >= flat_found - 0.1 * want
    store.close()
