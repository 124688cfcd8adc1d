"""Settings files (``m2ib.load(model, settings=...)``, ``--settings FILE``): their values replace the
model's recommended ones, setting by setting, for the methods they name; explicit settings still
win; bad files are one line before any model loads; results record where the settings came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import m2ib
from m2ib.errors import InputError
from m2ib.methods import REGISTRY
from m2ib.settings_file import read_settings

ROOT = Path(__file__).resolve().parents[2]
SCENE = str(ROOT / "examples" / "scene1.png")
FAST = {"steps": 2, "samples": 2}


def _m2ib(backend, **overrides):
    return REGISTRY["m2ib"]().make_settings(backend, **overrides)


def test_precedence_defaults_recommended_file_explicit(tmp_path):
    shapes = m2ib.load("shapes")  # recommended m2ib: vision_layer 2, vision_beta 1 (nothing for the text tower)
    assert shapes.recommended["m2ib"] == {"vision_layer": 2, "vision_beta": 1.0}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"recommended": {"m2ib": {"vision_beta": 10.0, "steps": 4}}, "training": {}}))
    mine = m2ib.load("shapes", settings=path)
    s = _m2ib(mine)
    # the file's values replace the model's, the model's other values stay, the defaults fill the rest
    assert (s.vision_beta, s.steps, s.vision_layer, s.text_beta, s.lr) == (
        10.0,
        4,
        2,
        _m2ib(None).text_beta,
        _m2ib(None).lr,
    )
    assert _m2ib(mine, vision_beta=30.0).vision_beta == 30.0  # explicit settings win over the file
    assert mine.settings_source == str(path.resolve())
    # the loaded model is not changed, nor is a backend given to load
    assert _m2ib(shapes).vision_beta == 1.0 and shapes.settings_source is None
    copy = m2ib.load(shapes, settings={"m2ib": {"vision_beta": 5.0}})
    assert copy is not shapes and copy.model is shapes.model and _m2ib(copy).vision_beta == 5.0
    assert shapes.recommended["m2ib"]["vision_beta"] == 1.0 and copy.settings_source == "mapping"


def test_maps_equal_the_same_values_given_explicitly(tmp_path):
    """The plain computation: the file's values given as arguments make the same maps, and the
    results record the file."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"m2ib": {"vision_beta": 3.0, "text_layer": 1}}))
    from_file = m2ib.explain(m2ib.load("random-tiny", settings=path), SCENE, "a red circle", **FAST)
    explicit = m2ib.explain(m2ib.load("random-tiny"), SCENE, "a red circle", vision_beta=3.0, text_layer=1, **FAST)
    assert from_file.settings == explicit.settings and from_file.settings["vision_beta"] == 3.0
    torch.testing.assert_close(from_file.image_map_raw, explicit.image_map_raw, rtol=0, atol=0)
    torch.testing.assert_close(from_file.text_map_raw, explicit.text_map_raw, rtol=0, atol=0)
    assert from_file.to_dict()["settings_source"] == str(path.resolve())
    assert "settings_source" not in explicit.to_dict()  # results without a file read as before
    other = m2ib.explain(m2ib.load("random-tiny"), SCENE, "a red circle", **FAST)
    assert not torch.equal(other.image_map_raw, from_file.image_map_raw)  # the file did change something


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"recommended": [1]}', "recommended must be an object"),
        ('{"nosuch": {"steps": 2}}', "nosuch: unknown method"),
        ('{"recommended": {"m2ib": {"vision_bet": 1}}}', "recommended.m2ib.vision_bet: unknown setting"),
        ('{"m2ib": 3}', "m2ib: expected an object"),
        ('{"m2ib": {"steps": 0}}', "m2ib: steps"),
        ('{"m2ib": {"vision_beta": -1}}', "vision_beta"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key_before_the_model_loads(content, needle, tmp_path, monkeypatch):
    import m2ib.api

    path = tmp_path / "bad.json"
    path.write_text(content)
    monkeypatch.setattr(m2ib.api, "load_backend", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError) as info:
        m2ib.load("shapes", settings=path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message, message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="none.json: settings file not found"):
        read_settings(tmp_path / "none.json", REGISTRY)
    with pytest.raises(InputError, match="is a folder"):
        read_settings(tmp_path, REGISTRY)


def test_the_shipped_model_s_m2ib_json_is_a_settings_file():
    shipped = ROOT / "src" / "m2ib" / "models" / "shapes" / "m2ib.json"
    read = read_settings(shipped, REGISTRY)
    assert read.values == json.loads(shipped.read_text())["recommended"]
