"""The shipped shapes model: loads offline by name, knows the world, and M2IB points at named objects."""

from __future__ import annotations

import json

import pytest
import torch

import m2ib
from m2ib.datasets.shapes import class_prompts, make_caption, render_scene, split_seed
from m2ib.metrics.localisation import energy_inside, pointing_hit
from m2ib.models import SHAPES_DIR


def test_loads_offline_with_recommended_settings():
    backend = m2ib.load("shapes")
    assert backend.geometry.image_size == (96, 96) and backend.geometry.patch_grid == (16, 16)
    meta = json.loads((SHAPES_DIR / "m2ib.json").read_text())
    assert backend.recommended["m2ib"] == meta["recommended"]["m2ib"]
    assert meta["training"]["steps"] > 0 and "command" in meta["training"]
    assert (SHAPES_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    assert not (SHAPES_DIR / "checkpoint.pt").exists()


def test_zero_shot_on_single_objects():
    backend = m2ib.load("shapes")
    prompts = class_prompts()
    scenes = [render_scene(split_seed("test", i), size=96, n_objects=(1, 1)) for i in range(12)]
    sims = m2ib.similarity(backend, [s.to_pil() for s in scenes], [p for _, _, p in prompts])
    predicted = [prompts[int(j)][:2] for j in sims.argmax(1)]
    truth = [(s.objects[0].colour, s.objects[0].shape) for s in scenes]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 11


@pytest.mark.slow
def test_m2ib_points_at_the_named_object_on_fixed_scenes():
    backend = m2ib.load("shapes")
    scenes = [render_scene(split_seed("test", i), size=96, n_objects=(2, 4)) for i in range(8)]
    captions = [make_caption(s, "single") for s in scenes]
    exps = m2ib.explain(
        backend, [s.to_pil() for s in scenes], [c.text for c in captions], modalities=("image",), batch_size=8
    )
    masks = [s.masks[c.objects[0]] for s, c in zip(scenes, captions)]
    hits = [pointing_hit(e.image_map, m) for e, m in zip(exps, masks)]
    # A map ignoring the text hits about as often as the mask's share of the image, about 4 %: 0.3 of
    # these 8 scenes, and 4 or more hits has a chance probability under 2e-4. The recommended settings
    # (chosen with the sanity check, docs/shapes_selection.md) point at 58.5 % on 200 test scenes
    # (77.5 % at the previous ones), i.e. 4.7 of 8 expected.
    assert sum(hits) >= 4, hits
    energy = torch.tensor([energy_inside(e.image_map, m) for e, m in zip(exps, masks)]).mean()
    area = torch.stack([m.float().mean() for m in masks]).mean()
    assert energy > 5 * area, (energy, area)
    assert exps[0].settings["vision_layer"] == backend.recommended["m2ib"]["vision_layer"]
    assert all(torch.isfinite(e.image_map).all() for e in exps)
