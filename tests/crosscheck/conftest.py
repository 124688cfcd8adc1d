"""The cross-check suite: m2ib's methods and metrics held to the field's own implementations.

Each test runs one m2ib method (or metric) and the reference on the same tiny random CLIP,
the same preprocessed pixels, the same tokens and the same target (the cosine similarity of
the explained side's embedding with the other side's unit embedding), then compares numbers.
The references are either libraries (captum, pytorch-grad-cam, Quantus: the ``crosscheck``
extra; a test skips with the reason when one is missing) or the authors' code, read at a stated
commit and re-expressed here as a plain oracle. docs/reference_implementations.md tabulates
what each test measures.
"""

from __future__ import annotations

import pytest

from .crosscheck_tools import ONE_HEAD, TWO_HEADS, Case, make_case


@pytest.fixture(scope="session")
def case() -> Case:
    return make_case(TWO_HEADS)


@pytest.fixture(scope="session")
def one_head_case() -> Case:
    return make_case(ONE_HEAD)
