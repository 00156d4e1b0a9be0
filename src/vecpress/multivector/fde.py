"""MUVERA fixed-dimensional encodings (FDE): one vector per token set whose inner product
approximates the Chamfer (MaxSim) similarity of two token sets.

For each of ``repetitions`` independent draws, ``simhash_bits`` random Gaussian hyperplanes
split the token space into ``2**simhash_bits`` buckets (a token's bucket is its sign pattern).
A query's block holds, per bucket, the *sum* of its tokens there; a document's holds the
*average* of its tokens there (by default scaled to unit length, see below), and with
``fill_empty`` an empty bucket takes the document token whose sign pattern is nearest in
Hamming distance (MUVERA's choice; off by default, see :class:`FDEConfig`). Then ``<FDE(Q), FDE(D)> = sum over repetitions, over query
tokens q, of <q, the document's representative in q's bucket>``: every query token meets one
document vector, as in MaxSim, except that it is the bucket's average instead of the best one.

Bound (no projections, empty buckets filled, plain averages; what
``tests/test_multivector_fde.py`` checks). Write ``M_q`` and ``m_q`` for the largest and smallest ``<q, p>`` over document tokens ``p``. A representative is
an average of document tokens or one of them, so per repetition and query token the term lies
in ``[m_q, M_q]``; hence, deterministically::

    FDE(Q).FDE(D) / repetitions  <=  Chamfer(Q, D) = sum_q M_q

The deficit of one query token in one repetition is 0 when its best token ``p*`` shares its
bucket and no other document token does; two vectors at angle ``theta`` share a SimHash bucket
of ``k`` planes with probability ``(1 - theta/pi)**k``. So its expected deficit is at most
``(M_q - m_q) * min(1, 1 - (1 - theta*/pi)**k + sum_{p != p*} (1 - theta_p/pi)**k)``; the sum
over ``q`` is ``B``. Repetitions are independent and each one's total deficit lies in
``[0, S]`` with ``S = sum_q (M_q - m_q)``, so by Hoeffding, with probability at least
``1 - delta``::

    Chamfer(Q, D) - FDE(Q).FDE(D) / repetitions  <=  B + S * sqrt(ln(1/delta) / (2 * repetitions))

Bucket normalisation (``normalize_buckets``, documents only) scales every bucket slot of a
document to unit length, so a query token meets the *direction* of its bucket's average
instead of the average itself. For unit tokens the average of a bucket is shorter than its
members (much shorter when they disagree), and the plain encoding ranks documents by how
coherent their buckets are as much as by how close they are; the direction is what MaxSim's
best match resembles. Both bounds above then loosen by the rescaling: the term of query token
``q`` with bucket average ``a`` moves by ``|<q, a/|a|> - <q, a>| = |<q, a>| * |1/|a| - 1| <=
|q| * |1 - |a||``. With ``E`` the sum of that shift over query tokens and repetitions, divided
by ``repetitions`` (no projections)::

    FDE(Q).FDE(D) / repetitions  <=  Chamfer(Q, D) + E
    Chamfer(Q, D) - FDE(Q).FDE(D) / repetitions  <=  B + S * sqrt(ln(1/delta) / (2 * repetitions)) + E

On the benchmark (20k WordNet glosses, MiniLM tokens, ``benchmarks/bench_multivector.py``)
the candidates needed for recall@10 0.95 of exact MaxSim, at 24 x 4 x 16, float32: sign
sketches and plain averages 199; unit buckets 88; orthogonal projection 110; both 47; and
empty buckets left empty 43 (the previous default, 40 repetitions of the plain encoding,
needed 145; the token heuristic 131).

The inner projection (``projection_dim``) maps each repetition's ``dim`` token coordinates to
``projection_dim`` values, scaled so that inner products stay unbiased:

* ``projection="orthogonal"`` (the default): the repetitions take successive column blocks of
  random orthogonal matrices, so ``n / projection_dim`` repetitions together keep every
  direction of the token space exactly once (``n``: ``dim`` rounded up to a multiple of the
  Hadamard block; ``sum_r P_r P_r^T = (n / d) I``) and their errors partly cancel. The
  matrices are built in exact integer arithmetic (random signs, permutations and
  Sylvester-Hadamard blocks, three rounds, then one rounded scaling), so the same seed gives
  the same bits on every machine and BLAS;
* ``projection="sign"``: an independent random +-1/sqrt(d_proj) matrix per repetition (AMS
  sketch), the encoding of stores made before the orthogonal one existed.

The final projection (``final_dim``: a count sketch, each coordinate added with a random sign
to one random output coordinate) keeps inner products unbiased and adds variance that shrinks
as its dimension grows; it trades accuracy for size.

Everything is drawn from ``numpy.random.RandomState(seed)``, whose streams numpy keeps stable
across versions; a fingerprint of the drawn matrices is stored beside the seed and checked
when a store is opened, so a changed stream can never silently scramble an index.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from ..core.kernels.fde import count_sketch, encode_fdes, encode_fdes_serial

#: below this many token sets, encode on the calling thread
SERIAL_BELOW = 64

#: bounds that keep one encoder's matrices and one encoding small enough to allocate
MAX_SIMHASH_BITS = 10
MAX_REPETITIONS = 256
MAX_FDE_DIM = 1 << 18

PROJECTIONS = ("orthogonal", "sign")
#: what a stored configuration without these keys meant (stores made before they existed)
LEGACY_DEFAULTS = {"projection": "sign", "normalize_buckets": False, "fill_empty": True}
#: largest Hadamard block of the orthogonal projection (blocks mix through permutations)
HADAMARD_BLOCK = 128
#: the orthogonal projection builds n x n float64 matrices: up to 4096 dimensions (134 MB)
MAX_ORTHOGONAL_DIM = 4096


@dataclass(frozen=True)
class FDEConfig:
    """Parameters of an encoding; stored in a multi-vector store's manifest.

    ``dim``: token dimension. ``repetitions`` (R) and ``simhash_bits`` (k_sim, giving 2**k
    buckets). ``projection_dim``: width of each bucket's slot (None keeps all ``dim``
    coordinates). ``projection``: ``"orthogonal"`` or ``"sign"`` (see the module). ``final_dim``:
    count-sketch the encoding down to this size (None keeps ``R * 2**k * width``).
    ``fill_empty``: documents fill empty buckets (Hamming-nearest token).
    ``normalize_buckets``: documents' bucket slots scaled to unit length. ``seed``: every
    random draw.

    The defaults (24 x 4 buckets x 16 = 1,536 dimensions, orthogonal, normalised, empty buckets
    left empty) were chosen on ``benchmarks/bench_multivector.py`` (see the README's
    multi-vector section). With the orthogonal projection, ``repetitions * projection_dim``
    should be a multiple of the token dimension (rounded up to the Hadamard block): 16 x 16
    columns keep only 256 of MiniLM's 384 directions and needed 83 candidates instead of 47.
    Filling empty buckets (MUVERA's choice) cost 3-5 candidates once buckets are normalised:
    a lone far token, scaled to unit length, adds noise where an empty bucket adds nothing.
    """

    dim: int
    repetitions: int = 24
    simhash_bits: int = 2
    projection_dim: int | None = 16
    final_dim: int | None = None
    fill_empty: bool = False
    seed: int = 0
    projection: str = "orthogonal"
    normalize_buckets: bool = True

    def __post_init__(self) -> None:
        _positive(self.dim, "dim", 1 << 16)
        _positive(self.repetitions, "repetitions", MAX_REPETITIONS)
        if isinstance(self.simhash_bits, bool) or not isinstance(self.simhash_bits, (int, np.integer)) \
                or not 0 <= self.simhash_bits <= MAX_SIMHASH_BITS:
            raise ValueError(f"simhash_bits must be an integer in [0, {MAX_SIMHASH_BITS}], "
                             f"got {self.simhash_bits!r}")
        if self.projection_dim is not None:
            _positive(self.projection_dim, "projection_dim", 1 << 16)
        if self.final_dim is not None:
            _positive(self.final_dim, "final_dim", MAX_FDE_DIM)
        for flag in ("fill_empty", "normalize_buckets"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {list(PROJECTIONS)}, got {self.projection!r}")
        if self.projection == "orthogonal" and self.projection_dim is not None \
                and self.dim > MAX_ORTHOGONAL_DIM:
            raise ValueError(f"projection='orthogonal' supports dim up to {MAX_ORTHOGONAL_DIM}, got "
                             f"dim={self.dim}; use projection='sign' or projection_dim=None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.raw_dim > MAX_FDE_DIM:
            raise ValueError(
                f"repetitions * 2**simhash_bits * width = {self.raw_dim} exceeds {MAX_FDE_DIM}; "
                f"lower repetitions, simhash_bits or projection_dim")

    @property
    def width(self) -> int:
        """Values per bucket: ``projection_dim`` or, without inner projection, ``dim``."""
        return int(self.projection_dim or self.dim)

    @property
    def raw_dim(self) -> int:
        return int(self.repetitions) * (1 << int(self.simhash_bits)) * self.width

    @property
    def output_dim(self) -> int:
        return int(self.final_dim or self.raw_dim)

    def to_dict(self) -> dict[str, Any]:
        return {key: (value if value is None or isinstance(value, str) else
                      (bool(value) if isinstance(value, (bool, np.bool_)) else int(value)))
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> "FDEConfig":
        """The configuration a manifest stored; keys it lacks mean what they meant when it was
        written (:data:`LEGACY_DEFAULTS`), so older stores keep their encoding."""
        if not isinstance(data, dict):
            raise ValueError(f"an FDE configuration must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FDE configuration keys {sorted(unknown)}")
        return cls(**{**LEGACY_DEFAULTS, **data})


def _positive(value: Any, name: str, upper: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= upper:
        raise ValueError(f"{name} must be an integer in [1, {upper}], got {value!r}")


class FDEEncoder:
    """Encodes token sets as FDEs; deterministic from ``config.seed``.

    ``encode_documents`` / ``encode_queries`` take a list of ``(tokens, dim)`` float matrices
    (or one concatenated matrix and its ``offsets``) and return ``(n, output_dim)`` float32.
    """

    def __init__(self, config: FDEConfig) -> None:
        self.config = config
        rng = np.random.RandomState(config.seed)
        reps, bits, dim = config.repetitions, config.simhash_bits, config.dim
        # (dim, reps * bits): column r*bits + j is hyperplane j of repetition r
        self._planes = rng.standard_normal((dim, reps * bits)).astype(np.float32)
        self._projection = None
        if config.projection_dim is not None and config.projection == "sign":
            signs = rng.randint(0, 2, size=(dim, reps * config.projection_dim)).astype(np.float32)
            self._projection = (2.0 * signs - 1.0) / np.float32(np.sqrt(config.projection_dim))
        elif config.projection_dim is not None:
            self._projection = orthogonal_projection(dim, reps * config.projection_dim,
                                                     config.projection_dim, rng)
        self._sketch_targets = self._sketch_signs = None
        if config.final_dim is not None:
            self._sketch_targets = rng.randint(0, config.final_dim, size=config.raw_dim).astype(np.int64)
            self._sketch_signs = (2 * rng.randint(0, 2, size=config.raw_dim) - 1).astype(np.float32)
        self._bit_weights = (1 << np.arange(bits, dtype=np.int64))

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    @property
    def fixed_bytes(self) -> int:
        """RAM of the drawn matrices (hyperplanes, projection, sketch)."""
        return sum(a.nbytes for a in (self._planes, self._projection, self._sketch_targets,
                                      self._sketch_signs) if a is not None)

    def fingerprint(self) -> str:
        """A digest of every drawn matrix, stored beside the seed to detect a changed stream."""
        digest = hashlib.sha256()
        for array in (self._planes, self._projection, self._sketch_targets, self._sketch_signs):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def encode_documents(self, matrices: Sequence[np.ndarray] | np.ndarray,
                         offsets: np.ndarray | None = None) -> np.ndarray:
        """Document FDEs: bucket averages, empty buckets filled (``config.fill_empty``)."""
        return self._encode(matrices, offsets, document=True)

    def encode_queries(self, matrices: Sequence[np.ndarray] | np.ndarray,
                       offsets: np.ndarray | None = None) -> np.ndarray:
        """Query FDEs: bucket sums, no filling."""
        return self._encode(matrices, offsets, document=False)

    def _encode(self, matrices: Any, offsets: np.ndarray | None, *, document: bool) -> np.ndarray:
        tokens, offsets = _concatenated(matrices, offsets, self.config.dim)
        config = self.config
        n = len(offsets) - 1
        out = np.zeros((n, config.raw_dim), dtype=np.float32)
        if len(tokens):
            bucket_ids = self.bucket_ids(tokens)
            if self._projection is None:
                values, step = tokens, 0
            else:
                values, step = np.ascontiguousarray(tokens @ self._projection), config.projection_dim
            kernel = encode_fdes_serial if n < SERIAL_BELOW else encode_fdes
            kernel(bucket_ids, values, offsets, 1 << config.simhash_bits, config.width, step,
                   document, document and config.fill_empty,
                   document and config.normalize_buckets, out)
        if self._sketch_targets is None:
            return out
        sketched = np.zeros((n, config.final_dim), dtype=np.float32)
        count_sketch(out, self._sketch_targets, self._sketch_signs, sketched)
        return sketched

    def bucket_ids(self, tokens: np.ndarray) -> np.ndarray:
        """(tokens, repetitions) int64: each token's SimHash bucket in every repetition."""
        reps, bits = self.config.repetitions, self.config.simhash_bits
        if bits == 0:
            return np.zeros((len(tokens), reps), dtype=np.int64)
        positive = (tokens @ self._planes > 0).reshape(len(tokens), reps, bits)
        return np.ascontiguousarray(positive @ self._bit_weights)


def orthogonal_projection(dim: int, columns: int, width: int,
                          rng: np.random.RandomState) -> np.ndarray:
    """``(dim, columns)`` float32: successive blocks of the first ``dim`` rows of random
    orthogonal ``n x n`` matrices (``n``: ``dim`` rounded up to a multiple of the Hadamard
    block), scaled by ``sqrt(n / width)`` so that each ``width``-column slice keeps inner
    products unbiased. Within a block the rows are orthonormal before scaling, so the
    slices of one block together keep every direction exactly once.

    Each ``n x n`` matrix is three rounds of (random signs, random column permutation,
    block-diagonal +-1 Sylvester-Hadamard matrices): integer entries below 2**53, exact in
    float64 whatever the BLAS sums in what order, then one correctly rounded scaling. So the
    matrix depends on the seed's random stream only, never on the machine.
    """
    dim = int(dim)
    block = min(HADAMARD_BLOCK, 1 << (dim.bit_length() - 1))
    n = -(-dim // block) * block
    hadamard = np.ones((1, 1))
    while len(hadamard) < block:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    scale = np.sqrt(float(n) / float(width * block ** 3))  # sqrt(n / width) / block**1.5
    parts, drawn = [], 0
    while drawn < columns:
        matrix = np.eye(n)
        for _ in range(3):
            matrix = matrix * (2.0 * rng.randint(0, 2, size=n) - 1.0)[None, :]
            matrix = matrix[:, rng.permutation(n)]
            matrix = np.concatenate([matrix[:, i:i + block] @ hadamard for i in range(0, n, block)],
                                    axis=1)
        parts.append(matrix[:dim] * scale)
        drawn += n
    return np.ascontiguousarray(np.concatenate(parts, axis=1)[:, :columns], dtype=np.float32)


def _concatenated(matrices: Any, offsets: np.ndarray | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One C-contiguous float32 token matrix and int64 row offsets (``len = sets + 1``)."""
    if offsets is not None:
        tokens = np.ascontiguousarray(matrices, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != dim:
            raise ValueError(f"tokens must have shape (n, {dim}), got {tokens.shape}")
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must start at 0, never decrease and end at len(tokens)")
        return tokens, offsets
    if isinstance(matrices, np.ndarray) and matrices.ndim == 2:
        matrices = [matrices]
    matrices = [np.asarray(m, dtype=np.float32) for m in matrices]
    for i, matrix in enumerate(matrices):
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"token matrix {i} must have shape (tokens, {dim}), got {matrix.shape}")
    lengths = np.array([len(m) for m in matrices], dtype=np.int64)
    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(matrices) if matrices else np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(tokens, dtype=np.float32), offsets

