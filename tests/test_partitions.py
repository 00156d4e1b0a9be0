"""Partitioned indexes (inverted lists) against brute force: probing, filters, growth, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress import Collection, Index
from vecpress.core import clustering, partitions
from vecpress.core.partitions import Calibration, ListLayout
from vecpress.core.storage import StoreCorruptedError

from conftest import clustered_vectors, recall, reference_topk

METRICS = ["cosine", "ip", "l2"]


def _partitioned(data: np.ndarray, lists: int = 8, **options) -> Index:
    index = Index(data.shape[1], partitions=lists, **options)
    for lo in range(0, len(data), 700):
        index.add(data[lo:lo + 700])
    assert index._lists is not None and index._lists.n_lists == lists
    return index


def _stored(data: np.ndarray, metric: str) -> np.ndarray:
    """What the index reranks with: normalised for cosine, rounded to float16."""
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
    return data.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_probing_every_list_is_exact(metric):
    data, queries = clustered_vectors(3000, 24, seed=1), clustered_vectors(20, 24, seed=2)
    index = _partitioned(data, metric=metric)
    ref_scores, ref_rows = reference_topk(_stored(data, metric), queries, 10, metric)
    scores, found = index.search(queries, k=10, nprobe=8, oversample=1000)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-3)
    assert recall(found, ref_rows) >= 0.99  # (ties of float16 originals aside)


@pytest.mark.parametrize("metric", METRICS)
def test_default_probe_finds_the_true_neighbours(metric):
    # held-out queries from the same distribution as the data (as the benchmark's glosses)
    both = clustered_vectors(4040, 24, seed=3)
    data, queries = both[:4000], both[4000:]
    index = _partitioned(data, metric=metric)
    assert 1 <= index.stats()["nprobe"] <= 8
    _, truth = reference_topk(_stored(data, metric), queries, 10, metric)
    _, found = index.search(queries, k=10)
    _, flat_found = index.search(queries, k=10, nprobe=8)
    assert recall(found, truth) >= recall(flat_found, truth) - 0.02


def test_one_list_probe_scans_only_that_list_and_its_tail_rows():
    data = clustered_vectors(3000, 16, seed=5)
    index = _partitioned(data)
    lists = index._lists
    assert index._ids.size > lists.sorted_end  # (a tail, which the test is about)
    query = data[:1]
    rows_scanned = []
    codec = index._codec
    original = type(codec).scan

    def spy(self, codes, factors, queries, k, flt, spans=None):
        offsets, bounds = spans
        extra = spans.extra[1] if spans.extra is not None else np.zeros(0, np.int64)
        rows_scanned.append(int((bounds[:, 1] - bounds[:, 0]).sum()) + len(extra))
        return original(self, codes, factors, queries, k, flt, spans=spans)

    type(codec).scan = spy
    try:
        index.search(query, k=5, nprobe=1, oversample=1)
    finally:
        type(codec).scan = original
    nearest = clustering.rank_lists(index._prepare_vectors(query, "q")[0], lists.centroids,
                                    "ip", 1)[0, 0]
    size = lists.bounds[nearest + 1] - lists.bounds[nearest]
    tail = int((index._labels.view == nearest).sum())  # the tail's rows of that list alone
    assert rows_scanned == [size + tail] or rows_scanned[0] >= 5  # further lists only if short


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.05, 0.3, 0.5])
def test_filtered_search_returns_k_hits_at_any_selectivity(fraction):
    """min(k, matches) hits, every one allowed, whatever the selectivity: 0.1% and 1% are
    scanned row by row, 5% to 50% by mask, probing further lists while they hold too few."""
    both = clustered_vectors(3010, 16, seed=6)
    data, queries = both[:3000], both[3000:]
    index = _partitioned(data)
    rng = np.random.default_rng(0)
    allowed_rows = np.sort(rng.choice(3000, int(3000 * fraction), replace=False))
    allowed = np.zeros(3000, bool)
    allowed[allowed_rows] = True
    k = 10
    expected = min(k, len(allowed_rows))
    ref_scores, ref_rows = reference_topk(_stored(data, "cosine"), queries, expected, "cosine",
                                          allowed=allowed)
    for nprobe in (1, None):  # one list may hold too few allowed rows: more are probed
        scores, found = index.search(queries, k=k, mask=allowed_rows, nprobe=nprobe)
        hits = found[:, :expected]
        assert (hits >= 0).all() and np.isin(hits, allowed_rows).all()
        assert (found[:, expected:] == -1).all()
    assert recall(hits, ref_rows) >= 0.9
    scores, found = index.search(queries, k=k, mask=allowed_rows, oversample=1000)
    np.testing.assert_allclose(scores[:, :expected], ref_scores, rtol=1e-4, atol=1e-3)


def test_removed_rows_never_return_and_short_lists_are_topped_up():
    data = clustered_vectors(3000, 16, seed=8)
    index = _partitioned(data)
    index.remove(np.arange(0, 3000, 3), upkeep=False)
    _, found = index.search(data[:20], k=50, nprobe=1)
    assert (found >= 0).all() and (found % 3 != 0).all()
    assert all(len(set(row)) == 50 for row in found.tolist())


def test_adds_after_training_join_the_tail_then_the_lists():
    data = clustered_vectors(6000, 16, seed=9)
    index = Index(16, partitions=8)
    index.add(data[:2000])
    trained = index._lists
    assert trained is not None and trained.sorted_end == 2000
    index.add(data[2000:2100])  # a short tail: the layout stays
    assert index._lists is trained
    partitions_limit = partitions.tail_limit
    try:
        partitions.tail_limit = lambda rows: 50
        index.add(data[2100:2200])
    finally:
        partitions.tail_limit = partitions_limit
    folded = index._lists
    assert folded is not trained and folded.sorted_end == 2200
    np.testing.assert_array_equal(folded.centroids, trained.centroids)
    unit = _stored(data[:2200], "cosine")
    np.testing.assert_array_equal(index._row_labels(np.arange(2200)),
                                  clustering.assign(unit, folded.centroids, "ip"))
    _, found = index.search(data[2150:2160], k=1, nprobe=8, oversample=1000)
    np.testing.assert_array_equal(found[:, 0], np.arange(2150, 2160))


def test_lists_are_retrained_as_the_index_grows():
    growth = partitions.RETRAIN_GROWTH
    data = clustered_vectors(5000, 16, seed=10)
    index = Index(16, partitions=4)
    index.add(data[:100])
    first = index._lists
    assert first is not None and index._trained_rows == 100
    index.add(data[100:100 * growth - 1])
    assert index._lists.centroids is first.centroids
    index.add(data[100 * growth - 1:100 * growth])
    assert index._trained_rows == 100 * growth
    assert index._lists.centroids is not first.centroids


def test_training_draws_its_sample_per_list_and_rounds_by_work(monkeypatch):
    calls = []
    original = clustering.train_centroids

    def recording(sample, n_lists, metric, **options):
        calls.append((len(sample), n_lists, options["iterations"]))
        return original(sample, n_lists, metric, **options)

    monkeypatch.setattr(clustering, "train_centroids", recording)
    data = clustered_vectors(12_000, 16, seed=12)
    _partitioned(data, lists=16)
    # trained on the first batch of 700 rows, retrained at each RETRAIN_GROWTH-fold growth
    # (batches of 700 reach each of those counts exactly): every row while there are at
    # most 256 a list, then a sample of 256 a list
    trained = [700 * partitions.RETRAIN_GROWTH ** i for i in range(8)]
    expected = [(min(rows, 256 * 16), 16, 20) for rows in trained if rows <= 12_000]
    assert len(expected) >= 3 and calls == expected
    assert partitions.training_iterations(partitions.MAX_TRAIN_ROWS, 4096) == 10
    assert partitions.training_iterations(131_072, 1024) == 20


def test_auto_stays_flat_below_its_threshold_and_partitions_above(monkeypatch):
    monkeypatch.setattr(partitions, "AUTO_MIN_ROWS", 2000)
    data = clustered_vectors(2500, 16, seed=11)
    index = Index(16)
    index.add(data[:1999])
    assert index._lists is None and index.stats()["lists"] == 0
    index.add(data[1999:2500])
    assert index._lists is not None
    assert index._lists.n_lists == partitions.auto_lists(2500)


def test_partitions_argument_is_checked():
    with pytest.raises(ValueError, match="partitions=0"):
        Index(8, partitions=0)
    with pytest.raises(TypeError, match="partitions must be"):
        Index(8, partitions="many")
    with pytest.raises(ValueError, match="rerank=True"):
        Index(8, partitions=4, rerank=False)
    index = _partitioned(clustered_vectors(1000, 8, seed=12), lists=4)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(np.ones(8, np.float32), nprobe=0)


def test_partitioned_store_reopens_with_the_same_answers(tmp_path):
    data, queries = clustered_vectors(3000, 16, seed=13), clustered_vectors(10, 16, seed=14)
    index = Index(16, partitions=8, path=tmp_path / "s")
    for lo in range(0, 3000, 500):
        index.add(data[lo:lo + 500])
    index.remove(np.arange(0, 3000, 7))
    expected = index.search(queries, k=10)
    exhaustive = index.search(queries, k=10, oversample=1000)
    index.close()
    again = Index.load(tmp_path / "s")
    assert again.stats()["lists"] == 8 and again.stats()["nprobe"] == index.stats()["nprobe"]
    np.testing.assert_array_equal(again.search(queries, k=10, oversample=1000)[1], exhaustive[1])
    # the reopened layout has no tail: the scan order differs, and with it which rows the
    # 1-bit bound prunes, so an approximate search may differ in a rare candidate
    assert recall(again.search(queries, k=10)[1], expected[1]) >= 0.95
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert all("lists" in s["files"] for s in manifest["segments"])


def test_reader_refresh_sees_rows_added_to_a_partitioned_store(tmp_path):
    data = clustered_vectors(2000, 16, seed=15)
    writer = Index(16, partitions=4, path=tmp_path / "s")
    writer.add(data[:1000])
    reader = Index.load(tmp_path / "s", read_only=True)
    writer.add(data[1000:1100])
    assert reader.refresh()
    _, found = reader.search(data[1050:1060], k=1, oversample=1000)
    np.testing.assert_array_equal(found[:, 0], np.arange(1050, 1060))
    writer.close()


@pytest.mark.parametrize("damage", ["label_out_of_range", "lists_file_missing",
                                    "centroids_not_finite", "nprobe_above_lists",
                                    "oversample_zero", "oversample_huge", "oversample_text",
                                    "tuned_rows_negative", "tuned_rows_float", "unknown_key"])
def test_damaged_partition_files_are_refused(tmp_path, damage):
    path = tmp_path / "s"
    index = Index(8, partitions=4, path=path)
    index.add(clustered_vectors(500, 8, seed=16))
    index.close()
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    segment = manifest["segments"][0]
    if damage == "label_out_of_range":
        _rewrite(path, segment["files"]["lists"], lambda a: np.full_like(a, 4))
    elif damage == "lists_file_missing":
        del segment["files"]["lists"]
    elif damage == "centroids_not_finite":
        _rewrite(path, manifest["partitions"]["centroids"], lambda a: a * np.nan)
    elif damage == "oversample_zero":
        manifest["partitions"]["oversample"] = 0
    elif damage == "oversample_huge":  # (a search would gather k * 2**40 rows)
        manifest["partitions"]["oversample"] = 2 ** 40
    elif damage == "oversample_text":
        manifest["partitions"]["oversample"] = "12"
    elif damage == "tuned_rows_negative":
        manifest["partitions"]["tuned_rows"] = -1
    elif damage == "tuned_rows_float":
        manifest["partitions"]["tuned_rows"] = 1e300
    elif damage == "unknown_key":
        manifest["partitions"]["rerank_all"] = True
    else:
        manifest["partitions"]["nprobe"] = 5
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptedError):
        Index.load(path)


def _rewrite(path, entry, change) -> None:
    """Change an array file and fix its manifest entry's CRC, as a forger would."""
    from vecpress.core import storage
    array = storage.read_array(path, entry, verify=False)
    fresh = storage.write_array(path, entry["file"] + ".new.npy", change(np.array(array)))
    (path / (entry["file"] + ".new.npy")).replace(path / entry["file"])
    entry["crc32"] = fresh["crc32"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 120), queries=st.integers(1, 12), pieces=st.integers(1, 6),
       metric=st.sampled_from(["ip", "l2"]), worst_first=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_calibration_keeps_each_query_s_exact_top_k_over_streamed_chunks(n, queries, pieces,
                                                                        metric, worst_first,
                                                                        seed):
    """Rows streamed in chunks of any order and size leave each sample query its exact top
    ``CALIBRATION_K`` rows (its own row excluded), as a brute force over all rows finds them;
    ``worst_first`` streams them from the first query's farthest to its nearest, so that
    every later chunk replaces its whole top K."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 6)).astype(np.float32)
    labels = rng.integers(0, 5, n).astype(np.int32)
    query_rows = np.sort(rng.choice(n, min(queries, n), replace=False))
    calibration = Calibration(vectors[query_rows], query_rows, metric)
    order = rng.permutation(n)
    if worst_first:
        order = np.argsort(vectors @ vectors[query_rows[0]], kind="stable")
    for part in np.array_split(order, pieces):
        calibration.observe(vectors[part], part, labels[part])
    scores = vectors[query_rows] @ vectors.T
    if metric == "l2":
        scores = 2 * scores - (vectors ** 2).sum(axis=1)[None, :]
    scores[np.arange(len(query_rows)), query_rows] = -np.inf
    k = partitions.CALIBRATION_K
    for q in range(len(query_rows)):
        expected = np.argsort(-scores[q], kind="stable")[:k]
        expected = expected[np.isfinite(scores[q, expected])]
        kept = np.isfinite(calibration.best_scores[q])
        np.testing.assert_allclose(np.sort(calibration.best_scores[q][kept]),
                                   np.sort(scores[q, expected]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.sort(calibration.best_labels[q][kept]),
                                      np.sort(labels[expected]))
        np.testing.assert_array_equal(np.sort(calibration.best_rows[q][kept]),
                                      np.sort(expected))


def test_calibration_finds_the_lists_of_the_true_neighbours():
    rng = np.random.default_rng(0)
    centroids = np.eye(4, dtype=np.float32)
    vectors = np.repeat(centroids, 50, axis=0) + rng.normal(0, 0.01, (200, 4)).astype(np.float32)
    labels = clustering.assign(vectors, centroids, "ip")
    calibration = Calibration(vectors[[0, 60]], np.array([0, 60]), "ip")
    calibration.observe(vectors[:100], np.arange(100), labels[:100])
    calibration.observe(vectors[100:], np.arange(100, 200), labels[100:])
    # every neighbour of each query lies in its own (nearest) list: one list, times the margin
    assert calibration.nprobe(centroids) == int(np.ceil(1 * partitions.CALIBRATION_MARGIN))


@settings(max_examples=60, deadline=None)
@given(lower=st.integers(1, 80), n_lists=st.integers(1, 300), needed=st.integers(1, 400),
       plateau=st.floats(0.5, 1.0), seed=st.integers(0, 2**32 - 1))
def test_searched_nprobe_is_the_smallest_count_that_reaches_the_target(lower, n_lists, needed,
                                                                       plateau, seed):
    """Against a recall that grows with nprobe (in random steps, up to ``plateau``, reached
    from ``needed`` lists on): the smallest count at or above ``lower`` that reaches the
    target when one exists within the reach, else the start of the plateau; never above the
    reach or the lists, and each count searched once."""
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.uniform(0, 1, n_lists + 1))
    target = partitions.SEARCH_CALIBRATION_RECALL
    curve = np.minimum(plateau, np.where(np.arange(n_lists + 1) >= needed, 1.0, 0.9 * steps))
    calls = []

    def recall_at(nprobe: int) -> float:
        assert 1 <= nprobe <= n_lists
        calls.append(nprobe)
        return float(curve[nprobe])

    nprobe, found = partitions.searched_nprobe(recall_at, lower, n_lists)
    low = min(lower, n_lists)
    reach = min(n_lists, low * partitions.SEARCH_CALIBRATION_REACH)
    assert len(calls) == len(set(calls))
    assert found == curve[nprobe] and low <= nprobe <= reach
    reachable = [n for n in range(low, reach + 1) if curve[n] >= target]
    if reachable:
        assert nprobe == reachable[0]
    else:
        best = max(curve[n] for n in calls)
        assert curve[nprobe] >= best - partitions.SEARCH_PLATEAU
        assert all(curve[n] < best - partitions.SEARCH_PLATEAU for n in calls if n < nprobe)


def test_search_recall_leaves_out_each_query_s_own_row():
    calibration = Calibration(np.zeros((2, 4), np.float32), np.array([5, 9]), "ip")
    calibration.best_rows = np.array([list(range(10)), list(range(10, 19)) + [-1]])
    calibration.best_scores = np.where(calibration.best_rows >= 0, 1.0, -np.inf)
    calibration.best_scores[0, 9] = -np.inf  # (a row kept with no score is padding too)
    found = np.array([[5] + list(range(10)),  # own row first, then all ten
                      list(range(10, 15)) + [9] + [40, 41, 42, 43, 44]])  # five of nine
    assert calibration.search_recall(found) == pytest.approx(14 / 18)
    calibration.renumber(np.array([1, 5, 7, 9, 12]))
    assert calibration.query_rows.tolist() == [1, 3]
    assert calibration.best_rows[1, -1] == -1 and calibration.best_rows[0, 5] == 1


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_tuning_measures_the_sample_s_recall_as_public_searches_do(metric, monkeypatch):
    """Every recall the tuning measured (codes, rerank, own row left out, at each nprobe and
    oversample it tried) equals, within float16 ties, the recall of public searches of the
    same sampled rows against a numpy brute force; the index then has the setting the tuning
    chose. (On these 24-d clusters cosine 4-bit codes stop short of the target with 3
    candidates a hit, so the larger oversample is tried and kept.)"""
    from vecpress.core.index import lists as lists_module

    rows_seen, measured, chosen = [], {}, []
    searched = lists_module._Lists._searched_setting
    tune = partitions.searched_setting

    def recording_rows(self, calibration):
        rows_seen.append(calibration.query_rows.copy())
        return searched(self, calibration)

    def recording_recalls(recall_at, *args, **kwargs):
        def recall_kept(nprobe, oversample):
            measured[nprobe, oversample] = recall_at(nprobe, oversample)
            return measured[nprobe, oversample]
        chosen.append(tune(recall_kept, *args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(lists_module._Lists, "_searched_setting", recording_rows)
    monkeypatch.setattr(partitions, "searched_setting", recording_recalls)
    data = clustered_vectors(6000, 24, seed=11)
    index = Index(24, partitions=64, metric=metric)
    index.add(data)
    query_rows = rows_seen[-1]
    nprobe, oversample, _ = chosen[-1]
    assert index.stats()["nprobe"] == nprobe and measured
    assert index.stats()["oversample"] == max(oversample, index.oversample)
    stored = _stored(data, metric)
    ranked = reference_topk(stored, stored[query_rows], 11, metric)[1]
    truth = np.array([[r for r in row if r != own][:10] for row, own in zip(ranked, query_rows)])
    for (n, factor), value in measured.items():
        found = index.search(stored[query_rows], k=11, nprobe=n, oversample=factor)[1]
        public = recall(np.array([[r for r in row if r != own][:10]
                                  for row, own in zip(found, query_rows)]), truth)
        assert abs(public - value) <= 0.003, (n, factor, public, value)


@settings(max_examples=40, deadline=None)
@given(plateaus=st.lists(st.floats(0.5, 1.0), min_size=3, max_size=3),
       oversample=st.integers(1, 12), limit=st.integers(1, 60))
def test_searched_setting_raises_oversample_only_while_the_target_is_out_of_reach(
        plateaus, oversample, limit):
    """Recall reaches ``plateaus[i]`` (from 4 lists on) at the i-th oversample factor: the
    first factor whose plateau reaches the target is kept, else the best (the smaller on a
    tie), never above ``limit``."""
    factors = partitions.SEARCH_OVERSAMPLE_FACTORS
    by_candidates = {}
    for factor, plateau in zip(factors, plateaus):
        by_candidates.setdefault(min(limit, oversample * factor), plateau)

    def recall_at(nprobe, candidates):  # (below 4 lists: further than SEARCH_PLATEAU below)
        return by_candidates[candidates] if nprobe >= 4 else 0.4

    nprobe, chosen, value = partitions.searched_setting(recall_at, 2, 100, oversample, limit)
    tried = list(by_candidates)  # (distinct counts, in the order of the factors)
    target = partitions.SEARCH_CALIBRATION_RECALL
    reaching = [c for c in tried if by_candidates[c] >= target]
    if reaching:
        assert chosen == reaching[0] and nprobe == 4
    else:
        best = max(by_candidates.values())
        assert chosen == min(c for c in tried if by_candidates[c] == best)
    assert value == by_candidates[chosen] and chosen <= max(limit, oversample)


def test_tuned_nprobe_is_committed(tmp_path, monkeypatch):
    data = clustered_vectors(6000, 24, seed=11)  # (cosine: the tuning raises oversample)
    index = Index(24, partitions=64, path=tmp_path / "s")
    index.add(data)
    tuned = index.stats()["nprobe"], index.stats()["oversample"]
    assert tuned[1] > index.oversample
    index.close()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["partitions"]["nprobe"], manifest["partitions"]["oversample"]) == tuned
    reopened = Index.load(tmp_path / "s")
    assert (reopened.stats()["nprobe"], reopened.stats()["oversample"]) == tuned
    monkeypatch.setattr(partitions, "TAIL_MIN_ROWS", 0)  # (200 rows then outgrow the tail)
    reopened.add(clustered_vectors(200, 24, seed=12))
    assert reopened._lists.sorted_end == 6200  # (the layout was rebuilt ...)
    assert reopened.stats()["oversample"] == tuned[1]  # (... and kept the tuned oversample)


def _make_fail(monkeypatch, method: str) -> None:
    """``Index.<method>`` (a step of the tuning) raises MemoryError from now on."""
    from vecpress.core.index import lists as lists_module

    def failing(self, *args):
        raise MemoryError("no room")

    monkeypatch.setattr(lists_module._Lists, method, failing)


def test_a_failed_tuning_keeps_the_lists_alone_count(monkeypatch):
    _make_fail(monkeypatch, "_searched_setting")
    data = clustered_vectors(3000, 24, seed=12)
    index = Index(24, partitions=32)
    with pytest.warns(RuntimeWarning, match="tuning nprobe"):
        index.add(data)
    assert len(index) == 3000 and 1 <= index.stats()["nprobe"] <= 32


def test_a_failed_tuning_commit_keeps_the_committed_count(tmp_path, monkeypatch):
    """The tuned count's commit fails (a full disk, say): a warning, and RAM keeps the count
    the files hold, so a reopen answers as before."""
    from vecpress.core.index import lists as lists_module

    searched = lists_module._Lists._searched_setting

    def then_the_commit_fails(self, calibration):
        layout, _, _ = searched(self, calibration)

        def failing(manifest):
            raise OSError("No space left on device")

        self._commit = failing  # (an instance attribute: removed below)
        return layout, layout.nprobe % layout.n_lists + 1, None  # (another count)

    monkeypatch.setattr(lists_module._Lists, "_searched_setting", then_the_commit_fails)
    index = Index(24, partitions=32, path=tmp_path / "s")
    with pytest.warns(RuntimeWarning, match="tuning nprobe"):
        index.add(clustered_vectors(3000, 24, seed=13))
    del index._commit
    held = index.stats()["nprobe"]
    index.close()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["partitions"]["nprobe"] == held


def test_search_defaults_are_tuned_again_as_the_index_grows(tmp_path, monkeypatch):
    """Between trainings (here at fourfold growth) the defaults are tuned again at each
    1.5-fold growth; the live count they were tuned at is committed, so a reopen does not
    tune again, and a compaction that keeps the lists keeps it."""
    from vecpress.core.index import lists as lists_module

    monkeypatch.setattr(partitions, "RETRAIN_GROWTH", 4)

    retuned = []
    retune = lists_module._Lists._retune_search_defaults

    def counting(self):
        retuned.append(len(self))
        return retune(self)

    monkeypatch.setattr(lists_module._Lists, "_retune_search_defaults", counting)
    data = clustered_vectors(6000, 24, seed=21)
    path = tmp_path / "s"
    index = Index(24, partitions=16, path=path)
    index.add(data[:1000])
    assert index._trained_rows == 1000 and not retuned
    index.add(data[1000:1499])
    assert not retuned
    index.add(data[1499:1500])
    assert retuned == [1500] and index._tuned_rows == 1500
    index.add(data[1500:2300])
    assert retuned == [1500, 2300]
    index.close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["partitions"]["tuned_rows"] == 2300
    assert manifest["partitions"]["trained_rows"] == 1000
    reopened = Index.load(path)
    assert reopened._tuned_rows == 2300
    reopened.add(data[2300:2400])
    assert retuned == [1500, 2300]
    reopened.remove(np.arange(0, 2400, 2)[:1300])  # (over half removed: a compaction)
    assert reopened._lists is not None and reopened._tuned_rows == 2300
    reopened.close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["partitions"]["tuned_rows"] == 2300


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_a_retuning_s_reference_is_the_exact_top_k_when_its_search_is_wide(metric):
    """With every list probed and candidates enough, the wide search a retuning takes as its
    reference returns each sampled row's exact top 10 (its own row left out), as a numpy brute
    force does, with the lists those rows are in."""
    data = clustered_vectors(3000, 24, seed=22)
    index = Index(24, partitions=8, metric=metric, bits=8)  # (fine codes)
    index.add(data)
    nprobe = index._lists.n_lists // partitions.RETUNE_TRUTH_NPROBE  # (every list probed)
    index._lists = __import__("dataclasses").replace(index._lists, nprobe=nprobe, oversample=32)
    calibration = index._widely_searched_sample(index._ids.live_rows())
    assert len(calibration.query_rows) == partitions.CALIBRATION_QUERIES
    stored = _stored(data, metric)
    rows = calibration.query_rows
    ranked = reference_topk(stored, stored[rows], 11, metric)[1]
    truth = np.array([[r for r in row if r != own][:10] for row, own in zip(ranked, rows)])
    assert recall(calibration.best_rows, truth) >= 0.99

    def scores(found):  # (rows swapped at near-ties change no score by more than float error)
        vectors = stored[found]
        if metric == "l2":
            return -((vectors - stored[rows][:, None, :]) ** 2).sum(axis=2)
        return np.einsum("qkd,qd->qk", vectors, stored[rows])

    np.testing.assert_allclose(np.sort(scores(calibration.best_rows), axis=1),
                               np.sort(scores(truth), axis=1), atol=1e-4)
    np.testing.assert_array_equal(calibration.best_labels,
                                  index._row_labels(calibration.best_rows.ravel()
                                                    ).reshape(truth.shape))
    assert calibration.search_recall(ranked) >= 0.99


def test_sample_searches_in_small_batches_find_what_one_batch_finds(monkeypatch):
    """The tuning searches its sampled rows a few at a time (bounded memory): the same rows
    come back as from one batch."""
    from vecpress.core.index import lists as lists_module

    data = clustered_vectors(3000, 24, seed=24)
    index = Index(24, partitions=8)
    index.add(data)
    snap = index._snapshot()
    for_codes, full = index._prepare_vectors(data[:40], "queries")
    whole = index._sample_searched(snap, for_codes, full, 3, 4)
    monkeypatch.setattr(lists_module, "SAMPLE_SEARCH_ROWS", 7 * 11 * 4)  # 7 queries a batch
    np.testing.assert_array_equal(index._sample_searched(snap, for_codes, full, 3, 4), whole)
    assert whole.shape == (40, 11) and (whole >= 0).all()


def test_calibration_from_neighbours_leaves_each_query_s_own_row_out():
    found = np.array([[7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11],  # own row first
                      [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12],  # own row (0) not found
                      [3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1]])  # padding
    labels = found % 3
    calibration = Calibration.from_neighbours(np.zeros((3, 2), np.float32),
                                              np.array([7, 0, 4]), found, labels, "ip")
    assert calibration.best_rows.tolist() == [
        [1, 2, 3, 4, 5, 6, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 8, 9, 10, 11],
        [3, 5] + [-1] * 8]
    assert ((calibration.best_labels == calibration.best_rows % 3)
            | (calibration.best_rows < 0)).all()
    assert (calibration.best_labels[calibration.best_rows < 0] == -1).all()
    assert calibration.search_recall(found) == 1.0
    assert calibration.search_recall(found[:, ::-1].copy()) < 1.0


def test_a_failed_retuning_warns_and_waits_for_the_next_growth(monkeypatch):
    _make_fail(monkeypatch, "_widely_searched_sample")
    data = clustered_vectors(2000, 24, seed=23)
    index = Index(24, partitions=16)
    index.add(data[:1000])
    held = index.stats()["nprobe"]
    with pytest.warns(RuntimeWarning, match="tuning nprobe"):
        index.add(data[1000:1500])
    assert index.stats()["nprobe"] == held and index._tuned_rows == 1500
    import warnings as warnings_module
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("error")
        index.add(data[1500:1600])  # (no new try before 2,250 rows)
    assert len(index) == 1600


def test_layout_positions_round_trip():
    labels = np.array([2, 0, 1, 0, 2, 2], np.int32)
    layout = ListLayout.build(np.zeros((3, 2), np.float32), "ip", 1, labels)
    np.testing.assert_array_equal(layout.perm, [1, 3, 2, 0, 4, 5])
    np.testing.assert_array_equal(layout.bounds, [0, 2, 3, 6])
    rows = np.array([0, 5, 3, 7, -1])  # 7 lies in the tail; -1 pads
    positions = layout.positions_of(np.maximum(rows, 0))
    np.testing.assert_array_equal(layout.rows_at(positions), np.maximum(rows, 0))
    np.testing.assert_array_equal(layout.rows_at(np.array([-1])), [-1])


@settings(max_examples=80, deadline=None)
@given(n_lists=st.sampled_from([1, 3, 256, 257, 70_000]), rows=st.integers(0, 400),
       tail=st.integers(0, 20), seed=st.integers(0, 2**32 - 1))
def test_layout_positions_match_an_inverse_permutation(n_lists, rows, tail, seed):
    """The binary search of each row's list gives what the inverse permutation gives, with
    labels in the narrow types (uint8 at 256 lists: list 255 is the edge; uint16; int32)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(max(0, n_lists - 3), n_lists, rows).astype(np.int32)  # the top lists
    labels[: rows // 2] = rng.integers(0, n_lists, rows // 2)
    layout = ListLayout.build(np.zeros((n_lists, 2), np.float32), "ip", 1, labels)
    assert layout.labels.dtype == partitions.label_dtype(n_lists)
    inverse = np.arange(rows + tail)  # tail rows sit at their own number
    inverse[layout.perm] = np.arange(rows)
    wanted = rng.permutation(rows + tail)
    expected = inverse[wanted]
    np.testing.assert_array_equal(layout.positions_of(wanted), expected)
    np.testing.assert_array_equal(layout.rows_at(layout.positions_of(wanted)), wanted)
    np.testing.assert_array_equal(layout.lists_of(np.arange(rows)), labels)
    np.testing.assert_array_equal(layout.inverse(), inverse[:rows])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=60), st.integers(0, 5),
       st.integers(1, 8), st.integers(1, 4), st.integers(0, 2 ** 31 - 1))
def test_probe_spans_are_each_querys_lists_nearest_first(labels, tail, nprobe, n_queries, seed):
    """The spans planned for a batch are, for each query, its ``nprobe`` nearest lists by a
    brute-force ranking, nearest first, none twice; its tail rows (``extra``) are those of the
    same lists, nearest list first; a filter too tight for them probes further lists."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((8, 4)).astype(np.float32)
    layout = ListLayout.build(centroids, "ip", nprobe, np.array(labels, np.int32))
    tail_labels = rng.integers(0, 8, tail).astype(np.int32)
    groups = layout.tail_groups(tail_labels) if tail else None
    counts = np.diff(layout.bounds) + np.bincount(tail_labels, minlength=8)
    queries = rng.standard_normal((n_queries, 4)).astype(np.float32)
    need = int(rng.integers(0, len(labels) + tail + 2))
    planned = layout.probe(queries, nprobe, allowed_counts=counts, need=need, tail=groups)
    offsets, bounds = planned
    assert offsets[0] == 0 and offsets[-1] == len(bounds) and len(offsets) == n_queries + 1
    for q in range(n_queries):
        ranked = np.argsort(-(centroids @ queries[q]), kind="stable")
        held = np.cumsum(counts[ranked])
        reach = max(nprobe, int(np.searchsorted(held, need)) + 1) if held[nprobe - 1] < need \
            else nprobe
        nearest = ranked[:min(8, reach)]
        expected = [p for lst in nearest for p in range(layout.bounds[lst],
                                                        layout.bounds[lst + 1])]
        runs = bounds[offsets[q]:offsets[q + 1]]
        assert (runs[:, 1] > runs[:, 0]).all()
        assert (runs[1:, 0] != runs[:-1, 1]).all()  # a list right after the last joins its run
        assert [p for start, stop in runs for p in range(start, stop)] == expected
        if groups is None:
            continue
        extra_offsets, extra_rows = planned.extra
        got = extra_rows[extra_offsets[q]:extra_offsets[q + 1]]
        wanted = [len(labels) + r for lst in nearest for r in np.nonzero(tail_labels == lst)[0]]
        assert got.tolist() == wanted


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(-3, 3), min_size=1, max_size=40), nprobe=st.integers(1, 45))
def test_one_query_plan_takes_the_nearest_lists_with_ties_to_the_lower_number(scores, nprobe):
    """The compiled plan's lists are the first ``nprobe`` of a stable sort by score, in that
    order, ties (frequent here: integer scores) included."""
    from vecpress.core import kernels

    values = np.array(scores, np.float32)
    n_lists = len(values)
    bounds = np.arange(0, 2 * n_lists + 1, 2, dtype=np.int64)  # list l: positions 2l, 2l+1
    empty = np.zeros(0, np.int64)
    held, spans, _ = kernels.plan_one_query(values, nprobe, bounds, empty, empty,
                                            np.ones(n_lists, np.int64))
    expected = np.argsort(-values, kind="stable")[:nprobe]
    positions = [p for start, stop in spans for p in range(start, stop)]
    assert positions == [p for lst in expected for p in (2 * lst, 2 * lst + 1)]
    assert held == len(expected)


def test_collection_passes_partitions_and_nprobe(tmp_path):
    data = clustered_vectors(1200, 16, seed=17)
    col = Collection(16, path=tmp_path / "c", partitions=4)
    col.upsert([f"d{i}" for i in range(1200)], data, metadatas=[{"i": i} for i in range(1200)])
    hits = col.search(data[5], k=3, nprobe=4, where={"i": {"$lt": 600}})
    assert hits[0].id == "d5" and all(h.metadata["i"] < 600 for h in hits)
    col.close()


def test_training_keeps_every_row_and_its_number(tmp_path):
    """Lists are trained beside the rows, not by a compaction: removed rows stay (flagged),
    no row is renumbered, so a Collection's cached row masks stay valid and searches go on."""
    data = clustered_vectors(200, 16, seed=18)
    index = Index(16, partitions=4, path=tmp_path / "s")
    index.add(data[:60])
    index.remove([3, 5])
    before = index.row_ids
    assert index._lists is None and not index.compaction_due
    index.add(data[60:70])  # 68 live rows >= 4 lists x 16: trains
    assert index._lists is not None and index._ids.size == 70
    np.testing.assert_array_equal(index.row_ids[:60], before)
    index.close()
    again = Index.load(tmp_path / "s")
    np.testing.assert_array_equal(again.row_ids[:60], before)
    every = np.arange(70)
    np.testing.assert_array_equal(again._row_labels(every), index._row_labels(every))


def test_stats_and_the_cli_show_the_lists():
    """Index.stats gives lists, nprobe and the spread of list sizes; `vecpress stats` says so."""
    from vecpress.cli import format_stats, store_stats

    data = clustered_vectors(1000, 16, seed=19)
    col = Collection(16, partitions=4)
    col.upsert([str(i) for i in range(1000)], data)
    stats = col.stats()
    sizes = np.diff(col._index._lists.bounds)
    assert stats["lists"] == 4 and 1 <= stats["nprobe"] <= 4
    assert stats["list_rows"] == {"min": int(sizes.min()), "median": int(np.median(sizes)),
                                  "max": int(sizes.max())}
    assert sum(sizes) == 1000
    text = format_stats(store_stats(col))
    assert f"4 inverted lists, {stats['nprobe']} probed per query" in text
    flat = Collection(16, partitions=None)
    flat.upsert(["a"], data[:1])
    assert flat.stats()["lists"] == 0 and "flat scan" in format_stats(store_stats(flat))


@pytest.mark.parametrize("dense", [1, 10**9])  # every sample dense, or none
def test_training_sample_reads_the_rows_asked_for(tmp_path, monkeypatch, dense):
    """The training sample's originals, read row by row or (dense samples) through whole
    segments in chunks, are the rows asked for, across segments and the row log."""
    from vecpress.core.index import lists as lists_module

    index = Index(24, bits=2, path=tmp_path / "store", partitions=None, durability="process")
    data = clustered_vectors(2000, 24, seed=31)
    for start in range(0, 1900, 300):
        index.add(data[start:start + 300])
    index.add(data[1900:1905])  # a small add: the row log
    monkeypatch.setattr(lists_module, "DENSE_SAMPLE", dense)
    monkeypatch.setattr(type(index), "_chunk_rows", 128)
    rows = np.sort(np.random.default_rng(3).choice(len(index), 700, replace=False))
    expected = index._originals.fetch(rows).astype(np.float32)
    np.testing.assert_array_equal(index._sampled_originals(rows), expected)
    assert index.stats()["segments"] > 1
    index.close()


@settings(max_examples=60, deadline=None)
@given(n_rows=st.integers(0, 40), extra=st.integers(0, 5), shape=st.sampled_from([(7,), (2, 5)]),
       wide=st.booleans(), seed=st.integers(0, 2**16))
def test_rows_at_maps_positions_as_numpy_does(n_rows, extra, shape, wide, seed):
    """Ordered positions map through the permutation, the tail's and -1 stay as they are."""
    from vecpress.core import kernels

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_rows).astype(np.int64 if wide else np.int32)
    positions = rng.integers(-1, n_rows + extra, shape).astype(np.int64)
    inside = (positions >= 0) & (positions < n_rows)
    expected = positions.copy()
    expected[inside] = perm[positions[inside]]
    got = kernels.rows_at(perm, n_rows, positions)
    assert got.shape == positions.shape and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
