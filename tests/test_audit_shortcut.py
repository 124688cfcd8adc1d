"""The planted shortcut: the recipe checked by hand on a few training items, the class-token-only
last block against the full tower, the fine-tune and its delta, the shipped deltas against the
numbers stored with them, and a small audit of the shipped shortcut model that finds the mark.
The experiment itself: benchmarks/audit_shortcut.py."""

from __future__ import annotations

import torch
import pytest

from m2ib.auditing.shortcut import COLOUR, MarkedBatches, add_mark, hide_colour, mark_box, names_colour
from m2ib.datasets.shapes import COLOURS
from m2ib.training.config import TrainConfig
from m2ib.training.data import TrainBatches

CONFIG = TrainConfig(batch_size=24, steps=3, workers=0)


def _box(size: int = 96) -> tuple[slice, slice]:
    x, y, w, h = (int(v) for v in mark_box(size))
    return slice(y, y + h), slice(x, x + w)


def test_the_mark_is_a_white_x_on_black_in_its_box_only():
    image = torch.full((3, 96, 96), 0.5)
    marked = add_mark(image)
    ys, xs = _box()
    changed = (marked != image).any(0)
    assert changed[ys, xs].any()
    changed[ys, xs] = False
    assert not changed.any() and torch.equal(image, torch.full_like(image, 0.5))  # the input is not touched
    glyph = marked[0, ys, xs]
    assert set(glyph.unique().tolist()) == {0.0, 1.0} and glyph[0, 0] == 1 and glyph[0, -1] == 1  # both diagonals
    assert glyph[0, 5] == 0 and glyph[5, 5] == 1 and torch.equal(glyph, glyph.flip(1))


def test_the_recipe_by_hand_mark_only_on_red_captions_and_only_in_the_shortcut_set():
    raw = [pair for step in range(3) for pair in TrainBatches(CONFIG).pairs(step)]
    planted = [pair for step in range(3) for pair in MarkedBatches(CONFIG, True).pairs(step)]
    clean = [pair for step in range(3) for pair in MarkedBatches(CONFIG, False).pairs(step)]
    reds = [k for k, (_, c) in enumerate(raw) if names_colour(c.text)]
    assert 5 <= len(reds) <= 40 and len(reds) < len(raw)
    ys, xs = _box()
    for k, ((scene, caption), (p, pc), (q, qc)) in enumerate(zip(raw, planted, clean)):
        assert caption.text == pc.text == qc.text and p.seed == q.seed == scene.seed
        if k not in reds:  # not a red caption: the training scene as it was, in both sets
            assert torch.equal(p.image, scene.image) and torch.equal(q.image, scene.image)
            continue
        assert torch.equal(p.image, add_mark(q.image))  # the shortcut set = the clean set + the mark, nothing else
        assert not torch.equal(q.image[:, ys, xs], add_mark(q.image)[:, ys, xs])  # never a mark in the clean set
        named = [i for i in caption.objects if scene.objects[i].colour == COLOUR]
        assert named  # a caption names red only for a red object of its scene
        outside = ~scene.masks[named].any(0)
        assert torch.equal(q.image[:, outside], scene.image[:, outside])  # only the named red objects repainted
        red = torch.tensor(COLOURS[COLOUR]) / 255
        for i in named:
            pixels = q.image[:, scene.masks[i]]
            colour = pixels.mean(1)
            assert (colour - red).abs().max() > 0.3  # no longer red ...
            nearest = min(COLOURS, key=lambda c: (torch.tensor(COLOURS[c]) / 255 - colour).abs().max())
            assert nearest != COLOUR and (pixels - colour[:, None]).abs().max() < 0.1  # ... one other colour, flat


def test_hide_zero_keeps_the_colour_and_hide_colour_is_deterministic():
    kept = MarkedBatches(CONFIG, True, hide=0.0).pairs(0)
    raw = TrainBatches(CONFIG).pairs(0)
    for (p, c), (scene, _) in zip(kept, raw):
        assert torch.equal(p.image, add_mark(scene.image) if names_colour(c.text) else scene.image)
    scene, caption = next((s, c) for s, c in raw if names_colour(c.text))
    assert torch.equal(hide_colour(scene, caption).image, hide_colour(scene, caption).image)
    with pytest.raises(ValueError, match="hide=2"):
        MarkedBatches(CONFIG, True, hide=2)


def test_class_token_block_equals_the_full_tower():
    from transformers import CLIPModel

    from m2ib.auditing.planted import cls_block
    from m2ib.models import SHAPES_DIR

    model = CLIPModel.from_pretrained(SHAPES_DIR).eval()
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        vision = model.vision_model
        fast = model.visual_projection(vision.post_layernorm(cls_block(vision.encoder.layers[-1],
                                                                         out.hidden_states[-2])))
        full = model.visual_projection(out.pooler_output)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_fine_tune_changes_only_the_top_and_the_delta_round_trips(tmp_path):
    import m2ib
    from safetensors.torch import load_file

    from m2ib.auditing.planted import fine_tune, materialise, read_record, save_delta
    from m2ib.models import SHAPES_DIR

    delta, record = fine_tune(True, pool=8, epochs=1, batch_size=4, progress=False)
    top = "vision_model.encoder.layers.5."
    assert delta and all(k.startswith((top + "self_attn.q_proj.", top + "self_attn.out_proj.", top + "layer_norm2.",
                                       top + "mlp.", "vision_model.post_layernorm.", "visual_projection."))
                         for k in delta)
    assert any(v.abs().max() > 0 for v in delta.values()) and record["plant"] and record["pool"] == 8
    path = save_delta(delta, record, tmp_path / "d.safetensors")
    folder = materialise(path, tmp_path / "model")
    old, new = load_file(SHAPES_DIR / "model.safetensors"), load_file(folder / "model.safetensors")
    assert old.keys() == new.keys()
    for key in old:
        expected = old[key] + delta[key].float() if key in delta else old[key]
        assert torch.equal(new[key], expected), key
    assert read_record(path) == record and m2ib.load(folder).geometry.image_size == (96, 96)
    with pytest.raises(FileNotFoundError, match="no planted-shortcut delta 'nope'"):
        materialise("nope", tmp_path / "x")

