"""The code blocks of docs/training.md run as written, in order, in one namespace."""

import importlib.util
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "training.md"


def test_the_training_page_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # what the examples write (runs/) lands here
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 8
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    namespace = {}
    for block in blocks:
        if "needs tensorboard" in block and not has_tensorboard:
            continue
        exec(compile(block, str(PAGE), "exec"), namespace)
