"""Our exCLIP (m2ib.interactions.exclip, re-implemented on the backend interface) against the
`exclip` package's own computation (PyPI exclip 1.1, Möller et al.) on a random OpenCLIP ViT that
both load. Needs OpenCLIP and exclip (the families environment: ``pip install --no-deps exclip``;
the package imports only torch, tqdm and, for its tokenizer module, OpenAI clip): skipped without.

Two details of the package differ from our defaults, so the test puts them on the same footing:

* its integration grid is ``a = 1, 1 - 1/N, ..., 1/N`` (a right Riemann sum) where ours takes the
  midpoints ``(s + 1/2) / N``; the package also accepts the grid as a tensor, so it is given ours;
* it reads the input from the grid's *first* point: the differences ``x - r`` it multiplies by
  (times ``a_0`` on each side) and the embedding norms it divides by are those at ``a_0``, the
  input itself only on its own grid, where ``a_0 = 1``; on our grid the package's matrix is
  rescaled by ``|f(a_0)| |g(a_0)| / a_0^2`` (the norms computed here from the split forward)
  before the comparison with ours unnormalised (``normalise=False``).

Both then compute the same sum of products of float32 integrated Jacobians, in a different order
(ours: backward passes weighted by the text's attributions; the package's: the full
[tokens x width]^2 Jacobian product), so they agree to float32 round-off: within 1e-5 of the
matrix's largest entry (measured: 3e-7 to 6e-7 at the three layers; on the package's own grid
with N = 4 they differ by 26 % to 35 %, which the test would catch).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_backends_families import family

from m2ib.interactions import REGISTRY as INTERACTIONS
from m2ib.interactions.exclip import block_input, image_reference, text_reference


def _exclip_package():
    pytest.importorskip("open_clip")
    return pytest.importorskip("exclip.explanation", reason="the exclip package is not installed")


def _embedding_norm_at(backend, modality, batch, reference, layer, alpha):
    """|embedding| of the hidden states ``r + alpha (x - r)`` at the input of block ``layer``."""
    split = block_input(backend, modality, layer, "layer")
    with torch.no_grad():
        x, r = backend.prefix(modality, batch, split), backend.prefix(modality, reference, split)
        return float(backend.suffix(modality, r + alpha * (x - r), split, batch).norm())


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_exclip_equals_the_exclip_package_on_a_random_open_clip(layer):
    package = _exclip_package()
    model, backend, _, _ = family("open_clip-vit")
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    picture = Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy())
    images, texts = backend.preprocess_images([picture]), backend.tokenize(["a red circle and a star"])
    steps = 4
    method = INTERACTIONS.get("exclip")()
    ours = method.interact(
        backend, images, texts, method.make_settings(text_layer=layer, image_layer=layer, steps=steps, normalise=False)
    )
    grid = torch.tensor([(s + 0.5) / steps for s in range(steps)]).flip(0)  # our midpoints, largest first
    padded = torch.zeros(1, 77, dtype=torch.long)  # the package's reference is 77 long: the text padded with 0
    padded[0, : texts.input_ids.shape[1]] = texts.input_ids[0]
    explainer = package.OpenClipExplainer(
        copy.deepcopy(model), image_dim=images.pixel_values.shape[-1], device=torch.device("cpu")
    )
    try:
        theirs = explainer.explain(padded, images.pixel_values, text_layer=layer, image_layer=layer, N=grid)
    finally:
        explainer.reset_attribution()
    norms = _embedding_norm_at(
        backend, "text", texts, text_reference(texts), layer, float(grid[0])
    ) * _embedding_norm_at(backend, "image", images, image_reference(images), layer, float(grid[0]))
    theirs = theirs.double() * norms / float(grid[0]) ** 2
    assert theirs.shape == ours.matrix.shape  # [tokens up to the end token, 4, 4]
    scale = float(theirs.abs().max())
    assert scale > 1e-3
    assert torch.allclose(ours.matrix.double(), theirs, atol=1e-5 * scale, rtol=0), float(
        (ours.matrix.double() - theirs).abs().max() / scale
    )
