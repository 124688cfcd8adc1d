"""Shapes-world quality metrics (research.shapes_quality, benchmarks/research/) on the random-tiny model.

The numbers of a random model mean nothing; these tests check definitions on hand-made
inputs, that every function runs end to end with numbers in [0, 1], that masks align with
the maps, and that the settings search never reads the test split.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from research import shapes_quality as q

import m2ib
from m2ib.datasets.shapes import make_caption, render_scene, split_seed

FAST = dict(steps=2, samples=2)
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "shapes_quality.py"


@pytest.fixture(scope="module")
def tiny():
    return m2ib.load("random-tiny")


def unit(x) -> bool:
    return 0.0 <= x <= 1.0


# --- token alignment -----------------------------------------------------------------------


def test_alignment_single_caption(tiny):
    scene = render_scene(5, size=64, n_objects=(1, 1), colours=["blue"], shapes=["circle"])
    caption = make_caption(scene, "single")
    assert caption.text == "a blue circle"
    tokens = tiny.tokenize([caption.text]).tokens[0]
    spans = q.token_word_alignment(tiny, caption)
    assert len(spans) == len(tokens) == 5  # start, a, blue, circle, end: each word is one token
    assert spans[0] is None and spans[-1] is None and spans[1] is None
    assert (spans[2].word, spans[2].role, spans[2].present) == ("blue", "colour", True)
    assert (spans[3].word, spans[3].role, spans[3].object_index) == ("circle", "shape", 0)


@pytest.mark.parametrize("kind", ["single", "all", "mixed"])
def test_alignment_covers_every_word(tiny, kind):
    for i in range(6):
        scene = render_scene(split_seed("val", i), size=64, n_objects=(2, 4))
        caption = make_caption(scene, kind)
        tokens = tiny.tokenize([caption.text]).tokens[0]
        spans = q.token_word_alignment(tiny, caption)
        assert len(spans) == len(tokens)
        assert spans[0] is None and spans[-1] is None  # start/end tokens
        for span in caption.spans:  # the tokens of a word spell it (a word may be several tokens)
            assert "".join(t for t, s in zip(tokens, spans) if s is span) == span.word
        others = {t for t, s in zip(tokens[1:-1], spans[1:-1]) if s is None}
        assert others <= {"a", "an", "and", ","}
        if kind == "mixed":
            assert any(s is not None and s.present for s in spans)
            assert any(s is not None and not s.present for s in spans)


# --- pointing game and energy on hand-made maps ---------------------------------------------


def test_pointing_hit_hand_made():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[2:4, 2:4] = True
    inside = torch.zeros(6, 6)
    inside[3, 2] = 1.0
    outside = torch.zeros(6, 6)
    outside[0, 5] = 1.0
    outside[3, 3] = 0.9
    assert q.pointing_hit(inside, mask) is True
    assert q.pointing_hit(outside, mask) is False
    # ties: the first argmax (row-major) decides; a constant map points at (0, 0)
    tie = torch.zeros(6, 6)
    tie[1, 1] = tie[2, 2] = 1.0
    assert q.pointing_hit(tie, mask) is False
    tie[1, 1] = 0.5
    assert q.pointing_hit(tie, mask) is True
    assert q.pointing_hit(torch.ones(6, 6), mask) is False
    nan = inside.clone()
    nan[0, 0] = float("nan")
    assert q.pointing_hit(nan, mask) is True
    with pytest.raises(ValueError):
        q.pointing_hit(torch.zeros(5, 6), mask)
    with pytest.raises(ValueError):
        q.pointing_hit(inside, mask.float())


def test_energy_inside_exact():
    image_map = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [False, True]])
    assert q.energy_inside(image_map, mask) == pytest.approx(0.5)
    assert q.energy_inside(image_map, torch.tensor([[False, False], [True, False]])) == pytest.approx(0.3)
    assert q.energy_inside(image_map, torch.ones(2, 2, dtype=torch.bool)) == pytest.approx(1.0)
    assert q.energy_inside(torch.zeros(2, 2), mask) == 0.0
    uniform = torch.full((8, 8), 0.3)
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:2] = True
    assert q.energy_inside(uniform, m) == pytest.approx(0.25)  # a uniform map scores the area share
    assert q.energy_inside(torch.tensor([[-1.0, 1.0], [0.0, 1.0]]), mask) == pytest.approx(0.5)


# --- end to end on random-tiny ----------------------------------------------------------------


def test_model_metrics_run(tiny):
    zs = q.zero_shot_accuracy(tiny, n_per_class=1)
    r1 = q.retrieval_r1(tiny, n=8)
    strict = q.retrieval_r1(tiny, n=8, strict=True)
    assert unit(zs) and unit(r1) and unit(strict)
    assert strict <= r1


def test_attribution_metrics_run(tiny):
    pointing = q.m2ib_pointing(tiny, n=6, split="test", settings=FAST, batch_size=4, progress=False)
    assert pointing["n"] == 6
    assert unit(pointing["pointing"]) and unit(pointing["energy"]) and unit(pointing["mask_fraction"])
    mixed = q.m2ib_mixed(tiny, n=6, split="test", settings=FAST, batch_size=4, progress=False)
    assert mixed["n"] == 6 and unit(mixed["mixed"]) and -1.0 <= mixed["margin"] <= 1.0


def test_masks_align_with_maps(tiny):
    size = q.scene_size(tiny)
    assert size == tiny.geometry.image_size[0] == 64
    scene = render_scene(split_seed("test", 0), size=size, n_objects=(2, 4))
    caption = make_caption(scene, "single")
    exp = m2ib.explain(tiny, scene.to_pil(), caption.text, modalities=("image",), **FAST)
    assert tuple(exp.image_map.shape) == tuple(scene.masks.shape[1:])
    assert torch.allclose(exp.image, scene.image, atol=1e-6)  # the model saw the scene pixel for pixel
    # a preprocessing that resizes the scene would misalign masks: refused
    shifted = m2ib.load(tiny.model, tokenizer=tiny.tokenizer)
    shifted.preprocessing = dataclasses.replace(tiny.preprocessing, shortest_edge=72)
    with pytest.raises(ValueError, match="align"):
        q.m2ib_pointing(shifted, n=2, settings=FAST, progress=False)


def test_select_settings_uses_validation_only(tiny, monkeypatch):
    used = []

    def recording(split, index, base=0):
        used.append(split)
        return split_seed(split, index, base)

    from research import shapes_pairs

    monkeypatch.setattr(shapes_pairs, "split_seed", recording)  # where the scenes are drawn
    best, rows = q.select_settings(tiny, layers=[1, -1], betas=[0.1, 1.0], n=4, settings=FAST)
    assert used and set(used) == {"val"}
    assert set(best) == {"vision_layer", "vision_beta", "text_layer", "text_beta"}
    assert best["vision_layer"] in (1, 3) and best["text_layer"] in (1, 3)
    assert len(rows) == 2 * 2 * 2 and sum(r["best"] for r in rows) == 2
    assert all(unit(r["value"]) for r in rows)
    assert "| image |" in q.format_selection(rows)
    with pytest.raises(ValueError, match="test"):
        q.select_settings(tiny, betas=[0.1], n=2, split="test", settings=FAST)
    assert set(used) == {"val"}


def test_random_control(tiny):
    state = torch.get_rng_state()
    before = [p.detach().clone() for p in tiny.model.parameters()]
    a = q.random_control(tiny, seed=3)
    b = q.random_control(tiny, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # caller's random state untouched
    assert all(torch.equal(p, o) for p, o in zip(tiny.model.parameters(), before))  # original untouched
    assert all(torch.equal(p, o) for p, o in zip(a.model.parameters(), b.model.parameters()))  # deterministic
    assert a.model is not tiny.model and a.preprocessing == tiny.preprocessing
    assert a.tokenizer is tiny.tokenizer
    assert not torch.equal(a.model.text_projection.weight, tiny.model.text_projection.weight)
    assert unit(q.zero_shot_accuracy(a, n_per_class=1))


def test_benchmark_script(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("shapes_quality_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "m2ib.json").write_text(json.dumps({"note": "kept", "recommended": {"other": {"x": 1}}}))
    code = bench.main(
        [
            "--model",
            "random-tiny",
            "--n-per-class",
            "1",
            "--n-retrieval",
            "6",
            "--n-pointing",
            "4",
            "--n-mixed",
            "4",
            "--n-select",
            "3",
            "--steps",
            "2",
            "--samples",
            "2",
            "--select",
            "--layers",
            "-1",
            "--betas",
            "0.1",
            "--write-recommended",
            str(tmp_path),
            "--random-control",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| metric | value | target | pass |" in out and "random control" in out and "random-tiny" in out
    data = json.loads((tmp_path / "m2ib.json").read_text())
    assert data["note"] == "kept" and data["recommended"]["other"] == {"x": 1}
    assert data["recommended"]["m2ib"] == {"vision_layer": 3, "vision_beta": 0.1, "text_layer": 3, "text_beta": 0.1}
    assert data["m2ib_selection"]["split"] == "val"


def test_present_absent_margin_hand_made():
    from m2ib.datasets.shapes import Span

    red = Span(2, 5, "red", "colour", 0, True)
    circle = Span(6, 12, "circle", "shape", 0, True)
    orange = Span(19, 25, "orange", "colour", -1, False)
    star = Span(26, 30, "star", "shape", -1, False)
    # "<start> a red circle and an or an g e star <end>": "orange" is four tokens, counted once
    spans = [None, None, red, circle, None, None, orange, orange, orange, orange, star, None]
    scores = torch.tensor([1.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.1, 0.1, 0.1, 0.5, 0.2, 1.0])
    # present (0.8 + 0.6) / 2 = 0.7; absent: orange 0.2, star 0.2 -> 0.2
    assert q.present_absent_margin(spans, scores) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        q.present_absent_margin(spans[:-1], scores)
    with pytest.raises(ValueError):
        q.present_absent_margin([None, red, circle, None], torch.zeros(4))
