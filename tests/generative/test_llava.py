"""LLaVA-1.5 behind the generative seam, and M2IB on its answers, on a random tiny model (offline).

Every claim is checked against the model's own forward: the split (image states, then the rest)
against ``model(**inputs, labels=...)`` and a forward hook on the projector."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava

import m2ib
from m2ib.errors import InputError
from m2ib.generative import AnswerM2IBSettings, fit_answer, generative_backend
from m2ib.generative.m2ib import answer_score

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy())


def own_log_likelihood(model, query):
    """The model's own teacher-forced answer log-likelihood: -(mean loss) * answer length, labels on the answer only."""
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start : query.answer_end] = query.answer_ids
    with torch.no_grad():
        out = model(**query.inputs, labels=labels)
    return -out.loss * query.answer_ids.numel(), out


def test_split_forward_matches_the_model(llava, picture):
    model, processor = llava
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.answer_ids.numel() == 3 and query.input_ids.shape[1] == query.answer_end
    captured = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        expected, out = own_log_likelihood(model, query)
    finally:
        hook.remove()
    with torch.no_grad():
        states = backend.image_states(query)
        got = backend.rest(query, states)
    # the split sits where the model's own image tokens are made
    assert states.shape == (1, 16, 32)
    torch.testing.assert_close(states, captured[0].reshape(1, -1, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)
    # a plain computation from the model's own logits: log softmax at positions start-1 .. end-2
    logp = out.logits[0, query.answer_start - 1 : query.answer_end - 1].log_softmax(-1)
    plain = logp.gather(-1, query.answer_ids[:, None]).sum()
    torch.testing.assert_close(got[0], plain, rtol=0, atol=1e-5)
    # every layer of the language model sees the same states on both paths
    with torch.no_grad():
        own = model(**query.inputs, output_hidden_states=True).hidden_states
        split = model(
            inputs_embeds=backend.embeds_with(query, states),
            attention_mask=query.inputs["attention_mask"],
            output_hidden_states=True,
        ).hidden_states
    assert len(own) == len(split) == 3
    for a, b in zip(own, split, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_rest_is_batched_and_differentiable(llava, picture):
    backend = generative_backend(*llava)
    query = backend.prepare(picture, PROMPT, ANSWER)
    with torch.no_grad():
        states = backend.image_states(query)
    batch = torch.cat([states, torch.zeros_like(states)]).requires_grad_(True)
    values = backend.rest(query, batch)
    assert values.shape == (2,) and not torch.isclose(values[0], values[1])
    (grad,) = torch.autograd.grad(values.sum(), batch)
    assert grad[0].abs().sum() > 0


def test_m2ib_likelihood_at_lam_one_is_the_models_own(llava, picture):
    model, processor = llava
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    expected, _ = own_log_likelihood(model, query)
    with torch.no_grad():
        hidden = backend.image_states(query)
        torch.testing.assert_close(answer_score(backend, query)(hidden)[0], expected, rtol=0, atol=1e-5)
    # the whole fit at lam = sigmoid(60) = 1 in float32 (noise weight e^-60): its first step's term
    fit = fit_answer(backend, query, AnswerM2IBSettings(init_alpha=60.0, steps=1, samples=2))
    assert fit.info["log_likelihood"] == pytest.approx(float(expected), abs=1e-5)
    assert fit.info["log_likelihood_bottlenecked"] == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_a_patch_reaches_its_own_token(strategy, picture):
    """With the projector reading the patch embeddings (vision_feature_layer=[0]: patch-local; transformers 5.25 reads a plain 0 as "no hidden states"), changing
    the pixels of patch (row 1, col 2) changes exactly the image token the layout maps to that cell."""
    model, processor = tiny_llava(seed=1, vision_feature_layer=[0], strategy=strategy)
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    assert query.grid == (4, 4)
    cell = 1 * 4 + 2
    pixels = query.inputs["pixel_values"].clone()
    pixels[..., 2:4, 4:6] += 1.0  # patch size 2: rows 2-3, cols 4-5
    changed = dataclasses.replace(query, inputs={**query.inputs, "pixel_values": pixels})
    with torch.no_grad():
        before, after = backend.image_states(query)[0], backend.image_states(changed)[0]
    moved = ((after - before).abs().amax(-1) > 1e-6).nonzero()[:, 0].tolist()
    token = int((query.cells == cell).nonzero()[0, 0])
    assert moved == [token]
    assert query.cells.tolist() == ([-1] if strategy == "full" else []) + list(range(16))
    # and that token sits where the model writes it: the layout's position of that token in the sequence
    ids = query.input_ids[0]
    assert (ids[query.image_positions] == model.config.image_token_id).all()
    assert int((ids == model.config.image_token_id).sum()) == query.cells.numel()


def test_a_tiny_fit_gives_a_finite_varied_map(llava, picture, tmp_path):
    model, processor = llava
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=3, samples=2)
    assert exp.answer == ANSWER and exp.answer_source == "given" and exp.family == "llava"
    assert exp.grid_map.shape == (4, 4) and exp.image_map.shape == (8, 8) and exp.token_scores.shape == (16,)
    assert torch.isfinite(exp.grid_map).all() and exp.grid_map.std() > 0
    assert exp.image_map.min() == 0 and exp.image_map.max() == 1
    assert exp.to_dict()["answer"] == ANSWER and exp.settings["steps"] == 3
    paths = exp.save(tmp_path)
    assert {"npz", "png", "json"} <= set(paths)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert not model.model.multi_modal_projector._forward_hooks


def test_the_fit_finds_the_token_the_answer_reads(llava, picture):
    """A planted signal: a backend whose image tokens all have the same norm and whose answer likelihood
    reads token 6 only. M2IB must keep that token (its KL is the largest, by far; its term stays near 0) and the map's
    peak must be its cell (row 1, col 2); the other tokens are compressed alike."""
    model, processor = llava
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 16, 32, generator=g)
    states = 3.0 * states / states.norm(dim=-1, keepdim=True)  # no token stands out by its norm

    class ReadsOneToken(type(generative_backend(model, processor))):
        def image_states(self, query):
            return states.clone()

        def rest(self, query, z):
            return -10.0 * (z[:, 6] - states[:, 6]).square().sum(-1)

    backend = ReadsOneToken(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    fit = fit_answer(backend, query, AnswerM2IBSettings(steps=10, samples=4))
    scores = fit.token_scores
    assert int(scores.argmax()) == 6
    assert scores[6] > 100 * torch.cat([scores[:6], scores[7:]]).max()  # measured: 204 against 0.06
    assert fit.info["log_likelihood_bottlenecked"] > -0.1  # the token was kept: its term is near its maximum, 0
    assert divmod(int(fit.grid_map.argmax()), 4) == (1, 2)


def test_the_models_own_answer_is_recorded(llava, picture):
    model, processor = llava
    own = generative_backend(model, processor).generate(picture, PROMPT, max_new_tokens=3)
    exp = m2ib.explain_answer(model, picture, PROMPT, processor=processor, max_new_tokens=3, steps=1, samples=1)
    assert own and exp.answer == own and exp.answer_source == "generated"
    assert exp.to_dict()["answer_source"] == "generated"


@pytest.mark.parametrize(
    ("prompt", "answer", "message"),
    [
        (PROMPT, "", "is empty"),
        (PROMPT, "   ", "is empty"),
        ("what is in the image ?", ANSWER, "exactly once"),
        ("<image> <image> what ?", ANSWER, "exactly once"),
    ],
)
def test_bad_input_is_one_line(llava, picture, prompt, answer, message):
    model, processor = llava
    with pytest.raises(InputError, match=message) as info:
        m2ib.explain_answer(model, picture, prompt, answer=answer, processor=processor)
    assert "\n" not in str(info.value)


def test_an_answer_of_no_tokens_is_one_line(llava, picture):
    backend = generative_backend(*llava)
    with pytest.raises(InputError, match="tokenizes to no token"):
        backend.prepare(picture, PROMPT, " \t ")


def test_unsupported_models_and_missing_processors_are_refused(llava, small_clip):
    model, _ = llava
    with pytest.raises(InputError, match="not a supported generative model.*LlavaForConditionalGeneration"):
        generative_backend(small_clip[0], None)
    with pytest.raises(InputError, match="needs its processor"):
        generative_backend(model, None)
    with pytest.raises(InputError, match="steps"):
        m2ib.explain_answer(model, "missing.png", PROMPT, answer=ANSWER, steps=0)


def test_a_fit_too_big_for_memory_is_refused_before_it_runs(llava, picture, monkeypatch):
    import m2ib.methods.memory as memory

    monkeypatch.setattr(memory, "memory_available", lambda device: 1024)
    with pytest.raises(InputError, match="lower samples"):
        m2ib.explain_answer(llava[0], picture, PROMPT, answer=ANSWER, processor=llava[1])


def test_m2ib_list_shows_the_generative_families(capsys):
    from m2ib.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "generative model families" in out and "LlavaForConditionalGeneration" in out


def test_the_fit_equals_a_plain_reference(llava, picture):
    """The whole fit against the paper's loop written out plainly, where the model itself places the
    bottlenecked states (``mm_encoder_outputs``) and scores the answer (``labels``): no part of the
    split forward or of the shared core is used."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model, processor = llava
    backend = generative_backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    s = AnswerM2IBSettings(steps=3, samples=2, beta=0.5, var=1.0, seed=4)
    got = fit_answer(backend, query, s)

    with torch.no_grad():
        r = model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output[0]  # [K, D]
    eps = torch.randn(s.steps, s.samples, *r.shape, generator=torch.Generator().manual_seed(s.seed))
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start :] = query.answer_ids
    copies = {k: query.inputs[k].expand(s.samples, -1) for k in ("input_ids", "attention_mask")}
    alpha = torch.full(r.shape, s.init_alpha, requires_grad=True)
    adam = torch.optim.Adam([alpha], lr=s.lr)
    for step in range(s.steps):
        lam = torch.sigmoid(alpha)
        kl = -0.5 * (1 + torch.log((1 - lam) ** 2) - (lam * r) ** 2 - (1 - lam) ** 2)  # the paper's form, var = 1
        z = lam * r + (1 - lam) * eps[step]  # [S, K, D]
        image = BaseModelOutputWithPooling(pooler_output=list(z))
        out = model(**copies, labels=labels.expand(s.samples, -1), mm_encoder_outputs={"image": image})
        log_likelihood = -out.loss * query.answer_ids.numel()  # mean over the copies
        loss = s.beta * kl.mean() - log_likelihood
        (alpha.grad,) = torch.autograd.grad(loss, alpha)
        adam.step()
    torch.testing.assert_close(got.token_scores, kl.detach().sum(-1), rtol=1e-4, atol=1e-5)
    assert got.info["log_likelihood_bottlenecked"] == pytest.approx(float(log_likelihood), abs=1e-4)


def test_a_model_in_training_mode_is_explained_without_dropout_and_left_as_it_was(picture):
    model, processor = tiny_llava(seed=0)
    reference = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    model.config.text_config.attention_dropout = 0.5  # dropout would move the map if it ran
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()
    again = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, steps=2, samples=2)
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(again.token_scores, reference.token_scores)
