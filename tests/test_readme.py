"""The README's Python examples run as written (each block in a fresh process and folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def runs_on_ray(block: str) -> bool:
    """The Ray examples run in tests/test_distributed.py, in-process on that module's Ray
    cluster: starting a cluster of their own in a fresh process costs about 15 s."""
    return "import ray" in block


def local_blocks() -> list[str]:
    return [block for block in python_blocks() if not runs_on_ray(block)]


def test_readme_has_the_quickstarts():
    text = README.read_text(encoding="utf-8")
    assert len(python_blocks()) >= 4
    assert sum(map(runs_on_ray, python_blocks())) == 1  # test_distributed runs that one
    for heading in ("## Two commands", "## Quickstart: LangChain", "## Quickstart: LlamaIndex",
                    "## Options that matter", "## Measured figures"):
        assert heading in text
    assert "bash scripts/test.sh" in text and "bash scripts/demo.sh" in text
    assert "FIGURES_PLACEHOLDER" not in text


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(local_blocks())))
def test_readme_block_runs(tmp_path, number):
    block = local_blocks()[number]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "every README example prints something"
