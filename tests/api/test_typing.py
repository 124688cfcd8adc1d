"""The package's types as its users' type checker sees them: explain and compare give one result for
one pair and a list for lists (their @overloads), checked by running mypy on small snippets."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("mypy") is None, reason="mypy not installed (pip install 'm2ib[lint]')"
    ),
    pytest.mark.slow,  # a first run type-checks torch and transformers: about a minute; later runs use the cache
]

HEADER = """\
from pathlib import Path

import torch
from PIL import Image

import m2ib
from m2ib import Comparison, Explanation

backend = m2ib.load("shapes")
paths: list[Path] = [Path("a.png"), Path("b.png")]
pictures: list[Image.Image] = []
"""

# What the overloads promise; every line fails mypy if the result is typed as the union.
GOOD = """\
one: Explanation = m2ib.explain(backend, "scene.png", "a red circle", method="gradcam")
pil: Explanation = m2ib.explain(backend, Image.new("RGB", (8, 8)), "a red circle")
many: list[Explanation] = m2ib.explain(backend, ["a.png", "b.png"], ["a red circle", "a blue star"])
per_image: list[Explanation] = m2ib.explain(backend, paths, "a red circle")
per_picture: list[Explanation] = m2ib.explain(backend, pictures, "a red circle", steps=5)
per_text: list[Explanation] = m2ib.explain(backend, Path("a.png"), ("a red circle", "a blue star"))
compared: Comparison = m2ib.compare(backend, "scene.png", "a red circle", methods="m2ib,gradcam")
compared_many: list[Comparison] = m2ib.compare(backend, paths, ["a red circle", "a blue star"])
"""


def run_mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(HEADER + textwrap.dedent(body))
    # The project's settings (Python 3.10, the untyped libraries); m2ib from this checkout, its own
    # errors silenced (the mypy step of .ci/run checks those): only the snippet's lines are judged.
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--follow-imports",
            "silent",
            "--no-error-summary",
            str(snippet),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_explain_and_compare_return_one_result_or_a_list(tmp_path):
    result = run_mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_catches_a_list_taken_for_one_result(tmp_path):
    """The check above can fail: one pair's result is not a list, a list's result not one Explanation,
    and a tensor (one image or a batch) gives either."""
    bad = """\
    wrong_one: list[Explanation] = m2ib.explain(backend, "scene.png", "a red circle")
    wrong_many: Explanation = m2ib.explain(backend, paths, "a red circle")
    tensor: Explanation = m2ib.explain(backend, torch.rand(3, 8, 8), "a red circle")
    """
    result = run_mypy(tmp_path, bad)
    lines = [line for line in result.stdout.splitlines() if "error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    first = HEADER.count("\n") + 1
    assert [line.split(":")[1] for line in lines] == [str(first), str(first + 1), str(first + 2)], result.stdout
    assert all("Incompatible types in assignment" in line for line in lines), result.stdout
