"""The README's benchmark tables, trimmed from ``benchmarks/results/suite.json`` and ``scale.json``.

    python -m benchmarks.readme_tables           # print them
    python -m benchmarks.readme_tables --write   # replace them in README.md, between markers

The README keeps the representative rows and the columns a reader compares; the full tables
are ``benchmarks/results/suite.md`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/readme_tables.py`: keep this folder off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parent.parent / "README.md"
#: rows of the suite shown in the README, in this order: (name starts with, name contains);
#: of several matches the shortest name (the plain setting) is taken
SUITE_ROWS = (
    ("faiss IndexFlatIP", ""), ("faiss SQ8", ""), ("faiss IndexPQ", ""),
    ("faiss RaBitQ 1-bit", ""), ("faiss RaBitQ 1-bit", "RefineFlat"),
    ("faiss RaBitQ 4-bit", "RefineFlat"), ("faiss IVFRaBitQ", "RefineFlat"),
    ("faiss HNSWFlat", ""), ("hnswlib", ""), ("usearch i8", ""),
    ("vecpress 1-bit", ""), ("vecpress 1-bit", "rerank"), ("vecpress 4-bit", "rerank"),
    ("vecpress 8-bit", "rerank"), ("LangChain", ""), ("LlamaIndex", ""),
)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def suite_table(report: dict[str, Any]) -> str:
    """The representative rows of a ``bench_suite`` run, fewer columns."""
    threads = report["threads"]
    lines = [f"| method | recall@10 | nDCG@10 | p50 ms, 1 / {threads} threads | batch QPS | "
             f"build vectors/s | RAM B/vector | RSS B/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    chosen = []
    for prefix, part in SUITE_ROWS:
        matches = [row for row in report["rows"] if row["method"].startswith(prefix)
                   and part in row["method"] and row not in chosen]
        if matches:
            chosen.append(min(matches, key=lambda row: len(row["method"])))
    for row in chosen:
        name = row["method"] + (" †" if row["slow"] else "")
        if "rerank" in name and name.startswith("vecpress 4-bit"):
            name = f"**{name} (default)**"
        elif name.startswith("vecpress") and "rerank" in name:
            name = f"**{name}**"
        lines.append(
            f"| {name} | {row['recall@10']:.4f} | {row['ndcg@10']:.4f} | "
            f"{row['latency_p50_ms_1t']:.2f} / {row['latency_p50_ms_all']:.2f} | "
            f"{_cell(row['batch_qps'], ',.0f')} | {_cell(row['build_vectors_per_s'], ',.0f')} | "
            f"{_cell(row['ram_bytes_per_vector'], ',.0f')} | "
            f"{row['rss_anon_bytes_per_vector']:,.0f} |")
    return "\n".join(lines)


def scale_table(report: dict[str, Any]) -> str:
    """Every row of a ``bench_scale`` run, fewer columns, and what was not run."""
    threads = report["threads"]
    lines = [f"| n | method | encode vectors/s | p50 ms, 1 / {threads} threads | batch QPS | "
             f"RSS B/vector (measured) | RSS total | disk B/vector |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        disk = row["disk_bytes_per_vector"]
        total = row["rss_anon_bytes"]
        total_text = f"{total / 2**30:.2f} GiB" if total >= 2**30 else f"{total / 2**20:,.0f} MiB"
        lines.append(
            f"| {row['n'] / 1e6:g}M | {row['method']} | {row['encode_vectors_per_s']:,.0f} | "
            f"{row['latency_p50_ms_1t']:.1f} / {row['latency_p50_ms_all']:.1f} | "
            f"{row['batch_qps']:,.0f} | {row['rss_anon_bytes_per_vector']:.0f} | {total_text} | "
            f"{_cell(disk, ',.0f')} |")
    skipped: dict[str, list[str]] = {}  # size -> methods not run at that size
    for item in report.get("skipped", []):
        skipped.setdefault(f"{item['n'] / 1e6:g}M", []).append(item["method"])
    for size, methods in skipped.items():
        lines += ["", f"Not run at {size}: {', '.join(methods)} (reasons in "
                      f"`benchmarks/results/scale.md`)."]
    return "\n".join(lines)


def replace_between(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- name: start -->`` and ``<!-- name: end -->``
    replaced by ``body``."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}: start -->\n).*?(<!-- {re.escape(name)}: "
                         rf"end -->)", flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- {name}: start/end --> markers")
    return pattern.sub(lambda match: match.group(1) + body + "\n" + match.group(2), text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    tables = {"bench_suite table": suite_table(json.loads((RESULTS / "suite.json").read_text())),
              "bench_scale table": scale_table(json.loads((RESULTS / "scale.json").read_text()))}
    if not args.write:
        for name, table in tables.items():
            print(f"{name}:\n{table}\n")
        return
    text = README.read_text(encoding="utf-8")
    for name, table in tables.items():
        text = replace_between(text, name, table)
    README.write_text(text, encoding="utf-8")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
