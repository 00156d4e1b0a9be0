"""The ``vecpress`` command: index text files, search them, show store stats, run the demo.

    vecpress index PATH... --store DIR      index .txt/.md files (chunked with overlap)
    vecpress search DIR "question" -k 5     ranked hits with scores and sources
    vecpress stats DIR                      counts, bits, RAM and disk bytes per vector
    vecpress demo                           WordNet glosses end to end (Debian wordnet-base)
    vecpress warmup                         compile the numba kernels ahead of the first query

Every command takes ``--quiet`` (no progress or status lines; also ``VECPRESS_QUIET=1``) and
``--debug`` (a traceback for errors; also ``VECPRESS_DEBUG=1``). Expected failures (a missing,
locked or damaged store, a model of the wrong dimension, binary-only input) print one line on
stderr naming the flag that fixes them, and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .warmup import QUIET_ENV, quiet

#: written next to the collection by ``vecpress index``/``demo``: which model made the vectors
STORE_CONFIG = "vecpress-cli.json"
DEFAULT_DEMO_LIMIT = 10_000
DEMO_QUESTIONS = (
    ("What do you call a young dog?", None),
    ("a musical instrument with strings that you pluck", None),
    ("an illness that makes it hard to breathe", None),
    ("a tool for cutting wood", None),
    ("to move quickly on foot", {"pos": "verb"}),
)


class CommandError(Exception):
    """A problem with the user's input or files: printed as one message, exit status 1."""


# ---------------------------------------------------------------------- helpers


DEBUG_ENV = "VECPRESS_DEBUG"


def _status(message: str) -> None:
    """A status line on stderr, unless ``--quiet``/``VECPRESS_QUIET`` asked for silence."""
    if not quiet():
        print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    """A warning line on stderr (printed even with ``--quiet``: it says what was skipped)."""
    print(f"vecpress: warning: {message}", file=sys.stderr, flush=True)


def _quiet_model_loading() -> None:
    from .embeddings.sentence_transformers import prefer_passive_openmp

    prefer_passive_openmp()  # before `import transformers` below pulls in torch
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only; loading reports its own errors
        pass


def load_embedder(model: str | None) -> Any:
    """The default embedder (shared, loaded once) or a sentence-transformers model by name."""
    from .embeddings import DEFAULT_MODEL, SentenceTransformerEmbedder, default_embedder

    name = model or DEFAULT_MODEL
    _status(f"loading the embedding model {name} (torch + sentence-transformers; "
            "usually 5-30 s on 2 cores)…")
    started = time.perf_counter()
    _quiet_model_loading()
    embedder = default_embedder() if name == DEFAULT_MODEL else SentenceTransformerEmbedder(name)
    _status(f"model loaded in {time.perf_counter() - started:.1f} s ({embedder.dim} dims)")
    return embedder


def _read_store_config(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / STORE_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise CommandError(f"{store / STORE_CONFIG} is unreadable ({error}); delete it to use the default model")


def _write_store_config(store: Path, embedder: Any, extra: dict[str, Any] | None = None) -> None:
    config = {"model": getattr(embedder, "model_name", None), "dim": embedder.dim, **(extra or {})}
    partial = store / (STORE_CONFIG + ".partial")
    partial.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, store / STORE_CONFIG)


def _is_store(path: Path) -> bool:
    from .core.docstore import DB_FILE

    return (path / DB_FILE).is_file()


def open_store(path: str | Path, *, read_only: bool = True) -> Any:
    """An existing collection, or ``CommandError`` saying how to make one."""
    from . import Collection

    path = Path(path)
    if not _is_store(path):
        what = "does not exist" if not path.exists() else "holds no vecpress store"
        raise CommandError(
            f"{str(path)!r} {what}; build a store with `vecpress index PATH... --store {path}`"
        )
    return Collection.open(path, read_only=read_only)


def _check_dim(store: Path, collection: Any, embedder: Any, model: str) -> None:
    if embedder.dim != collection.dim:
        built = _read_store_config(store).get("model")
        built_with = f" (built with {built!r})" if built else ""
        raise CommandError(
            f"the store {str(store)!r}{built_with} holds {collection.dim}-dimensional vectors, but "
            f"the model {model!r} makes {embedder.dim}-dimensional ones; use --model with the model "
            "the store was built with, or index into a new --store"
        )


def _model_for(store: Path, requested: str | None) -> str:
    from .embeddings import DEFAULT_MODEL

    return requested or _read_store_config(store).get("model") or DEFAULT_MODEL


def _count(n: int) -> str:
    return f"{n:,}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


#: Unicode categories never printed as they are: controls, format (bidi), surrogates, private
#: use, unassigned; line and paragraph separators become spaces
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (NUL, escape sequences,
    C1 controls, bidi overrides) removed, control whitespace other than newline and tab
    (carriage return, form feed, NEL) turned into a space, every other character kept."""
    if text.isprintable():
        return text
    kept = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in _UNPRINTABLE:
            kept.append(ch)
        elif ch.isspace():
            kept.append(" ")
    return "".join(kept)


#: characters JSON leaves raw with ensure_ascii=False that a terminal may act on: DEL, C1
#: controls (U+009B starts an escape sequence on some terminals), bidi overrides and isolates
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe_json(value: Any) -> str:
    """``value`` as indented JSON with non-ASCII text kept readable, but every character a
    terminal could act on written as a ``\\uXXXX`` escape (same JSON value)."""
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _one_line(text: str | None, width: int) -> str:
    flat = " ".join(printable(text or "").split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _source_of(hit: Any) -> str:
    source = hit.metadata.get("source")
    if source is None:
        return hit.id
    try:
        shown = os.path.relpath(source)
        if shown.startswith(".." + os.sep + ".."):
            shown = source
    except ValueError:
        shown = str(source)
    if "chunk" in hit.metadata:
        shown += f" #{hit.metadata['chunk']}"
    return shown


def format_hits(hits: Sequence[Any], width: int | None = None) -> str:
    """Ranked hits as a table: rank, score, source, one line of text fitted to the terminal."""
    if not hits:
        return "  (no hits)"
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    sources = [" ".join(printable(_source_of(hit)).split()) for hit in hits]
    source_width = min(max(len("source"), *(len(s) for s in sources)), 40)
    header = f"  {'#':>2}  {'score':>7}  {'source':<{source_width}}  text"
    text_width = max(width - len(header) + len("text"), 20)
    lines = [header]
    for rank, (hit, source) in enumerate(zip(hits, sources), start=1):
        if len(source) > source_width:
            source = "…" + source[-(source_width - 1):]
        score = "-" if hit.score is None else f"{hit.score:7.4f}"
        lines.append(f"  {rank:>2}  {score:>7}  {source:<{source_width}}  {_one_line(hit.text, text_width)}")
    return "\n".join(lines)


def store_stats(collection: Any) -> dict[str, Any]:
    """``Collection.stats()`` plus disk sizes per vector and the float32 sizes they compare
    with (``ram_bytes_per_vector`` is the store's own, from ``Index.stats``)."""
    info = dict(collection.stats())
    count = info.get("count") or 0
    disk = info.get("disk_bytes", 0)
    db = info.get("db_bytes", 0)
    info["float32_bytes_per_vector"] = 4 * info["dim"]
    info["float32_bytes"] = 4 * info["dim"] * count
    info["index_disk_bytes_per_vector"] = disk / count if count else None
    info["db_disk_bytes_per_vector"] = db / count if count else None
    return info


def ram_summary(info: dict[str, Any]) -> str:
    """The RAM line of ``vecpress stats`` and the demo: total = per vector × count + fixed, and
    the float32 vectors' total beside it. The ratio compares totals, and is left out (with the
    reason) while the fixed costs outweigh the vectors' own."""
    count, total = info["count"], info["ram_bytes"]
    fixed = info.get("ram_fixed_bytes", 0)
    per_vector = info["ram_bytes_per_vector"]
    f32_per, f32_total = 4 * info["dim"], 4 * info["dim"] * count
    line = (f"{_size(total)} in all = {per_vector:,.1f} B per vector × {_count(count)} + "
            f"{_size(fixed)} fixed (codec state, list centroids)")
    if info.get("ram_reserved_bytes"):
        line += f", plus {_size(info['ram_reserved_bytes'])} reserved for growth"
    if fixed >= total - fixed:
        line += (f"; float32 vectors: {_size(f32_total)} ({f32_per:,} B each). No ratio yet: at "
                 f"{_count(count)} vectors the fixed costs outweigh the codes (from about "
                 f"{_count(int(fixed / max(per_vector, 1e-9)))} vectors on, the total tends to "
                 f"{f32_per / max(per_vector, 1e-9):.1f}× smaller than float32)")
    else:
        line += f"; float32 vectors: {_size(f32_total)}, {f32_total / total:.1f}× more"
    return line


def format_stats(info: dict[str, Any], path: Path | None = None) -> str:
    count = info["count"]
    code_bits = info["code_bytes"] * 8 if info.get("code_bytes") else None
    rerank = ("exact rerank from kept originals on disk" if info.get("rerank")
              else "no kept originals (codes only)")
    rows = []
    if path is not None:
        rows.append(("store", str(path)))
    rows += [
        ("documents", _count(info.get("documents", count))),
        ("vectors", f"{_count(count)} × {info['dim']} dims, metric {info['metric']}"),
        ("codes", f"{info['bits']} bits per dimension ({info.get('codec', '?')}"
                  + (f", {info['code_bytes']} B = {code_bits} bits per vector" if code_bits else "")
                  + f"), {rerank}"),
    ]
    if count:
        rows.append(("RAM", ram_summary(info)))
        rows.append(("disk, index", f"{_size(info['disk_bytes'])}, {info['index_disk_bytes_per_vector']:,.0f} B "
                                    "per vector (codes + kept originals)"))
        if info.get("db_bytes") is not None:
            rows.append(("disk, documents", f"{_size(info['db_bytes'])}, {info['db_disk_bytes_per_vector']:,.0f} B "
                                            "per document (text, metadata, full-text index)"))
    if info.get("lists"):
        spread = info.get("list_rows") or {}
        rows.append(("search", f"{info['lists']:,} inverted lists, {info['nprobe']:,} probed per "
                               f"query by default (calibrated); rows per list "
                               f"{spread.get('min', 0):,} / {spread.get('median', 0):,} / "
                               f"{spread.get('max', 0):,} (min / median / max)"))
    elif count:
        rows.append(("search", "flat scan of every code"))
    if info.get("deleted"):
        rows.append(("deleted rows", f"{_count(info['deleted'])} (space reclaimed by compaction)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


# ---------------------------------------------------------------------- commands


def _readable_files(files: Sequence[Path], chunk_size: int, overlap: int) -> tuple[list[Path], int]:
    """The text files among ``files`` and the number of chunks they make: binary files are
    skipped with one warning each, undecodable bytes or a legacy charset are reported;
    ``CommandError`` when none is text."""
    from .chunking import chunk_text, read_file

    kept, chunks = [], 0
    for file in files:
        try:
            decoded = read_file(file)
        except OSError as error:
            raise CommandError(f"cannot read {str(file)!r}: {error.strerror or error}") from None
        shown = printable(str(file))
        if decoded.binary:
            _warn(f"skipping {shown}: binary file (NUL or control bytes; only text is indexed)")
            continue
        if decoded.encoding == "cp1252":
            _warn(f"{shown} is not UTF-8; read as cp1252 (Windows Latin-1)")
        if decoded.replaced:
            _warn(f"{shown}: {decoded.replaced:,} undecodable byte(s) replaced by U+FFFD")
        kept.append(file)
        chunks += len(chunk_text(decoded.text, chunk_size, overlap))
    if not kept:
        raise CommandError(f"all {len(files)} input file(s) are binary; give text files "
                           "(.txt, .md) to index")
    return kept, chunks


def _open_for_writing(store: Path, option: str) -> Any:
    """The existing store opened for writing; ``CommandError`` naming the flag when another
    process holds its write lock. Done before any model loads, so the user waits for nothing."""
    from .core.storage import StoreLockedError

    try:
        return open_store(store, read_only=False)
    except StoreLockedError:
        raise CommandError(
            f"the store {str(store)!r} is open for writing in another process; wait for it to "
            f"finish, or write to another folder with {option} (searching it works meanwhile: "
            f"`vecpress search {store} QUESTION` opens it read-only)"
        ) from None


def _check_new_store(store: Path, option: str) -> None:
    """``CommandError`` unless ``store`` can become a new store (absent, or an empty folder in a
    writable place), checked before any model loads."""
    if store.exists() and (not store.is_dir() or any(store.iterdir())):
        raise CommandError(f"{option} {str(store)!r} exists and is not a vecpress store; give a new or empty folder")
    parent = store if store.exists() else store.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CommandError(f"{option} {str(store)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    try:  # a real probe: permissions, read-only mounts and pseudo file systems all show here
        tempfile.TemporaryDirectory(dir=parent, prefix=".vecpress-probe-").cleanup()
    except OSError:
        raise CommandError(f"{option} {str(store)!r}: {str(parent)!r} is not writable; "
                           "choose a folder you can write to") from None


def cmd_index(args: argparse.Namespace) -> int:
    from . import Collection
    from .chunking import find_text_files, iter_file_chunks
    from .pipeline import add_texts

    store = Path(args.store)
    if args.overlap >= args.chunk_size:
        raise CommandError(f"--overlap ({args.overlap}) must be smaller than --chunk-size ({args.chunk_size})")
    try:
        files = find_text_files(args.paths)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    if not files:
        raise CommandError(
            f"no .txt or .md files under {', '.join(map(repr, args.paths))}; give files or folders that hold some"
        )
    # count first: the progress bar gets a total and an all-empty input fails before any model loads
    files, total = _readable_files(files, args.chunk_size, args.overlap)
    if total == 0:
        raise CommandError(f"the {len(files)} text file(s) found are empty")
    existing = _is_store(store)
    built_with = _read_store_config(store).get("model") if existing else None
    if built_with and args.model and args.model != built_with:
        raise CommandError(
            f"the store {str(store)!r} was built with {built_with!r}; vectors of {args.model!r} would not "
            "be comparable with its vectors. Leave out --model, or index into a new --store"
        )
    collection = _open_for_writing(store, "--store") if existing else None
    if collection is None:
        _check_new_store(store, "--store")
    try:
        model = _model_for(store, args.model) if existing else (args.model or None)
        embedder = load_embedder(model)
        model_name = getattr(embedder, "model_name", str(model))
        if collection is not None:
            _check_dim(store, collection, embedder, model_name)
    except BaseException:
        if collection is not None:
            collection.close()
        raise
    if collection is None:
        collection = Collection(embedder.dim, path=store, bits=args.bits, metric=embedder.metric)
        _write_store_config(store, embedder)
    _status(f"indexing {_count(total)} chunks of {len(files)} file(s) into {store} with {model_name}")
    started = time.perf_counter()
    with collection:
        # a file indexed again replaces all its chunks, also those past its new end
        for file in files:
            collection.delete(where={"source": str(file)})
        # chunk texts are small next to their vectors, which add_texts streams batch by batch
        texts, metas, ids = [], [], []
        for file, chunk in iter_file_chunks(files, args.chunk_size, args.overlap):
            texts.append(chunk.text)
            metas.append({"source": str(file), "chunk": chunk.number, "start": chunk.start})
            ids.append(f"{file}#{chunk.number}")
        add_texts(collection, embedder, texts, metas, ids, batch_size=args.batch_size,
                  progress=None if args.progress else False)
        elapsed = time.perf_counter() - started
        count = len(collection)
    print(f"indexed {_count(total)} chunks from {len(files)} file(s) in {elapsed:.1f} s; "
          f"the store {store} now holds {_count(count)} chunks")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .pipeline import search, warm_up

    store = Path(args.store)
    where = None
    if args.where is not None:
        try:
            where = json.loads(args.where)
        except ValueError as error:
            raise CommandError(f"--where must be JSON, e.g. '{{\"source\": \"notes.md\"}}': {error}") from None
    with open_store(store) as collection:
        if len(collection) == 0:
            raise CommandError(f"the store {str(store)!r} is empty; add files with `vecpress index PATH --store {store}`")
        warming = warm_up(collection)  # loads the search kernels while the model loads
        embedder = None
        if args.mode != "text" or args.rerank in ("exact", "embed"):
            model = _model_for(store, args.model)
            embedder = load_embedder(model)
            _check_dim(store, collection, embedder, getattr(embedder, "model_name", model))
        reranker = None if args.rerank == "none" else args.rerank
        if args.cross_encoder:
            reranker = "cross-encoder:" + args.cross_encoder
        warming.join()
        started = time.perf_counter()
        hits = search(collection, embedder, args.question, args.k, where=where, reranker=reranker, mode=args.mode)
        elapsed = time.perf_counter() - started
    if args.json:
        print(terminal_safe_json([{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
                                  for h in hits]))
    else:
        print(format_hits(hits))
        _status(f"{len(hits)} hit(s) in {elapsed * 1000:.0f} ms")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store = Path(args.store)
    with open_store(store) as collection:
        info = store_stats(collection)
    config = _read_store_config(store)
    if config.get("model"):
        info["model"] = config["model"]
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        text = format_stats(info, store)
        if info.get("model"):
            text += f"\n  {'model':<15}  {info['model']}"
        print(text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluate import bench_index

    with open_store(Path(args.store)) as collection:
        try:
            result = bench_index(collection.index, n_queries=args.queries, k=args.k)
        except ValueError as error:
            raise CommandError(f"{error}") from None
    if args.json:
        print(json.dumps(result.__dict__, indent=1))
    else:
        print(result.table())
    return 0


def default_demo_store(limit: int | None) -> Path:
    """``$XDG_CACHE_HOME/vecpress/demo-wordnet-LIMIT`` (``~/.cache`` by default), or the same
    under the temporary folder when the cache folder cannot be made."""
    name = f"demo-wordnet-{limit or 'all'}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vecpress"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "vecpress"
    return cache / name


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import Collection
    from .coldstart import measure_cold_start
    from .pipeline import add_texts, search
    from .wordnet import sample_glosses

    limit = None if args.limit == 0 else args.limit
    store = Path(args.store) if args.store else default_demo_store(limit)
    try:
        glosses, total = sample_glosses(limit, args.wordnet_dir)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    print(f"vecpress demo: {_count(len(glosses))} WordNet glosses (of {_count(total)}, spread over "
          f"nouns, verbs, adjectives, adverbs) from {args.wordnet_dir}")
    print(f"store: {store}")
    collection = _open_for_writing(store, "--store") if _is_store(store) else None
    if collection is None:
        _check_new_store(store, "--store")
    started = time.perf_counter()
    try:
        embedder = load_embedder(args.model)
        if collection is not None:
            _check_dim(store, collection, embedder, embedder.model_name)
    except BaseException:
        if collection is not None:
            collection.close()
        raise
    model_seconds = time.perf_counter() - started
    print(f"model: {embedder.model_name} ({embedder.dim} dims, loaded in {model_seconds:.1f} s)")

    if collection is not None:
        if args.rebuild:
            collection.clear()
    else:
        collection = Collection(embedder.dim, path=store, bits=args.bits, metric=embedder.metric)
        _write_store_config(store, embedder, {"demo_limit": limit})

    with collection:
        wanted = {g.id for g in glosses}
        present = {hit.id for hit in collection.get()}
        stale = sorted(present - wanted)
        if stale:  # left by a run with another --limit
            collection.delete(ids=stale)
        todo = [g for g in glosses if g.id not in present]
        if todo:
            verb = "indexing" if len(todo) == len(glosses) else f"resuming: indexing the {_count(len(todo))} missing of"
            print(f"{verb} {_count(len(glosses))} glosses (embed in batches, quantize to {collection.bits}-bit codes "
                  "on insert, keep float16 originals on disk)…", flush=True)
            started = time.perf_counter()
            add_texts(collection, embedder, [g.text for g in todo], [g.metadata for g in todo],
                      [g.id for g in todo], progress=None if args.progress else False)
            elapsed = time.perf_counter() - started
            print(f"indexed {_count(len(todo))} glosses in {elapsed:.1f} s ({len(todo) / elapsed:,.0f} texts/s)")
        else:
            print(f"all {_count(len(glosses))} glosses already indexed (use --rebuild to index again)")

        print()
        for question, where in DEMO_QUESTIONS:
            started = time.perf_counter()
            hits = search(collection, embedder, question, args.k, where=where)
            elapsed = time.perf_counter() - started
            shown = f"{question}   [where {json.dumps(where)}]" if where else question
            print(f"Q: {shown}   ({elapsed * 1000:.0f} ms, embedding the question included)")
            print(format_hits(hits))
            print()

        print("store stats:")
        print(format_stats(store_stats(collection), store))
        query_vector = embedder.embed_query(DEMO_QUESTIONS[0][0])

    if args.cold_runs == 0:
        return 0
    print()
    with tempfile.TemporaryDirectory(prefix="vecpress-demo-") as scratch:
        query_file = Path(scratch) / "query.npy"
        np.save(query_file, query_vector)
        timing = measure_cold_start(store, query_file, runs=args.cold_runs)
    print(f"cold start, median of {args.cold_runs} fresh python processes (numba cache warm, query "
          "vector precomputed):")
    print(f"  import vecpress {timing['import']:.3f} s, open store {timing['open']:.3f} s, "
          f"first query {timing['first_query'] * 1000:.1f} ms (second {timing['second_query'] * 1000:.1f} ms): "
          f"{timing['total']:.2f} s in all")
    print(f"  (loading the embedding model took {model_seconds:.1f} s in this process; "
          "a long-lived app pays it once)")
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    from .warmup import numba_cache_dir, warmup

    _status(f"vecpress warmup: compiling the numba kernels for {', '.join(map(str, args.bits))}-bit "
            f"stores, or loading them from numba's cache ({numba_cache_dir()})")
    report = warmup(tuple(args.bits), status=lambda line: _status(f"  {line}"),
                    every_kernel=args.every_kernel)
    print(report.summary())
    return 0


# ---------------------------------------------------------------------- parser


def _int_at_least(text: str, minimum: int, what: str) -> int:
    """``text`` as an int no smaller than ``minimum``, or an argparse error naming ``what``."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def _bits(text: str) -> int:
    value = _positive_int(text)
    if not (1 <= value <= 8 or value in (16, 32)):
        raise argparse.ArgumentTypeError(f"bits must be 1-8, 16 or 32, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP
    from .wordnet import WORDNET_DIR

    parser = argparse.ArgumentParser(
        prog="vecpress",
        description="A compressed, embedded vector store for RAG: index text files, search them, "
                    "inspect a store, or run the WordNet demo.",
        epilog="Run `vecpress COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"vecpress {__version__}")
    _add_global_options(parser, argparse.SUPPRESS)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser = commands.add_parser

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)

    commands.add_parser = command  # type: ignore[method-assign]

    def model_option(p: argparse.ArgumentParser, default_text: str) -> None:
        p.add_argument("--model", default=None,
                       help=f"sentence-transformers model name or local folder ({default_text})")

    def progress_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (it shows only on a terminal anyway)")

    index = commands.add_parser(
        "index", help="index the .txt and .md files under PATHs into a store",
        description="Index plain-text and Markdown files: each file is cut into overlapping chunks, "
                    "embedded, quantized and written to the store (created if needed). A file "
                    "indexed again replaces its old chunks.")
    index.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (walked for .txt/.md)")
    index.add_argument("--store", required=True, metavar="DIR", help="store folder (new, empty or an existing store)")
    model_option(index, "default: the store's model, else sentence-transformers/all-MiniLM-L6-v2")
    index.add_argument("--bits", type=_bits, default=4, help="code bits per dimension for a new store (default 4)")
    index.add_argument("--chunk-size", type=_positive_int, default=DEFAULT_CHUNK_SIZE,
                       help=f"characters per chunk (default {DEFAULT_CHUNK_SIZE})")
    index.add_argument("--overlap", type=_non_negative_int, default=DEFAULT_OVERLAP,
                       help=f"characters shared by consecutive chunks (default {DEFAULT_OVERLAP})")
    index.add_argument("--batch-size", type=_positive_int, default=None, help="texts per model call")
    progress_option(index)
    index.set_defaults(run=cmd_index)

    search = commands.add_parser(
        "search", help="ask a store a question; prints ranked hits",
        description="Print the best hits of a store for a question: rank, score (higher is better), "
                    "source file and chunk, and the text.")
    search.add_argument("store", metavar="DIR", help="a store made by `vecpress index`")
    search.add_argument("question")
    search.add_argument("-k", type=_positive_int, default=5, help="number of hits (default 5)")
    search.add_argument("--mode", choices=("dense", "text", "hybrid"), default="dense",
                        help="vector search, full-text search, or both fused (default dense)")
    search.add_argument("--where", metavar="JSON", help='metadata filter, e.g. \'{"chunk": {"$lt": 3}}\'')
    search.add_argument("--rerank", choices=("none", "exact", "embed"), default="none",
                        help="second stage: none (the index's own exact rerank; default), exact "
                             "(kept vectors), embed (re-embed the candidates' texts)")
    search.add_argument("--cross-encoder", metavar="MODEL",
                        help="rerank with this sentence-transformers CrossEncoder (name or folder)")
    model_option(search, "default: the model the store was built with")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(run=cmd_search)

    stats = commands.add_parser(
        "stats", help="counts, bits, RAM and disk bytes per vector of a store",
        description="Show what a store holds and what it costs: vectors, code bits, RAM and disk "
                    "bytes per vector compared with float32.")
    stats.add_argument("store", metavar="DIR")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    stats.set_defaults(run=cmd_stats)

    bench = commands.add_parser(
        "bench", help="recall against exact search and latency of a store, on its own vectors",
        description="Measure a store on its own data: stored vectors (picked at random, their "
                    "own row left out) are the queries, exact float32 search over the kept "
                    "originals is the reference; the codes alone and codes + rerank are timed.")
    bench.add_argument("store", metavar="DIR")
    bench.add_argument("--queries", type=_positive_int, default=200,
                       help="stored vectors used as queries (default 200)")
    bench.add_argument("-k", type=_positive_int, default=10, help="hits per query (default 10)")
    bench.add_argument("--json", action="store_true", help="print the numbers as JSON")
    bench.set_defaults(run=cmd_bench)

    demo = commands.add_parser(
        "demo", help="index WordNet glosses, answer sample questions, show stats and cold start",
        description="The whole job on a real corpus: WordNet glosses from Debian's wordnet-base "
                    "(apt-get install wordnet-base) are embedded with the local default model, "
                    "quantized on insert, and searched. A second run reuses the store.")
    demo.add_argument("--limit", type=_non_negative_int, default=DEFAULT_DEMO_LIMIT,
                      help=f"glosses to index, spread over all of WordNet (default {DEFAULT_DEMO_LIMIT:,}; "
                           "0 = all ~117k)")
    demo.add_argument("--store", metavar="DIR", default=None,
                      help="store folder (default: ~/.cache/vecpress/demo-wordnet-LIMIT)")
    demo.add_argument("--rebuild", action="store_true", help="index again even if the store is complete")
    demo.add_argument("--bits", type=_bits, default=4, help="code bits per dimension for a new store (default 4)")
    demo.add_argument("-k", type=_positive_int, default=3, help="hits per question (default 3)")
    demo.add_argument("--cold-runs", type=_non_negative_int, default=3,
                      help="fresh processes for the cold-start timing (default 3; 0 skips it)")
    demo.add_argument("--wordnet-dir", default=str(WORDNET_DIR), help=f"WordNet data folder (default {WORDNET_DIR})")
    model_option(demo, "default: sentence-transformers/all-MiniLM-L6-v2, offline copy")
    progress_option(demo)
    demo.set_defaults(run=cmd_demo)

    warm = commands.add_parser(
        "warmup", help="compile the numba kernels now (once per machine), not on the first query",
        description="numba compiles vecpress's kernels on first use and caches the machine code "
                    "(NUMBA_CACHE_DIR, else the package's __pycache__). This runs every code path "
                    "of a store on throw-away data, so the first real query does not wait. Fast "
                    "when the cache is already filled.")
    warm.add_argument("--bits", type=_bits, nargs="+", default=[4],
                      help="code sizes to prepare (default 4, the default store's)")
    warm.add_argument("--every-kernel", action="store_true",
                      help="also the rabitq codec, 16-bit codes, threaded scans and multi-vector "
                           "encodings (what the test suite uses)")
    warm.set_defaults(run=cmd_warmup)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", default=default,
                        help=f"no progress bars or status lines (also {QUIET_ENV}=1); results, "
                             "warnings and errors still print")
    parser.add_argument("--debug", action="store_true", default=default,
                        help=f"show the Python traceback of an error (also {DEBUG_ENV}=1)")


def _error_line(error: BaseException, command: str) -> str:
    """One line for an expected failure, saying what to do (see the module docstring)."""
    from .core.storage import StoreCorruptedError, StoreLockedError

    if isinstance(error, StoreLockedError):
        return (f"{error}. From the command line: wait for the other writer, or use another "
                "--store; `vecpress search` opens a store read-only")
    if isinstance(error, StoreCorruptedError):
        return (f"the store is damaged: {error}. Rebuild it with `vecpress index PATH... "
                "--store NEW_DIR` (or `vecpress demo --rebuild`)")
    if isinstance(error, (ImportError, OSError, ValueError, TypeError, KeyError)):
        return f"{error}"
    return f"{type(error).__name__}: {error} (unexpected; --debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vecpress`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    saved_quiet = os.environ.get(QUIET_ENV)
    if getattr(args, "quiet", False):
        os.environ[QUIET_ENV] = "1"  # progress bars and notices read it, also in library code
    try:
        return args.run(args)
    except CommandError as error:
        print(f"vecpress {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vecpress {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line without --debug; see _error_line
        if debug:
            raise
        print(f"vecpress {args.command}: error: {_error_line(error, args.command)}", file=sys.stderr)
        return 1
    finally:
        if getattr(args, "quiet", False):
            if saved_quiet is None:
                os.environ.pop(QUIET_ENV, None)
            else:
                os.environ[QUIET_ENV] = saved_quiet


if __name__ == "__main__":
    sys.exit(main())
