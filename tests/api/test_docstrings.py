"""The examples in the public API's docstrings (shown in the site's API reference) run as written,
from the repository root, and print what they say."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "m2ib",
    "m2ib.api",
    "m2ib.explanation",
    "m2ib.comparison",
    "m2ib.methods",
    "m2ib.interactions.api",
    "m2ib.interactions.result",
    "m2ib.auditing",
]


def test_every_public_name_has_an_example():
    import m2ib

    for name in [
        "load",
        "explain",
        "compare",
        "similarity",
        "audit",
        "list_methods",
        "list_models",
        "Explanation",
        "Comparison",
    ]:
        assert "Examples:" in (getattr(m2ib, name).__doc__ or ""), name


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    found = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert found.failed == 0
    assert found.attempted > 0
