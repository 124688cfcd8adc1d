"""LLaVA-NeXT and LLaVA-OneVision behind the generative seam, on random tiny models (offline).

8 px tiles of 4 x 4 tokens. The 8 x 48 (wide) image is cut as 1 x 3 tiles, its token grid 4 x 12 of which
unpadding keeps rows 1-2 (2 x 12); the 48 x 8 (tall) one as 3 x 1, columns 1-2 kept (12 x 2); the 24 x 40
one as 2 x 2, rows 2-5 kept (4 x 8). OneVision with ``anyres_max_1`` shrinks those grids (1 x 9, 9 x 1, 2 x 5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_llava_next import tiny_llava_next, tiny_llava_onevision

import m2ib
from m2ib.errors import InputError
from m2ib.generative import generative_backend

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"
N = 4  # tokens a side of a tile
# picture shape -> (tiles R x C, un-padded grid h x w, its top-left corner in the padded (R*4) x (C*4) grid)
SHAPES = {(8, 48): ((1, 3), (2, 12), (1, 0)), (48, 8): ((3, 1), (12, 2), (0, 1)), (24, 40): ((2, 2), (4, 8), (2, 0))}
SHRUNK = {(8, 48): (1, 9), (48, 8): (9, 1), (24, 40): (2, 5)}


def picture(shape: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(*shape, 3, generator=g) * 255).byte().numpy())


def tiny(family: str, patch_local: bool = False):
    if family == "llava-next":
        return tiny_llava_next(seed=0, patch_local=patch_local)
    aspect = "anyres_max_1" if family == "shrunk" else "anyres_max_9"
    return tiny_llava_onevision(seed=0, patch_local=patch_local, aspect=aspect)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("family", ["llava-next", "llava-onevision", "shrunk"])
def test_split_forward_matches_the_models_own_forward(family, shape):
    model, processor = tiny(family)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture(shape), PROMPT, ANSWER)
    tiles, (h, w), _ = SHAPES[shape]
    rows, cols = SHRUNK[shape] if family == "shrunk" else (h, w)
    assert backend.tile_grid(query.inputs) == tiles and query.grid == (rows, cols)
    assert query.cells.numel() == N * N + rows * (cols + 1)  # base, then each row and its newline
    captured = []

    def entering(module, args, kwargs):  # what the language model is given: the site, in the sequence
        captured.append(kwargs["inputs_embeds"][0, query.image_positions].detach())

    hook = model.model.language_model.register_forward_pre_hook(entering, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**query.inputs)
    finally:
        hook.remove()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    torch.testing.assert_close(states[0], captured[0], rtol=0, atol=1e-6)
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    torch.testing.assert_close(got[0], logp.gather(-1, query.answer_ids[:, None]).sum(), rtol=0, atol=1e-5)
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == query.cells.numel()
    # the display: the un-padded region, 2 px a token (unshrunk) of the tiles stitched back
    assert query.display.shape == (3, 2 * h, 2 * w)


def moved_tokens(backend, query, image: int, row: int, col: int) -> list[int]:
    """The image tokens whose states change when patch (row, col) (2 x 2 px) of image ``image`` (0: base) changes."""
    pixels = query.inputs["pixel_values"].clone()
    pixels[0, image, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] += 1.0
    changed = dataclasses.replace(query, inputs={**query.inputs, "pixel_values": pixels})
    with torch.no_grad():
        before, after = backend.image_states(query)[0], backend.image_states(changed)[0]
    return ((after - before).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("family", ["llava-next", "llava-onevision"])
def test_a_patch_reaches_exactly_the_token_its_cell_names(family, shape):
    """The projector reading the patch embeddings (patch-local): a patch of the last tile moves exactly the token whose cell is that patch's
    place in the un-padded grid (worked out here from the tile geometry), and the display shows that patch's
    pixels in that cell; a patch of the base image moves its own base token (cell -1); a patch in the cut-off
    padding moves nothing; the newline tokens are the model's ``image_newline``, cell -1, one after each row."""
    model, processor = tiny(family, patch_local=True)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture(shape), PROMPT, ANSWER)
    (tiles_r, tiles_c), (h, w), (top, left) = SHAPES[shape]
    r, c, a, b = tiles_r - 1, tiles_c - 1, 1, 1  # patch (1, 1) of the last tile
    cell = (r * N + a - top) * w + (c * N + b - left)
    moved = moved_tokens(backend, query, 1 + r * tiles_c + c, a, b)
    assert moved == (query.cells == cell).nonzero()[:, 0].tolist() and len(moved) == 1
    assert moved[0] == N * N + (r * N + a - top) * (w + 1) + (c * N + b - left)  # the sequence's order
    pixels = query.inputs["pixel_values"][0, 1 + r * tiles_c + c, :, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2]
    row, col = divmod(cell, w)
    torch.testing.assert_close(
        query.display[:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2], backend.unnormalised(pixels)
    )
    assert moved_tokens(backend, query, 0, 3, 2) == [3 * N + 2] and int(query.cells[3 * N + 2]) == -1
    assert moved_tokens(backend, query, 1, 0, 0) == []  # top-left patch of the first tile: padding, cut
    newlines = N * N + torch.arange(1, h + 1) * (w + 1) - 1
    assert (query.cells[newlines] == -1).all() and int((query.cells == -1).sum()) == N * N + h
    with torch.no_grad():
        states = backend.image_states(query)[0]
    torch.testing.assert_close(states[newlines], model.model.image_newline.expand(h, -1), rtol=0, atol=0)
    assert sorted(query.cells[query.cells >= 0].tolist()) == list(range(h * w))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_patch_of_a_shrunk_grid_reaches_the_tokens_that_blend_it(shape):
    """OneVision past anyres_max_N: the un-padded grid is shrunk bilinearly, so a patch reaches the shrunk tokens
    whose bilinear weights include it. A plain computation, a one-hot grid interpolated as the model does, names
    the cells; the tokens that move are exactly the tokens of those cells."""
    model, processor = tiny("shrunk", patch_local=True)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture(shape), PROMPT, ANSWER)
    (tiles_r, tiles_c), (h, w), (top, left) = SHAPES[shape]
    r, c, a, b = tiles_r - 1, tiles_c - 1, 1, 1
    onehot = torch.zeros(1, 1, h, w)
    onehot[0, 0, r * N + a - top, c * N + b - left] = 1.0
    reach = F.interpolate(onehot, list(SHRUNK[shape]), mode="bilinear")[0, 0].flatten()
    cells = reach.nonzero()[:, 0].tolist()
    moved = moved_tokens(backend, query, 1 + r * tiles_c + c, a, b)
    assert cells and moved == [k for k in range(query.cells.numel()) if int(query.cells[k]) in cells]
    assert query.display.shape == (3, 2 * h, 2 * w)


@pytest.mark.parametrize("tile", [8, 9])
def test_the_display_shows_each_drawn_cell_its_own_patch(tile):
    """Every drawn cell's 2 x 2 px of the display are the pixels of the tile patch that token reads, found from
    the padded grid: with 9 px tiles the last pixel row and column of each tile is read by no patch (as
    SigLIP-384/14's last 6 px), so the display must leave them out, not stitch whole tiles."""
    model, processor = tiny_llava_onevision(seed=0, tile=tile)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture((24, 40)), PROMPT, ANSWER)
    (tiles_r, tiles_c), (h, w), (top, left) = SHAPES[(24, 40)]
    assert backend.tile_grid(query.inputs) == (tiles_r, tiles_c) and backend.unpadded(query.inputs) == (top, left, h, w)
    assert query.display.shape == (3, 2 * h, 2 * w)
    for cell in range(h * w):
        row, col = divmod(cell, w)
        (r, a), (c, b) = divmod(row + top, N), divmod(col + left, N)
        pixels = query.inputs["pixel_values"][0, 1 + r * tiles_c + c, :, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2]
        shown = query.display[:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
        torch.testing.assert_close(shown, backend.unnormalised(pixels), msg=f"cell {cell}")


def hooks(model) -> list:
    return [(n, list(m._forward_hooks.values()), list(m._forward_pre_hooks.values())) for n, m in model.named_modules()]


def test_a_tiny_fit_gives_a_finite_varied_map_and_leaves_the_model():
    model, processor = tiny("llava-next")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = generative_backend(model, processor)
    with torch.no_grad():  # transformers installs its own output-capturing hooks once, on a first forward
        backend.image_states(backend.prepare(picture((24, 40)), PROMPT, ANSWER))
    own = hooks(model)
    exp = m2ib.explain_answer(model, picture((24, 40)), PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    assert exp.family == "llava-next" and exp.token_scores.shape == (52,)
    assert exp.grid_map.shape == (4, 8) and exp.image_map.shape == (8, 16)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert (exp.token_scores[: N * N] > 0).all()  # the base image's tokens: bottlenecked and scored
    query = backend.prepare(picture((24, 40)), PROMPT, ANSWER)  # and drawn: each over its cells, by its share
    drawn = exp.token_scores[query.cells >= 0].sum() + exp.token_scores @ query.spread.to_dense().sum(1)
    torch.testing.assert_close(exp.grid_map.sum(), drawn)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert hooks(model) == own  # none of ours left


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("what is in the image ?", "exactly once"),
        ("<image> <image> what ?", "exactly once"),
        ("<video> what ?", "video"),
    ],
)
def test_bad_prompts_are_one_line(prompt, message):
    model, processor = tiny("llava-onevision")
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture((24, 40)), prompt, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(1, 100), (100, 1)])
def test_an_image_too_thin_to_draw_is_one_line(shape):
    """Unpadding a 1 x 100 image's 1 x 3 tile grid leaves no token row: the model packs the base image only."""
    model, processor = tiny("llava-next")
    with pytest.raises(InputError, match="too thin") as info:
        m2ib.explain_answer(model, picture(shape), PROMPT, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


def test_a_processor_that_disagrees_with_the_model_is_one_line():
    model, processor = tiny("llava-next")
    backend = generative_backend(model, processor)
    inputs = backend.prompt_inputs(picture((24, 40)), PROMPT)
    inputs["image_sizes"] = torch.tensor([[8, 48]])  # another tile grid than the text's tokens were made for
    with pytest.raises(InputError, match="image tokens"):
        backend.image_layout(inputs)
    model, processor = tiny("llava-onevision")
    model.config.vision_aspect_ratio = "pad"  # a form the model cannot parse either
    with pytest.raises(InputError, match="anyres_max_N"):
        generative_backend(model, processor).prepare(picture((24, 40)), PROMPT, ANSWER)


def test_a_saved_llava_next_loads_by_its_architecture(tmp_path):
    from m2ib.generative.loading import load_generative

    model, processor = tiny("llava-next")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    backend = load_generative(str(tmp_path))
    assert type(backend.model).__name__ == "LlavaNextForConditionalGeneration"
    exp = m2ib.explain_answer(backend, picture((8, 48)), PROMPT, answer=ANSWER, steps=1, samples=1)
    assert exp.family == "llava-next" and exp.grid_map.shape == (2, 12)


def test_the_fit_finds_the_tile_token_the_answer_reads():
    """A planted signal on the 24 x 40 layout: a likelihood that reads only the token at cell (3, 5) of the
    4 x 8 grid (sequence index 16 base + 3 rows of 9 + 5) must give it the largest KL by far and put the map's
    peak on that cell (the base tokens are drawn spread over their cells, the newlines not at all)."""
    from m2ib.generative import AnswerM2IBSettings, fit_answer

    model, processor = tiny("llava-next")
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 52, 32, generator=g)
    states = 3.0 * states / states.norm(dim=-1, keepdim=True)
    read = N * N + 3 * 9 + 5

    class ReadsOneToken(type(generative_backend(model, processor))):
        def image_states(self, query):
            return states.clone()

        def rest(self, query, z):
            return -10.0 * (z[:, read] - states[:, read]).square().sum(-1)

    backend = ReadsOneToken(model, processor)
    fit = fit_answer(
        backend, backend.prepare(picture((24, 40)), PROMPT, ANSWER), AnswerM2IBSettings(steps=10, samples=4)
    )
    others = torch.cat([fit.token_scores[:read], fit.token_scores[read + 1 :]])
    assert int(fit.token_scores.argmax()) == read and fit.token_scores[read] > 100 * others.max()
    assert fit.grid_map.shape == (4, 8) and divmod(int(fit.grid_map.argmax()), 8) == (3, 5)


def test_explain_a_saved_onevision_from_the_command_line(tmp_path, capsys):
    import json

    import transformers as tf
    from tiny_llava_next import images_only

    from m2ib.cli import main

    model, processor = tiny("llava-onevision")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with images_only(tf.LlavaOnevisionProcessor):  # no torchvision here for the video processor
        processor.save_pretrained(folder)
    picture((8, 48)).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["explain", str(tmp_path / "scene.png"), PROMPT, "--answer", ANSWER, "--model", str(folder)]
    with images_only(tf.LlavaOnevisionProcessor):
        code = main([*args, "--out", str(out), "--steps", "2", "--samples", "1"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "scene.json").read_text())
    assert record["answer"] == ANSWER and record["family"] == "llava-onevision"
    assert (out / "scene.npz").exists() and (out / "scene.png").exists()
    assert main(["list"]) == 0 and "LlavaOnevisionForConditionalGeneration" in capsys.readouterr().out


def ramp(shape: tuple[int, int]) -> Image.Image:
    """Red rises down the image, green to the right, linearly (pixel centres): a region's mean is its centre's value."""
    h, w = shape
    y = ((torch.arange(h) + 0.5) / h)[:, None].expand(h, w)
    x = ((torch.arange(w) + 0.5) / w)[None, :].expand(h, w)
    return Image.fromarray((torch.stack([y, x, torch.zeros(h, w)], -1) * 255).round().byte().numpy())


VARIANTS = {"llava-next": {}, "shrunk": {"aspect": "anyres_max_1"}, "9 px tiles": {"tile": 9}}


def variant(name: str):
    return tiny_llava_next(seed=0) if name == "llava-next" else tiny_llava_onevision(seed=0, **VARIANTS[name])


@pytest.mark.parametrize("shape", [*SHAPES, (30, 30)])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_cells_extent_in_the_image_is_what_the_display_shows_there(name, shape):
    """The cells' extents in the original image (``edges``: through unpadding, the tiles, the processor's resize
    and centred paste) against what the model's own processor put in each cell: on a linear ramp, a cell's mean
    colour in the display is the ramp's value at the centre of the extent (to the resize's rounding; shrunk
    cells end mid-pixel of the display, so pooling it by whole pixels is looser)."""
    model, processor = variant(name)
    backend = generative_backend(model, processor)
    query = backend.prepare(ramp(shape), PROMPT, ANSWER)
    rows, cols = query.grid
    shown = F.adaptive_avg_pool2d(query.display[None], (rows, cols))[0]  # [3, rows, cols]
    (top, bottom), (left, right) = backend.edges(query.inputs, 0, rows), backend.edges(query.inputs, 1, cols)
    tolerance = 0.03 if name == "shrunk" else 0.005
    down = ((top + bottom) / 2 / shape[0]).float()[:, None].expand(rows, cols)
    across = ((left + right) / 2 / shape[1]).float()[None, :].expand(rows, cols)
    torch.testing.assert_close(shown[0], down, rtol=0, atol=tolerance)
    torch.testing.assert_close(shown[1], across, rtol=0, atol=tolerance)


@pytest.mark.parametrize("shape", [(24, 40), (48, 8)])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_spread_is_each_base_tokens_area_in_each_cell(name, shape):
    """A plain count: points on a fine lattice over the original image, each in the base token (a, b) = the
    n x n split of the whole image and in the cell whose extent holds it; a token's share of a cell is the
    fraction of its points there. Tile and newline tokens spread nowhere; the map of a base token's score is
    its spread."""
    from m2ib.generative.m2ib import grid_scores

    model, processor = variant(name)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture(shape), PROMPT, ANSWER)
    rows, cols = query.grid
    spread = query.spread.to_dense()
    assert spread.shape == (query.cells.numel(), rows * cols) and not spread[N * N :].any()
    step = 64  # lattice points per pixel side
    counts = torch.zeros(N * N, rows * cols)
    ys = (torch.arange(shape[0] * step, dtype=torch.float64) + 0.5) / step
    xs = (torch.arange(shape[1] * step, dtype=torch.float64) + 0.5) / step

    def place(points, axis, count):  # the cell along ``axis`` holding each point, -1 for none
        begin, end = backend.edges(query.inputs, axis, count)
        inside = (points[:, None] >= begin[None]) & (points[:, None] < end[None])
        return torch.where(inside.any(1), inside.float().argmax(1), -1)

    row, col = place(ys, 0, rows), place(xs, 1, cols)
    a, b = (ys * N / shape[0]).long(), (xs * N / shape[1]).long()
    token = (a[:, None] * N + b[None, :]).flatten()
    cell = (row[:, None] * cols + col[None, :]).flatten()
    hit = (row[:, None] >= 0) & (col[None, :] >= 0)
    counts.index_put_((token[hit.flatten()], cell[hit.flatten()]), torch.ones(int(hit.sum())), accumulate=True)
    per_token = shape[0] * shape[1] * step * step / (N * N)
    torch.testing.assert_close(spread[: N * N], counts / per_token, rtol=0, atol=2e-3)
    scores = torch.zeros(query.cells.numel())
    scores[5] = 2.0
    torch.testing.assert_close(grid_scores(scores, query.cells, query.grid, query.spread).flatten(), 2 * spread[5])
