"""InternVL behind the generative seam, on random tiny models (offline), with and without tiles.

With tiling (``max_patches=6``) the 32 x 48 test image becomes 2 x 3 tiles of 16 px and a 16 px
thumbnail, 16 tokens each (112 image tokens); the tiles' tokens make an 8 x 12 grid, the thumbnail's
cell -1. A 48 x 32 image is 3 x 2 tiles: the arrangement follows the image's aspect ratio."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image
from tiny_internvl import PROMPT, images_only, tiny_internvl

import m2ib
from m2ib.errors import InputError
from m2ib.generative import generative_backend

ANSWER = "a red circle"


def image_of(height: int, width: int) -> Image.Image:
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def picture():
    return image_of(32, 48)


@pytest.fixture(scope="module")
def tiled():
    return tiny_internvl(seed=0)


@pytest.mark.parametrize(("max_patches", "tokens", "grid"), [(6, 112, (8, 12)), (1, 16, (4, 4))])
def test_split_forward_matches_the_models_own_forward(picture, max_patches, tokens, grid):
    model, processor = tiny_internvl(seed=0, max_patches=max_patches)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.grid == grid and query.cells.numel() == tokens
    captured = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start : query.answer_end] = query.answer_ids
    try:
        with torch.no_grad():
            out = model(**query.inputs, labels=labels)  # the query's inputs as they are, image_sizes included
            plain = model(**{k: v for k, v in query.inputs.items() if k != "image_sizes"})
    finally:
        hook.remove()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    torch.testing.assert_close(states, captured[0].reshape(1, tokens, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0], -out.loss * query.answer_ids.numel(), rtol=0, atol=1e-5)
    logp = plain.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    torch.testing.assert_close(got[0], logp.gather(-1, query.answer_ids[:, None]).sum(), rtol=0, atol=1e-5)
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == tokens


def moved_tokens(backend, query, image: int, rows: slice, cols: slice) -> list[int]:
    """The image tokens whose states change when the pixels [rows, cols] of image ``image`` (tile or thumbnail) change."""
    pixels = query.inputs["pixel_values"].clone()
    pixels[image, :, rows, cols] += 1.0
    changed = dataclasses.replace(query, inputs={**query.inputs, "pixel_values": pixels})
    with torch.no_grad():
        before, after = backend.image_states(query)[0], backend.image_states(changed)[0]
    return ((after - before).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()


def unnormalised(processor, pixels):
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    return (pixels * std + mean).clamp(0, 1)


@pytest.mark.parametrize(("shape", "tiles", "grid"), [((32, 48), (2, 3), (8, 12)), ((48, 32), (3, 2), (12, 8))])
def test_a_tile_block_reaches_its_own_token_and_cell(shape, tiles, grid):
    """No vision layer (patch-local): the 4 x 4 px block (i=1, j=2) of tile (1, 0) moves exactly one token;
    its cell is where those pixels sit in the displayed (stitched) image. The same block of the thumbnail
    moves exactly the thumbnail's token i * 4 + j, mapped to cell -1."""
    model, processor = tiny_internvl(seed=1, vision_layers=0)
    backend = generative_backend(model, processor)
    query = backend.prepare(image_of(*shape), PROMPT, ANSWER)
    rows, cols = tiles
    assert query.grid == grid and query.display.shape == (3, *shape)
    tile = 1 * cols + 0  # tile (1, 0): tiles row-major, then the thumbnail
    moved = moved_tokens(backend, query, tile, slice(4, 8), slice(8, 12))
    assert moved == [tile * 16 + 1 * 4 + 2]
    row, col = divmod(int(query.cells[moved[0]]), grid[1])
    assert (row, col) == (1 * 4 + 1, 0 * 4 + 2)
    block = unnormalised(processor, query.inputs["pixel_values"][tile])[:, 4:8, 8:12]
    torch.testing.assert_close(query.display[:, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4], block)
    thumbnail = rows * cols
    moved = moved_tokens(backend, query, thumbnail, slice(4, 8), slice(8, 12))
    assert moved == [thumbnail * 16 + 1 * 4 + 2] and int(query.cells[moved[0]]) == -1
    drawn = query.cells[: thumbnail * 16]
    assert sorted(drawn.tolist()) == list(range(thumbnail * 16)) and (query.cells[thumbnail * 16 :] == -1).all()


def test_a_single_image_block_reaches_its_own_token(picture):
    model, processor = tiny_internvl(seed=1, vision_layers=0, max_patches=1)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.cells.tolist() == list(range(16)) and query.display.shape == (3, 16, 16)
    torch.testing.assert_close(query.display, unnormalised(processor, query.inputs["pixel_values"][0]))
    assert moved_tokens(backend, query, 0, slice(12, 16), slice(0, 4)) == [3 * 4 + 0]


def test_a_tiny_fit_gives_a_finite_varied_map_and_leaves_the_model(tiled, picture):
    model, processor = tiled
    with torch.no_grad():  # transformers installs its own output-capturing hooks at the first forward: count after it
        model(**generative_backend(model, processor).prepare(picture, PROMPT, ANSWER).inputs)
    hooks = hooks_of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    assert exp.family == "internvl"
    assert exp.grid_map.shape == (8, 12) and exp.image_map.shape == (32, 48) and exp.token_scores.shape == (112,)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert torch.isfinite(exp.token_scores).all() and (exp.token_scores[96:] > 0).all()  # thumbnail: scored
    torch.testing.assert_close(exp.grid_map.sum(), exp.token_scores.sum())  # and drawn: each share sums to 1
    assert exp.words == ["a", "red", "circle"] and exp.word_maps.shape == (3, 32, 48)
    assert torch.isfinite(exp.word_maps).all() and exp.word_grid_maps.shape == (3, 8, 12)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert hooks_of(model) == hooks


def hooks_of(model):
    return [(n, k) for n, m in model.named_modules() for d in (m._forward_hooks, m._forward_pre_hooks) for k in d]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("what is in the image ?", "exactly once"),
        ("<image> what is in the image ?", "not '<image>'"),
        ("<IMG_CONTEXT> <IMG_CONTEXT> what ?", r"exactly once \(found 2"),
        ("<img><IMG_CONTEXT></img> what ?", "the processor adds them"),
        ("<IMG_CONTEXT> <video> what ?", "video placeholder"),
        (" ", "empty"),
    ],
)
def test_bad_prompts_are_one_line(tiled, picture, prompt, message):
    model, processor = tiled
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture, prompt, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


def test_a_foreign_image_count_is_one_line(tiled, picture):
    model, processor = tiled
    backend = generative_backend(model, processor)
    inputs = backend.prompt_inputs(picture, PROMPT)
    with pytest.raises(InputError, match="112 image tokens for 6 image"):
        backend.image_layout({**inputs, "pixel_values": inputs["pixel_values"][:-1]})


def test_explain_a_saved_internvl_from_the_command_line(tiled, picture, tmp_path, capsys):
    from m2ib.cli import main

    model, processor = tiled
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with images_only():  # see images_only: this environment has no torchvision for the video processor
        processor.save_pretrained(folder)
    picture.save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "scene.png"), PROMPT, "--answer", ANSWER, "--model", str(folder)]
    with images_only():
        code = main([*args, "--out", str(out), "--steps", "2", "--samples", "1"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "scene.json").read_text())
    assert record["answer"] == ANSWER and record["family"] == "internvl" and record["settings"]["steps"] == 2
    assert (out / "scene.npz").exists() and (out / "scene.png").exists()
    assert main(["list"]) == 0 and "InternVLForConditionalGeneration" in capsys.readouterr().out


def test_the_thumbnails_tokens_spread_over_their_cells_by_area(tiled, picture):
    """The thumbnail's 16 tokens (the last) over the 8 x 12 grid: a plain count on a lattice over the display
    (each point's tile cell and the thumbnail's token that reads it), to 1e-3; tile tokens spread nowhere; the
    map of one thumbnail token's score is its spread, its 2 x 3 block of cells."""
    from whole_image_lattice import check_whole_image_spread

    check_whole_image_spread(generative_backend(*tiled), picture, PROMPT, ANSWER)


def test_the_fit_finds_the_thumbnail_token_the_answer_reads(tiled, picture):
    """A planted signal: a likelihood that reads only thumbnail token (1, 2) must give it the largest KL by far
    and put the map's peak on its 2 x 3 block of cells (rows 2-3, columns 6-8 of the 8 x 12 grid)."""
    from whole_image_lattice import check_fit_finds_the_whole_image_token

    model, processor = tiled
    check_fit_finds_the_whole_image_token(
        type(generative_backend(model, processor)), model, processor, picture, PROMPT, ANSWER
    )


@pytest.mark.parametrize(("tiles", "tile", "block"), [((2, 3), 16, 4), ((3, 2), 18, 4), ((1, 3), 15, 3)])
def test_whole_image_spread_is_the_lattice_count_with_unread_pixels_too(tiles, tile, block):
    """``whole_image_spread`` alone, also where a tile's last px are read by no token (18 px tiles of 4 x 4
    px blocks: 2 px unread; released models have none), against the plain lattice count, to 1e-3."""
    from whole_image_lattice import lattice_spread

    from m2ib.generative.base import whole_image_spread

    n = tile // block
    spread = whole_image_spread(tiles, n, tile, block, 7 + n * n).to_dense()
    assert spread.shape == (7 + n * n, tiles[0] * n * tiles[1] * n) and not spread[:7].any()
    torch.testing.assert_close(spread[7:], lattice_spread(tiles, tile, n, block), rtol=0, atol=1e-3)
    assert (spread[7:].sum(1) < 1).any() == (tile > n * block)  # unread px: a token's shares fall short of 1
