"""The grounding metric inside ``m2ib evaluate`` (issue 20): shapes-two rows, interaction methods and
first-order baselines through the same runner and store, hand-made values, refusals, resumption."""

from __future__ import annotations

import json
import re

import pytest
import torch

from m2ib.datasets.tables import PairTable, Row, load_table
from m2ib.errors import InputError
from m2ib.evaluation.pairs import evaluate_rows
from m2ib.evaluation.runner import read_results, run_evaluation
from m2ib.inputs import load_image
from m2ib.interactions import REGISTRY as INTERACTIONS, InteractionMethod
from m2ib.metrics.grounding import grounding_scores

TEXT = "a red circle and a blue star"
PHRASES = ((2, 12), (19, 28))  # "red circle", "blue star"


def _hand_masks(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    first = torch.zeros(size, size, dtype=torch.bool)
    first[:24, :24] = True
    second = torch.zeros(size, size, dtype=torch.bool)
    second[24:, 24:] = True
    return first, second


def _hand_maps(size: int = 48) -> torch.Tensor:
    """Phrase 0: max 3 at (5, 5) on object 0, 1 unit on object 1 (share 3/4); phrase 1: max 3 at
    (40, 40) on object 1, 2 units on object 0 (share 3/5), and a negative score that does not count."""
    maps = torch.zeros(2, size, size)
    maps[0, 5, 5], maps[0, 40, 40] = 3.0, 1.0
    maps[1, 40, 40], maps[1, 5, 5], maps[1, 30, 10] = 3.0, 2.0, -7.0
    return maps


class HandMade(InteractionMethod):
    """An interaction method whose phrase maps are :func:`_hand_maps` (it checks the spans it is given)."""

    name = "hand-made"
    title = "hand-made phrase maps"

    def interact(self, backend, image, text, settings):
        raise AssertionError("the metric reads phrase maps only")

    def phrase_maps(self, backend, image, text, spans, settings):
        assert list(text.texts) == [TEXT] and [tuple(s) for s in spans] == list(PHRASES)
        return _hand_maps(backend.geometry.image_size[0])


@pytest.fixture(scope="module")
def tiny():
    """random-tiny (64 px: the shapes world's smallest scene), loaded once for this file's tests."""
    import m2ib

    return m2ib.load("random-tiny")


@pytest.fixture()
def hand_made(monkeypatch, registered):
    registered(INTERACTIONS, HandMade)
    return HandMade.name


def _hand_table(swapped: bool = False) -> PairTable:
    first, second = _hand_masks()
    masks = (second, first) if swapped else (first, second)
    row = Row("hand:0", torch.full((3, 48, 48), 0.5), TEXT, (), first | second, PHRASES, PHRASES, masks)
    return PairTable("hand", "shapes-two", [row])


def test_grounding_through_the_runner_on_a_hand_made_case(backend, hand_made, tmp_path):
    """Pointing: both maxima on their own object -> 1; share: (3/4 + 3/5) / 2 = 0.675. With the
    two objects' masks swapped the same maps score 0 and (1/4 + 2/5) / 2 = 0.325."""
    result = run_evaluation(backend, _hand_table(), [hand_made], ["grounding"], None, 0, tmp_path / "a", progress=False)
    (record,) = result.records
    assert record["metrics"] == {"phrase_pointing": 1.0, "right_object_share": pytest.approx(0.675)}
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "phrase_pointing ↑" in summary and "right_object_share ↑" in summary and "0.675" in summary
    swapped = run_evaluation(
        backend, _hand_table(swapped=True), [hand_made], ["grounding"], None, 0, tmp_path / "b", progress=False
    )
    assert swapped.records[0]["metrics"] == {"phrase_pointing": 0.0, "right_object_share": pytest.approx(0.325)}


def test_shapes_two_rows_are_the_two_object_scenes_with_their_own_masks():
    from m2ib.datasets.shapes import make_caption, render_scene, split_seed

    table = load_table("shapes-two:test:4", size=64)
    assert table.kind == "shapes-two" and [r.id for r in table.rows] == [f"shapes-two:test:{i}" for i in range(4)]
    for i, row in enumerate(table.rows):
        scene = render_scene(split_seed("test", i), size=64, n_objects=(2, 2))
        assert torch.equal(row.image, scene.image) and row.text == make_caption(scene, "all").text
        assert len(row.phrases) == len(row.object_masks) == 2 and re.fullmatch(r"an? \w+ \w+ and an? \w+ \w+", row.text)
        for (start, end), mask in zip(row.phrases, row.object_masks):
            colour, shape = row.text[start:end].split()
            obj = next(k for k, o in enumerate(scene.objects) if (o.colour, o.shape) == (colour, shape))
            assert torch.equal(mask, scene.masks[obj])
    with pytest.raises(InputError, match="shapes-two:SPLIT:N"):
        load_table("shapes-two:test", size=64)


def test_first_order_baseline_is_the_map_of_each_phrase_explained_alone(tiny):
    """A first-order method's grounding values are those of its raw image map of each phrase alone
    (computed here pair by pair); phrase-alone with that method gives the same; batches change nothing."""
    from m2ib.methods import REGISTRY as METHODS

    table = load_table("shapes-two:test:3", size=tiny.geometry.image_size[0])
    records, bad = evaluate_rows(tiny, table.rows, ["gradeclip", "phrase-alone"], ["grounding"], None, 0)
    assert not bad
    method = METHODS.get("gradeclip")()
    settings = method.make_settings(tiny, seed=0)
    for row in table.rows:
        image = tiny.preprocess_images([load_image(row.image)[0]])
        maps = torch.stack(
            [
                method.explain(tiny, image, tiny.tokenize([row.text[a:b]]), settings, ("image",))[0].image_map_raw
                for a, b in row.phrases
            ]
        )
        plain = grounding_scores(maps, row.object_masks)
        for name in ("gradeclip", "phrase-alone"):
            got = next(r for r in records if r["row"] == row.id and r["method"] == name)["metrics"]
            assert got == {k: pytest.approx(v, abs=1e-6) for k, v in plain.items()}, name
    full, _ = evaluate_rows(tiny, table.rows, ["gradeclip"], ["grounding", "localisation"], None, 0)
    for alone, both in zip([r for r in records if r["method"] == "gradeclip"], full):
        # grounding alone skips the whole caption's maps: the same values and similarity all the same
        assert both["metrics"]["phrase_pointing"] == alone["metrics"]["phrase_pointing"]
        assert both["similarity"] == pytest.approx(alone["similarity"], abs=1e-5)
        assert "image_pointing" in both["metrics"]
    one_by_one = [r for row in table.rows for r in evaluate_rows(tiny, [row], ["gradeclip"], ["grounding"], None, 0)[0]]
    together = [r for r in records if r["method"] == "gradeclip"]
    assert [r["metrics"] for r in one_by_one] == [
        {k: pytest.approx(v, abs=1e-6) for k, v in r["metrics"].items()} for r in together
    ]


def test_exclip_in_evaluate_equals_its_phrase_maps_scored_directly(tiny):
    table = load_table("shapes-two:test:2", size=tiny.geometry.image_size[0])
    settings = {"exclip": {"steps": 2, "text_layer": 0}}
    records, _ = evaluate_rows(tiny, table.rows, ["exclip"], ["grounding"], settings, 0)
    method = INTERACTIONS.get("exclip")()
    chosen = method.make_settings(seed=0, steps=2, text_layer=0)
    for row, record in zip(table.rows, records):
        maps = method.phrase_maps(
            tiny,
            tiny.preprocess_images([load_image(row.image)[0]]),
            tiny.tokenize([row.text]),
            list(row.phrases),
            chosen,
        )
        plain = grounding_scores(maps, row.object_masks)
        assert record["metrics"] == {k: pytest.approx(v, abs=1e-6) for k, v in plain.items()}
        assert record["method"] == "exclip" and record["seconds"]["explain"] > 0


def test_refusals_are_one_line(tiny, hand_made, tmp_path):
    shapes = load_table("shapes:test:2", size=tiny.geometry.image_size[0])
    with pytest.raises(InputError, match="per-object masks.*shapes-two:SPLIT:N"):
        run_evaluation(tiny, shapes, ["gradeclip"], ["grounding"], None, 0, tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="--metrics grounding"):
        run_evaluation(tiny, _hand_table(), [hand_made], ["localisation"], None, 0, tmp_path / "b", progress=False)


def test_a_crashed_run_resumes_with_the_same_numbers(tiny, tmp_path):
    table = load_table("shapes-two:test:3", size=tiny.geometry.image_size[0])
    settings = {"exclip": {"steps": 2}}
    first = run_evaluation(
        tiny, table, ["exclip", "gradeclip"], ["grounding"], settings, 0, tmp_path, progress=False, batch_size=2
    )
    results = tmp_path / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(lines[:-2]) + lines[-2][:25])  # killed while writing the fifth record
    again = run_evaluation(
        tiny, table, ["exclip", "gradeclip"], ["grounding"], settings, 0, tmp_path, progress=False, batch_size=2
    )
    assert again.evaluated == 2 and again.skipped == 4
    _, records = read_results(results)
    assert [(r["row"], r["method"], r["metrics"]) for r in records] == [
        (r["row"], r["method"], r["metrics"]) for r in first.records
    ]


def test_cli_evaluate_with_interaction_methods(tmp_path, capsys):
    from m2ib.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "evaluate",
            "--model",
            "random-tiny",
            "--data",
            "shapes-two:test:2",
            "--methods",
            "exclip,gradeclip",
            "--metrics",
            "grounding",
            "--steps",
            "2",
            "--setting",
            "exclip.text_layer=0",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    header = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert header["settings"]["exclip"]["text_layer"] == 0 and header["settings"]["exclip"]["steps"] == 2
    assert "| exclip |" in (out / "summary.md").read_text()
    capsys.readouterr()
    for argv in (
        ["--data", "shapes:test:2", "--methods", "gradeclip", "--metrics", "grounding"],
        ["--data", "shapes-two:test:2", "--methods", "exclip", "--metrics", "localisation"],
        ["--data", "shapes-two:test:2", "--methods", "exclip,nope", "--metrics", "grounding"],
    ):
        assert main(["evaluate", "--model", "random-tiny", *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("m2ib: error:") and len(err.splitlines()) == 1, err
