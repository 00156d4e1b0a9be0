"""Scale benchmark: build time, encode throughput, latency, QPS and measured RAM at 1M and 10M.

The vectors are synthetic, generated to look like the suite's real ones (all-MiniLM-L6-v2 over
WordNet glosses): ``benchmarks/data/minilm_wordnet_spectrum.json`` holds the real embeddings'
mean vector, the eigenvalues of their covariance and how much of their variance 1,024 k-means
clusters explain (``python -m benchmarks.bench_scale --fit`` rewrites it from the embedding
cache). A vector is then ``mean + R (centre[c] + sub[c, s] + noise)``, normalised, where ``R`` is
a seeded random rotation (the real eigenvectors are not stored), ``c`` one of 1,024 clusters,
``s`` one of a few sub-clusters inside it, and centres, sub-centres and noise are Gaussian in the
eigenbasis with the fitted eigenvalues split between them. The clusters' share is the measured
explained-variance fraction; the sub-clusters' count and share are fitted so that the median
similarity of a vector's nearest and 10th-nearest neighbour match the real corpus's at its size
(``--fit-local``). Without that local level the generator's nearest neighbours were far too far
apart (median top-1 similarity 0.52 against the real 0.71), which makes any partitioning look
worse than it is on real text. They are generated in chunks of 100k from seeds, so
no method ever needs the whole float32 matrix in memory (FAISS Flat and RefineFlat keep it
themselves). **Never read recall from these vectors**: none is reported.

Every method is built and measured in a fresh subprocess, which reports:

- build seconds: time inside train / add calls (generation excluded), and encode throughput =
  n / build seconds;
- single-query latency p50 on 1 thread and on all threads, batch QPS (all queries, one call);
- RAM measured: growth of the process's anonymous resident memory (``RssAnon``, after a
  garbage collection and ``malloc_trim``) from just before the build to after the searches,
  per vector and in total; file-backed pages (vecpress's memory-mapped originals) are not in
  it; peak RSS of the whole process (``getrusage``, includes Python, libraries, one generated
  chunk) for context;
- bytes per vector accounted by the library (vecpress ``stats()``; FAISS / hnswlib: written
  index file) and disk bytes per vector where the method keeps files.

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_scale            # 1M and 10M (about 25 min)
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_scale --quick    # 200k
    python -m benchmarks.bench_scale --sizes 20000 --methods "vecpress 1-bit" --out /tmp/x

vecpress with rerank writes its originals (float16, 7.7 GB at 10M) under the system's temporary
folder, or under ``$VECPRESS_SCALE_TMP``. Writes ``benchmarks/results/scale.md`` and
``scale.json`` (``scale_quick.*`` with ``--quick``, another folder with ``--out``). Methods too
big for the 24 GiB machine at a size are skipped with the reason in the table. The peak RSS of
vecpress with rerank counts the pages of its memory-mapped files the process touched (page
cache the kernel can take back), which is why it dwarfs the anonymous figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

if not __package__:  # run as `python benchmarks/bench_scale.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from benchmarks.common import RESULTS, machine, memory, source_version, set_threads

K = 10
CHUNK = 100_000
CLUSTERS = 1024
SPECTRUM = Path(__file__).resolve().parent / "data" / "minilm_wordnet_spectrum.json"
QUERY_SEED = 1_000_003  # queries come from their own stream, never from the base's chunks


# ---------------------------------------------------------------- synthetic embeddings


def fit_spectrum(path: Path = SPECTRUM) -> dict[str, Any]:
    """Fit the generator to the cached real embeddings and write it to ``path`` (JSON)."""
    import faiss

    from benchmarks.datasets import embed_corpus, load_wordnet_glosses

    vectors = np.ascontiguousarray(embed_corpus(load_wordnet_glosses()), dtype=np.float32)
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(vectors))[::-1]
    kmeans = faiss.Kmeans(vectors.shape[1], CLUSTERS, niter=20, seed=0)
    kmeans.train(vectors)
    _, assigned = kmeans.index.search(vectors, 1)
    within = float(((vectors - kmeans.centroids[assigned[:, 0]]) ** 2).sum()) / len(vectors)
    spec = {"source": f"all-MiniLM-L6-v2 embeddings of {len(vectors)} WordNet glosses",
            "clusters": CLUSTERS,
            "cluster_variance_fraction": 1.0 - within / float(eigenvalues.sum()),
            "mean": [round(float(v), 6) for v in mean],
            "eigenvalues": [float(f"{v:.6g}") for v in np.maximum(eigenvalues, 0.0)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=0) + "\n")
    return spec


class SyntheticEmbeddings:
    """Normalised vectors with the fitted mean, spectrum and clustering, chunk by chunk."""

    def __init__(self, spec: dict[str, Any], seed: int = 0) -> None:
        self.mean = np.asarray(spec["mean"], dtype=np.float32)
        self.dim = len(self.mean)
        eigenvalues = np.asarray(spec["eigenvalues"], dtype=np.float64)
        between = float(spec["cluster_variance_fraction"])
        rng = np.random.default_rng(seed)
        gaussian = rng.standard_normal((self.dim, self.dim))
        q, r = np.linalg.qr(gaussian)
        self.rotation = np.ascontiguousarray((q * np.sign(np.diag(r))).T, dtype=np.float32)
        self.centres = (rng.standard_normal((spec["clusters"], self.dim))
                        * np.sqrt(between * eigenvalues)).astype(np.float32)
        self.subclusters = int(spec.get("subclusters_per_cluster", 0))
        local = float(spec.get("subcluster_variance_fraction", 0.0)) if self.subclusters else 0.0
        if self.subclusters:  # its own stream: the centres and rotation above stay as they were
            sub_rng = np.random.default_rng([seed, 7])
            self.subcentres = (sub_rng.standard_normal(
                (spec["clusters"] * self.subclusters, self.dim))
                * np.sqrt(local * eigenvalues)).astype(np.float32)
        self.noise_scale = np.sqrt((1.0 - between - local) * eigenvalues).astype(np.float32)
        self.seed = seed

    def chunk(self, index: int, size: int) -> np.ndarray:
        """Chunk ``index`` of the stream: the same ``size`` vectors for the same arguments."""
        rng = np.random.default_rng([self.seed, index])
        labels = rng.integers(0, len(self.centres), size)
        z = rng.standard_normal((size, self.dim), dtype=np.float32)
        z *= self.noise_scale
        z += self.centres[labels]
        if self.subclusters:
            z += self.subcentres[labels * self.subclusters
                                 + rng.integers(0, self.subclusters, size)]
        vectors = z @ self.rotation
        vectors += self.mean
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def stream(self, n: int, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """``n`` vectors in chunks of ``chunk`` (the last one shorter)."""
        for number, start in enumerate(range(0, n, chunk)):
            yield self.chunk(number, min(chunk, n - start))

    def queries(self, count: int) -> np.ndarray:
        return self.chunk(QUERY_SEED, count)


def neighbour_similarities(vectors: np.ndarray, samples: int = 500) -> tuple[float, float]:
    """Median similarity of a sampled vector's nearest and 10th-nearest other vector."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    picked = np.random.default_rng(5).choice(len(vectors), samples, replace=False)
    scores, _ = index.search(vectors[picked], K + 1)  # column 0 is the vector itself
    return float(np.median(scores[:, 1])), float(np.median(scores[:, K]))


def fit_local_structure(path: Path = SPECTRUM) -> dict[str, Any]:
    """Fit the sub-cluster level so neighbour similarities match the real corpus's; rewrite ``path``.

    A small grid (sub-clusters per cluster, their variance share), each point generating as
    many vectors as the real corpus has and comparing the median nearest and 10th-nearest
    neighbour similarity; the closest point (squared error) is kept.
    """
    from benchmarks.datasets import embed_corpus, load_wordnet_glosses

    real = np.ascontiguousarray(embed_corpus(load_wordnet_glosses()), dtype=np.float32)
    target = neighbour_similarities(real)
    spec = load_spectrum(path)
    best: tuple[float, int, float, tuple[float, float]] | None = None
    for subclusters in (8, 12, 16, 24):
        for share in (0.25, 0.30, 0.35):
            trial = dict(spec, subclusters_per_cluster=subclusters,
                         subcluster_variance_fraction=share)
            got = neighbour_similarities(SyntheticEmbeddings(trial).chunk(0, len(real)))
            error = (got[0] - target[0]) ** 2 + (got[1] - target[1]) ** 2
            print(f"  {subclusters:>3} sub-clusters, share {share:.2f}: top-1 {got[0]:.3f} "
                  f"top-10 {got[1]:.3f} (real {target[0]:.3f} / {target[1]:.3f})", flush=True)
            if best is None or error < best[0]:
                best = (error, subclusters, share, got)
    assert best is not None
    spec.update(subclusters_per_cluster=best[1], subcluster_variance_fraction=best[2],
                neighbour_similarity_real=[round(v, 4) for v in target],
                neighbour_similarity_synthetic=[round(v, 4) for v in best[3]])
    path.write_text(json.dumps(spec, indent=0) + "\n")
    return spec


def load_spectrum(path: Path = SPECTRUM) -> dict[str, Any]:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the stores


class Store:
    """What the worker needs from one method: train on a sample, add chunks, search, sizes."""

    def train(self, sample: np.ndarray) -> None:  # most need no training
        pass

    def add(self, chunk: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, threads: int) -> np.ndarray:
        raise NotImplementedError

    def sizes(self, n: int, workdir: Path) -> tuple[float, float | None]:
        """(accounted RAM bytes per vector, disk bytes per vector or None)."""
        raise NotImplementedError


class VecpressStore(Store):
    def __init__(self, dim: int, n: int, workdir: Path, *, bits: int, rerank: bool,
                 partitions: int | str | None = None) -> None:
        from vecpress import Index

        self.index = Index(dim, metric="ip", bits=bits, rerank=rerank,
                           path=workdir / "vecpress" if rerank else None,
                           partitions=partitions)

    def add(self, chunk: np.ndarray) -> None:
        self.index.add(chunk)

    def search(self, queries: np.ndarray, threads: int) -> np.ndarray:
        return self.index.search(queries, K)[1]

    def sizes(self, n: int, workdir: Path) -> tuple[float, float | None]:
        stats = self.index.stats()
        return stats["ram_bytes"] / n, (stats["disk_bytes"] / n if self.index.path else None)


class FaissStore(Store):
    def __init__(self, dim: int, n: int, workdir: Path, *, factory: str,
                 nprobe: int | None = None, k_factor: int | None = None) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.nprobe, self.k_factor = nprobe, k_factor

    def train(self, sample: np.ndarray) -> None:
        self.index.train(sample)
        if self.nprobe is not None:
            self.faiss.extract_index_ivf(self.index).nprobe = self.nprobe
        if self.k_factor is not None:
            self.index.k_factor = self.k_factor

    def add(self, chunk: np.ndarray) -> None:
        self.index.add(chunk)

    def search(self, queries: np.ndarray, threads: int) -> np.ndarray:
        return self.index.search(queries, K)[1]

    def sizes(self, n: int, workdir: Path) -> tuple[float, float | None]:
        path = workdir / "faiss.index"
        self.faiss.write_index(self.index, str(path))
        size = path.stat().st_size / n
        path.unlink()
        return size, None


class HnswlibStore(Store):
    def __init__(self, dim: int, n: int, workdir: Path) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, M=16, ef_construction=128)
        self.index.set_ef(64)
        self.count = 0

    def add(self, chunk: np.ndarray) -> None:
        ids = np.arange(self.count, self.count + len(chunk))
        self.index.add_items(chunk, ids, num_threads=os.cpu_count() or 1)
        self.count += len(chunk)

    def search(self, queries: np.ndarray, threads: int) -> np.ndarray:
        return self.index.knn_query(queries, k=K, num_threads=threads)[0]

    def sizes(self, n: int, workdir: Path) -> tuple[float, float | None]:
        path = workdir / "hnswlib.bin"
        self.index.save_index(str(path))
        size = path.stat().st_size / n
        path.unlink()
        return size, None


@dataclass
class ScaleMethod:
    """A method, how to make its store, and the largest n it is run at (with why not more)."""

    make: Callable[[int, int, Path], Store]
    max_n: int | None = None
    why_not_larger: str = ""


def _ivf_lists(n: int) -> int:
    return max(16, int(np.sqrt(n)))


METHODS: dict[str, ScaleMethod] = {
    "vecpress 1-bit": ScaleMethod(lambda d, n, w: VecpressStore(d, n, w, bits=1, rerank=False)),
    "vecpress 1-bit + rerank x10": ScaleMethod(
        lambda d, n, w: VecpressStore(d, n, w, bits=1, rerank=True)),
    "vecpress 1-bit + rerank x10, lists": ScaleMethod(
        lambda d, n, w: VecpressStore(d, n, w, bits=1, rerank=True, partitions="auto")),
    "vecpress 4-bit": ScaleMethod(lambda d, n, w: VecpressStore(d, n, w, bits=4, rerank=False)),
    "vecpress 4-bit + rerank x3": ScaleMethod(
        lambda d, n, w: VecpressStore(d, n, w, bits=4, rerank=True), 1_000_000,
        "fits (2 GB RAM, 7.7 GB disk) but left out to keep the 10M run short; "
        "1-bit + rerank shows the rerank's cost at 10M"),
    "vecpress 4-bit + rerank x3, lists": ScaleMethod(
        lambda d, n, w: VecpressStore(d, n, w, bits=4, rerank=True, partitions="auto")),
    "faiss RaBitQ 1-bit": ScaleMethod(lambda d, n, w: FaissStore(d, n, w, factory="RaBitQ")),
    "faiss RaBitQ 4-bit": ScaleMethod(
        lambda d, n, w: FaissStore(d, n, w, factory="RaBitQ4"), 1_000_000,
        "fits (2.1 GB) but encodes at ~45k vectors/s on 2 cores (4 min at 10M); left out "
        "for time"),
    "faiss RaBitQ 1-bit + RefineFlat x10": ScaleMethod(
        lambda d, n, w: FaissStore(d, n, w, factory="RaBitQ,RFlat", k_factor=10), 1_000_000,
        "keeps float32 originals in RAM: 15.9 GB at 10M, too close to the shared 24 GiB"),
    "faiss IVFRaBitQ 1-bit nprobe=32": ScaleMethod(
        lambda d, n, w: FaissStore(d, n, w, factory=f"IVF{_ivf_lists(n)},RaBitQ", nprobe=32),
        1_000_000, "assigning 10M vectors to their lists takes tens of minutes on 2 cores"),
    "faiss IVFRaBitQ 4-bit + RefineFlat x3 nprobe=64": ScaleMethod(
        lambda d, n, w: FaissStore(d, n, w, factory=f"IVF{_ivf_lists(n)},RaBitQ4,RFlat",
                                   nprobe=64, k_factor=3), 1_000_000,
        "keeps float32 originals in RAM and assigning 10M vectors to lists takes tens of "
        "minutes on 2 cores"),
    "faiss IndexFlatIP (exact)": ScaleMethod(
        lambda d, n, w: FaissStore(d, n, w, factory="Flat"), 1_000_000,
        "float32 in RAM: 15.4 GB at 10M, too close to the shared 24 GiB"),
    "hnswlib M=16 ef=64": ScaleMethod(
        lambda d, n, w: HnswlibStore(d, n, w), 1_000_000,
        "about 17 GB of float32 and graph at 10M, and an hour of build on 2 cores"),
}


# ---------------------------------------------------------------- one method, one process


def worker(name: str, n: int, latency_queries: int, batch_queries: int) -> dict[str, Any]:
    """Build ``name`` on ``n`` synthetic vectors in this process and measure it."""
    threads = os.cpu_count() or 1
    set_threads(threads)
    generator = SyntheticEmbeddings(load_spectrum())
    queries = generator.queries(max(latency_queries, batch_queries))
    with tempfile.TemporaryDirectory(dir=os.environ.get("VECPRESS_SCALE_TMP")) as tmp:
        workdir = Path(tmp)
        (workdir / "warm").mkdir()
        warm = METHODS[name].make(generator.dim, 2048, workdir / "warm")  # load / compile code
        # a full-size chunk: BLAS sets up its per-thread buffers on the first large product
        warm_data = generator.chunk(0, min(CHUNK, n))[:2048]
        warm.train(warm_data)
        warm.add(warm_data)
        warm.search(queries[:2], threads)
        del warm, warm_data
        store = METHODS[name].make(generator.dim, n, workdir)
        before = memory()
        sample = generator.chunk(0, min(CHUNK, n))  # chunk 0 again: trains, then is added
        start = time.perf_counter()
        store.train(sample)
        build_seconds = time.perf_counter() - start
        del sample
        for chunk in generator.stream(n):
            start = time.perf_counter()
            store.add(chunk)
            build_seconds += time.perf_counter() - start
        del chunk
        store.search(queries[:2], threads)
        start = time.perf_counter()
        store.search(queries[:batch_queries], threads)
        batch_qps = batch_queries / (time.perf_counter() - start)
        latency = {}
        for count in (1, threads):
            set_threads(count)
            store.search(queries[:1], count)
            times = []
            for query in queries[:latency_queries]:
                start = time.perf_counter()
                store.search(query[None], count)
                times.append(time.perf_counter() - start)
            latency[count] = float(np.median(times) * 1000)
        set_threads(threads)
        after = memory()
        ram, disk = store.sizes(n, workdir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    anon = after["RssAnon"] - before["RssAnon"]
    return {"method": name, "n": n, "build_s": build_seconds,
            "encode_vectors_per_s": n / build_seconds,
            "latency_p50_ms_1t": latency[1], "latency_p50_ms_all": latency[threads],
            "batch_qps": batch_qps, "threads": threads,
            "rss_anon_bytes": anon, "rss_anon_bytes_per_vector": anon / n,
            "rss_file_bytes": after["RssFile"] - before["RssFile"],
            "peak_rss_bytes": peak, "ram_bytes_per_vector": ram,
            "disk_bytes_per_vector": disk}


def run_in_subprocess(name: str, n: int, latency_queries: int, batch_queries: int,
                      timeout: float) -> dict[str, Any]:
    """:func:`worker` in a fresh interpreter (so its memory is its own); its JSON row."""
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--worker", name, "--n", str(n),
               "--latency-queries", str(latency_queries), "--batch-queries", str(batch_queries)]
    root = Path(__file__).resolve().parent.parent
    # a fixed mmap threshold: glibc otherwise raises it after the first freed chunk and keeps
    # later 150 MB chunks on its heap, where they would count as the method's memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{name} at n={n} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], skipped: list[dict[str, Any]], header: str,
             threads: int) -> str:
    lines = [header, "",
             f"| n | method | build s | encode vectors/s | p50 ms 1 thread | p50 ms {threads} "
             f"threads | batch QPS | RSS B/vector (measured) | RSS MB | accounted B/vector | "
             f"disk B/vector | peak RSS MB |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        disk = row["disk_bytes_per_vector"]
        lines.append(
            f"| {row['n']:,} | {row['method']} | {row['build_s']:.1f} | "
            f"{row['encode_vectors_per_s']:,.0f} | {row['latency_p50_ms_1t']:.2f} | "
            f"{row['latency_p50_ms_all']:.2f} | {row['batch_qps']:,.0f} | "
            f"{row['rss_anon_bytes_per_vector']:.1f} | {row['rss_anon_bytes'] / 2**20:,.0f} | "
            f"{row['ram_bytes_per_vector']:.1f} | {'-' if disk is None else f'{disk:.1f}'} | "
            f"{row['peak_rss_bytes'] / 2**20:,.0f} |")
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [f"- {s['method']} at {s['n']:,}: {s['reason']}" for s in skipped]
    lines += ["", "Synthetic vectors (fitted to the real embeddings' spectrum and clustering, "
                  "see `benchmarks/bench_scale.py`): timings and memory only, no recall. RSS "
                  "is the growth of the worker's anonymous resident memory over the build and "
                  "the searches; memory-mapped files (vecpress's rerank originals) are not in "
                  "it. Peak RSS is the whole worker process (Python, libraries, one 100k "
                  "chunk of float32 being generated)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k vectors only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--latency-queries", type=int, default=None,
                        help="single queries timed (default 100, 30 above 1M)")
    parser.add_argument("--batch-queries", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per method")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fit", action="store_true",
                        help="refit benchmarks/data/minilm_wordnet_spectrum.json (both levels) and stop")
    parser.add_argument("--fit-local", action="store_true",
                        help="refit only the sub-cluster level of the spectrum file and stop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fit:
        spec = fit_spectrum()
        print(f"wrote {SPECTRUM}: {spec['source']}, cluster variance fraction "
              f"{spec['cluster_variance_fraction']:.3f}")
    if args.fit or args.fit_local:
        spec = fit_local_structure()
        print(f"wrote {SPECTRUM}: {spec['subclusters_per_cluster']} sub-clusters per cluster, "
              f"variance share {spec['subcluster_variance_fraction']:.2f}")
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.latency_queries or 100,
                                args.batch_queries)))
        return
    if args.quick:
        args.sizes = [200_000]
    started = time.perf_counter()
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()
    host = machine()  # describes the load at the start
    source = source_version()
    rows, skipped = [], []
    for n in args.sizes:
        for name in args.methods:
            limit = METHODS[name].max_n
            if limit is not None and n > limit:
                skipped.append({"method": name, "n": n, "reason": METHODS[name].why_not_larger})
                print(f"  {n:>10,} {name:<40} skipped: {METHODS[name].why_not_larger}")
                continue
            latency_queries = args.latency_queries or (100 if n <= 1_000_000 else 30)
            try:
                row = run_in_subprocess(name, n, latency_queries, args.batch_queries,
                                        args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as error:  # report, go on
                reason = f"failed: {str(error).strip().splitlines()[-1][:300]}"
                skipped.append({"method": name, "n": n, "reason": reason})
                print(f"  {n:>10,} {name:<40} {reason}", flush=True)
                continue
            rows.append(row)
            print(f"  {n:>10,} {name:<40} build {row['build_s']:.1f} s "
                  f"({row['encode_vectors_per_s']:,.0f}/s)  p50 {row['latency_p50_ms_1t']:.2f} / "
                  f"{row['latency_p50_ms_all']:.2f} ms  qps {row['batch_qps']:,.0f}  rss "
                  f"{row['rss_anon_bytes_per_vector']:.1f} B/vector "
                  f"(accounted {row['ram_bytes_per_vector']:.1f})", flush=True)
    load_after = os.getloadavg()
    header = (f"Synthetic 384-d embeddings (no recall claims), k={K}; latency is the median "
              f"single query, batch QPS over {args.batch_queries} queries in one call, build "
              f"on {threads} threads; vecpress: {source}; {host}; load average (1 min) "
              f"{load_before[0]:.2f} "
              f"at start, {load_after[0]:.2f} at end")
    table = markdown(rows, skipped, header, threads)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if args.quick else "scale"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"machine": host, "vecpress": source, "load_average_start": load_before,
         "load_average_end": load_after, "threads": threads, "k": K,
         "spectrum": str(SPECTRUM.relative_to(SPECTRUM.parents[2])),
         "wall_s": time.perf_counter() - started, "rows": rows, "skipped": skipped}, indent=1))
    print(f"\nwrote {args.out}/{stem}.* in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
