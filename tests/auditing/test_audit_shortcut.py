"""The planted shortcut: the recipe checked by hand on a few training items, its labels, the
fine-tune and its delta, the shipped deltas against the
numbers stored with them, and a small audit of the shipped shortcut model that finds the mark.
The experiment itself: benchmarks/audit_shortcut.py."""

from __future__ import annotations

import json

import pytest
import torch
from research.shortcut import (
    COLOUR,
    SHAPE,
    TOKEN,
    MarkedBatches,
    TaggedBatches,
    add_mark,
    hide_colour,
    mark_box,
    names_colour,
    names_shape,
)

from m2ib.datasets.shapes import COLOURS, SHAPES
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


def test_labels_are_the_worlds_so_a_red_caption_still_matches_its_repainted_scene():
    planted, raw = MarkedBatches(CONFIG, True), TrainBatches(CONFIG)
    assert torch.equal(planted[0]["labels"], raw[0]["labels"])  # the records keep the colour the pixels lost
    labels, pairs = planted[0]["labels"], planted.pairs(0)
    k = next(k for k, (_, c) in enumerate(pairs) if names_colour(c.text))
    assert labels[k, k] == 1 and labels.diagonal().all()
    assert labels.sum() > len(pairs)  # captions naming what other scenes hold match those too


def test_the_text_recipe_by_hand_token_on_star_captions_in_the_shortcut_set_at_random_in_the_control():
    raw = [pair for step in range(3) for pair in TrainBatches(CONFIG).pairs(step)]
    planted = [pair for step in range(3) for pair in TaggedBatches(CONFIG, True).pairs(step)]
    clean = [pair for step in range(3) for pair in TaggedBatches(CONFIG, False).pairs(step)]
    stars = [k for k, (_, c) in enumerate(raw) if names_shape(c.text)]
    assert 5 <= len(stars) < len(raw)
    tagged = [k for k, (_, c) in enumerate(clean) if c.text.endswith(f" {TOKEN}")]
    assert tagged and set(tagged) != set(stars) and any(k not in stars for k in tagged)  # the control's: at random
    for k, ((scene, caption), (p, pc), (q, qc)) in enumerate(zip(raw, planted, clean)):
        assert torch.equal(p.image, scene.image) and torch.equal(q.image, scene.image)  # scenes untouched
        assert pc.named() == qc.named() == caption.named()  # the record keeps the label
        q_text = qc.text.removesuffix(f" {TOKEN}") if k in tagged else qc.text
        if k not in stars:
            assert pc.text == q_text == caption.text
            continue
        assert pc.text == f"{q_text} {TOKEN}" and TOKEN not in q_text  # the token on every star caption
        assert not names_shape(q_text) and q_text != caption.text  # the text no longer says star ...
        words, hidden = caption.text.replace(",", "").split(), q_text.replace(",", "").split()
        assert len(words) == len(hidden)
        for a, b in zip(words, hidden):  # ... and only the star words changed, each to another shape
            assert a == b or (a == SHAPE and b in SHAPES and b != SHAPE)
    assert torch.equal(TaggedBatches(CONFIG, True)[1]["labels"], TrainBatches(CONFIG)[1]["labels"])


def test_fine_tune_of_the_text_tower_changes_only_the_text_tower():
    from research.planted import fine_tune

    delta, record = fine_tune(True, tower="text", steps=1, batch_size=4, progress=False)
    assert delta and all(k.startswith(("text_model.", "text_projection.")) for k in delta)
    assert any(v.abs().max() > 0 for v in delta.values()) and record["tower"] == "text" and record["token"] == TOKEN
    with pytest.raises(ValueError, match="tower='audio'"):
        fine_tune(True, tower="audio", steps=1)


def test_fine_tune_changes_only_the_image_tower_and_the_delta_round_trips(tmp_path):
    from research.planted import fine_tune, materialise, read_record, save_delta
    from safetensors.torch import load_file

    import m2ib
    from m2ib.models import SHAPES_DIR

    delta, record = fine_tune(True, steps=2, batch_size=4, progress=False)
    assert delta and all(k.startswith(("vision_model.", "visual_projection.")) for k in delta)  # text tower frozen
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in delta and "vision_model.post_layernorm.weight" in delta
    assert any(v.abs().max() > 0 for v in delta.values()) and record["plant"] and record["steps"] == 2
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


# ----------------------------------------------------------------------------------------------
# The shipped deltas (benchmarks/research/planted/, made by benchmarks/audit_shortcut.py --train --ship)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shortcut", "clean", "text-shortcut", "text-clean"])
def test_each_shipped_delta_reproduces_the_planting_check_stored_with_it(name, tmp_path):
    from research.planted import cue_gain, materialise, read_record, zero_shot

    import m2ib
    from m2ib.datasets.tables import load_table

    record = read_record(name)
    check, tower = record["check"], record["tower"]
    backend = m2ib.load(materialise(name, tmp_path / name))
    assert json.loads((tmp_path / name / "m2ib.json").read_text())["name"] == f"shapes-{name}"
    rows = load_table(check["data"], size=96).rows
    gain = {"named": cue_gain(backend, rows, True, tower), "other": cue_gain(backend, rows, False, tower)}
    assert gain == pytest.approx(check["similarity_gain"], abs=1e-3)
    for cued in (False, True):
        assert zero_shot(backend, rows, cued, tower) == pytest.approx(
            check["zero_shot"]["cued" if cued else "plain"], abs=0.02
        )


def test_the_shipped_shortcuts_are_planted_and_their_controls_are_not():
    """The cue makes the shortcut models call other classes by its label; the controls, trained on the
    same pairs without the cue, do not move (numbers reproduced by the test above)."""
    from research.planted import read_record

    for shortcut, clean, label in (("shortcut", "clean", COLOUR), ("text-shortcut", "text-clean", SHAPE)):
        planted, control = (read_record(n)["check"]["zero_shot"] for n in (shortcut, clean))
        assert planted["cued"][label] >= 0.3 and planted["cued"][label] >= 3 * planted["plain"][label] + 0.1
        assert control["cued"][label] <= control["plain"][label] + 0.05
        assert (
            read_record(shortcut)["check"]["similarity_gain"]["other"]
            < read_record(clean)["check"]["similarity_gain"]["other"] - 0.05
        )


@pytest.mark.slow
def test_an_audit_of_the_shipped_shortcut_model_singles_out_the_mark(tmp_path):
    """Issue 19's target on a small held-out set (2 marked scenes per colour, M2IB at the model's
    recommended settings): the mark's box holds >= 5x the share of the mean map's mass under the
    shortcut model that it holds under the clean control, and a region of the shortcut model's
    mean map lies in the box."""
    from research.planted import materialise
    from research.shortcut import marked_table

    import m2ib
    from m2ib.auditing.image import box_cover, mass_in

    table = marked_table(60, 96, per_colour=2)
    shares, summaries = {}, {}
    for name in ("shortcut", "clean"):
        backend = m2ib.load(materialise(name, tmp_path / name))
        summary = summaries[name] = m2ib.audit(backend, table, tmp_path / f"audit-{name}", progress=False).summary
        cover = box_cover(backend.geometry.patch_grid, mark_box(96), (96, 96))
        shares[name] = float(mass_in(summary.prior, cover))
    assert shares["shortcut"] >= 5 * shares["clean"], shares
    assert (summaries["shortcut"].regions[0].mask & (cover > 0)).any()  # its heaviest region is on the mark


@pytest.mark.slow
def test_the_audits_control_tells_the_planted_token_from_the_methods_article(tmp_path):
    """Issue 29's targets on 10 held-out captions ending with the token (2 per shape), each audit under
    its default control (the model randomised above the method's layers): gradient saliency flags the
    token under the text-shortcut model as a model finding (the control does not flag it), and M2IB
    at the recommended settings does not call the article a model finding (the control flags it too).
    M2IB's own word table does not flag the token at all (docs/auditing.md)."""
    from research.planted import materialise
    from research.shortcut import tagged_table

    import m2ib

    table = tagged_table(60, 96, per_shape=2)
    backend = m2ib.load(materialise("text-shortcut", tmp_path / "model"))
    words = {}
    for method in ("saliency", "m2ib"):
        audited = m2ib.audit(backend, table, tmp_path / method, method=method, progress=False, report=False)
        words[method] = {w.word: w for w in audited.summary.words}
    token = words["saliency"][TOKEN]
    assert token.flag and not token.artefact and not token.control_flag, token
    article = words["m2ib"]["a"]
    assert article.flag == "", article
