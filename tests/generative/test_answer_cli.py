"""``m2ib explain IMAGE PROMPT --answer TEXT --model DIR`` on a saved random tiny LLaVA (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2ib.cli import main

PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def saved(saved_llava):
    return saved_llava  # tests/conftest.py: a saved tiny LLaVA and an 8 px image


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
        (["--answer", "a", "--method", "saliency", "--image-layer", "1"], "--image-layer does not apply"),
        (["--answer", "a", "--method", "rise", "--no-per-word"], "--no-per-word does not apply"),
        (["--answer", "a", "--method", "occlusion", "--prompt-side"], "--prompt-side does not apply"),
        (["--answer", "a", "--image-layer", "-1"], "image_layer=-1 must be an integer >= 0"),
        (["--answer", "a", "--image-layer", "two"], "image_layer='two' must be a whole number"),
        (["--no-per-word"], "--no-per-word is a setting of the answer methods"),  # without --answer
        (["--prompt-side"], "--prompt-side is a setting of the answer methods"),
        (["--image-layer", "1"], "--image-layer is a setting of exclip, and of M2IB on an answer"),
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


def _fit_by_cli(saved, out, *flags):
    args = ["explain", str(saved / "scene.png"), PROMPT, "--answer", "a red circle", "--model", str(saved / "model")]
    assert main([*args, "--out", str(out), "--steps", "2", "--samples", "1", "--no-figure", *flags]) == 0
    return json.loads((out / "scene.json").read_text()), np.load(out / "scene.npz")


def test_the_switches_reach_the_fit(saved, tmp_path):
    record, arrays = _fit_by_cli(saved, tmp_path / "off", "--no-per-word", "--no-prompt-side")
    assert record["settings"]["per_word"] is False and record["settings"]["prompt_side"] is False
    assert "word_maps" not in arrays and "prompt_scores" not in arrays and not record["words"]
    record, arrays = _fit_by_cli(saved, tmp_path / "on", "--per-word", "--no-prompt-side")
    assert record["settings"]["per_word"] is True and record["words"] == ["a", "red", "circle"]
    assert arrays["word_maps"].shape[0] == 3 and "prompt_scores" not in arrays
    record, arrays = _fit_by_cli(saved, tmp_path / "prompt", "--no-per-word", "--prompt-side")
    assert "word_maps" not in arrays and arrays["prompt_scores"].shape == (len(record["prompt_words"]),)


def test_image_layer_puts_the_site_where_the_api_does(saved, tmp_path):
    from m2ib.generative import explain_answer
    from m2ib.generative.loading import load_generative

    record, arrays = _fit_by_cli(saved, tmp_path / "one", "--image-layer", "1", "--no-per-word", "--no-prompt-side")
    assert record["settings"]["image_layer"] == 1
    backend = load_generative(str(saved / "model"))
    same = dict(steps=2, samples=1, per_word=False, prompt_side=False)
    api = explain_answer(backend, saved / "scene.png", PROMPT, answer="a red circle", image_layer=1, **same)
    at_input = explain_answer(backend, saved / "scene.png", PROMPT, answer="a red circle", image_layer=0, **same)
    np.testing.assert_allclose(arrays["token_scores"], api.token_scores.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(arrays["token_scores"], at_input.token_scores.numpy(), rtol=1e-3)


def test_an_image_the_processor_cannot_read_is_one_line_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "scene.png"
    bad.write_bytes(b"not a png")  # a file, but no image
    args = ["explain", str(bad), PROMPT, "--answer", "a", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scene.png" in err and "no-model" not in err  # the image, not the model


def test_out_at_the_images_folder_never_writes_over_the_image(saved, tmp_path, capsys):
    import shutil

    image = tmp_path / "scene.png"
    shutil.copyfile(saved / "scene.png", image)
    before = image.read_bytes()
    args = ["explain", str(image), PROMPT, "--answer", "a", "--model", str(saved / "model"), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "over the input" in err
    assert image.read_bytes() == before and not (tmp_path / "scene.json").exists()
