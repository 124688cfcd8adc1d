"""Per-word answer maps and M2IB on the prompt, on a random tiny LLaVA (offline).

Each claim is checked against a plain computation: the model's own logits for a word's target, a
separate fit per word for the batched one, the paper's loop written out on the prompt's input
embeddings, and a model whose answer reads one prompt token only."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava

import m2ib
from m2ib.errors import InputError
from m2ib.generative import AnswerM2IBSettings, fit_answer, generative_backend
from m2ib.generative.m2ib import fit_prompt, fit_rows, prompt_positions, prompt_site, word_groups

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"
FAST = {"steps": 3, "samples": 2}


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


class Pieces:
    """A SentencePiece-like tokenizer: pieces with "▁" for a space, decoded as SentencePiece does
    (the first piece's leading space dropped)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, **kwargs):
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_words_follow_the_leading_space_rule(llava):
    pieces = Pieces(["▁A", "▁red", "▁cir", "cle", ".", "▁", "2", "<s>", "▁dog"])
    assert word_groups(pieces, [0, 1, 2, 3, 4, 5, 6]) == [
        ("A", [0]),
        ("red", [1]),
        ("circle.", [2, 3, 4]),
        ("2", [5, 6]),
    ]
    # a break (an image or special token) belongs to no word and ends the one before
    assert word_groups(pieces, [2, 7, 3, 8], breaks={1}) == [("cir", [0]), ("cle", [2]), ("dog", [3])]
    tokenizer = llava[1].tokenizer  # word level: its decoder joins tokens with a space
    ids = tokenizer("a red circle ?", add_special_tokens=False)["input_ids"]
    assert word_groups(tokenizer, ids) == [("a", [0]), ("red", [1]), ("circle", [2]), ("?", [3])]


def own_token_log_probs(model, query):
    """log p(answer token a | ...) [A] from the model's own forward on its own inputs."""
    with torch.no_grad():
        logits = model(**query.inputs).logits[0, query.answer_start - 1 : query.answer_end - 1]
    return logits.log_softmax(-1).gather(-1, query.answer_ids[:, None])[:, 0]


def test_a_word_rows_target_is_its_tokens_log_likelihood(llava, query):
    """At lam = sigmoid(60) = 1 the rows' targets are the model's own log-probabilities of each row's tokens."""
    backend = generative_backend(*llava)
    plain = own_token_log_probs(llava[0], query)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        hidden = backend.image_states(query)
    s = AnswerM2IBSettings(init_alpha=60.0, steps=1, samples=2)
    _, _, fit = fit_rows(backend, query, hidden, weights, s)
    torch.testing.assert_close(fit, torch.stack([plain[0], plain[1] + plain[2], plain[2]]), rtol=0, atol=1e-5)


def test_the_batched_word_fit_equals_a_fit_per_word(llava, query, monkeypatch):
    backend = generative_backend(*llava)
    s = AnswerM2IBSettings(steps=4, samples=3, beta=0.5, seed=7)
    fit = fit_answer(backend, query, s)
    assert fit.words is not None and fit.words.words == ["a", "red", "circle"]
    assert fit.words.tokens == [[0], [1], [2]]
    with torch.no_grad():
        hidden = backend.image_states(query)
    for row in range(3):
        alone = torch.zeros(1, 3)
        alone[0, row] = 1.0
        kl, _, _ = fit_rows(backend, query, hidden, alone, s)
        torch.testing.assert_close(fit.words.token_scores[row], kl[0], rtol=0, atol=1e-5)
    # rows fitted a batch at a time where memory holds fewer: the same maps
    import m2ib.generative.m2ib as fits

    one_row = fits.memory_needed(backend, query, s)
    monkeypatch.setattr(fits, "memory_available", lambda device: one_row * 3 // 2)
    chunked, _, _ = fit_rows(backend, query, hidden, torch.eye(3), s)
    torch.testing.assert_close(chunked, fit.words.token_scores, rtol=0, atol=1e-5)
    # the words' maps differ from each other and from the whole answer's (each row has its own target)
    assert (fit.words.token_scores[0] - fit.words.token_scores[1]).abs().max() > 1e-3
    assert (fit.words.token_scores[0] - fit.token_scores).abs().max() > 1e-3
    assert fit.words.image_maps.shape == (3, 8, 8) and fit.words.grid_maps.shape == (3, 4, 4)


def test_each_word_map_finds_the_token_its_word_reads(llava, picture):
    """Planted: a backend whose answer token a's log-probability reads image token TOKENS[a] only.
    Each word's map must peak at its own token, far above every other; the rows must not be mixed."""
    model, processor = llava
    tokens = [6, 9, 13]
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 16, 32, generator=g)
    states = 3.0 * states / states.norm(dim=-1, keepdim=True)  # no token stands out by its norm

    class WordsReadOneTokenEach(type(generative_backend(model, processor))):
        def image_states(self, query):
            return states.clone()

        def answer_logits(self, query, embeds):
            z = embeds[:, query.image_positions]  # [B, K, D]
            logits = torch.zeros(embeds.shape[0], 3, len(processor.tokenizer))
            for a, t in enumerate(tokens):
                logits[:, a, query.answer_ids[a]] = -10.0 * (z[:, t] - states[:, t]).square().sum(-1)
            return logits

    backend = WordsReadOneTokenEach(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    fit = fit_answer(backend, query, AnswerM2IBSettings(steps=10, samples=4, prompt_side=False))
    for row, t in enumerate(tokens):
        scores = fit.words.token_scores[row]
        others = torch.cat([scores[:t], scores[t + 1 :]])
        assert int(scores.argmax()) == t and scores[t] > 100 * others.max()
    assert set(fit.token_scores.topk(3).indices.tolist()) == set(tokens)  # the whole answer reads all three


def plain_prompt_fit(model, query, s):
    """The paper's loop written out on the prompt's input embeddings: the model's own embedding table and
    image features, z written at the prompt's text positions, the answer scored by the model's loss."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(query.input_ids)
        image = model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output[0]
        embeds[0, query.image_positions] = image
    text = [p for p in range(query.answer_start) if p not in set(query.image_positions.tolist())]
    r = embeds[0, text]  # [P, D]
    eps = torch.randn(s.steps, s.samples, *r.shape, generator=torch.Generator().manual_seed(s.seed))
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start :] = query.answer_ids
    alpha = torch.full(r.shape, s.init_alpha, requires_grad=True)
    adam = torch.optim.Adam([alpha], lr=s.lr)
    for step in range(s.steps):
        lam = torch.sigmoid(alpha)
        kl = -0.5 * (1 + torch.log((1 - lam) ** 2) - (lam * r) ** 2 - (1 - lam) ** 2)
        copies = embeds.expand(s.samples, -1, -1).clone()
        copies[:, text] = lam * r + (1 - lam) * eps[step]
        mask = query.inputs["attention_mask"].expand(s.samples, -1)
        out = model(inputs_embeds=copies, attention_mask=mask, labels=labels.expand(s.samples, -1))
        loss = s.beta * kl.mean() + out.loss * query.answer_ids.numel()
        (alpha.grad,) = torch.autograd.grad(loss, alpha)
        adam.step()
    return kl.detach().sum(-1), text


def test_the_prompt_fit_equals_a_plain_reference(llava, picture):
    model, processor = llava

    class WritesPunctuationUnspaced:  # decodes "image ?" as "image?": a word of two tokens
        def __getattr__(self, name):
            return getattr(processor.tokenizer, name)

        def __call__(self, *args, **kwargs):
            return processor.tokenizer(*args, **kwargs)

        def decode(self, ids, **kwargs):
            return processor.tokenizer.decode(ids, **kwargs).replace(" ?", "?")

    class Backend(type(generative_backend(model, processor))):
        tokenizer = WritesPunctuationUnspaced()

    backend = Backend(model, processor)
    query = backend.prepare(picture, PROMPT, ANSWER)
    s = AnswerM2IBSettings(steps=3, samples=2, beta=0.5, seed=4)
    with torch.no_grad():
        image = backend.image_states(query)
    got, _ = fit_prompt(backend, query, image, s)
    expected, text = plain_prompt_fit(model, query, s)
    assert prompt_positions(query).tolist() == text and len(text) == 6  # what is in the image ? (no <s> here)
    torch.testing.assert_close(got.token_scores, expected, rtol=1e-4, atol=1e-5)
    # a word's score is the mean KL of its tokens
    assert got.words == ["what", "is", "in", "the", "image?"]
    torch.testing.assert_close(got.scores[:4], expected[:4], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.scores[4], expected[4:].mean(), rtol=1e-4, atol=1e-5)


def reads_the_last_prompt_token_only(model):
    """A copy of ``model`` whose language model's attention writes nothing (o_proj = 0): each position
    sees itself only, so the answer reads the prompt through its last position alone (it predicts the
    answer's first token)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for block in out.model.language_model.layers:
            block.self_attn.o_proj.weight.zero_()
    return out


@pytest.mark.parametrize("layer", [0, 1])
def test_the_prompt_scores_find_the_one_prompt_token_the_answer_reads(llava, query, layer):
    model, processor = llava
    backend = generative_backend(reads_the_last_prompt_token_only(model), processor)
    with torch.no_grad():
        image = backend.image_states(query)
    # the construction holds: the answer's gradient reaches the last prompt position only
    hidden, score = prompt_site(backend, query, image, layer)
    z = hidden.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(z).sum(), z)
    assert grad[0, -1].abs().sum() > 0 and grad[0, :-1].abs().max() == 0
    got, _ = fit_prompt(backend, query, image, AnswerM2IBSettings(steps=10, samples=4, prompt_layer=layer))
    assert got.words[-1] == "?"
    assert got.scores[-1] > 100 * got.scores[:-1].max()


def test_the_prompt_site_past_the_input_is_the_blocks_output(llava, query):
    model, processor = llava
    backend = generative_backend(model, processor)
    block = model.model.language_model.layers[0]
    with torch.no_grad():
        own = model(**query.inputs, output_hidden_states=True).hidden_states[1]
        hooks = dict(block._forward_hooks)  # transformers installs its own output-capturing hook for good
        image = backend.image_states(query)
        hidden, score = prompt_site(backend, query, image, 1)
        torch.testing.assert_close(hidden[0], own[0, prompt_positions(query)], rtol=0, atol=1e-5)
        # z = R written back is the model's own answer log-likelihood
        torch.testing.assert_close(score(hidden)[0], own_token_log_probs(model, query).sum(), rtol=0, atol=1e-5)
    assert dict(block._forward_hooks) == hooks  # no hook of ours left behind
    with pytest.raises(InputError, match="past the language model's 2 blocks"):
        prompt_site(backend, query, image, 3)
    with pytest.raises(InputError, match="prompt_layer"):
        AnswerM2IBSettings(prompt_layer=-1)


def test_the_explanation_holds_and_saves_the_words(llava, picture, tmp_path):
    model, processor = llava
    exp = m2ib.explain_answer(model, picture, PROMPT, answer=ANSWER, processor=processor, **FAST)
    assert exp.words == ["a", "red", "circle"] and exp.word_tokens == [[0], [1], [2]]
    assert exp.word_maps.shape == (3, 8, 8) and exp.word_grid_maps.shape == (3, 4, 4)
    assert exp.prompt_words == ["what", "is", "in", "the", "image", "?"] and exp.prompt_scores.shape == (6,)
    assert torch.isfinite(exp.word_maps).all() and exp.word_maps.amax((1, 2)).eq(1).all()
    paths = exp.save(tmp_path, figure=True)
    arrays = np.load(paths["npz"])
    assert arrays["word_maps"].shape == (3, 8, 8) and arrays["prompt_scores"].shape == (6,)
    record = json.loads(paths["json"].read_text())
    assert record["words"] == exp.words and record["prompt_words"] == exp.prompt_words
    assert record["settings"]["per_word"] is True and record["settings"]["prompt_layer"] == 0
    # the figure has a panel per word: wider than the whole answer's alone
    alone = m2ib.explain_answer(
        model, picture, PROMPT, answer=ANSWER, processor=processor, per_word=False, prompt_side=False, **FAST
    )
    assert alone.words == [] and alone.word_maps is None and "word_maps" not in alone.arrays()
    torch.testing.assert_close(alone.token_scores, exp.token_scores)  # the whole answer's map is unchanged
    assert Image.open(paths["png"]).size[0] > alone.figure().size[0]


def test_the_cli_writes_the_word_maps(llava, picture, tmp_path):
    from m2ib.cli import main

    model, processor = llava
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    picture.save(tmp_path / "scene.png")
    args = ["explain", str(tmp_path / "scene.png"), PROMPT, "--answer", ANSWER, "--model", str(tmp_path / "model")]
    assert main([*args, "--out", str(tmp_path / "out"), "--steps", "2", "--samples", "1"]) == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert record["words"] == ["a", "red", "circle"] and len(record["prompt_scores"]) == 6
    assert np.load(tmp_path / "out" / "scene.npz")["word_maps"].shape == (3, 8, 8)
