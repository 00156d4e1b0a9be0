#!/usr/bin/env bash
# Install vecpress with its test dependencies and run the whole test suite.
# torch is installed first and pinned: 2.13.0 is a CPU build; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore
bash scripts/ensure_wordnet.sh
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
export HF_HUB_OFFLINE=1
# compile the numba kernels once up front (cached), so no test process pays the compile
python -m vecpress.cli warmup --bits 1 4 --every-kernel
python -m pytest "$@"
