"""The shared work of m2ib tune gives the maps m2ib.explain gives, point by point."""

from __future__ import annotations

import pytest
import torch

import m2ib
from m2ib.methods.base import make_target
from m2ib.methods.m2ib import fit_bottleneck
from m2ib.tuning.fits import fit_maps, point_settings, prefix_hidden, randomised_above


@pytest.mark.parametrize("tower", ["image", "text"])
def test_batched_betas_equal_separate_fits(tune_tiny, tower):
    """One fit over (beta, pair) with a beta per row equals one fit per beta (the rows' losses are independent)."""
    backend, _, data = tune_tiny
    batch = data.images if tower == "image" else data.texts
    target = make_target(tower, data.image_emb, data.text_emb, None)
    s = point_settings({"bottleneck": "published"}, seed=0)
    betas = [0.1, 1.0, 10.0]
    n = len(data)
    rows = [i for _ in betas for i in range(n)]
    beta = torch.tensor([b for b in betas for _ in range(n)])
    with backend.attribution_mode():
        batched, _ = fit_bottleneck(backend, tower, batch.select(rows), 1, target.select(rows), beta, s)
        for k, b in enumerate(betas):
            alone, _ = fit_bottleneck(backend, tower, batch, 1, target, b, s)
            torch.testing.assert_close(batched[k * n : (k + 1) * n], alone, rtol=1e-5, atol=1e-6)
    # the betas matter: the maps of beta 0.1 and beta 10 differ (else the test above proves nothing)
    assert not torch.allclose(batched[:n], batched[2 * n :], rtol=1e-3)


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"bottleneck": "standardised", "reference": "shapes:val:3"},
        {"objective": "adaib", "adaib_compression": "proportional"},
    ],
)
def test_fit_maps_equal_explain(tune_tiny, tower, variant):
    """The maps a grid point is scored on are explain's maps with the point's settings (prefix shared,
    betas batched, chunks of 4 fits crossing the beta boundary)."""
    backend, rows, data = tune_tiny
    layer = 1
    prefix = "vision" if tower == "image" else "text"
    s = point_settings({f"{prefix}_layer": layer, **variant}, seed=0)
    hidden = prefix_hidden(backend, data, tower, layer, batch_size=2)
    maps = fit_maps(backend, data, tower, layer, [0.1, 3.0], s, hidden, batch_size=4)
    for k, beta in enumerate([0.1, 3.0]):
        settings = {"vision_layer": layer, "text_layer": layer, f"{prefix}_beta": beta, **variant}
        exps = m2ib.explain(
            backend, [r.image for r in rows], [r.text for r in rows], modalities=(tower,), progress=False, **settings
        )
        for e, m in zip(exps, maps[k]):
            torch.testing.assert_close(m, e.map_of(tower), rtol=1e-5, atol=1e-5)


def test_randomised_above_keeps_the_blocks_below_and_the_model(tune_tiny):
    backend, _, _ = tune_tiny
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    copy = randomised_above(backend, "image", 1)
    labels = dict(copy.cascade_parts("image"))
    trained = dict(backend.cascade_parts("image"))
    for name in ("block 0", "block 1", "embeddings"):
        for a, b in zip(labels[name][0].parameters(), trained[name][0].parameters()):
            assert torch.equal(a, b)
    for name in ("block 2", "block 3"):
        assert any(not torch.equal(a, b) for a, b in zip(labels[name][0].parameters(), trained[name][0].parameters()))
    after = backend.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is untouched
