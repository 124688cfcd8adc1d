"""Idefics3 and SmolVLM behind the generative seam, on random tiny models (offline), with and without tiles.

With ``split=True`` the 32 x 48 test image becomes 2 x 3 tiles of 16 px and a global 16 px image,
16 tokens each (112 image tokens); the tiles' tokens make an 8 x 12 grid, the global ones cell -1."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from tiny_idefics3 import tiny_idefics3

import m2ib
from m2ib.errors import InputError
from m2ib.generative import generative_backend

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(32, 48, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def tiled():
    return tiny_idefics3(seed=0, split=True)


@pytest.mark.parametrize(("split", "smolvlm"), [(False, False), (True, False), (True, True)])
def test_split_forward_matches_the_models_own_forward(picture, split, smolvlm):
    model, processor = tiny_idefics3(seed=0, split=split, smolvlm=smolvlm)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    tokens = 112 if split else 16
    assert query.grid == ((8, 12) if split else (4, 4)) and query.cells.numel() == tokens
    captured = []
    hook = model.model.connector.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start : query.answer_end] = query.answer_ids
    try:
        with torch.no_grad():
            out = model(**query.inputs, labels=labels)
    finally:
        hook.remove()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    torch.testing.assert_close(states, captured[0].reshape(1, tokens, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0], -out.loss * query.answer_ids.numel(), rtol=0, atol=1e-5)
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    torch.testing.assert_close(got[0], logp.gather(-1, query.answer_ids[:, None]).sum(), rtol=0, atol=1e-5)
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == tokens


def moved_tokens(backend, query, image: int, rows: slice, cols: slice) -> list[int]:
    """The image tokens whose states change when the pixels [rows, cols] of image ``image`` (tile or global) change."""
    pixels = query.inputs["pixel_values"].clone()
    pixels[0, image, :, rows, cols] += 1.0
    changed = dataclasses.replace(query, inputs={**query.inputs, "pixel_values": pixels})
    with torch.no_grad():
        before, after = backend.image_states(query)[0], backend.image_states(changed)[0]
    return ((after - before).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()


def test_a_tile_block_reaches_its_own_token_and_cell(picture):
    """No vision layer (patch-local): the 4 x 4 px block (i=1, j=2) of tile (row 1, col 2) moves exactly one
    token; its cell is where those pixels sit in the displayed (stitched) image. The same block of the global
    image moves exactly the global token i * 4 + j, mapped to cell -1."""
    model, processor = tiny_idefics3(seed=1, vision_layers=0, split=True)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.grid == (8, 12) and query.display.shape == (3, 32, 48)
    tile = 1 * 3 + 2  # tiles row-major, then the global image (index 6)
    moved = moved_tokens(backend, query, tile, slice(4, 8), slice(8, 12))
    assert moved == [tile * 16 + 1 * 4 + 2]
    row, col = divmod(int(query.cells[moved[0]]), 12)
    assert (row, col) == (1 * 4 + 1, 2 * 4 + 2)
    # the cell's pixels in the display are the tile's block: the display is the tiles stitched back
    display = query.display.clone()
    pixels = query.inputs["pixel_values"][0, tile]
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    block = (pixels * std + mean).clamp(0, 1)[:, 4:8, 8:12]
    torch.testing.assert_close(display[:, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4], block)
    moved = moved_tokens(backend, query, 6, slice(4, 8), slice(8, 12))
    assert moved == [6 * 16 + 1 * 4 + 2] and int(query.cells[moved[0]]) == -1
    assert (query.cells[:96] >= 0).all() and sorted(query.cells[:96].tolist()) == list(range(96))
    assert (query.cells[96:] == -1).all()


def test_a_single_image_block_reaches_its_own_token(picture):
    model, processor = tiny_idefics3(seed=1, vision_layers=0, split=False)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.cells.tolist() == list(range(16)) and query.display.shape == (3, 16, 16)
    assert moved_tokens(backend, query, 0, slice(12, 16), slice(0, 4)) == [3 * 4 + 0]


@pytest.mark.parametrize("smolvlm", [False, True])
def test_a_tiny_fit_gives_a_finite_varied_map_and_leaves_the_model(picture, smolvlm):
    model, processor = tiny_idefics3(seed=0, split=True, smolvlm=smolvlm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    assert exp.family == ("smolvlm" if smolvlm else "idefics3")
    assert exp.grid_map.shape == (8, 12) and exp.image_map.shape == (32, 48) and exp.token_scores.shape == (112,)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert torch.isfinite(exp.token_scores).all() and (exp.token_scores[96:] > 0).all()  # global tokens: scored
    torch.testing.assert_close(exp.grid_map.sum(), exp.token_scores.sum())  # and drawn: each share sums to 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("what is in the image ?", "exactly once"), ("<image> <image> what ?", "exactly once"), (" ", "empty")],
)
def test_bad_prompts_are_one_line(tiled, picture, prompt, message):
    model, processor = tiled
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture, prompt, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


def test_a_foreign_image_token_count_is_one_line(tiled, picture):
    model, processor = tiled
    backend = generative_backend(model, processor)
    inputs = backend.prompt_inputs(picture, PROMPT)
    inputs["pixel_values"] = inputs["pixel_values"][:, :-1]  # one image fewer than the text's runs
    with pytest.raises(InputError, match="image tokens for 6 image"):
        backend.image_layout(inputs)


def test_a_saved_smolvlm_loads_by_its_architecture(picture, tmp_path, monkeypatch):
    """``--model DIR`` for SmolVLM: config.json names SmolVLMForConditionalGeneration, the smolvlm family claims
    it; a processor that cannot be imported (SmolVLM's needs num2words) is one line, not a traceback."""
    import transformers

    from m2ib.generative.loading import load_generative

    model, processor = tiny_idefics3(seed=0, split=True, smolvlm=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    backend = load_generative(str(tmp_path))
    assert type(backend.model).__name__ == "SmolVLMForConditionalGeneration"
    exp = m2ib.explain_answer(backend, picture, PROMPT, answer=ANSWER, steps=1, samples=1)
    assert exp.family == "smolvlm" and exp.grid_map.shape == (8, 12)

    def missing(*args, **kwargs):
        raise ImportError("Package `num2words` is required to run SmolVLM processor.\nInstall it")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    with pytest.raises(InputError, match="num2words") as info:
        load_generative(str(tmp_path))
    assert "\n" not in str(info.value)


def test_the_fit_finds_the_tile_token_the_answer_reads(tiled, picture):
    """A planted signal on the tiled layout: a likelihood that reads only token 6 of tile (1, 2) must give that
    token the largest KL by far and put the map's peak on its cell, (5, 10) of the 8 x 12 grid."""
    from m2ib.generative import AnswerM2IBSettings, fit_answer

    model, processor = tiled
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 112, 32, generator=g)
    states = 3.0 * states / states.norm(dim=-1, keepdim=True)
    read = 5 * 16 + 6

    class ReadsOneToken(type(generative_backend(model, processor))):
        def image_states(self, query):
            return states.clone()

        def rest(self, query, z):
            return -10.0 * (z[:, read] - states[:, read]).square().sum(-1)

    backend = ReadsOneToken(model, processor)
    fit = fit_answer(backend, backend.prepare(picture, PROMPT, ANSWER), AnswerM2IBSettings(steps=10, samples=4))
    others = torch.cat([fit.token_scores[:read], fit.token_scores[read + 1 :]])
    assert int(fit.token_scores.argmax()) == read and fit.token_scores[read] > 100 * others.max()
    assert fit.grid_map.shape == (8, 12) and divmod(int(fit.grid_map.argmax()), 12) == (5, 10)


def test_the_global_images_tokens_spread_over_their_cells_by_area(tiled, picture):
    """The global image's 16 tokens (the last) over the 8 x 12 grid: a plain count on a lattice over the display
    (each point's tile cell and the global image's token that reads it), to 1e-3; tile tokens spread nowhere; the
    map of one global image token's score is its spread, its 2 x 3 block of cells."""
    from whole_image_lattice import check_whole_image_spread

    check_whole_image_spread(generative_backend(*tiled), picture, PROMPT, ANSWER)


def test_the_fit_finds_the_global_token_the_answer_reads(tiled, picture):
    """A planted signal: a likelihood that reads only global image token (1, 2) must give it the largest KL by far
    and put the map's peak on its 2 x 3 block of cells (rows 2-3, columns 6-8 of the 8 x 12 grid)."""
    from whole_image_lattice import check_fit_finds_the_whole_image_token

    model, processor = tiled
    check_fit_finds_the_whole_image_token(
        type(generative_backend(model, processor)), model, processor, picture, PROMPT, ANSWER
    )
