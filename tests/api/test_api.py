"""The public API: inputs of every kind, pairing rules, results, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import m2ib
from m2ib.errors import InputError

FAST = dict(steps=2, samples=2)


def test_single_pair_result(backend):
    exp = m2ib.explain(backend, torch.rand(3, 60, 40), "a red circle", **FAST)
    assert isinstance(exp, m2ib.Explanation)
    assert exp.image_map.shape == (48, 48) and exp.image.shape == (3, 48, 48)
    assert exp.image_grid.shape == (4, 4) and exp.image_map_raw.shape == (48, 48)
    assert exp.text_map.shape == (len(exp.tokens),) == exp.text_map_raw.shape
    assert exp.tokens[0] == "<|startoftext|>" and exp.tokens[-1] == "<|endoftext|>"
    assert exp.tokens[1:-1] == ["a", "red", "circle"] and exp.special_tokens == (0, 4)
    for m in (exp.image_map, exp.text_map):
        assert m.min() >= 0 and m.max() <= 1 and m.max() == 1
    assert -1 <= exp.similarity <= 1
    assert exp.settings["steps"] == 2 and exp.settings["vision_beta"] == 0.1 and exp.method == "m2ib"


def test_pairing_rules(backend, images):
    texts = ["a cat", "a dog", "a car"]
    assert len(m2ib.explain(backend, images, texts, **FAST)) == 3
    one_image = m2ib.explain(backend, images[0], texts, **FAST)
    assert [e.text for e in one_image] == texts
    one_text = m2ib.explain(backend, images, "a cat", **FAST)
    assert len(one_text) == 3 and all(e.text == "a cat" for e in one_text)
    with pytest.raises(InputError, match="2 images and 3 texts"):
        m2ib.explain(backend, images[:2], texts, **FAST)
    with pytest.raises(InputError, match="empty"):
        m2ib.explain(backend, [], texts, **FAST)


def test_preprocessed_tensors_and_modalities(backend, images):
    loaded = [m2ib.inputs.load_image(im)[0] for im in images]
    batch = backend.preprocess_images(loaded)
    tokens = backend.tokenize(["a cat", "a red circle on a tree", "dog"])
    from_tensors = m2ib.explain(
        backend,
        pixel_values=batch.pixel_values,
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        seed=1,
        **FAST,
    )
    from_inputs = m2ib.explain(backend, loaded, ["a cat", "a red circle on a tree", "dog"], seed=1, **FAST)
    for a, b in zip(from_tensors, from_inputs):
        torch.testing.assert_close(a.text_map, b.text_map)
        torch.testing.assert_close(a.image_map, b.image_map)
        torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)  # pictures recovered for figures
        assert a.tokens == b.tokens
    only_text = m2ib.explain(backend, images[0], "a cat", modalities=("text",), **FAST)
    assert only_text.image_map is None and only_text.text_map is not None
    with pytest.raises(InputError, match="modalities"):
        m2ib.explain(backend, images[0], "a cat", modalities=("audio",))


def test_similarity_matrix(backend, images):
    sims = m2ib.similarity(backend, images, ["a cat", "a dog"])
    assert sims.shape == (3, 2)
    exps = m2ib.explain(backend, images, "a dog", **FAST)
    torch.testing.assert_close(sims[:, 1], torch.tensor([e.similarity for e in exps]), atol=1e-5, rtol=0)


def test_image_files_of_every_kind(backend, tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    paths = []
    for name, image in [
        ("grey.png", rgb.convert("L")),
        ("rgba.png", rgb.convert("RGBA")),
        ("palette.png", rgb.convert("P")),
        ("cmyk.jpg", rgb.convert("CMYK")),
        ("deep.png", Image.fromarray(rng.integers(0, 65535, (30, 50), dtype=np.uint16))),
    ]:
        image.save(tmp_path / name)
        paths.append(tmp_path / name)
    exps = m2ib.explain(backend, paths, "a cat", **FAST)
    assert all(torch.isfinite(e.image_map).all() for e in exps)
    assert exps[0].image_source.endswith("grey.png")


def test_exif_orientation_is_honoured(backend, tmp_path):
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, :10] = 255  # white band on the left of a wide image
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded, _ = m2ib.inputs.load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (20, 60)  # displayed upright: tall, the band now on top
    assert np.asarray(loaded)[:5].mean() > 200 and np.asarray(loaded)[-5:].mean() < 50


def test_bad_images_are_one_line_errors(backend, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "text.jpg").write_text("hello")
    for path, message in [
        (tmp_path / "missing.png", "image file not found"),
        (tmp_path / "broken.png", "cannot read image"),
        (tmp_path / "text.jpg", "cannot read image"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(InputError, match=message) as info:
            m2ib.explain(backend, path, "a cat", **FAST)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(InputError, match="outside"):
        m2ib.explain(backend, torch.rand(3, 8, 8) * 3, "a cat")
    with pytest.raises(InputError, match="empty text"):
        m2ib.explain(backend, torch.rand(3, 8, 8), "   ")


def test_save_writes_figure_maps_and_json(backend, tmp_path):
    exp = m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", **FAST)
    paths = exp.save(tmp_path / "out", "pair")
    assert sorted(paths) == ["json", "npz", "png"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    maps = np.load(paths["npz"])
    np.testing.assert_allclose(maps["image_map"], exp.image_map.numpy())
    np.testing.assert_allclose(maps["text_map"], exp.text_map.numpy())
    meta = json.loads(paths["json"].read_text())
    assert meta["tokens"] == exp.tokens and meta["settings"]["steps"] == 2 and meta["method"] == "m2ib"
    with Image.open(paths["png"]) as figure:
        assert figure.size[0] > 400


def test_word_shading_excludes_start_and_end(backend):
    exp = m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", **FAST)
    shading = exp.word_shading()
    assert shading[0] == 0 and shading[-1] == 0 and shading[1:-1].max() == 1


def test_list_methods_and_models():
    assert m2ib.list_methods()[0] == "m2ib"
    assert "random-tiny" in m2ib.list_models()


def test_compare_saves_one_comparison(backend, tmp_path):
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(3))
    comparison = m2ib.compare(backend, image, "a red circle", methods="gradcam,saliency")
    assert isinstance(comparison, m2ib.Comparison) and comparison.methods == ["gradcam", "saliency"]
    alone = m2ib.explain(backend, image, "a red circle", method="saliency")
    assert torch.equal(comparison.explanations["saliency"].image_map, alone.image_map)
    paths = comparison.save(tmp_path / "out", "pair")
    assert sorted(paths) == ["json", "npz", "png"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    maps = np.load(paths["npz"])
    for method in ("gradcam", "saliency"):
        exp = comparison.explanations[method]
        np.testing.assert_array_equal(maps[f"{method}/image_map"], exp.image_map.numpy())
        np.testing.assert_array_equal(maps[f"{method}/text_map"], exp.text_map.numpy())
    np.testing.assert_array_equal(maps["image"], alone.image.numpy())
    meta = json.loads(paths["json"].read_text())
    assert list(meta["methods"]) == ["gradcam", "saliency"] and meta["tokens"] == alone.tokens
    assert "failed" not in meta
    with Image.open(paths["png"]) as figure:  # two rows
        assert figure.size[1] > 300
    pairs = m2ib.compare(backend, [image, image], ["a red circle", "a blue star"], methods=["gradcam"])
    assert [c.first.text for c in pairs] == ["a red circle", "a blue star"]


def test_compare_keeps_going_past_a_failing_method(backend, monkeypatch, registered):
    from m2ib.methods import REGISTRY, Saliency

    class Broken(Saliency):
        name, title = "broken-test", "Broken"

        def attribute(self, *args, **kwargs):
            raise RuntimeError("boom")

    registered(REGISTRY, Broken)
    image = torch.rand(3, 48, 48)
    with pytest.raises(RuntimeError, match="boom"):
        m2ib.compare(backend, image, "a cat", methods="saliency,broken-test")
    comparison = m2ib.compare(backend, image, "a cat", methods="saliency,broken-test", keep_going=True)
    assert list(comparison.explanations) == ["saliency"] and comparison.failures == {
        "broken-test": "RuntimeError: boom"
    }
    assert comparison.to_dict()["failed"] == {"broken-test": "RuntimeError: boom"}
    with pytest.raises(InputError, match="every method failed: broken-test: RuntimeError: boom"):
        m2ib.compare(backend, image, "a cat", methods="broken-test", keep_going=True)
    with pytest.raises(InputError, match="settings for m2ib, which is not compared"):
        m2ib.compare(backend, image, "a cat", methods="saliency", settings={"m2ib": {"steps": 1}})
