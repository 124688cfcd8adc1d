"""Word-region interactions (issue 20): the result type, exCLIP against a plain second-order
computation, the first-order baseline, and the grounding metric on a hand-made case."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from m2ib.errors import InputError
from m2ib.interactions import REGISTRY as INTERACTIONS, Interaction, load_interaction
from m2ib.interactions.exclip import block_input, image_reference, text_reference
from m2ib.metrics.grounding import grounding_scores, right_object_share, two_object_phrases


def _inputs(backend, text="a red circle and a blue star"):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return backend.preprocess_images([Image.fromarray(pixels)]), backend.tokenize([text])


def _toy(tokens=("<s>", "red", "circle", "</s>"), grid=(2, 3), size=(4, 6)) -> Interaction:
    matrix = torch.arange(len(tokens) * grid[0] * grid[1], dtype=torch.float32).reshape(len(tokens), *grid)
    return Interaction(
        "red circle",
        list(tokens),
        torch.zeros(3, *size),
        matrix,
        offsets=[(0, 0), (0, 3), (4, 10), (0, 0)],
        special_tokens=(0, 3),
        method="toy",
    )


# --- the result type -----------------------------------------------------------------------------
def test_span_map_selects_tokens_by_phrase_span_or_position():
    inter = _toy()
    expected = inter.matrix[1] + inter.matrix[2]
    assert torch.equal(inter.span_grid("red circle"), expected)
    assert torch.equal(inter.span_grid((0, 10)), expected)
    assert torch.equal(inter.span_grid([1, 2]), expected)
    assert torch.equal(inter.span_grid("circ"), inter.matrix[2])  # a part of a word selects its token
    full = inter.span_map("red")
    assert full.shape == (4, 6)
    assert torch.allclose(full.mean(), inter.matrix[1].mean(), atol=1e-5)  # bilinear keeps a linear ramp's mean
    for bad in ("blue", "", (20, 30), [7]):
        with pytest.raises(InputError):
            inter.span_grid(bad)


def test_region_scores_weigh_patches_by_covered_share():
    inter = _toy()  # 2x3 patches of 2x2 pixels on a 4x6 image
    box = (0.0, 0.0, 3.0, 2.0)  # all of patch (0, 0), half of patch (0, 1)
    scores = inter.region_scores(box)
    plain = inter.matrix[:, 0, 0] + 0.5 * inter.matrix[:, 0, 1]
    assert torch.allclose(scores, plain)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:2, :3] = True
    assert torch.allclose(inter.region_scores(mask), plain)
    with pytest.raises(InputError):
        inter.region_scores((0, 0, 0, 2))
    with pytest.raises(InputError):
        inter.region_scores(torch.ones(5, 5, dtype=torch.bool))


def test_save_and_load_round_trip(tmp_path):
    inter = _toy()
    paths = inter.save(tmp_path, "pair", figure=False)
    assert set(paths) == {"npz", "json"}
    back = load_interaction(tmp_path / "pair")
    assert torch.equal(back.matrix, inter.matrix) and back.tokens == inter.tokens
    assert back.offsets == inter.offsets and back.special_tokens == inter.special_tokens
    assert not list(tmp_path.glob("*.tmp*"))


# --- exCLIP ------------------------------------------------------------------------------------
def _plain_exclip(backend, images, texts, steps):
    """M[i, j] from the mixed second derivative of f(a) . g(b), enumerated over both paths."""
    t_split = block_input(backend, "text", -1, "text_layer")
    i_split = block_input(backend, "image", -1, "image_layer")
    with torch.no_grad():
        x, r = backend.prefix("text", texts, t_split), backend.prefix("text", text_reference(texts), t_split)
        y, q = backend.prefix("image", images, i_split), backend.prefix("image", image_reference(images), i_split)
        norms = backend.embed("text", texts).norm() * backend.embed("image", images).norm()
    alphas = [(s + 0.5) / steps for s in range(steps)]
    with sdpa_kernel(SDPBackend.MATH):  # the only attention kernel with a double backward on the CPU
        return _mixed_second_order(backend, texts, images, (x, r, t_split), (y, q, i_split), alphas) / float(norms)


def _mixed_second_order(backend, texts, images, text_side, image_side, alphas):
    (x, r, t_split), (y, q, i_split) = text_side, image_side
    total = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
    for a in alphas:
        for b in alphas:
            ha = (r + a * (x - r)).requires_grad_(True)
            hb = (q + b * (y - q)).requires_grad_(True)
            s = (backend.suffix("text", ha, t_split, texts) * backend.suffix("image", hb, i_split, images)).sum()
            (ga,) = torch.autograd.grad(s, ha, create_graph=True)
            per_token = (ga * (x - r)).sum(-1)[0]
            for i in range(x.shape[1]):
                (gb,) = torch.autograd.grad(per_token[i], hb, retain_graph=True)
                total[i] += (gb * (y - q)).sum(-1)[0].double()
    return total / len(alphas) ** 2


def test_exclip_equals_plain_second_order_enumeration(backend):
    images, texts = _inputs(backend, "red circle")
    method = INTERACTIONS.get("exclip")()
    result = method.interact(backend, images, texts, method.make_settings(steps=2, chunk=5))
    plain = _plain_exclip(backend, images, texts, steps=2)
    prefix = backend.geometry.image_prefix_tokens
    assert torch.allclose(
        result.matrix.reshape(len(result.tokens), -1).double(), plain[:, prefix:], atol=1e-5, rtol=1e-4
    )
    assert result.info["image_prefix_sum"] == pytest.approx(float(plain[:, :prefix].sum()), abs=1e-5)


def test_exclip_sums_to_the_similarity_difference_as_steps_grow(backend):
    images, texts = _inputs(backend)
    method = INTERACTIONS.get("exclip")()
    result = method.interact(backend, images, texts, method.make_settings(steps=64))
    assert result.info["sum"] == pytest.approx(result.info["expected_sum"], rel=2e-2, abs=1e-4)
    assert result.matrix.shape[1:] == backend.geometry.patch_grid
    assert result.span_map("red circle").shape == backend.geometry.image_size


def test_exclip_refuses_bad_settings_and_batches(backend):
    images, texts = _inputs(backend)
    method = INTERACTIONS.get("exclip")()
    with pytest.raises(InputError):
        method.make_settings(steps=0)
    with pytest.raises(InputError):
        method.make_settings(nonsense=1)
    with pytest.raises(InputError):
        method.interact(backend, images.repeat_interleave(2), backend.tokenize(["a", "b"]), method.make_settings())
    with pytest.raises(InputError):
        method.interact(backend, images, texts, method.make_settings(text_layer=99))


# --- the first-order baseline --------------------------------------------------------------------
def test_phrase_alone_is_the_first_order_map_of_the_phrase_text(backend):
    import m2ib

    images, texts = _inputs(backend)
    method = INTERACTIONS.get("phrase-alone")()
    settings = method.make_settings(first_order="saliency")
    maps = method.phrase_maps(backend, images, texts, [(2, 12), (19, 28)], settings)
    for k, phrase in enumerate(("red circle", "blue star")):
        plain = m2ib.explain(
            backend, pixel_values=images.pixel_values, texts=phrase, method="saliency", modalities=("image",)
        )
        plain = plain[0] if isinstance(plain, list) else plain
        assert torch.allclose(maps[k], plain.image_map_raw)
    result = method.interact(backend, images, texts, settings)
    word = [i for i, t in enumerate(result.tokens) if i not in result.special_tokens][1]  # "red"
    assert result.span_grid([word]).abs().sum() > 0
    assert all(float(result.matrix[i].abs().sum()) == 0.0 for i in result.special_tokens)


def test_registry_lists_both_methods():
    assert {"exclip", "phrase-alone"} <= set(INTERACTIONS.names())
    with pytest.raises(InputError):
        INTERACTIONS.get("nope")()


# --- the grounding metric -----------------------------------------------------------------------
def test_grounding_on_a_hand_made_case():
    own = torch.zeros(6, 6, dtype=torch.bool)
    own[:3, :3] = True
    other = torch.zeros(6, 6, dtype=torch.bool)
    other[3:, 3:] = True
    good = torch.zeros(6, 6)
    good[1, 1], good[4, 4] = 3.0, 1.0  # max on its own object; 3 of 4 units of mass there
    bad = torch.zeros(6, 6)
    bad[4, 4], bad[1, 1], bad[0, 5] = 2.0, -5.0, 9.0  # max outside both; negative mass does not count
    assert right_object_share(good, own, other) == pytest.approx(0.75)
    assert right_object_share(bad, own, other) == pytest.approx(0.0)
    assert right_object_share(torch.zeros(6, 6), own, other) == 0.5
    # phrase 0 is "own" (hit, share 0.75); phrase 1's object is "other": the good map's max misses it
    scores = grounding_scores(torch.stack([good, good]), [own, other])
    assert scores == {"phrase_pointing": 0.5, "right_object_share": pytest.approx((0.75 + 0.25) / 2)}


def test_two_object_phrases_span_colour_to_shape():
    from m2ib.datasets.shapes import make_caption, render_scene, split_seed

    scene = render_scene(split_seed("test", 0), size=64, n_objects=(2, 2))
    caption = make_caption(scene, "all")
    phrases = two_object_phrases(caption)
    assert len(phrases) == 2
    for (start, end), obj in phrases:
        colour, shape = caption.text[start:end].split()
        assert (colour, shape) == (scene.objects[obj].colour, scene.objects[obj].shape)


# --- CLI and figure ----------------------------------------------------------------------------
def test_cli_explain_with_an_interaction_method_writes_matrix_and_figure(tmp_path, capsys):
    from PIL import Image

    from m2ib.cli import main

    picture = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(picture)
    code = main(
        [
            "explain",
            str(picture),
            "a red circle",
            "--model",
            "random-tiny",
            "--method",
            "exclip",
            "--steps",
            "2",
            "--image-layer",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.rsplit(".", 1)[1] for p in written) == ["json", "npz", "png"]
    back = load_interaction(tmp_path / "out" / "scene_exclip")
    assert back.settings["steps"] == 2 and back.settings["image_layer"] == 1
    figure = Image.open(tmp_path / "out" / "scene_exclip.png")
    assert figure.size[0] > figure.size[1]  # one panel per content word ("red", "circle") and the image
    assert (
        main(
            [
                "explain",
                str(picture),
                "a red circle",
                "--model",
                "random-tiny",
                "--method",
                "exclip",
                "--steps",
                "0",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        != 0
    )


def test_interact_from_a_picture_equals_the_method_on_model_inputs(backend):
    from PIL import Image

    from m2ib.interactions import interact

    picture = Image.new("RGB", (48, 48), (30, 60, 220))
    result = interact(backend, picture, "a blue square", steps=2, text_layer=0)
    method = INTERACTIONS.get("exclip")()
    direct = method.interact(
        backend,
        backend.preprocess_images([picture]),
        backend.tokenize(["a blue square"]),
        method.make_settings(steps=2, text_layer=0),
    )
    assert torch.allclose(result.matrix, direct.matrix)
    assert result.span_map("blue square").shape == backend.geometry.image_size
    with pytest.raises(InputError):
        interact(backend, picture, "   ")
