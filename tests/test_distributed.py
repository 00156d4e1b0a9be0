"""ShardedCollection on a local Ray cluster: the same answers as one Collection, routing, the
root manifest as untrusted input, restarts after SIGKILL, and the framework adapters.

One Ray cluster serves the module (started once, shut down at the end), the README's Ray
example included; most tests share one 3-shard store and clear it first. Every actor start
costs 1-3 s here (a worker process, importing vecpress, and numba's first call in it), so the
tests start as few as they can.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'vecpress[ray]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vecpress import Collection  # noqa: E402
from vecpress.core.relevance import DEFAULT_PARAMS, PARAM_KEYS  # noqa: E402
from vecpress.core.storage import StoreCorruptedError  # noqa: E402
from vecpress.distributed import ShardedCollection, ShardUnavailableError, shard_of  # noqa: E402
from vecpress.core.collection import Hit  # noqa: E402
from vecpress.distributed.batching import QueryBatcher  # noqa: E402
from vecpress.distributed.layout import ROOT_MANIFEST, shard_name  # noqa: E402
from vecpress.distributed.results import Ranked, merge_ranked  # noqa: E402

from conftest import clustered_vectors, reference_scores  # noqa: E402

DIM = 16
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sharded(cluster, tmp_path_factory):
    # 3 shards in 2 actors: the shards' calls travel together per actor (the other stores
    # here have one shard per actor)
    store = ShardedCollection(DIM, tmp_path_factory.mktemp("sharded") / "store", shards=3,
                              bits=32, timeout=60, shards_per_actor=2)
    yield store
    store.close()


@pytest.fixture
def empty(sharded):
    sharded.clear()
    sharded.set_relevance_params(None)
    return sharded


def on_every_shard(store, method: str) -> list:
    """``method()`` of each shard, asked directly (not through the store)."""
    return [ray.get(store._actor_of(s).call.remote(method, [(store._placement[s][1], ())]))[0]
            for s in range(len(store.shards))]


def corpus(n: int, seed: int = 0):
    """Vectors, ids, texts (Zipf-like words, lengths 1-30, some without text) and metadata."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [f"doc-{seed}-{i}" for i in range(n)]
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    # "pad" repeated i times gives every document its own length, so no two BM25 scores tie
    texts = [" ".join([*rng.choice(WORDS, size=int(rng.integers(1, 30)), p=weights / weights.sum()),
                       *["pad"] * i]) if i % 17 else None for i in range(n)]
    metas = [{"group": int(i % 5), "year": 2000 + int(i % 23)} for i in range(n)]
    return vectors, ids, texts, metas


def fill(*stores, n: int = 600, seed: int = 0):
    vectors, ids, texts, metas = corpus(n, seed)
    for store in stores:
        store.upsert(ids, vectors, texts, metas)
    return vectors, ids, texts, metas


def ranked(hits):
    return [(h.id, h.score) for h in hits]


def assert_same_hits(got, want) -> None:
    """The same documents in the same order, with the same scores (up to float rounding:
    the scores of a batch and of a single row may differ in the last bit)."""
    assert [h.id for h in got] == [h.id for h in want]
    assert np.allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=1e-6)


def assert_same_ranking(got, want, tol: float = 1e-9) -> None:
    """The same scores in order, and the same documents wherever a score is not tied with the
    last one kept (a tie at the cut may keep either document; ties order by id here and by
    insertion in a Collection)."""
    assert len(got) == len(want)
    assert np.allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=tol)
    if not got:
        return
    cut = want[-1].score
    assert {h.id for h in got if h.score > cut + tol} == {h.id for h in want if h.score > cut + tol}


# ---------------------------------------------------------------------- routing and manifest


def test_routing_is_blake2b_of_the_id_modulo_the_shards():
    for doc_id in ["a", "doc-17", "ünïcode", "x" * 500]:
        digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
        for shards in (1, 2, 3, 7, 1024):
            assert shard_of(doc_id, shards) == int.from_bytes(digest, "big") % shards


def test_bad_arguments_are_refused_before_anything_is_written(cluster, tmp_path):
    path = tmp_path / "store"
    for kwargs, error, words in [
        ({"shards": 0}, ValueError, "shards"), ({"shards": 5000}, ValueError, "shards"),
        ({"shards": 2.5}, ValueError, "shards"), ({"bits": 9}, ValueError, "bits"),
        ({"metric": "manhattan"}, ValueError, "metric"), ({"timeout": 0}, ValueError, "timeout"),
        ({"max_restarts": -2}, ValueError, "max_restarts"), ({"colour": 1}, TypeError, "colour"),
        ({"durability": "never"}, ValueError, "durability"),
        ({"actor_options": "fast"}, TypeError, "actor_options"),
        ({"shards_per_actor": 0}, ValueError, "shards_per_actor"),
    ]:
        with pytest.raises(error, match=words):
            ShardedCollection(DIM, path, **kwargs)
        assert not path.exists()
    with pytest.raises(TypeError, match="dim is required"):
        ShardedCollection(path=path)
    with pytest.raises(TypeError, match="path is required"):
        ShardedCollection(DIM)
    assert not path.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty"):
        ShardedCollection(DIM, tmp_path / "other")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["file.txt"]


def _write_manifest(root, manifest) -> None:
    root.mkdir(exist_ok=True)
    for i in range(len(manifest.get("shards", [])) if isinstance(manifest, dict) else 0):
        (root / shard_name(i)).mkdir(exist_ok=True)
    (root / ROOT_MANIFEST).write_text(json.dumps(manifest))


GOOD = {"format": "vecpress-sharded", "format_version": 1, "shards": ["shard-0000", "shard-0001"],
        "routing": {"hash": "blake2b-64", "rule": "hash mod shards"}, "dim": 8,
        "metric": "cosine", "bits": 4, "index_options": {}}


@pytest.mark.parametrize("change, words", [
    ({"format": "something"}, "not a sharded"),
    ({"format_version": 99}, "newer"),
    ({"shards": ["../../etc", "shard-0001"]}, "named shard-0000"),
    ({"shards": []}, "1 to"),
    ({"shards": ["shard-0001", "shard-0000"]}, "in order"),
    ({"routing": {"hash": "md5", "rule": "hash mod shards"}}, "routing"),
    ({"dim": -3}, "dim"),
    ({"dim": 10 ** 12}, "dim"),
    ({"metric": "hamming"}, "metric"),
    ({"bits": 9}, "settings are not valid"),
    ({"index_options": {"exec": "rm -rf /"}}, "index_options"),
    ({"extra": 1}, "keys"),
])
def test_crafted_root_manifests_are_refused(tmp_path, change, words):
    root = tmp_path / "store"
    _write_manifest(root, {**GOOD, **change})
    with pytest.raises(StoreCorruptedError, match=words):
        ShardedCollection.open(root)


def test_damaged_root_files_are_refused(tmp_path):
    root = tmp_path / "store"
    _write_manifest(root, GOOD)
    (root / ROOT_MANIFEST).write_text("{not json")
    with pytest.raises(StoreCorruptedError, match="not valid JSON"):
        ShardedCollection.open(root)
    (root / ROOT_MANIFEST).write_text(" " * (1 << 17))
    with pytest.raises(StoreCorruptedError, match="larger than"):
        ShardedCollection.open(root)
    (root / ROOT_MANIFEST).write_text(json.dumps(GOOD))
    (root / "shard-0001").rmdir()
    with pytest.raises(StoreCorruptedError, match="shard-0001.*missing"):
        ShardedCollection.open(root)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "shard-0001")
    with pytest.raises(StoreCorruptedError, match="symbolic link"):
        ShardedCollection.open(root)
    os.unlink(root / "shard-0001")
    (root / "shard-0001").mkdir()
    os.replace(root / ROOT_MANIFEST, tmp_path / "real.json")
    os.symlink(tmp_path / "real.json", root / ROOT_MANIFEST)
    with pytest.raises(StoreCorruptedError, match="symbolic link"):
        ShardedCollection.open(root)
    with pytest.raises(FileNotFoundError, match="holds no sharded"):
        ShardedCollection.open(tmp_path / "nothing")


def test_relevance_equals_one_collection(empty):
    """Up to SAMPLE_ROWS rows every shard's sample is all its rows, so the pooled statistics,
    each hit's relevance and min_relevance's cut are exactly one Collection's."""
    single = Collection(DIM, bits=32)
    vectors, ids, _, _ = fill(empty, single)
    rng = np.random.default_rng(4)
    for where in (None, {"group": {"$in": [0, 3]}}):
        for query in (vectors[5], rng.standard_normal(DIM)):
            got = empty.search(query, 12, where, relevance=True)
            want = single.search(query, 12, where, relevance=True)
            assert_same_hits(got, want)
            assert np.allclose([h.relevance for h in got], [h.relevance for h in want],
                               rtol=0, atol=1e-9)
            assert (got.stats.sample_size, got.stats.rows) == (600, 600)
            assert np.allclose([got.stats.median, got.stats.spread, got.stats.upper],
                               [want.stats.median, want.stats.spread, want.stats.upper],
                               rtol=0, atol=1e-9)
            cut = float(np.median([h.relevance for h in want]))
            assert [h.id for h in empty.search(query, 12, where, min_relevance=cut)] == \
                [h.id for h in want if h.relevance >= cut]
    assert empty.search(vectors[0], 5).stats is None  # only when asked for
    for bad, error in [({"relevance": "yes"}, TypeError), ({"min_relevance": 2}, ValueError),
                       ({"relevance": True, "mode": "text", "query_text": "w1"}, ValueError)]:
        with pytest.raises(error, match="relevance"):
            empty.search(vectors[0], 5, **bad)
    single.close()


def test_calibrate_equals_one_collections_and_every_shard_stores_it(empty):
    """Up to SAMPLE_ROWS rows the pooled statistics are one Collection's, so calibrating on
    the same labelled queries fits the same parameters (first factor and gate)."""
    single = Collection(DIM, bits=32)
    vectors, ids, _, _ = fill(empty, single)
    rng = np.random.default_rng(7)
    exact = reference_scores(vectors, vectors[:24], "cosine")
    queries = np.vstack([vectors[:24] + 0.3 * rng.standard_normal((24, DIM)),
                         rng.standard_normal((8, DIM)) * 5])
    relevant = [[ids[i] for i in np.argsort(-row)[:int(rng.integers(1, 6))]] for row in exact]
    relevant += [[] for _ in range(8)]  # off-topic: the gate is fitted too
    for where in (None, {"group": {"$ne": 1}}):
        got = empty.calibrate(queries, relevant, k=8, where=where)
        want = single.calibrate(queries, relevant, k=8, where=where)
        assert got.fitted_on == want.fitted_on == 32 and got.gate is not None
        assert np.allclose([getattr(got, key) for key in PARAM_KEYS],
                           [getattr(want, key) for key in PARAM_KEYS], rtol=1e-6, atol=1e-9)
        assert np.allclose(got.gate, want.gate, rtol=1e-6, atol=1e-9)
        assert empty.relevance_params == got
        assert on_every_shard(empty, "relevance_params") == [got] * 3
        query = queries[2]
        assert np.allclose([h.relevance for h in empty.search(query, 5, relevance=True)],
                           [h.relevance for h in single.search(query, 5, relevance=True)],
                           rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="relevant_ids has 2 entries"):
        empty.calibrate(queries, relevant[:2])
    with pytest.raises(TypeError, match="params"):
        empty.set_relevance_params({"weight_score": 1})
    empty.set_relevance_params(None)
    assert empty.relevance_params == DEFAULT_PARAMS
    single.close()


def test_quantized_shards_rerank_exactly_reopen_and_name_a_dead_shard(cluster, tmp_path):
    """Quantized shards (each fits its own codec) return exact scores and high recall; the
    store reopens with its documents, answers the same, and refuses other settings. Reopened
    without restarts (``max_restarts=0``), a SIGKILLed shard is an error naming it, unless
    partial results are allowed (one store for both: every actor start costs 1-3 s here)."""
    path = tmp_path / "q"
    data = clustered_vectors(3000, DIM, seed=5)
    ids = [f"q{i}" for i in range(len(data))]
    metas = [{"i": i} for i in range(len(data))]
    queries = clustered_vectors(20, DIM, seed=6)
    # both shards in one actor here, which dies at the end; reopened one per actor (a
    # setting of each open) with every acknowledged write
    with ShardedCollection(DIM, path, shards=2, bits=4, durability="process",
                           shards_per_actor=2, max_restarts=0, timeout=20) as store:
        assert len(store._actors) == 1
        store.upsert(ids, data, metadatas=metas)
        exact = reference_scores(data, queries, "cosine")
        recall, before = [], []
        for q, query in enumerate(queries):
            hits = store.search(query, 10)
            rows = [int(h.id[1:]) for h in hits]
            assert np.allclose([h.score for h in hits], exact[q, rows], atol=1e-3)  # float16
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            recall.append(len(set(rows) & set(np.argsort(-exact[q])[:10])) / 10)
            before.append(ranked(hits))
        assert np.mean(recall) >= 0.9
        stats = store.search(queries[0], 10, relevance=True).stats  # pooled, 2048 of 3000 rows
        assert (stats.sample_size, stats.rows) == (2048, 3000)
        assert abs(stats.median - np.median(exact[0])) < 0.05 * np.std(exact[0])
        relevant = [[ids[i] for i in np.argsort(-row)[:3]] for row in exact]
        params = store.calibrate(queries, relevant, k=10)  # pooled: 2048 of 3000 rows
        assert params.fitted_on == len(queries) and params != DEFAULT_PARAMS
        os.kill(ray.get(store._actor_of(0).pid.remote()), signal.SIGKILL)
        with pytest.raises(ShardUnavailableError, match="shard-0000.*also holds shard-0001"):
            store.search(queries[0], 10)
    for closed in (lambda: store.search(queries[0], 10), lambda: len(store), store.stats,
                   lambda: store.get(ids[:1])):
        with pytest.raises(RuntimeError, match="closed"):
            closed()
    for kwargs, words in [({"shards": 3}, "shards=3"), ({"bits": 8}, "bits=8"),
                          ({"dim": DIM + 1}, "dim=")]:
        with pytest.raises(ValueError, match=words):
            ShardedCollection.open(path, **kwargs)
    with ShardedCollection.open(path, shards=2, metric="COSINE", max_restarts=0,
                                timeout=20) as store:
        assert len(store) == 3000 and store.shards == ["shard-0000", "shard-0001"]
        assert len(store._actors) == 2
        assert store.relevance_params == params  # calibrated parameters survive the reopen
        assert on_every_shard(store, "relevance_params") == [params] * 2
        assert [ranked(store.search(query, 10)) for query in queries] == before
        assert [(h.id, h.metadata) for h in store.get(ids[:5])] == list(zip(ids[:5], metas[:5]))
        with pytest.raises(RuntimeError, match="already open"):
            ShardedCollection.open(path)
        a_dead_shard_is_an_error_naming_it_unless_partial_results_are_allowed(store, data, ids)


def a_dead_shard_is_an_error_naming_it_unless_partial_results_are_allowed(store, vectors, ids):
    os.kill(ray.get(store._actor_of(1).pid.remote()), signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ShardUnavailableError, match="shard-0001") as caught:
        store.search(vectors[0], 10)
    assert caught.value.shard == "shard-0001" and time.monotonic() - started < 15
    hits = store.search(vectors[0], len(ids), allow_partial=True)
    assert hits.partial and hits.missing_shards == ["shard-0001"]
    assert {h.id for h in hits} == {i for i in ids if shard_of(i, 2) == 0}
    text = store.search(mode="text", query_text="w1", allow_partial=True)
    assert text.partial
    with pytest.raises(ShardUnavailableError, match="shard-0001"):
        store.upsert(ids[:50], vectors[:50])


def test_merge_keeps_the_best_k_on_score_then_id():
    """The driver's merge against a sort of every hit: ties (many here) broken by id, ids that
    a fixed-width string array would cut (trailing NUL) kept whole."""
    rng = np.random.default_rng(3)
    for trial in range(50):
        parts, every = [], []
        for shard in range(int(rng.integers(1, 5))):
            n = int(rng.integers(0, 12))
            ids = [f"d{rng.integers(0, 40)}-{shard}" + "\x00" * int(rng.integers(0, 2))
                   for _ in range(n)]
            ids = list(dict.fromkeys(ids))
            scores = rng.integers(0, 4, len(ids)) / 4.0  # coarse: many ties
            hits = [Hit(i, float(sc), f"text {i}", {"i": i}) for i, sc in zip(ids, scores)]
            hits.sort(key=lambda h: (-h.score, h.id))
            parts.append(Ranked.of(hits, False))
            every += hits
        k = int(rng.integers(1, 30))
        got = merge_ranked(parts, k)
        want = sorted(every, key=lambda h: (-h.score, h.id))[:k]
        assert [(h.id, h.score, h.text, h.metadata) for h in got] == \
            [(h.id, h.score, h.text, h.metadata) for h in want]


def test_concurrent_queries_share_calls_and_each_gets_its_own_answer():
    calls = []
    gate = threading.Event()

    def run(key, queries):
        calls.append(list(queries))
        gate.wait(5)  # the first batch stays in flight while the other threads queue up
        if "bad" in queries:
            raise ValueError("bad query")
        return [(key, q * 2) for q in queries]

    batcher = QueryBatcher(run, max_in_flight=1)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, "k", q) for q in range(8)]
        time.sleep(0.3)
        gate.set()
        assert [f.result() for f in futures] == [("k", 2 * q) for q in range(8)]
    assert sorted(q for batch in calls for q in batch) == list(range(8))
    assert len(calls) < 8  # queued queries travelled together
    gate.clear()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, "k", q) for q in ["bad", 1, 2, 3]]
        time.sleep(0.3)
        gate.set()
        outcomes = [f.exception() or f.result() for f in futures]
    assert isinstance(outcomes[0], ValueError)  # an error reaches the queries of its batch
    assert all(isinstance(o, (ValueError, tuple)) for o in outcomes)
    assert batcher._in_flight == {} and batcher._waiting == {}  # nothing left behind
    assert batcher.submit("other", 5) == ("other", 10)  # a lone query goes at once


# ---------------------------------------------------------------------- same answers as one node


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 16), steps=st.lists(
    st.tuples(st.sampled_from(["upsert", "delete_ids", "delete_where"]), st.integers(1, 60)),
    min_size=1, max_size=5))
def test_dense_results_equal_one_collection_after_any_writes(empty, seed, steps):
    empty.clear()  # (the fixture clears once per test, not per example)
    rng = np.random.default_rng(seed)
    single = Collection(DIM, bits=32)
    pool = [f"id-{i}" for i in range(120)]
    for op, size in steps:
        if op == "upsert":
            chosen = list(rng.choice(pool, size=min(size, len(pool)), replace=False))
            vectors = rng.standard_normal((len(chosen), DIM)).astype(np.float32)
            metas = [{"group": int(g)} for g in rng.integers(0, 4, len(chosen))]
            for store in (empty, single):
                store.upsert(chosen, vectors, metadatas=metas)
        elif op == "delete_ids":
            chosen = list(rng.choice(pool, size=size, replace=True))
            assert empty.delete(chosen) == single.delete(chosen)
        else:
            where = {"group": int(size % 4)}
            assert empty.delete(where=where) == single.delete(where=where)
    assert len(empty) == len(single)
    for where in (None, {"group": {"$in": [1, 2]}}, {"group": 3}):
        query = rng.standard_normal(DIM)
        for k in (1, 7, 200):
            assert_same_hits(empty.search(query, k, where), single.search(query, k, where))
    single.close()


def test_filters_mmr_and_vectors_equal_one_collection(empty):
    single = Collection(DIM, bits=32)
    vectors, ids, _, _ = fill(empty, single)
    query = vectors[11] + 0.1
    where = {"$and": [{"group": {"$ne": 2}}, {"year": {"$gte": 2010}}]}
    got = empty.search(query, 25, where, include_vectors=True)
    want = single.search(query, 25, where, include_vectors=True)
    assert_same_hits(got, want)
    assert not got.partial
    assert all(np.array_equal(a.vector, b.vector) for a, b in zip(got, want))
    for lam in (0.0, 0.5, 1.0):
        assert_same_hits(empty.max_marginal_relevance_search(query, 6, 30, lam, where),
                         single.max_marginal_relevance_search(query, 6, 30, lam, where))
    # and both agree with brute force
    allowed = np.array([(m["group"] != 2 and m["year"] >= 2010) for m in corpus(600)[3]])
    exact = reference_scores(vectors, query[None], "cosine")[0]
    exact[~allowed] = -np.inf
    best = np.argsort(-exact)[:25]
    assert [h.id for h in got] == [ids[i] for i in best]
    assert np.allclose([h.score for h in got], exact[best], atol=1e-5)
    single.close()


def test_text_and_hybrid_rank_as_one_collection(empty):
    single = Collection(DIM, bits=32)
    vectors, ids, _, _ = fill(empty, single)
    empty.delete(ids[:40])
    single.delete(ids[:40])
    query = vectors[7]
    for text in ["w0 w1", "w33", "w2 w5 w39 nothing", "zzz"]:
        for where in (None, {"group": 2}):
            assert_same_ranking(empty.search(query, 15, where, mode="text", query_text=text),
                                single.search(query, 15, where, mode="text", query_text=text))
            for fusion in ("rrf", "weighted"):
                got = empty.search(query, 10, where, mode="hybrid", query_text=text,
                                   fusion=fusion, alpha=0.3, fetch_k=600)
                want = single.search(query, 10, where, mode="hybrid", query_text=text,
                                     fusion=fusion, alpha=0.3, fetch_k=600)
                assert_same_ranking(got, want, tol=1e-7)
    single.close()


def test_get_delete_count_and_stats(empty):
    vectors, ids, texts, metas = fill(empty, n=300)
    assert len(empty) == 300 and empty.count({"group": 1}) == 60
    got = empty.get([ids[5], "absent", ids[2], ids[5]], include_vectors=True)
    assert [h.id for h in got] == [ids[5], ids[2]]
    assert got[0].text == texts[5] and got[0].metadata == metas[5]
    assert np.allclose(got[0].vector, vectors[5] / np.linalg.norm(vectors[5]), atol=1e-3)
    everything = empty.get(where={"group": 1})
    assert sorted(h.id for h in everything) == sorted(i for i, m in zip(ids, metas)
                                                      if m["group"] == 1)
    pages = [empty.get(where={"group": 1}, limit=7, offset=o) for o in range(0, 63, 7)]
    assert [h.id for page in pages for h in page] == [h.id for h in everything]
    assert len(empty.get(limit=1000)) == 300
    assert empty.delete([ids[0], ids[1], "absent"]) == 2
    assert empty.delete(ids[2:10], where={"group": 3}) == 2
    assert empty.delete(where={"group": 4}) == 60
    assert len(empty) == 300 - 2 - 2 - 60
    stats = empty.stats()
    assert stats["documents"] == len(empty) == sum(s["documents"] for s in stats["shards"].values())
    assert set(stats["shards"]) == {"shard-0000", "shard-0001", "shard-0002"}
    assert all(s["documents"] > 0 for s in stats["shards"].values())
    shards = stats["shards"].values()
    for key in ("count", "ram_bytes", "ram_reserved_bytes", "ram_fixed_bytes", "disk_bytes"):
        assert stats[key] == sum(s[key] for s in shards)
    assert stats["count"] == len(empty)
    weighted = sum(s["ram_bytes_per_vector"] * s["count"] for s in shards) / stats["count"]
    assert stats["ram_bytes_per_vector"] == pytest.approx(weighted, rel=1e-12)
    assert stats["code_bytes"] == next(iter(shards))["code_bytes"]
    for bad, error in [(lambda: empty.search(vectors[0], 0), ValueError),
                       (lambda: empty.search(vectors[0, :3]), ValueError),
                       (lambda: empty.search(vectors[0], mode="sql"), ValueError),
                       (lambda: empty.search(vectors[0], where={"$bad": 1}), ValueError),
                       (lambda: empty.upsert(["a"], vectors[:2]), ValueError),
                       (lambda: empty.upsert(["a", "b"], vectors[:2], metadatas=[{}, {1: 2}]),
                        TypeError),
                       (lambda: empty.delete(), ValueError)]:
        with pytest.raises(error):
            bad()
    assert len(empty) == 300 - 64


def test_ingest_in_batches_and_from_many_threads(empty):
    vectors, ids, texts, metas = corpus(500, seed=9)
    assert empty.upsert(ids, vectors, texts, metas, batch_size=64) == ids
    single = Collection(DIM, bits=32)
    single.upsert(ids, vectors, texts, metas)
    queries = np.random.default_rng(1).standard_normal((16, DIM))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda q: ranked(empty.search(q, 5)), queries))
    for got, query in zip(results, queries):
        assert [i for i, _ in got] == [h.id for h in single.search(query, 5)]
    single.close()


class HashEmbedder:
    """A deterministic stand-in for a model: a text's vector is seeded by its hash."""

    dim = DIM

    def embed_documents(self, texts, batch_size=None, progress=None):
        return np.stack([np.random.default_rng(int.from_bytes(
            hashlib.blake2b(t.encode(), digest_size=4).digest(), "big")).standard_normal(DIM)
            for t in texts]).astype(np.float32)


def test_add_texts_embeds_and_writes_in_batches(empty, capsys):
    texts = [f"text number {i}" for i in range(230)]
    ids = empty.add_texts(texts, HashEmbedder(), [{"i": i} for i in range(230)],
                          [f"t{i}" for i in range(230)], write_batch=50, progress=True)
    assert ids == [f"t{i}" for i in range(230)] and len(empty) == 230
    assert "230/230" in capsys.readouterr().err  # one progress bar over the whole insert
    vectors = HashEmbedder().embed_documents(texts[:3])
    assert [empty.search(v, 1)[0].id for v in vectors] == ["t0", "t1", "t2"]
    assert empty.get(["t7"])[0].metadata == {"i": 7}


def make_hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.mark.slow
def test_ray_data_ingest_embeds_in_actors_and_routes_to_shards(empty):
    data = pytest.importorskip("ray.data", reason="Ray Data needs ray[data] (pyarrow, pandas)")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # (tests is no package)
    rows = [{"id": f"r{i}", "text": f"row {i} of the set", "topic": i % 3} for i in range(300)]
    dataset = data.from_items(rows, override_num_blocks=2)  # (200 blocks by default)
    with pytest.raises(ValueError, match="metadata_columns\\[0\\]='colour'"):
        empty.ingest_dataset(dataset, make_hash_embedder, metadata_columns=["colour"])
    written = empty.ingest_dataset(dataset, make_hash_embedder, metadata_columns=["topic"],
                                   embed_batch=64, write_batch=100, concurrency=1, num_cpus=0)
    assert written == 300 and len(empty) == 300
    assert empty.count({"topic": 1}) == 100
    vectors = HashEmbedder().embed_documents([rows[42]["text"]])
    hit = empty.search(vectors[0], 1)[0]
    assert (hit.id, hit.text, hit.metadata) == ("r42", rows[42]["text"], {"topic": 0})
    assert np.isclose(hit.score, 1.0, atol=1e-3)


# ---------------------------------------------------------------------- faults


def test_a_killed_shard_restarts_with_every_acknowledged_write(empty):
    vectors, ids, _, _ = fill(empty, n=400, seed=4)
    owner = shard_of(ids[0], 3)
    pid = ray.get(empty._actor_of(owner).pid.remote())
    os.kill(pid, signal.SIGKILL)
    hits = empty.search(vectors[0], 400)  # meets the dead shard: waits for its restart
    assert len(hits) == 400 and not hits.partial and hits[0].id == ids[0]
    assert ray.get(empty._actor_of(owner).pid.remote()) != pid
    empty.upsert(["after"], vectors[:1])  # the restarted shard takes writes
    assert len(empty) == 401


# ---------------------------------------------------------------------- adapters


def test_langchain_store_serves_a_sharded_collection(empty):
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from vecpress.integrations.langchain import VecpressVectorStore

    embeddings = DeterministicFakeEmbedding(size=DIM)
    with pytest.raises(ValueError, match="leave out"):
        VecpressVectorStore(embeddings, collection=empty, bits=4)
    store = VecpressVectorStore(embeddings, collection=empty)
    texts = [f"note {i} about w{i % 7}" for i in range(40)]
    ids = store.add_texts(texts, [{"n": i} for i in range(40)], ids=[f"n{i}" for i in range(40)])
    assert len(empty) == 40
    found = store.similarity_search_with_score(texts[12], k=3, filter={"n": {"$gte": 10}})
    assert found[0][0].id == "n12" and found[0][0].page_content == texts[12]
    assert all(doc.metadata["n"] >= 10 for doc, _ in found)
    assert [d.id for d in store.max_marginal_relevance_search(texts[3], k=2, fetch_k=10)][0] == "n3"
    # calibrated relevance pools the shards' statistics: one Collection's (40 rows)
    scored = store.similarity_search_with_relevance_scores(texts[12], k=3)
    single = Collection(DIM, bits=32)
    single.upsert(ids, embeddings.embed_documents(texts))
    want = single.search(embeddings.embed_query(texts[12]), 3, relevance=True)
    assert [d.id for d, _ in scored] == [h.id for h in want]
    # (a document's float32 score can differ in the last bit between a store of 40 rows and a
    # shard of 13: 7% of scores did in a check, the code before 62c2045 as well; that moves a
    # relevance by about 1e-8, one shard's own statistics instead of the pooled ones by 0.1)
    assert [r for _, r in scored] == pytest.approx([h.relevance for h in want], abs=1e-6)
    single.close()
    store.delete(ids[:5])
    assert [d.id for d in store.get_by_ids(ids[:7])] == ids[5:7]


def test_llama_index_store_serves_a_sharded_collection(empty):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from vecpress.integrations.llama_index import VecpressVectorStore

    vectors, ids, texts, _ = corpus(50, seed=8)
    nodes = [TextNode(text=texts[i] or "", id_=ids[i], metadata={"i": i},
                      embedding=vectors[i].tolist()) for i in range(50)]
    store = VecpressVectorStore(collection=empty)
    assert store.add(nodes) == ids
    result = store.query(VectorStoreQuery(query_embedding=vectors[9].tolist(), similarity_top_k=3))
    assert result.ids[0] == ids[9] and result.nodes[0].metadata == {"i": 9}
    single = Collection(DIM, bits=32)
    single.upsert(ids, vectors)
    assert result.ids == [h.id for h in single.search(vectors[9], 3)]
    with pytest.raises(TypeError, match="sharded"):
        store.persist(str(empty.path.parent / "persist" / "x.json"))
    scored = VecpressVectorStore(collection=empty, relevance_scores=True).query(
        VectorStoreQuery(query_embedding=vectors[9].tolist(), similarity_top_k=3))
    want = single.search(vectors[9], 3, relevance=True)
    assert scored.ids == [h.id for h in want]
    assert scored.similarities == pytest.approx([h.relevance for h in want], abs=1e-6)
    single.close()


# ---------------------------------------------------------------------- the README's example


def test_the_readme_ray_example_runs_on_this_cluster(cluster, tmp_path, monkeypatch, capsys):
    """The README's Ray example, executed as written in this process. Its ``ray.init`` and
    ``ray.shutdown`` calls are checked against Ray's own signatures and leave this module's
    cluster running (a cluster of its own, in a fresh process, costs about 15 s); everything
    else (the store, its actors, the writes and searches) is the real thing."""
    import inspect

    from test_readme import python_blocks, runs_on_ray

    (block,) = [b for b in python_blocks() if runs_on_ray(b)]
    called = []

    def checked(real):
        signature = inspect.signature(real)

        def stand_in(*args, **kwargs):
            signature.bind(*args, **kwargs)  # a TypeError if the README calls it wrongly
            called.append(real.__name__)
        return stand_in

    monkeypatch.setattr(ray, "init", checked(ray.init))
    monkeypatch.setattr(ray, "shutdown", checked(ray.shutdown))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Ray example)", "exec"), {"__name__": "__main__"})
    assert called == ["init", "shutdown"]
    dense, text = capsys.readouterr().out.splitlines()
    assert dense.startswith("[('doc-3', 1.0)") and dense.endswith("False")  # as it says
    assert text == "doc-7"
    assert (tmp_path / "sharded_store" / ROOT_MANIFEST).is_file()
