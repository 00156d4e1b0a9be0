"""examples/quickstart.py (the README's plain-Python quickstart) runs as written, twice."""

import os
import runpy
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("sentence_transformers")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_runs_and_is_idempotent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes ./my_store
    outputs = []
    for _ in range(2):  # the second run reopens my_store and replaces the same ids
        runpy.run_path(str(EXAMPLE), run_name="__main__")
        outputs.append(capsys.readouterr().out.splitlines())
    assert outputs[0] == outputs[1]
    lines = outputs[0]
    assert len(lines) == 3
    assert lines[0].split()[1] == "plants" and float(lines[0].split()[0]) > 0.5
    assert lines[2] == "dogs 192 bytes of code per vector in RAM"
    assert (tmp_path / "my_store" / "docs.sqlite").is_file()
