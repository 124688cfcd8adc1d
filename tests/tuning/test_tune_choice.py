"""The rule over a finished grid: shared bottleneck settings, the recommended settings' format, the default grid."""

from __future__ import annotations

import json

from m2ib.methods.m2ib import M2IBSettings
from m2ib.tuning.choice import choose_all, recommended
from m2ib.tuning.grid import REFERENCE, Point, default_layers, points_of
from m2ib.tuning.outputs import settings_document


def record(tower, variant, layer, beta, sanity, faithfulness, agreement=0.5):
    p = Point(tower, variant, layer, beta)
    crit = {"sanity": sanity, "faithfulness": faithfulness, "agreement": agreement, "constant": 0.0}
    return {
        "key": p.key,
        "tower": tower,
        "variant": variant,
        "layer": layer,
        "beta": beta,
        "settings": p.settings("shapes:val:64"),
        "criteria": crit,
    }


def test_towers_share_the_bottleneck():
    image = [record("image", "published", 0, 1.0, 0.9, 0.3), record("image", "standardised", 1, 1.0, 0.2, 0.2)]
    text = [
        record("text", "published", 0, 1.0, 0.1, 0.4, 0.9),  # text's own choice: published
        record("text", "standardised", 0, 1.0, 0.3, 0.1, 0.5),
        record("text", "standardised", 1, 1.0, 0.4, 0.05, 0.4),  # dominated by the point above
    ]
    image_choice, text_choice = choose_all({"image": image, "text": text}, {"image": {}, "text": {}})
    assert image_choice.chosen is image[1]
    assert text_choice.chosen is text[1] and "chosen again" in text_choice.note
    assert recommended([image_choice, text_choice]) == {
        "vision_layer": 1,
        "vision_beta": 1.0,
        "text_layer": 0,
        "text_beta": 1.0,
        "bottleneck": "standardised",
        "reference": "shapes:val:64",
    }


def test_no_recommendation_keeps_the_tower_out_and_the_format_is_the_shipped_one():
    image = [record("image", "published", 0, 1.0, 0.9, 0.3)]  # not sane: nothing chosen
    text = [record("text", "published", 2, 3.0, 0.2, 0.3)]
    choices = choose_all({"image": image, "text": text}, {"image": {}, "text": {}})
    doc = json.loads(json.dumps(settings_document(choices, {"command": "m2ib tune ..."})))
    assert doc["recommended"] == {"m2ib": {"text_layer": 2, "text_beta": 3.0}}
    M2IBSettings(**doc["recommended"]["m2ib"]).validate()  # readable as M2IB's settings
    assert doc["tune"]["towers"]["image"]["chosen"] is None
    assert "not sane" in doc["tune"]["towers"]["image"]["not_qualifying"][image[0]["key"]]


def test_default_grid_holds_the_middle_and_published_layers_and_the_published_beta():
    assert default_layers(12, 9, None) == (5, 9)
    assert default_layers(6, 4, 0) == (0, 2, 4)  # the model's recommended layer joins
    points = points_of("image", ["published", "standardised"], [9, 0], [10.0, 0.1])
    assert points[0] == Point("image", "published", 0, 0.1)  # grid order: variant, layer, beta
    assert points[-1].settings("R") == {
        "vision_layer": 9,
        "vision_beta": 10.0,
        "bottleneck": "standardised",
        "reference": "R",
    }
    assert REFERENCE not in json.dumps([p.settings("R") for p in points])


def test_build_points_default_grid_on_a_model(tune_tiny):
    from m2ib.methods.layered import default_layer
    from m2ib.tuning.tune import TuneRequest, build_points, published_key

    backend, _, _ = tune_tiny
    grid = build_points(backend, TuneRequest("random-tiny", "shapes:val:2", __import__("pathlib").Path("x")), {})
    for tower in ("image", "text"):
        keys = {p.key for p in grid[tower]}
        assert published_key(backend, tower) in keys  # M2IB with no setting is a grid point
        depth = backend.num_layers(tower)
        assert {p.layer for p in grid[tower]} == {(depth - 1) // 2, default_layer(depth)}  # middle, published
        assert {p.beta for p in grid[tower]} >= {0.1}


def test_adaib_is_one_point_per_layer_at_the_smallest_beta():
    # AdaIB's default g does not read beta: copies at other betas would give the same map
    points = points_of("text", ["published", "adaib"], [2, 0], [10.0, 0.1])
    assert [p for p in points if p.variant == "adaib"] == [
        Point("text", "adaib", 0, 0.1),
        Point("text", "adaib", 2, 0.1),
    ]
    assert len([p for p in points if p.variant == "published"]) == 4
    assert points[-1].settings(None) == {"text_layer": 2, "text_beta": 0.1, "objective": "adaib"}
