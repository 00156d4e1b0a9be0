"""LlamaIndex adapter benchmark: VecpressVectorStore against SimpleVectorStore.

The same real nodes for every store: WordNet glosses with their all-MiniLM-L6-v2 embeddings
(``benchmarks/datasets.py``), as ``TextNode`` objects carrying text, metadata, a source
document and their precomputed embedding, so no model runs. Every number goes through the
LlamaIndex API: ``add(nodes)``, ``persist(persist_path)``, ``from_persist_path`` and
``query(VectorStoreQuery(query_embedding, similarity_top_k=10))``.

Stores:

- ``SimpleVectorStore``: LlamaIndex's default (JSON file; vectors and metadata, no text);
- ``SimpleVectorStore + SimpleDocumentStore``: what a ``VectorStoreIndex`` on the default
  store persists and loads to give back nodes with their text (the docstore holds the nodes);
  a query is the vector query plus ``docstore.get_nodes`` of the hits;
- ``vecpress`` on disk (``path=``: written as nodes arrive, ``persist`` writes a pointer) and in
  memory (``persist`` saves a copy with ``Collection.save``), both returning whole nodes with
  text.

Each store is built in one process and loaded and queried in a fresh one, so load time is a
cold open and RAM is the store's alone: RSS growth over the load and the queries ("anon"
leaves out file-backed pages, such as vecpress's memory-mapped originals).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_llama_index            # 20k and 100k nodes
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_llama_index --n-base 10000

Writes ``benchmarks/results/llama_index.md`` and ``llama_index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import memory
from benchmarks.datasets import ground_truth, load_embeddings

RESULTS = Path(__file__).resolve().parent / "results"
SIMPLE = "SimpleVectorStore"
SIMPLE_DOCS = "SimpleVectorStore + SimpleDocumentStore"
STORES = {
    SIMPLE: {},
    SIMPLE_DOCS: {},
    "vecpress 4-bit, on disk": {"bits": 4, "disk": True},
    "vecpress 4-bit, in memory": {"bits": 4},
    "vecpress 1-bit, on disk": {"bits": 1, "disk": True},
}
K = 10
#: SimpleVectorStore turns every stored embedding into a numpy array on every query
#: (about a second per query per 100k nodes); fewer queries give its median well enough
SIMPLE_QUERIES = 20


def make_nodes(n_base: int, n_queries: int):
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    base, _, texts, _ = load_embeddings(n_base, n_queries, progress=False)
    nodes = []
    for row, (vector, text) in enumerate(zip(base, texts)):
        node = TextNode(text=text, id_=str(row), embedding=vector.tolist(),
                        metadata={"lemma": text.split(":", 1)[0], "row": row})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc-{row // 4}")
        nodes.append(node)
    return nodes


def persist_path(workdir: Path) -> Path:
    return workdir / "storage" / "default__vector_store.json"


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def build_worker(name: str, n_base: int, n_queries: int, workdir: Path) -> dict[str, Any]:
    options = STORES[name]
    nodes = make_nodes(n_base, n_queries)
    row: dict[str, Any] = {}
    if name in (SIMPLE, SIMPLE_DOCS):
        from llama_index.core.storage.docstore import SimpleDocumentStore
        from llama_index.core.vector_stores import SimpleVectorStore

        store = SimpleVectorStore()
        start = time.perf_counter()
        store.add(nodes)
        docstore = None
        if name == SIMPLE_DOCS:  # as VectorStoreIndex does: the nodes, without embeddings
            docstore = SimpleDocumentStore()
            docstore.add_documents([node.model_copy(update={"embedding": None}) for node in nodes])
        row["add_s"] = time.perf_counter() - start
        start = time.perf_counter()
        store.persist(str(persist_path(workdir)))
        if docstore is not None:
            docstore.persist(str(workdir / "storage" / "docstore.json"))
        row["persist_s"] = time.perf_counter() - start
    else:
        from vecpress.integrations.llama_index import VecpressVectorStore

        path = workdir / "vecpress" if options.get("disk") else None
        store = VecpressVectorStore(path=path, bits=options["bits"])
        start = time.perf_counter()
        store.add(nodes)
        row["add_s"] = time.perf_counter() - start
        start = time.perf_counter()
        store.persist(str(persist_path(workdir)))
        row["persist_s"] = time.perf_counter() - start
        store.close()
    row["disk_mb"] = disk_bytes(workdir) / 2**20
    return row


def load_worker(name: str, n_base: int, n_queries: int, workdir: Path,
                threads: int | None) -> dict[str, Any]:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    if threads:
        import numba

        numba.set_num_threads(threads)
    base, queries, _, _ = load_embeddings(n_base, n_queries, progress=False)
    _, truth = ground_truth(base, queries, k=K, metric="ip")
    if name in (SIMPLE, SIMPLE_DOCS):
        queries, truth = queries[:SIMPLE_QUERIES], truth[:SIMPLE_QUERIES]
    query_lists = [q.tolist() for q in queries]
    del base
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.vector_stores import SimpleVectorStore

    from vecpress.integrations.llama_index import VecpressVectorStore

    warm_up(name, query_lists[0])
    before = memory()
    docstore = None
    start = time.perf_counter()
    if name in (SIMPLE, SIMPLE_DOCS):
        store = SimpleVectorStore.from_persist_path(str(persist_path(workdir)))
        if name == SIMPLE_DOCS:
            docstore = SimpleDocumentStore.from_persist_path(
                str(workdir / "storage" / "docstore.json"))
    else:
        store = VecpressVectorStore.from_persist_path(str(persist_path(workdir)))
    row: dict[str, Any] = {"load_s": time.perf_counter() - start}

    def query(vector: list[float]) -> list[str]:
        result = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=K))
        if docstore is not None:
            nodes = docstore.get_nodes(result.ids)
            assert all(node.text for node in nodes)
        return result.ids

    start = time.perf_counter()
    query(query_lists[0])
    row["first_query_s"] = time.perf_counter() - start
    for vector in query_lists[:5]:  # warm caches
        query(vector)
    times, found = [], []
    for vector in query_lists:
        start = time.perf_counter()
        ids = query(vector)
        times.append(time.perf_counter() - start)
        found.append([int(i) for i in ids])
    after = memory()
    row.update(
        queries=len(query_lists),
        query_median_ms=float(np.median(times) * 1e3),
        query_p95_ms=float(np.percentile(times, 95) * 1e3),
        recall=sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth)) / truth.size,
        rss_mb=(after["VmRSS"] - before["VmRSS"]) / 2**20,
        anon_mb=(after["RssAnon"] - before["RssAnon"]) / 2**20,
    )
    return row


def warm_up(name: str, vector: list[float]) -> None:
    """Build, persist, load and query a 50-node store of the same kind in a scratch directory,
    so that imports, numba's cached kernels and SQLite are loaded before anything is timed."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from vecpress.integrations.llama_index import VecpressVectorStore

    rng = np.random.default_rng(0)
    nodes = [TextNode(text=f"warm {i}", id_=f"w{i}", embedding=rng.standard_normal(len(vector)).tolist())
             for i in range(50)]
    with tempfile.TemporaryDirectory() as tmp:
        pointer = persist_path(Path(tmp))
        if name in (SIMPLE, SIMPLE_DOCS):
            SimpleVectorStore().persist(str(pointer))
            cls = SimpleVectorStore
        else:
            store = VecpressVectorStore(path=Path(tmp) / "vecpress", bits=STORES[name]["bits"])
            store.add(nodes)
            store.persist(str(pointer))
            store.close()
            cls = VecpressVectorStore
        store = cls.from_persist_path(str(pointer))
        if name not in (SIMPLE, SIMPLE_DOCS):
            store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=K))
            store.close()


def run(args: list[str], blas_threads: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.bench_llama_index", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if blas_threads:
        env.update(OPENBLAS_NUM_THREADS=str(blas_threads), OMP_NUM_THREADS=str(blas_threads),
                   MKL_NUM_THREADS=str(blas_threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(name: str, n_base: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench_llama_index_"))
    try:
        common = ["--store", name, "--n-base", str(n_base), "--n-queries",
                  str(args.n_queries), "--workdir", str(workdir)]
        row = {"store": name, "nodes": n_base}
        row.update(run(["--phase", "build", *common], args.blas_threads))
        row.update(run(["--phase", "load", *common, "--threads", str(args.threads)],
                       args.blas_threads))
        return row
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| store | holds text | add (s) | persist (s) | load, new process (s) | first query (s) "
        "| query median (ms) | query p95 (ms) | recall@10 | RAM after load: RSS (MB) "
        "| RAM: anon (MB) | disk (MB) |",
        "| --- | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        text = "no" if r["store"] == SIMPLE else "yes"
        lines.append(
            f"| {r['store']} | {text} | {r['add_s']:.1f} | {r['persist_s']:.2f} | "
            f"{r['load_s']:.2f} | {r['first_query_s']:.3f} | {r['query_median_ms']:.2f} | "
            f"{r['query_p95_ms']:.2f} | {r['recall']:.4f} | {r['rss_mb']:.0f} | "
            f"{r['anon_mb']:.0f} | {r['disk_mb']:.0f} |")
    reference = next((r for r in rows if r["store"] == SIMPLE_DOCS), None)
    if reference:
        lines += ["", f"Against {SIMPLE_DOCS} (the same nodes back, with their text):", ""]
        for r in rows:
            if r["store"].startswith("vecpress"):
                lines.append(
                    f"- {r['store']}: query "
                    f"{reference['query_median_ms'] / r['query_median_ms']:,.0f}x faster, load "
                    f"{reference['load_s'] / r['load_s']:,.0f}x faster, "
                    f"{reference['rss_mb'] / max(r['rss_mb'], 1):,.1f}x less RAM (RSS), "
                    f"persist {reference['persist_s']:.1f} s -> {r['persist_s']:.2f} s.")
    return lines


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    busy = (" (other jobs were running: timings are noisy)"
            if load[0] > (os.cpu_count() or 1) else "")
    sizes = " ".join(str(n) for n in args.n_base)
    lines = [
        f"WordNet glosses as LlamaIndex `TextNode`s (text, metadata, source document, "
        f"precomputed all-MiniLM-L6-v2 embedding, 384-d); {args.n_queries} held-out queries "
        f"({SIMPLE_QUERIES} for SimpleVectorStore), `query(VectorStoreQuery(query_embedding, "
        f"similarity_top_k={K}))`, recall@{K} against exact search. numba threads "
        f"{args.threads or 'default'}, BLAS threads {args.blas_threads or 'default'}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in load)}{busy}.",
        "",
        f"Command: `HF_HUB_OFFLINE=1 python -m benchmarks.bench_llama_index --n-base {sizes} "
        f"--n-queries {args.n_queries} --threads {args.threads} "
        f"--blas-threads {args.blas_threads}`",
    ]
    for n_base in args.n_base:
        lines += ["", f"## {n_base:,} nodes", ""]
        lines += table([r for r in rows if r["nodes"] == n_base])
    lines += [
        "",
        "## Notes",
        "",
        "- *add*: `store.add(nodes)` (plus `docstore.add_documents` for the docstore row). It "
        "includes `node_to_metadata_dict`, LlamaIndex's node serialisation, which both stores "
        "call; for vecpress also quantizing, full-text indexing and, on disk, durable writes.",
        "- *persist*: a vecpress store on disk is already persisted when `add` returns, so "
        "`persist` only writes a pointer file; in memory, `persist` writes a copy with "
        "`Collection.save` (SQLite online backup and the index's codes and originals, not "
        "re-encoded).",
        "- *load*: `from_persist_path` in a fresh process, after a warm-up on a 50-node store "
        "of the same kind (imports, numba's cached kernels and SQLite are loaded, not timed). "
        "*first query* is the first query after the load.",
        "- *RAM*: RSS growth over the load and the queries. vecpress keeps codes in RAM and the "
        "originals memory-mapped (file-backed pages, touched only for reranked candidates); "
        "its documents stay in SQLite on disk.",
        "- BLAS threads are pinned (`OPENBLAS_NUM_THREADS`) because on a busy 2-core machine "
        "multi-threaded OpenBLAS spin-waits, and `Index` construction runs a 384x384 QR "
        "(the random rotation) twice per index: 10 ms each with one thread, 0.4-4 s each "
        "under contention.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-base", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--n-queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1,
                        help="numba threads for the query phase; 0 keeps numba's default")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="OpenBLAS/OpenMP threads in the workers; 0 keeps the default")
    parser.add_argument("--stores", nargs="*", default=list(STORES), choices=list(STORES))
    parser.add_argument("--phase", choices=("build", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=list(STORES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "build":
        print(json.dumps(build_worker(args.store, args.n_base[0], args.n_queries, args.workdir)))
        return
    if args.phase == "load":
        print(json.dumps(load_worker(args.store, args.n_base[0], args.n_queries, args.workdir,
                                     args.threads)))
        return
    rows = []
    for n_base in args.n_base:
        for name in args.stores:
            row = measure(name, n_base, args)
            print(f"  {n_base:>7,} {name:<40} add {row['add_s']:6.1f} s  persist "
                  f"{row['persist_s']:6.2f} s  load {row['load_s']:7.2f} s  query "
                  f"{row['query_median_ms']:8.2f} ms  recall {row['recall']:.4f}  "
                  f"RSS +{row['rss_mb']:.0f} MB", flush=True)
            rows.append(row)
    text = report(rows, args)
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llama_index.md").write_text("# LlamaIndex adapter benchmark\n\n" + text)
    (RESULTS / "llama_index.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
