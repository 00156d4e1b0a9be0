"""MUVERA encodings: determinism from the seed, the numba kernel against a numpy reference,
and the Chamfer bound derived in :mod:`vecpress.multivector.fde`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecpress.multivector import FDEConfig, FDEEncoder, maxsim_brute_force, maxsim_scores


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def reference_fde(encoder: FDEEncoder, tokens: np.ndarray, *, document: bool) -> np.ndarray:
    """The encoding written out in numpy, straight from the definition (no sketch)."""
    config = encoder.config
    buckets = 1 << config.simhash_bits
    ids = encoder.bucket_ids(tokens)
    planes_ok = np.array_equal(  # the bucket of a token is its sign pattern, bit j = plane j
        ids, ((tokens @ encoder._planes > 0).reshape(len(tokens), config.repetitions, -1)
              * (1 << np.arange(config.simhash_bits))).sum(axis=2))
    assert planes_ok
    out = np.zeros((config.repetitions, buckets, config.width), dtype=np.float64)
    for rep in range(config.repetitions):
        if encoder._projection is None:
            values = tokens.astype(np.float64)
        else:
            w = config.projection_dim
            values = tokens.astype(np.float64) @ encoder._projection[:, rep * w:(rep + 1) * w]
        for bucket in range(buckets):
            members = ids[:, rep] == bucket
            if members.any():
                out[rep, bucket] = values[members].mean(0) if document else values[members].sum(0)
            elif document and config.fill_empty:
                hamming = [bin(bucket ^ int(b)).count("1") for b in ids[:, rep]]
                out[rep, bucket] = values[int(np.argmin(hamming))]
            norm = np.linalg.norm(out[rep, bucket])
            if document and config.normalize_buckets and norm > 0:
                out[rep, bucket] /= norm
    return out.reshape(-1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), reps=st.integers(1, 6), bits=st.integers(0, 4),
       proj=st.sampled_from([None, 3, 8]), kind=st.sampled_from(["orthogonal", "sign"]),
       normalize=st.booleans(), fill=st.booleans(), n_tokens=st.integers(1, 12), document=st.booleans())
def test_kernel_matches_numpy_reference(seed, reps, bits, proj, kind, normalize, fill, n_tokens, document):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n_tokens, 8)).astype(np.float32)
    encoder = FDEEncoder(FDEConfig(dim=8, repetitions=reps, simhash_bits=bits, projection_dim=proj,
                                   projection=kind, normalize_buckets=normalize, fill_empty=fill,
                                   seed=seed))
    got = (encoder.encode_documents if document else encoder.encode_queries)([tokens])[0]
    np.testing.assert_allclose(got, reference_fde(encoder, tokens, document=document),
                               rtol=1e-5, atol=1e-5)


def test_round_trip_from_a_fixed_seed():
    """Same seed -> the same matrices and encodings (a store reopened later encodes queries as
    it encoded documents); another seed -> different ones; the config survives its dict."""
    rng = np.random.default_rng(7)
    docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 5, 30)]
    config = FDEConfig(dim=16, repetitions=4, simhash_bits=3, projection_dim=4, final_dim=32, seed=123)
    again = FDEConfig.from_dict(config.to_dict())
    assert again == config
    first, second = FDEEncoder(config), FDEEncoder(again)
    assert first.fingerprint() == second.fingerprint()
    np.testing.assert_array_equal(first.encode_documents(docs), second.encode_documents(docs))
    np.testing.assert_array_equal(first.encode_queries(docs), second.encode_queries(docs))
    other = FDEEncoder(FDEConfig(**{**config.to_dict(), "seed": 124}))
    assert other.fingerprint() != first.fingerprint()
    assert not np.array_equal(other.encode_documents(docs), first.encode_documents(docs))
    # the count sketch is the linear map it claims to be
    raw = FDEEncoder(FDEConfig(**{**config.to_dict(), "final_dim": None})).encode_documents(docs)
    sketch = np.zeros((raw.shape[1], 32), dtype=np.float32)
    sketch[np.arange(raw.shape[1]), first._sketch_targets] = first._sketch_signs
    np.testing.assert_allclose(first.encode_documents(docs), raw @ sketch, rtol=1e-5, atol=1e-5)


def chamfer_bound(query: np.ndarray, doc: np.ndarray, bits: int, reps: int, delta: float) -> tuple[float, float]:
    """``(B, S * sqrt(ln(1/delta) / (2R)))`` of the bound in vecpress.multivector.fde."""
    sims = query.astype(np.float64) @ doc.astype(np.float64).T
    angles = np.arccos(np.clip(sims, -1.0, 1.0))  # unit vectors
    collide = (1.0 - angles / math.pi) ** bits
    total, spread = 0.0, 0.0
    for q in range(len(query)):
        best = int(np.argmax(sims[q]))
        miss = 1.0 - collide[q, best] + (collide[q].sum() - collide[q, best])
        width = sims[q].max() - sims[q].min()
        total += width * min(1.0, miss)
        spread += width
    return total, spread * math.sqrt(math.log(1.0 / delta) / (2 * reps))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 5), n_query=st.integers(1, 8),
       n_doc=st.integers(1, 20), clustered=st.booleans())
def test_chamfer_bound(seed, bits, n_query, n_doc, clustered):
    """FDE/R <= Chamfer always; Chamfer - FDE/R <= B + S*sqrt(ln(1/delta)/2R) with
    delta = 1e-6 (a failure here is a bug, not bad luck, for all practical purposes)."""
    rng = np.random.default_rng(seed)
    dim, reps = 24, 64
    if clustered:  # query tokens near document tokens: the case the bound is tight for
        doc = unit(rng.standard_normal((n_doc, dim)))
        query = unit(doc[rng.integers(0, n_doc, n_query)] + 0.1 * rng.standard_normal((n_query, dim)))
    else:
        doc, query = unit(rng.standard_normal((n_doc, dim))), unit(rng.standard_normal((n_query, dim)))
    plain = FDEEncoder(FDEConfig(dim=dim, repetitions=reps, simhash_bits=bits,
                                 projection_dim=None, normalize_buckets=False, fill_empty=True, seed=seed))
    query_fde = plain.encode_queries([query])[0]
    estimate = float(query_fde @ plain.encode_documents([doc])[0]) / reps
    chamfer = float(maxsim_scores(query, doc, np.array([0, n_doc]))[0])
    assert estimate <= chamfer + 1e-4
    expected, deviation = chamfer_bound(query, doc, bits, reps, 1e-6)
    assert chamfer - estimate <= expected + deviation + 1e-4
    # normalised buckets: each term moves by at most |q| * |1 - |a||, a its bucket's average
    normalized = FDEEncoder(FDEConfig(dim=dim, repetitions=reps, simhash_bits=bits,
                                      projection_dim=None, normalize_buckets=True, fill_empty=True,
                                      seed=seed))
    shift = normalization_shift(plain, query, doc) / reps
    unit_estimate = float(query_fde @ normalized.encode_documents([doc])[0]) / reps
    assert abs(unit_estimate - estimate) <= shift + 1e-4
    assert unit_estimate <= chamfer + shift + 1e-4
    assert chamfer - unit_estimate <= expected + deviation + shift + 1e-4


def normalization_shift(plain: FDEEncoder, query: np.ndarray, doc: np.ndarray) -> float:
    """``E`` of the module's bound times R: the sum over repetitions and query tokens of
    ``|q| * |1 - |a||`` where ``a`` is the (unnormalised) document slot of ``q``'s bucket."""
    config = plain.config
    slots = plain.encode_documents([doc])[0].reshape(config.repetitions, -1, config.dim)
    lengths = np.linalg.norm(slots.astype(np.float64), axis=2)
    buckets = plain.bucket_ids(query)
    norms = np.linalg.norm(query.astype(np.float64), axis=1)
    return float(sum(norms[t] * abs(1.0 - lengths[r, buckets[t, r]])
                     for t in range(len(query)) for r in range(config.repetitions)))


def test_bound_is_small_on_well_separated_clusters():
    """Where the bound predicts a small error, the measured error is small too (the bound is
    not vacuous): query tokens close to one document token each, documents spread apart."""
    rng = np.random.default_rng(3)
    dim, reps, bits = 64, 64, 5
    doc = unit(rng.standard_normal((6, dim)))
    query = unit(doc + 0.01 * rng.standard_normal(doc.shape))
    encoder = FDEEncoder(FDEConfig(dim=dim, repetitions=reps, simhash_bits=bits, projection_dim=None,
                                   normalize_buckets=False, fill_empty=True))
    estimate = float(encoder.encode_queries([query])[0] @ encoder.encode_documents([doc])[0]) / reps
    chamfer = float(maxsim_scores(query, doc, np.array([0, 6]))[0])
    expected, deviation = chamfer_bound(query, doc, bits, reps, 1e-6)
    sims = query @ doc.T
    spread = float((sims.max(1) - sims.min(1)).sum())  # S: the trivial bound
    assert expected < 0.4 * spread
    assert chamfer - estimate <= expected + deviation
    assert chamfer - estimate < 0.4 * spread


def test_maxsim_matches_definition():
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((n, 5)).astype(np.float32) for n in (1, 3, 7, 2)]
    query = rng.standard_normal((4, 5)).astype(np.float32)
    tokens, offsets = np.concatenate(docs), np.array([0, 1, 4, 11, 13])
    want = [sum(max(float(q @ p) for p in doc) for q in query) for doc in docs]
    np.testing.assert_allclose(maxsim_scores(query, tokens, offsets), want, rtol=1e-5)
    scores, rows = maxsim_brute_force(query, tokens, offsets, 2, block_rows=3)
    assert rows.tolist() == list(np.argsort(want)[::-1][:2])
    np.testing.assert_allclose(scores, sorted(want, reverse=True)[:2], rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(dim=0), "dim"), (dict(dim=8, repetitions=0), "repetitions"),
    (dict(dim=8, simhash_bits=11), "simhash_bits"), (dict(dim=8, projection_dim=0), "projection_dim"),
    (dict(dim=8, final_dim=-1), "final_dim"), (dict(dim=8, seed=-1), "seed"),
    (dict(dim=8, seed=True), "seed"), (dict(dim=4096, repetitions=256, simhash_bits=10,
                                              projection_dim=None), "exceeds"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        FDEConfig(**bad)


def test_recall_on_clustered_token_clouds():
    """FDE candidates + exact MaxSim find the brute-force top 10 on clustered token clouds."""
    rng = np.random.default_rng(11)
    dim, n_docs = 32, 600
    centers = unit(rng.standard_normal((60, dim)))
    noise = 0.05  # per coordinate: tokens within ~0.3 of their cluster's centre

    def cloud(n):
        return unit(centers[rng.integers(0, 60, n)] + noise * rng.standard_normal((n, dim)))

    docs = [cloud(int(rng.integers(3, 25))) for _ in range(n_docs)]
    tokens = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    encoder = FDEEncoder(FDEConfig(dim=dim, repetitions=20, simhash_bits=4, projection_dim=None))
    fdes = encoder.encode_documents(docs)
    recalls = []
    for _ in range(30):
        query = cloud(6)
        _, truth = maxsim_brute_force(query, tokens, offsets, 10)
        shortlist = np.argsort(-(fdes @ encoder.encode_queries([query])[0]))[:60]  # 10% of the docs
        recalls.append(len(set(truth.tolist()) & set(shortlist.tolist())) / 10)
    assert np.mean(recalls) >= 0.9  # measured 0.95 (seed 11)


def reference_orthogonal(dim: int, columns: int, width: int, seed: int) -> np.ndarray:
    """The orthogonal projection rebuilt with explicit matrices: for each block, the product of
    three rounds of diag(signs) @ permutation matrix @ blockdiag(Hadamard), from the same draws."""
    rng = np.random.RandomState(seed)
    block = min(128, 1 << (dim.bit_length() - 1))
    n = -(-dim // block) * block
    from scipy.linalg import block_diag, hadamard
    mixing = block_diag(*[hadamard(block)] * (n // block)).astype(np.float64)
    parts = []
    while sum(p.shape[1] for p in parts) < columns:
        matrix = np.eye(n)
        for _ in range(3):
            signs = np.diag(2.0 * rng.randint(0, 2, size=n) - 1.0)
            permutation = np.eye(n)[:, rng.permutation(n)]
            matrix = matrix @ signs @ permutation @ mixing
        parts.append(matrix[:dim] / block ** 1.5 * math.sqrt(n / width))
    return np.concatenate(parts, axis=1)[:, :columns]


@pytest.mark.parametrize(("dim", "width"), [(1, 1), (3, 1), (8, 4), (24, 4), (24, 5), (100, 16),
                                            (128, 16), (384, 16)])
def test_orthogonal_projection_against_a_numpy_reference(dim, width):
    """Same matrix as the explicit product; every block of ``n`` columns has orthonormal rows
    (scaled by sqrt(n / width)), so a block's slices keep each direction exactly once."""
    from vecpress.multivector.fde import orthogonal_projection
    columns = 2 * dim + width
    got = orthogonal_projection(dim, columns, width, np.random.RandomState(5)).astype(np.float64)
    np.testing.assert_allclose(got, reference_orthogonal(dim, columns, width, 5), rtol=1e-6, atol=1e-7)
    block = min(128, 1 << (dim.bit_length() - 1))
    n = -(-dim // block) * block
    first = got[:, :n] * math.sqrt(width / n)
    np.testing.assert_allclose(first @ first.T, np.eye(dim), atol=1e-6)


def test_orthogonal_repetitions_covering_the_space_are_exact():
    """With one bucket and n / width repetitions, the orthogonal projections sum to R * I, so
    FDE/R is exactly <sum of query tokens, mean document token>; the sign sketch is not."""
    rng = np.random.default_rng(2)
    dim, width, reps = 24, 4, 8  # n = 32 (blocks of 16, 24 rows kept): 8 repetitions cover it
    doc, query = rng.standard_normal((9, dim)), rng.standard_normal((5, dim))
    exact = float(query.sum(0) @ doc.mean(0))
    errors = {}
    for kind in ("orthogonal", "sign"):
        encoder = FDEEncoder(FDEConfig(dim=dim, repetitions=reps, simhash_bits=0, projection_dim=width,
                                       projection=kind, normalize_buckets=False, seed=9))
        estimate = float(encoder.encode_queries([query])[0] @ encoder.encode_documents([doc])[0]) / reps
        errors[kind] = abs(estimate - exact)
    assert errors["orthogonal"] < 1e-4 * max(1.0, abs(exact))
    assert errors["sign"] > 1e-2


def test_stored_configs_without_the_new_keys_keep_their_encoding():
    """A manifest written before ``projection`` / ``normalize_buckets`` existed means the sign
    sketch without normalisation; a current dict round-trips as it is."""
    legacy = {"dim": 16, "repetitions": 4, "simhash_bits": 2, "projection_dim": 4,
              "final_dim": None, "fill_empty": True, "seed": 3}
    config = FDEConfig.from_dict(legacy)
    assert (config.projection, config.normalize_buckets, config.fill_empty) == ("sign", False, True)
    assert FDEConfig.from_dict({**legacy, "fill_empty": False}).fill_empty is False
    assert FDEConfig.from_dict(FDEConfig(dim=16).to_dict()) == FDEConfig(dim=16)
    current = FDEConfig(dim=16)
    assert (current.projection, current.normalize_buckets, current.fill_empty) == ("orthogonal", True, False)


def test_matrices_are_the_same_on_every_machine():
    """The drawn matrices come from numpy's stable RandomState stream and exact integer
    arithmetic, so their digest is a constant (recorded once): a store made anywhere opens
    anywhere. If this fails, numpy's stream or the construction changed, and stores made with
    this configuration would refuse to open."""
    sign = FDEEncoder(FDEConfig(dim=16, repetitions=4, simhash_bits=2, projection_dim=4,
                                projection="sign", seed=1))
    orthogonal = FDEEncoder(FDEConfig(dim=384, repetitions=24, simhash_bits=2, projection_dim=16, seed=0))
    assert (sign.fingerprint(), orthogonal.fingerprint()) == GOLDEN_FINGERPRINTS


GOLDEN_FINGERPRINTS = ("d1b09af5678287d6", "33dba6a0e4048324")
