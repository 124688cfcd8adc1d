"""Qwen2-VL and Qwen2.5-VL behind the generative seam, and M2IB on their answers, on random tiny models (offline).

Every claim is checked against the model's own plain forward (``model(**inputs)``, which computes its
M-RoPE positions itself) and against pixels moved in the input image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_qwen2vl import SIZE, images_only, tiny_qwen2vl

import m2ib
from m2ib.errors import InputError
from m2ib.generative import AnswerM2IBSettings, fit_answer, generative_backend

PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is in the image ?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "a red circle"
VERSIONS = ["2", "2.5"]
FAMILY = {"2": "qwen2-vl", "2.5": "qwen2.5-vl"}


@pytest.fixture(scope="module", params=VERSIONS)
def qwen(request):
    return request.param, *tiny_qwen2vl(request.param, seed=0)


def pixels(seed: int = 3, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, 3, generator=g) * 255).byte().numpy()


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(pixels())


def plain_log_likelihood(model, query):
    """The answer's log-likelihood from the model's own logits: log softmax at positions start-1 .. end-2."""
    with torch.no_grad():
        out = model(**query.inputs, output_hidden_states=True)
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    return logp.gather(-1, query.answer_ids[:, None]).sum(), out


def test_split_forward_matches_the_model(qwen, picture):
    version, model, processor = qwen
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.answer_ids.numel() == 3 and query.input_ids.shape[1] == query.answer_end
    assert query.inputs["mm_token_type_ids"][0, query.answer_start :].eq(0).all()  # the answer is text
    captured = []
    hook = model.model.visual.register_forward_hook(lambda m, i, o: captured.append(o.pooler_output.detach()))
    try:
        expected, out = plain_log_likelihood(model, query)
    finally:
        hook.remove()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    # the split sits where the model's own image tokens are made (the merger's output, row-major again)
    assert states.shape == (1, 16, 32)
    torch.testing.assert_close(states, captured[0][None], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)
    # and the model's own loss on the answer
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start :] = query.answer_ids
    with torch.no_grad():
        loss = model(**query.inputs, labels=labels).loss
    torch.testing.assert_close(got[0], -loss * query.answer_ids.numel(), rtol=0, atol=1e-5)
    # every layer of the language model sees the same states on both paths (M-RoPE positions included)
    with torch.no_grad():
        split = model(
            inputs_embeds=backend.embeds_with(query, states),
            attention_mask=query.inputs["attention_mask"],
            position_ids=backend.rope_positions(query),
            output_hidden_states=True,
        ).hidden_states
    assert len(out.hidden_states) == len(split) == 3
    for a, b in zip(out.hidden_states, split, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_rest_is_batched_and_differentiable(qwen, picture):
    _, model, processor = qwen
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    with torch.no_grad():
        states = backend.image_states(query)
        single = backend.rest(query, states)
    batch = torch.cat([states, torch.zeros_like(states)]).requires_grad_(True)
    values = backend.rest(query, batch)
    assert values.shape == (2,) and not torch.isclose(values[0], values[1])
    torch.testing.assert_close(values[0].detach(), single[0], rtol=0, atol=1e-5)  # positions broadcast to the batch
    (grad,) = torch.autograd.grad(values.sum(), batch)
    assert grad[0].abs().sum() > 0


def test_m2ib_likelihood_at_lam_one_is_the_models_own(qwen, picture):
    _, model, processor = qwen
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    expected, _ = plain_log_likelihood(model, query)
    fit = fit_answer(backend, query, AnswerM2IBSettings(init_alpha=60.0, steps=1, samples=2))
    assert fit.info["log_likelihood"] == pytest.approx(float(expected), abs=1e-5)
    assert fit.info["log_likelihood_bottlenecked"] == pytest.approx(float(expected), abs=1e-5)


def test_the_display_is_the_image_the_model_reads(qwen, picture):
    """The 16 x 16 picture needs no resize (smart_resize keeps it): un-patchifying pixel_values gives it back."""
    _, model, processor = qwen
    query = generative_backend(model, processor).prepare(picture, PROMPT, ANSWER)
    assert query.grid == (4, 4) and query.cells.tolist() == list(range(16))
    expected = torch.from_numpy(pixels()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(query.display, expected, rtol=0, atol=1e-6)


def moved_tokens(backend, rows: slice = slice(4, 8), cols: slice = slice(8, 12), shape=(SIZE, SIZE)) -> list[int]:
    """The image tokens that change when the pixels ``rows, cols`` are inverted (default: merged cell (1, 2)
    of a 4 x 4 grid of 4 px cells: 2 px patches, 2 x 2 merged)."""
    before = pixels(shape=shape)
    after = before.copy()
    after[rows, cols] = 255 - after[rows, cols]
    with torch.no_grad():
        a = backend.image_states(backend.prepare(Image.fromarray(before), PROMPT, ANSWER))[0]
        b = backend.image_states(backend.prepare(Image.fromarray(after), PROMPT, ANSWER))[0]
    return ((a - b).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("shape", "grid", "cell"), [((16, 16), (4, 4), (1, 2)), ((16, 24), (4, 6), (2, 4))])
def test_a_merged_cell_reaches_its_own_token(version, shape, grid, cell):
    """With a patch-local tower (no vision blocks: patch embedding and merger only; Qwen2.5-VL's window
    permutation and its inverse still run), changing one merged cell's pixels changes exactly the token
    the layout maps to that cell, which sits where the model writes image tokens. The 16 x 24 image
    (4 x 6 tokens) tells rows from columns."""
    model, processor = tiny_qwen2vl(version, seed=1, depth=0, pixels=shape[0] * shape[1])
    backend = generative_backend(model, processor)
    query = backend.prepare(Image.fromarray(pixels(shape=shape)), PROMPT, ANSWER)
    assert query.grid == grid and query.display.shape == (3, *shape)
    row, col = cell
    token = int((query.cells == row * grid[1] + col).nonzero()[0, 0])
    assert moved_tokens(backend, slice(4 * row, 4 * row + 4), slice(4 * col, 4 * col + 4), shape) == [token]
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == query.cells.numel() == grid[0] * grid[1]


def test_qwen25_window_attention_mixes_tokens_within_a_window():
    """What a real Qwen2.5-VL tower does to the layout test above: its window attention (8 px windows here:
    4 x 4 patches = 2 x 2 tokens) mixes the tokens of one window, so a cell's pixels move its whole window's
    tokens, cells (0, 2), (0, 3), (1, 2), (1, 3); one full-attention block moves every token (as Qwen2-VL's
    all-full-attention tower does). The map is still per token: M2IB's site is the merger output."""
    windowed = generative_backend(*tiny_qwen2vl("2.5", seed=1, depth=2, fullatt=()))
    assert moved_tokens(windowed) == [2, 3, 6, 7]
    full = generative_backend(*tiny_qwen2vl("2.5", seed=1, depth=2, fullatt=(1,)))
    assert moved_tokens(full) == list(range(16))


def test_a_tiny_fit_gives_a_finite_varied_map_and_leaves_the_model_as_it_was(qwen, picture):
    version, model, processor = qwen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.model.rope_deltas = None
    model.train()
    try:
        exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert exp.answer == ANSWER and exp.family == FAMILY[version]
    assert exp.grid_map.shape == (4, 4) and exp.image_map.shape == (SIZE, SIZE) and exp.token_scores.shape == (16,)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert exp.image_map.min() == 0 and exp.image_map.max() == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.model.rope_deltas is None  # the split forward passes its positions: no rope cache written
    assert not model.model.visual._forward_hooks


def test_the_models_own_answer_leaves_the_rope_cache_as_it_was(qwen, picture):
    _, model, processor = qwen
    model.model.rope_deltas = None
    exp = m2ib.explain_answer(model, picture, PROMPT, processor=processor, max_new_tokens=3, steps=1, samples=1)
    assert exp.answer_source == "generated" and exp.answer
    assert model.model.rope_deltas is None


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("what is in the image ?", "'<|image_pad|>' exactly once"),
        ("<|image_pad|> <|image_pad|> what ?", "exactly once"),
        ("<image> what is in the image ?", "exactly once"),  # LLaVA's placeholder is not Qwen's
        ("<|video_pad|> what is in the image ?", "video placeholder"),
        ("   ", "is empty"),
    ],
)
def test_bad_prompts_are_one_line(qwen, picture, prompt, message):
    _, model, processor = qwen
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture, prompt, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


def test_explain_a_saved_qwen2vl_from_the_command_line(picture, tmp_path, capsys):
    from m2ib.cli import main

    model, processor = tiny_qwen2vl("2", seed=0)
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
    assert record["answer"] == ANSWER and record["family"] == "qwen2-vl" and record["settings"]["steps"] == 2
    assert (out / "scene.npz").exists() and (out / "scene.png").exists()


def test_m2ib_list_shows_both_families(capsys):
    from m2ib.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2VLForConditionalGeneration" in out and "Qwen2_5_VLForConditionalGeneration" in out
