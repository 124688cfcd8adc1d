"""Pointing game, energy inside, ROAD's imputation and the sanity check's rank correlation against Quantus.

Same maps (m2ib explanations of the tiny CLIP, and hand-made edge cases) and the same masks.
Where the definitions agree the numbers are equal; where they differ the test pins the
difference down, as named in docs/reference_implementations.md.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from m2ib.metrics.localisation import energy_inside, pointing_hit
from m2ib.metrics.road import linear_impute
from m2ib.metrics.sanity import spearman


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def maps_and_masks(case):
    """Image maps of four methods on both pairs; a box mask per map, around its maximum for every
    other map and in the opposite quarter of the image for the rest (hits and misses)."""
    maps = [
        exp.image_map
        for method in ("gradcam", "saliency", "chefer", "rollout")
        for exp in case.explain(method, modalities=("image",))
    ]
    h, w = maps[0].shape
    masks = []
    for k, m in enumerate(maps):
        row, col = divmod(int(torch.argmax(m)), w)
        if k % 2:
            row, col = (row + h // 2) % h, (col + w // 2) % w
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[max(0, row - 4 - k) : row + 5, max(0, col - 6) : col + 3 + k] = True
        masks.append(mask)
    return maps, masks


def run(metric, maps, masks) -> list[float]:
    """A Quantus localisation metric on precomputed maps [H, W] and bool masks [H, W] (no model)."""
    a = torch.stack(maps)[:, None].double().numpy()
    s = torch.stack(masks)[:, None].numpy().astype(float)
    x = np.zeros((len(maps), 3, *maps[0].shape))
    return list(
        metric(model=None, x_batch=x, y_batch=np.zeros(len(maps), dtype=int), a_batch=a, s_batch=s, channel_first=True)
    )


def test_pointing_game_equals_quantus_on_maps_with_one_maximum(quantus, maps_and_masks):
    maps, masks = maps_and_masks
    theirs = run(quantus.PointingGame(disable_warnings=True), maps, masks)
    ours = [float(pointing_hit(m, k)) for m, k in zip(maps, masks)]
    assert ours == [float(v) for v in theirs]
    assert 0 < sum(ours) < len(ours)  # both outcomes occur, so the comparison can fail


def test_pointing_game_differs_from_quantus_on_tied_maxima_and_empty_masks(quantus):
    """Quantus hits when ANY maximal pixel is in the mask; ours takes the first argmax (row-major)."""
    m = torch.zeros(8, 8)
    m[0, 0] = m[5, 5] = 1.0
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:7, 4:7] = True
    assert run(quantus.PointingGame(disable_warnings=True), [m], [mask]) == [1]
    assert pointing_hit(m, mask) is False
    # an empty mask: Quantus writes NaN into a boolean array, which reads as a hit; ours is a miss
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert run(quantus.PointingGame(disable_warnings=True), [m], [empty]) == [True]
    assert pointing_hit(m, empty) is False


def test_energy_inside_equals_quantus_relevance_mass_accuracy(quantus, maps_and_masks):
    maps, masks = maps_and_masks
    theirs = run(quantus.RelevanceMassAccuracy(disable_warnings=True), maps, masks)
    ours = [energy_inside(m, k) for m, k in zip(maps, masks)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_energy_inside_differs_from_quantus_on_negative_values_and_empty_masks(quantus):
    """Negative relevance: Quantus sums it signed, we count it as 0. An empty mask: Quantus NaN, ours 0."""
    m = torch.zeros(8, 8)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = 1.0, -1.0, 0.5, 0.5
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = True
    rma = quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False)
    assert run(rma, [m], [mask])[0] == pytest.approx(1.0 / 1.0)  # (1) / (1 - 1 + 0.5 + 0.5)
    assert energy_inside(m, mask) == pytest.approx(1.0 / 2.0)  # (1) / (1 + 0 + 0.5 + 0.5)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert energy_inside(m.abs(), empty) == 0.0


def test_road_imputation_equals_quantus_noisy_linear_imputation(quantus, case, maps_and_masks):
    """The same removed pixels (the map's top 30 %), noise 0: the same imputed image."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    maps, _ = maps_and_masks
    pixels = case.pixels[0].double()
    flat = maps[0].flatten()
    top = torch.argsort(flat, descending=True)[: int(0.3 * flat.numel())]
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    removed[top] = True
    ours = linear_impute(pixels, removed.view(maps[0].shape), noise=0.0)
    theirs = noisy_linear_imputation(arr=pixels.numpy(), indices=np.sort(top.numpy()), noise=0.0)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=1e-9)
    assert not np.allclose(theirs, pixels.numpy())  # something was imputed


def test_sanity_spearman_equals_quantus_correlation_spearman(quantus, maps_and_masks):
    """MPRT's default similarity; ties (zeros of ReLU'd maps) get average ranks in both. A
    constant map: Quantus returns NaN, ours 0 (no ranking, reported as no correlation)."""
    from quantus.functions.similarity_func import correlation_spearman

    maps, _ = maps_and_masks
    for a, b in itertools.pairwise(maps):
        assert spearman(a, b) == pytest.approx(
            correlation_spearman(a.double().numpy().flatten(), b.double().numpy().flatten()), abs=1e-6
        )
    assert spearman(torch.ones(4, 4), maps[0][:4, :4]) == 0.0
