"""exCLIP on every model family built in tests/backends/test_backends_families.py: it runs on the backend
interface alone, and its matrix (with the rows and columns it leaves out) sums to the similarity
difference of the input and the references, as the integration gets fine."""

from __future__ import annotations

import pytest
from PIL import Image
from test_backends_families import BUILDERS, family

from m2ib.interactions import interact


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_exclip_completeness_on_every_family(name):
    _, backend, _, _ = family(name)
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    result = interact(backend, picture, "a red circle", steps=48)
    assert result.matrix.shape[0] == len(result.tokens)
    assert result.matrix.shape[1:] == backend.token_grid("image", backend.num_layers("image") - 2)
    assert result.info["sum"] == pytest.approx(result.info["expected_sum"], rel=0.03, abs=1e-4)
    shown = float(result.matrix.sum()) + result.info["image_prefix_sum"] + result.info["text_padding_sum"]
    assert shown == pytest.approx(result.info["sum"], rel=1e-4, abs=1e-6)
