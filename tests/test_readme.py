"""The README's Python examples run as written: each block in its own folder and namespace,
all of them in one fresh process (which loads torch and the model once, not once a block)."""

from __future__ import annotations

import json
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


RUNNER = """
import contextlib, io, json, os, sys, traceback
blocks, root = json.loads(sys.stdin.read()), sys.argv[1]
outcomes = []
for number, block in enumerate(blocks):
    folder = os.path.join(root, f"block-{number}")
    os.makedirs(folder)
    os.chdir(folder)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"README block {number}", "exec"), {"__name__": "__main__"})
        outcomes.append({"stdout": out.getvalue(), "error": None})
    except BaseException:
        outcomes.append({"stdout": out.getvalue(), "error": traceback.format_exc()})
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def block_outcomes(tmp_path_factory) -> list[dict]:
    """Every local block's printed output and error, run once for the module."""
    root = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", RUNNER, str(root)], cwd=root, env=env,
                            input=json.dumps(local_blocks()), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(local_blocks())))
def test_readme_block_runs(block_outcomes, number):
    outcome = block_outcomes[number]
    assert outcome["error"] is None, outcome["error"][-3000:]
    assert outcome["stdout"].strip(), "every README example prints something"
