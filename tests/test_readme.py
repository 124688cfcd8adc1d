"""The README's Python examples run as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert python_blocks()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code = python_blocks()[index].replace('"out/"', repr(str(tmp_path) + "/"))
    exec(compile(code, f"README.md example {index + 1}", "exec"), {})
