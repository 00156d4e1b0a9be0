#!/usr/bin/env bash
# Install vecpress with its default embedder and run the demo on WordNet glosses, offline.
# Safe to run again: each step is skipped or quick when already done; the demo reuses its store.
# Extra arguments go to `vecpress demo` (e.g. --limit 0 for all ~117k glosses; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore  # root in containers and CI: no warning

bash scripts/ensure_wordnet.sh

echo "== installing vecpress (CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build)"
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[sentence-transformers]"
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash  # make the new `vecpress` command visible through pyenv's shims
fi

echo "== compiling the numba kernels (once per machine; seconds when already cached)"
python -m vecpress.cli warmup

echo "== vecpress demo"
if command -v vecpress >/dev/null 2>&1; then
    HF_HUB_OFFLINE=1 exec vecpress demo "$@"
fi
HF_HUB_OFFLINE=1 exec python -m vecpress.cli demo "$@"
