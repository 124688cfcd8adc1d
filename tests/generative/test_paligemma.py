"""PaliGemma behind the generative seam, on a random tiny model (offline).

The split forward is checked against the model's own forward on the processor's own inputs, with
the answer given as the processor's ``suffix`` (its token_type_ids mark the causal suffix)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from tiny_paligemma import tiny_paligemma

import m2ib
from m2ib.errors import InputError
from m2ib.generative import generative_backend

PROMPT = "what is in the image ?"
ANSWER = "a red circle"


@pytest.fixture(scope="module")
def paligemma():
    return tiny_paligemma(seed=0)


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy())


def processor_inputs(processor, picture):
    """The processor's own inputs for the prompt with the answer as its ``suffix`` (which it ends with <eos>)."""
    out = processor(images=picture, text="<image>" + PROMPT, suffix=ANSWER, return_tensors="pt")
    return {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}


@pytest.mark.parametrize("gemma2", [False, True], ids=["paligemma", "paligemma2"])
def test_split_forward_matches_the_models_own_forward(picture, gemma2):
    model, processor = tiny_paligemma(seed=0, gemma2=gemma2)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    own = processor_inputs(processor, picture)
    # the query is the processor's prompt + suffix, without the <eos> the processor appends to a suffix
    assert torch.equal(query.input_ids, own["input_ids"][:, :-1])
    assert torch.equal(query.inputs["token_type_ids"], own["token_type_ids"][:, :-1])
    assert query.inputs["token_type_ids"][0, query.answer_start :].tolist() == [1, 1, 1]
    assert int(query.inputs["token_type_ids"][0, : query.answer_start].sum()) == 0
    labels = torch.full_like(own["input_ids"], -100)
    labels[0, query.answer_start : query.answer_end] = query.answer_ids
    written = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: written.append(kw["inputs_embeds"].detach()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model(**own, labels=labels)
    finally:
        hook.remove()
    expected = -out.loss * query.answer_ids.numel()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    # image_states is exactly what the model writes at the image positions (no 1/sqrt(hidden) left to apply)
    assert states.shape == (1, 16, 32)
    torch.testing.assert_close(states[0], written[0][0, query.image_positions], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    torch.testing.assert_close(got[0], logp.gather(-1, query.answer_ids[:, None]).sum(), rtol=0, atol=1e-5)
    # the bidirectional prefix matters in this model: a causal mask over everything gives another value
    with torch.no_grad():
        causal = model(**{k: v for k, v in own.items() if k != "token_type_ids"}, labels=labels)
    assert abs(float(-causal.loss * 3 - expected)) > 1e-4


def test_an_image_prefixed_prompt_is_the_same_query(paligemma, picture):
    backend = generative_backend(*paligemma)
    plain = backend.prepare(picture, PROMPT, ANSWER)
    prefixed = backend.prepare(picture, "<image>" + PROMPT, ANSWER)
    assert torch.equal(plain.input_ids, prefixed.input_ids)


def test_a_patch_reaches_its_own_token(picture):
    """With no vision layer (patch-local), changing patch (row 1, col 2) changes exactly the token mapped to it."""
    model, processor = tiny_paligemma(seed=1, vision_layers=0)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.grid == (4, 4) and query.cells.tolist() == list(range(16))
    pixels = query.inputs["pixel_values"].clone()
    pixels[..., 2:4, 4:6] += 1.0  # patch size 2: rows 2-3, cols 4-5
    changed = dataclasses.replace(query, inputs={**query.inputs, "pixel_values": pixels})
    with torch.no_grad():
        before, after = backend.image_states(query)[0], backend.image_states(changed)[0]
    moved = ((after - before).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()
    assert moved == [int((query.cells == 1 * 4 + 2).nonzero()[0, 0])]
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == 16


def test_a_tiny_fit_gives_a_finite_varied_map_and_leaves_the_model(paligemma, picture):
    model, processor = paligemma
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    assert exp.family == "paligemma" and exp.answer == ANSWER
    assert exp.grid_map.shape == (4, 4) and exp.image_map.shape == (8, 8) and exp.token_scores.shape == (16,)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_the_models_own_answer_is_generated_with_the_suffix_types(paligemma, picture):
    model, processor = paligemma
    own = generative_backend(model, processor).generate(picture, PROMPT, max_new_tokens=3)
    exp = m2ib.explain_answer(model, picture, PROMPT, processor=processor, max_new_tokens=3, steps=1, samples=1)
    assert own and exp.answer == own and exp.answer_source == "generated"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ("what <image> is in the image ?", "very start"),
        ("<image><image> what ?", "2 times"),
    ],
)
def test_bad_prompts_are_one_line(paligemma, picture, prompt, message):
    model, processor = paligemma
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture, prompt, answer=ANSWER, processor=processor)
    assert "\n" not in str(info.value)


def test_explain_answer_from_the_command_line(paligemma, picture, tmp_path, capsys):
    """``m2ib explain IMAGE PROMPT --answer TEXT --model DIR`` on a saved tiny PaliGemma: config.json's
    ``architectures`` picks the family; the prompt is plain text; a misplaced <image> is one line, exit 2."""
    import json

    from m2ib.cli import main

    model, processor = paligemma
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    picture.save(tmp_path / "scene.png")
    args = ["explain", str(tmp_path / "scene.png"), PROMPT, "--answer", ANSWER, "--model", str(tmp_path / "model")]
    assert main([*args, "--out", str(tmp_path / "out"), "--steps", "2", "--samples", "1"]) == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert record["family"] == "paligemma" and record["answer"] == ANSWER and record["settings"]["steps"] == 2
    assert (tmp_path / "out" / "scene.png").exists() and (tmp_path / "out" / "scene.npz").exists()
    capsys.readouterr()
    args[2] = "what <image> is it ?"
    assert main([*args, "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "very start" in err and len(err.splitlines()) == 1
