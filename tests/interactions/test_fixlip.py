"""FIxLIP (weighted Banzhaf interactions through shapiq) against the index computed plainly from
its definition on a tiny game, and on the shipped shapes model."""

from __future__ import annotations

import functools
import itertools
import sys

import pytest
import torch
import torch.nn.functional as F

from m2ib.backends.base import ImageBatch, TextBatch
from m2ib.errors import InputError
from m2ib.interactions import REGISTRY as INTERACTIONS


def _inputs(backend, text="a red circle"):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return backend.preprocess_images([Image.fromarray(pixels)]), backend.tokenize([text])


def _plain_game(backend, images, texts, group):
    """v(A, B) for every image-player set A and text-player set B, one forward per input: the
    patches of unkept groups zeroed pixel by pixel, unkept tokens given attention mask 0."""
    rows, cols = backend.geometry.patch_grid
    size = backend.geometry.image_size[0] // rows
    group_of = {(r, c): (r // group) * -(-cols // group) + c // group for r in range(rows) for c in range(cols)}
    n_image = max(group_of.values()) + 1
    words = [i for i in range(len(texts.tokens[0])) if i not in texts.special[0]]

    @functools.cache
    def image_embedding(kept_image):
        pixels = images.pixel_values.clone()
        for (r, c), g in group_of.items():
            if g not in kept_image:
                pixels[..., r * size : (r + 1) * size, c * size : (c + 1) * size] = 0.0
        with torch.no_grad():
            return F.normalize(backend.embed("image", ImageBatch(pixels)).double(), dim=-1)

    @functools.cache
    def text_embedding(kept_text):
        mask = texts.attention_mask.clone()
        for pos in words:
            mask[0, pos] = int(pos in kept_text)
        with torch.no_grad():
            return F.normalize(backend.embed("text", TextBatch(texts.input_ids, mask)).double(), dim=-1)

    def value(kept_image, kept_text):  # the cosine similarity of the masked image and the masked text
        return float((image_embedding(frozenset(kept_image)) * text_embedding(frozenset(kept_text))).sum())

    return value, n_image, words


def _plain_weighted_banzhaf(value, n_image, words, p):
    """phi[j, i] = sum_{S in N - {i, j}} p^|S| (1-p)^(n-2-|S|) (v(S+i+j) - v(S+i) - v(S+j) + v(S))."""
    players = [("image", i) for i in range(n_image)] + [("text", t) for t in words]
    cache = {}

    def v(coalition):
        key = frozenset(coalition)
        if key not in cache:
            cache[key] = value({i for kind, i in key if kind == "image"}, {t for kind, t in key if kind == "text"})
        return cache[key]

    n = len(players)
    phi = torch.zeros(len(words), n_image, dtype=torch.float64)
    for j, t in enumerate(words):
        for i in range(n_image):
            rest = [q for q in players if q not in (("image", i), ("text", t))]
            for size in range(len(rest) + 1):
                for subset in itertools.combinations(rest, size):
                    s = set(subset)
                    delta = v(s | {("image", i), ("text", t)}) - v(s | {("image", i)}) - v(s | {("text", t)}) + v(s)
                    phi[j, i] += p**size * (1 - p) ** (n - 2 - size) * delta
    return phi


def _group_sums(result, group, words):
    """The result's score per (text player, image player): its patches' scores summed."""
    rows, cols = result.matrix.shape[1:]
    summed = F.avg_pool2d(result.matrix[None].double(), group, ceil_mode=True)[0] * group * group
    return summed[words].reshape(len(words), -1)


def test_fixlip_equals_the_weighted_banzhaf_index_enumerated_from_its_definition(backend):
    pytest.importorskip("shapiq")
    images, texts = _inputs(backend)
    group, p = 2, 0.7  # 2x2 image players (of a 4x4 patch grid) and the 3 words: 7 players, 128 coalitions
    value, n_image, words = _plain_game(backend, images, texts, group)
    assert (n_image, len(words)) == (4, 3)
    plain = _plain_weighted_banzhaf(value, n_image, words, p)
    method = INTERACTIONS.get("fixlip")()
    settings = method.make_settings(budget=2**7, banzhaf_p=p, patch_group=group)
    result = method.interact(backend, images, texts, settings)
    assert result.info["exact_image"] and result.info["exact_text"]
    ours = _group_sums(result, group, words)
    assert plain.abs().max() > 1e-3  # a game whose interactions are far from zero
    assert torch.allclose(ours, plain, atol=2e-6, rtol=1e-4), (ours, plain)
    assert all(float(result.matrix[k].abs().sum()) == 0.0 for k in result.special_tokens)
    # the index depends on p: the same game at p = 0.5 differs (so the check above can fail)
    other = method.interact(backend, images, texts, method.make_settings(budget=2**7, banzhaf_p=0.5, patch_group=group))
    assert not torch.allclose(_group_sums(other, group, words), plain, atol=1e-4)


def test_sampled_values_approach_the_exact_weighted_banzhaf_values_of_a_nonlinear_game():
    """One side's estimator (shapiq's sampler + the weighted fit) on a plain vector game with strong
    interactions: every coalition gives the values of the definition; samples come close."""
    pytest.importorskip("shapiq")
    import math

    import numpy as np

    from m2ib.interactions.fixlip import banzhaf_values, sample_coalitions

    n, p = 10, 0.7
    w = torch.linspace(-1, 1.5, n, dtype=torch.float64)

    def game(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return torch.stack([x[:, :3].prod(1), (x @ w) ** 2 / 4, torch.sin(2 * x @ w), x[:, 4] * (1 - x[:, 5])], 1)

    every = np.array(list(itertools.product([False, True], repeat=n)))
    index = {tuple(c): k for k, c in enumerate(every.tolist())}
    values = game(every)
    exact = torch.zeros(n, 4, dtype=torch.float64)  # E_{S ~ p over the others}[v(S + i) - v(S)]
    for i in range(n):
        for k, c in enumerate(every.tolist()):
            if not c[i]:
                size = sum(c)
                with_i = index[(*c[:i], True, *c[i + 1 :])]
                exact[i] += p**size * (1 - p) ** (n - 1 - size) * (values[with_i] - values[k])
    kernel = np.exp(every.sum(1) * math.log(p) + (n - every.sum(1)) * math.log1p(-p))
    assert torch.allclose(banzhaf_values(values, every, kernel), exact, atol=1e-12)
    coalitions, weights = sample_coalitions(n, 2**n, p, seed=0)
    assert len(coalitions) == 2**n and np.allclose(weights, kernel[[index[tuple(c)] for c in coalitions.tolist()]])
    errors = []
    for seed in range(5):  # 400 of 1024 coalitions; measured mean error 0.067 (0.114 unweighted by shapiq)
        coalitions, weights = sample_coalitions(n, 400, p, seed)
        errors.append(float((banzhaf_values(game(coalitions), coalitions, weights) - exact).norm() / exact.norm()))
    assert sum(errors) / len(errors) < 0.09, errors


def test_fixlip_runs_on_the_shipped_shapes_model():
    pytest.importorskip("shapiq")
    import m2ib
    from m2ib.datasets.shapes import make_caption, render_scene, split_seed

    backend = m2ib.load("shapes")
    scene = render_scene(split_seed("test", 0), size=backend.geometry.image_size[0], n_objects=(2, 2))
    caption = make_caption(scene, "all").text
    method = INTERACTIONS.get("fixlip")()
    settings = method.make_settings(budget=256, patch_group=4)  # 4x4 players of 4x4 patches
    result = method.interact(
        backend, backend.preprocess_images([scene.to_pil()]), backend.tokenize([caption]), settings
    )
    assert result.matrix.shape == (len(result.tokens), *backend.geometry.patch_grid)
    assert result.info["players_image"] == 16 and result.info["budget_image"] >= 17
    assert torch.isfinite(result.matrix).all() and result.matrix.abs().sum() > 0
    assert result.span_map(caption.split(" and ")[0][2:]).shape == backend.geometry.image_size
    # a group's patches share its score evenly
    grid = result.matrix[result.words[0]]
    assert torch.allclose(grid[:4, :4], grid[0, 0].expand(4, 4))


def test_fixlip_refuses_bad_settings_and_a_missing_shapiq(backend, monkeypatch):
    method = INTERACTIONS.get("fixlip")()
    for bad in ({"banzhaf_p": 1.0}, {"banzhaf_p": 0.0}, {"budget": 3}, {"patch_group": 0}, {"max_batch": 0}):
        with pytest.raises(InputError):
            method.make_settings(**bad)
    images, texts = _inputs(backend)
    monkeypatch.setitem(sys.modules, "shapiq.approximator.sampling", None)
    with pytest.raises(InputError, match=r"m2ib\[interactions\]"):
        method.interact(backend, images, texts, method.make_settings())


def test_fixlip_refuses_a_budget_below_the_players_and_a_tower_that_ignores_the_mask(backend):
    pytest.importorskip("shapiq")
    from m2ib.interactions.fixlip import side_values

    images, texts = _inputs(backend)
    method = INTERACTIONS.get("fixlip")()
    with pytest.raises(InputError, match="raise budget"):
        method.interact(backend, images, texts, method.make_settings(budget=40))  # 16 patches, 4 text coalitions
    coalitions = torch.tensor([[False, False], [True, True], [True, False]]).numpy()
    with pytest.raises(InputError, match="attention mask"):
        side_values(torch.ones(3, 4), coalitions, torch.ones(3).numpy(), "text")


def test_cli_explain_with_fixlip_reads_its_setting_flags(tmp_path):
    pytest.importorskip("shapiq")
    from PIL import Image

    from m2ib.cli import main
    from m2ib.interactions import load_interaction

    picture = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(picture)
    args = [
        "explain",
        str(picture),
        "a red circle",
        "--model",
        "random-tiny",
        "--method",
        "fixlip",
        "--budget",
        "256",
        "--patch-group",
        "2",
        "--banzhaf-p",
        "0.6",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 0
    back = load_interaction(tmp_path / "out" / "scene_fixlip")
    assert back.settings == {"seed": 0, "budget": 256, "banzhaf_p": 0.6, "patch_group": 2, "max_batch": 256}
    assert back.info["players_image"] == 16 and back.info["budget_image"] == 64
    assert main(args[:-2] + ["--banzhaf-p", "1.5", "--out", str(tmp_path / "bad")]) != 0
