"""The image bottleneck's site (``image_layer``) on a random tiny LLaVA (offline), checked against the
model's own forward: R at block l is the model's own ``hidden_states[l]`` at the image positions, and
z = R written back gives the model's own answer log-likelihood (the fit term at lam = 1)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava

import m2ib
from m2ib.errors import InputError
from m2ib.generative import AnswerM2IBSettings, fit_answer, generative_backend
from m2ib.generative.m2ib import fit_rows, image_site

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
def query(llava, picture):
    return generative_backend(*llava).prepare(picture, PROMPT, ANSWER)


def own(model, query):
    """The model's own outputs of every decoder block [blocks][L, D] (a plain forward hook on each, on
    the model's own forward of its own inputs) and its answer token log-probabilities [A]."""
    seen = []
    blocks = model.model.language_model.layers
    handles = [
        b.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0])) for b in blocks
    ]
    try:
        with torch.no_grad():
            out = model(**query.inputs)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0, query.answer_start - 1 : query.answer_end - 1]
    return seen, logits.log_softmax(-1).gather(-1, query.answer_ids[:, None])[:, 0]


@pytest.mark.parametrize("layer", [1])
def test_the_site_at_block_l_is_the_blocks_output_at_the_image_positions(llava, query, layer):
    model, processor = llava
    backend = generative_backend(model, processor)
    outputs, token_logp = own(model, query)
    blocks = model.model.language_model.layers
    hooks = [dict(b._forward_hooks) for b in blocks]
    with torch.no_grad():
        states = backend.image_states(query)
        hidden, score, log_probs = image_site(backend, query, states, layer)
        # what the bottleneck reads is what block l hands on, at the image positions
        torch.testing.assert_close(hidden[0], outputs[layer - 1][query.image_positions], rtol=0, atol=1e-5)
        other_block = outputs[2 - layer]  # the other block's output: a site one off is caught
        assert not torch.allclose(hidden[0], other_block[query.image_positions], atol=1e-3)
        # the fit term at lam = 1 (z = R) is the model's own answer log-likelihood, per token too
        torch.testing.assert_close(score(hidden)[0], token_logp.sum(), rtol=0, atol=1e-5)
        torch.testing.assert_close(log_probs(hidden)[0], token_logp, rtol=0, atol=1e-5)
        # z replaces the image states from block l on: another z, another likelihood, batched
        other = torch.cat([hidden, torch.zeros_like(hidden)])
        values = score(other)
        assert values.shape == (2,) and not torch.isclose(values[0], values[1])
    assert [dict(b._forward_hooks) for b in blocks] == hooks  # no hook of ours left behind


def test_the_fit_at_lam_one_is_the_models_own_likelihood(llava, query):
    model, processor = llava
    backend = generative_backend(model, processor)
    _, token_logp = own(model, query)
    s = AnswerM2IBSettings(init_alpha=60.0, steps=1, samples=2, image_layer=1, prompt_side=False)
    fit = fit_answer(backend, query, s)
    assert fit.info["log_likelihood_bottlenecked"] == pytest.approx(float(token_logp.sum()), abs=1e-5)
    # the per-word rows read the same site: at lam = 1 each row's target is its tokens' own log-likelihood
    with torch.no_grad():
        hidden, _, log_probs = image_site(backend, query, backend.image_states(query), 1)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    _, _, target = fit_rows(backend, query, hidden, weights, s, log_probs)
    expected = torch.stack([token_logp[:1].sum(), token_logp[1:].sum()])
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-5)


def test_the_projector_site_is_unchanged_and_another_site_gives_another_map(llava, query):
    backend = generative_backend(*llava)
    fast = {"steps": 3, "samples": 2, "prompt_side": False, "per_word": False}
    default = fit_answer(backend, query, AnswerM2IBSettings(**fast))
    at_zero = fit_answer(backend, query, AnswerM2IBSettings(image_layer=0, **fast))
    torch.testing.assert_close(default.token_scores, at_zero.token_scores, rtol=0, atol=0)
    deeper = fit_answer(backend, query, AnswerM2IBSettings(image_layer=1, **fast))
    assert deeper.token_scores.shape == default.token_scores.shape
    assert not torch.allclose(deeper.token_scores, default.token_scores)


def test_a_site_past_the_language_model_is_one_line(llava, picture):
    model, processor = llava
    with pytest.raises(InputError, match="image_layer"):
        AnswerM2IBSettings(image_layer=-1)
    for layer, says in ((3, "image_layer=3"), (2, "no longer reach the answer; use 0 .. 1")):
        with pytest.raises(InputError, match=says):
            m2ib.explain_answer(
                model, picture, PROMPT, ANSWER, processor=processor, image_layer=layer, steps=1, samples=1
            )
