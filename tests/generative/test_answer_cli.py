"""``m2ib explain IMAGE PROMPT --answer TEXT --model DIR`` on a saved random tiny LLaVA (offline)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava

from m2ib.cli import main

PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava")
    model, processor = tiny_llava(seed=0)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    g = torch.Generator().manual_seed(3)
    Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy()).save(folder / "scene.png")
    return folder


def test_explain_answer_from_the_command_line(saved, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["explain", str(saved / "scene.png"), PROMPT, "--answer", "a red circle", "--model", str(saved / "model")]
    assert main([*args, "--out", str(out), "--steps", "2", "--samples", "1", "--vision-beta", "0.5"]) == 0
    record = json.loads((out / "scene.json").read_text())
    assert record["answer"] == "a red circle" and record["family"] == "llava"
    assert record["settings"]["beta"] == 0.5 and record["settings"]["steps"] == 2
    assert (out / "scene.npz").exists() and (out / "scene.png").exists()
    # a second run does not write over the first
    assert main([*args, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answer", ""], "empty"),
        (["--answer", "a", "--negative", "blue"], "--negative does not apply"),
        (["--answer", "a", "--text-beta", "1"], "--text-beta does not apply"),
        (["--answer", "a", "--image-layer", "1"], "--image-layer does not apply"),  # an interaction method's flag
        (["--answer", "a", "--steps", "0"], "steps"),
        (["--answer", "a", "--method", "gradcam"], "one answer method"),
    ],
)
def test_bad_flags_are_one_line_before_the_model_loads(saved, tmp_path, capsys, extra, message):
    args = ["explain", str(saved / "scene.png"), PROMPT, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_model_that_is_not_generative_is_one_line(saved, tmp_path, capsys):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    args = [
        "explain",
        str(saved / "scene.png"),
        PROMPT,
        "--answer",
        "a",
        "--model",
        str(folder),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "not a supported generative model" in capsys.readouterr().err
