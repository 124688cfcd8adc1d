"""Deletion, insertion and the pointing game on an answer's maps, against plain computations on a
random tiny LLaVA (offline): the model itself places the perturbed image tokens and scores the answer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava
from transformers.modeling_outputs import BaseModelOutputWithPooling

import m2ib
from m2ib.errors import InputError
from m2ib.generative import generative_backend
from m2ib.generative.metrics import answer_curve, explanation_curves, pointing_game, token_counts, word_pointing

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def setup(llava, picture):
    backend = generative_backend(*llava)
    return backend, backend.prepare(picture, PROMPT, ANSWER)


def plain_log_likelihood(model, query, states, tokens=None):
    """The model's own answer log-likelihood (or of the answer tokens ``tokens``) with ``states`` [K, D]
    as its image tokens: placed by the model (``mm_encoder_outputs``), scored from its own logits."""
    image = BaseModelOutputWithPooling(pooler_output=[states])
    with torch.no_grad():
        out = model(
            **{k: query.inputs[k] for k in ("input_ids", "attention_mask")}, mm_encoder_outputs={"image": image}
        )
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    per_token = logp.gather(-1, query.answer_ids[:, None])[:, 0]
    return float(per_token.sum() if tokens is None else per_token[tokens].sum())


@pytest.mark.parametrize("insertion", [False, True])
@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_the_curve_is_the_log_likelihood_with_the_top_tokens_replaced(llava, setup, insertion, baseline):
    model, _ = llava
    backend, query = setup
    scores = torch.tensor([0.5, 3.0, 0.5, 2.0, 0.1, 0.5, 9.0, 0.0, 1.0, 0.5, 4.0, 0.2, 0.3, 0.5, 7.0, 0.5])
    curve = answer_curve(backend, query, scores, insertion=insertion, steps=4, baseline=baseline, batch_size=3)
    with torch.no_grad():
        r = model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output[0]  # [K, D]
    fill = torch.zeros(32) if baseline == "zeros" else r.mean(0)
    ranked = sorted(range(16), key=lambda i: (-float(scores[i]), i))  # highest first, ties in sequence order
    expected = []
    for k in (0, 4, 8, 12, 16):
        states = r.clone()
        gone = ranked[k:] if insertion else ranked[:k]
        states[gone] = fill
        expected.append(plain_log_likelihood(model, query, states))
    torch.testing.assert_close(curve.log_likelihood, torch.tensor(expected), rtol=0, atol=1e-4)
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    area = sum(0.25 * (a + b) / 2 for a, b in zip(expected[:-1], expected[1:], strict=True))
    assert curve.auc == pytest.approx(area, abs=1e-4)
    # the ends: nothing removed is the model's own answer; deletion's end is insertion's start
    assert expected[-1 if insertion else 0] == pytest.approx(plain_log_likelihood(model, query, r), abs=1e-5)


def test_a_words_curve_scores_that_words_tokens(llava, setup, picture):
    model, processor = llava
    backend, query = setup
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=1)
    curves = explanation_curves(backend, query, exp, "red", steps=2)
    with torch.no_grad():
        r = model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output[0]
    ranked = sorted(range(16), key=lambda i: (-float(exp.word_token_scores[1, i]), i))
    states = r.clone()
    states[ranked[:8]] = 0.0
    assert float(curves["deletion"].log_likelihood[1]) == pytest.approx(
        plain_log_likelihood(model, query, states, [1]), abs=1e-4
    )
    assert float(curves["insertion"].log_likelihood[-1]) == pytest.approx(
        plain_log_likelihood(model, query, r, [1]), abs=1e-4
    )
    whole = explanation_curves(backend, query, exp, steps=2)
    assert float(whole["deletion"].log_likelihood[0]) == pytest.approx(exp.info["log_likelihood"], abs=1e-4)


def test_token_counts():
    assert token_counts(16, 4) == [0, 4, 8, 12, 16]
    assert token_counts(5, 2) == [0, 2, 5]  # round half to even, as Python rounds
    assert token_counts(3, 6) == [0, 0, 1, 2, 2, 2, 3]


def test_the_pointing_game_against_a_hand_made_mask():
    word_map = torch.zeros(8, 8)
    word_map[2, 5] = 1.0
    word_map[6, 1] = 0.9
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:4, 4:7] = True  # the object around (2, 5)
    assert pointing_game(word_map, mask)
    assert not pointing_game(word_map, ~mask)
    word_map[6, 1] = float("nan")  # NaN never wins
    assert pointing_game(word_map, mask)
    assert not pointing_game(torch.zeros(8, 8), mask)  # a constant map points at (0, 0)
    exp = m2ib.generative.AnswerExplanation(
        prompt=PROMPT,
        answer="a red circle",
        answer_source="given",
        answer_tokens=["a", "red", "circle"],
        image=torch.zeros(3, 8, 8),
        image_map=torch.zeros(8, 8),
        grid_map=torch.zeros(4, 4),
        token_scores=torch.zeros(16),
        words=["a", "red", "circle."],
        word_tokens=[[0], [1], [2]],
        word_maps=torch.stack([torch.zeros(8, 8), torch.zeros(8, 8), word_map]),
    )
    assert word_pointing(exp, "Circle", mask) and word_pointing(exp, 2, mask)
    assert not word_pointing(exp, "red", mask)  # its map is constant: (0, 0), outside
    with pytest.raises(InputError, match="not a word of the answer"):
        word_pointing(exp, "square", mask)
    with pytest.raises(InputError, match="differ in shape"):
        word_pointing(exp, "circle", mask[:4])


def test_bad_metric_input_is_one_line(setup):
    backend, query = setup
    with pytest.raises(InputError, match="baseline='blur'"):
        answer_curve(backend, query, torch.zeros(16), baseline="blur")
    with pytest.raises(InputError, match="steps"):
        answer_curve(backend, query, torch.zeros(16), steps=0)
    with pytest.raises(InputError, match="15 token scores for 16 image tokens"):
        answer_curve(backend, query, torch.zeros(15))
