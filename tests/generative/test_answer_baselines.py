"""The answer methods (m2ib.generative.methods) on a random tiny LLaVA, each against a plain computation.

The references use the model's own forward (``labels=`` for the answer's log-likelihood,
``mm_encoder_outputs=`` to place image-token states, forward hooks and ``output_attentions`` to read
inside it), never the backend's split forward or the methods' helpers."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tiny_llava import tiny_llava

import m2ib
from m2ib.errors import InputError
from m2ib.generative import AnswerM2IBSettings, fit_answer, generative_backend
from m2ib.generative.methods import ANSWER_METHODS, answer_method

PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"
FAST = {"m2ib": {"steps": 2, "samples": 2}, "rise": {"masks": 8, "grid": 2}, "occlusion": {"window": 2}}


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


def run(llava, query, name, **settings):
    method = answer_method(name)
    return method.explain(generative_backend(*llava), query, method.make_settings(**settings)).scores


def labels_of(query):
    labels = torch.full_like(query.input_ids, -100)
    labels[0, query.answer_start :] = query.answer_ids
    return labels


def own_log_likelihood(model, query, states=None):
    """The model's own teacher-forced answer log-likelihood [B], the image tokens ``states`` [B, K, D] if given."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    if states is None:
        return -model(**query.inputs, labels=labels_of(query)).loss[None] * query.answer_ids.numel()
    text = {k: query.inputs[k] for k in ("input_ids", "attention_mask")}
    out = []
    for z in states:  # one copy at a time: the model's loss is a mean over the batch
        image = BaseModelOutputWithPooling(pooler_output=[z])
        loss = model(**text, labels=labels_of(query), mm_encoder_outputs={"image": image}).loss
        out.append(-loss * query.answer_ids.numel())
    return torch.stack(out)


def projector_states_and_gradient(model, query):
    """The projector's output [K, D] (a forward hook) and d logL / d it, from the model's own loss."""
    captured = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        value = own_log_likelihood(model, query)[0]
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(value, captured[0])
    return captured[0].detach().reshape(-1, 32), grad.reshape(-1, 32)


def test_saliency_and_input_x_gradient_are_the_gradient_of_the_models_own_loss(llava, query):
    states, grad = projector_states_and_gradient(llava[0], query)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(run(llava, query, "saliency"), grad.norm(dim=-1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(run(llava, query, "input_x_gradient"), (states * grad).sum(-1), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_occlusion_of_one_token_is_the_drop_of_the_models_own_likelihood(llava, query, baseline):
    model = llava[0]
    states, _ = projector_states_and_gradient(model, query)
    with torch.no_grad():
        fill = torch.zeros(32) if baseline == "zeros" else states.mean(0)
        copies = states.expand(3, -1, -1).clone()
        for i, k in enumerate([0, 5, 15]):
            copies[i, k] = fill
        expected = own_log_likelihood(model, query) - own_log_likelihood(model, query, copies)
    scores = run(llava, query, "occlusion", baseline=baseline, max_batch=3)
    torch.testing.assert_close(scores[[0, 5, 15]], expected, rtol=1e-4, atol=1e-5)
    # a 2 x 2 window: the corner token (cell 0) is hidden by one square only, {0, 1, 4, 5}
    corner = states.clone()
    corner[[0, 1, 4, 5]] = fill
    with torch.no_grad():
        drop = own_log_likelihood(model, query) - own_log_likelihood(model, query, corner[None])
    scores = run(llava, query, "occlusion", baseline=baseline, window=2)
    torch.testing.assert_close(scores[0], drop[0], rtol=1e-4, atol=1e-5)
    # token 5 (row 1, col 1) is hidden by the four squares at (0, 0), (0, 1), (1, 0), (1, 1): the mean of their drops
    squares = states.expand(4, -1, -1).clone()
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        squares[i, [4 * r + c, 4 * r + c + 1, 4 * r + c + 4, 4 * r + c + 5]] = fill
    with torch.no_grad():
        drops = own_log_likelihood(model, query) - own_log_likelihood(model, query, squares)
    torch.testing.assert_close(scores[5], drops.mean(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("score", ["probability", "log_likelihood"])
def test_rise_with_one_mask_is_its_formula(llava, query, score):
    from m2ib.methods.rise import MaskSampler

    model = llava[0]
    mask = MaskSampler(1, 2, 0.5, (4, 4), 7, torch.device("cpu"))(0, 1)[0].flatten()  # [16], cells 0..15 in order
    assert mask.std() > 0  # not a constant mask
    states, _ = projector_states_and_gradient(model, query)
    with torch.no_grad():
        full = own_log_likelihood(model, query)[0]
        masked = own_log_likelihood(model, query, (mask[:, None] * states)[None])[0]  # baseline zeros
    f = torch.exp(masked - full) if score == "probability" else masked - full
    got = run(llava, query, "rise", masks=1, grid=2, p_keep=0.5, seed=7, score=score)
    torch.testing.assert_close(got, f * mask / 0.5, rtol=1e-4, atol=1e-6)


def test_llava_cam_is_a_plain_hook_grad_cam(llava, query):
    model = llava[0]
    captured = []
    block = model.model.language_model.layers[0]  # the default: (2 - 1) // 2
    hook = block.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    try:
        value = own_log_likelihood(model, query)[0]
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(value, captured[0])
    h, g = captured[0][0, query.image_positions].detach(), grad[0, query.image_positions]
    expected = torch.relu((h * g.mean(0)).sum(-1))
    assert expected.max() > 0
    torch.testing.assert_close(run(llava, query, "llava_cam"), expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(run(llava, query, "llava_cam", layer=-2), expected, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def one_block(picture):
    """A tiny LLaVA whose language model has one block (seed 2), and its query."""
    model, processor = tiny_llava(seed=2)
    model.model.language_model.layers = model.model.language_model.layers[:1]
    model.config.text_config.num_hidden_layers = 1
    return (model, processor), generative_backend(model, processor).prepare(picture, PROMPT, ANSWER)


def test_relevancy_on_one_block_is_the_formula_by_hand(one_block):
    (model, processor), query = one_block
    model.set_attn_implementation("eager")  # the reference reads the model's own attentions
    try:
        out = model(**query.inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    (attn,) = out.attentions  # [1, H, L, L]
    ids, img = query.answer_ids, query.image_positions
    rows = [query.answer_start - 1 + a for a in range(ids.numel())]
    # LVLM-Interpret's default: each answer token's logit; one block: R - I = mean_h relu(grad * A), rows normalised
    per_token = []
    for a, row in enumerate(rows):
        (g,) = torch.autograd.grad(out.logits[0, row, ids[a]], attn, retain_graph=True)
        cam = (g[0] * attn[0]).clamp(min=0).mean(0)
        per_token.append(cam[row, img] / cam[row].sum())
    expected = torch.stack(per_token).mean(0)
    assert expected.max() > 0
    torch.testing.assert_close(run(*one_block, "relevancy"), expected, rtol=1e-4, atol=1e-7)
    # the answer's log-likelihood, not normalised: R = I + cam, the answer rows' image columns averaged
    logp = out.logits[0, rows].log_softmax(-1).gather(-1, ids[:, None]).sum()
    (g,) = torch.autograd.grad(logp, attn)
    cam = (g[0] * attn[0]).clamp(min=0).mean(0)
    got = run(*one_block, "relevancy", target="log_likelihood", normalize=False)
    torch.testing.assert_close(got, cam[rows][:, img].mean(0), rtol=1e-4, atol=1e-7)
    assert model.config.text_config._attn_implementation == "sdpa"


def test_m2ib_is_the_default_and_its_fit_unchanged(llava, picture, query):
    exp = m2ib.explain_answer(llava[0], picture, PROMPT, answer=ANSWER, processor=llava[1], steps=2, samples=2)
    fit = fit_answer(generative_backend(*llava), query, AnswerM2IBSettings(steps=2, samples=2))
    assert exp.method == "m2ib" and list(ANSWER_METHODS)[0] == "m2ib"
    torch.testing.assert_close(exp.token_scores, fit.token_scores)
    torch.testing.assert_close(exp.grid_map, fit.grid_map)
    assert exp.info == fit.info


def hooks_of(model):
    """Every hook on the model's modules (transformers installs its own output-capturing hooks at the first forward)."""
    return [(n, k) for n, m in model.named_modules() for d in (m._forward_hooks, m._forward_pre_hooks) for k in d]


@pytest.mark.parametrize("name", list(ANSWER_METHODS))
def test_every_method_gives_a_finite_map_and_leaves_the_model_as_it_was(name, picture, tmp_path):
    model, processor = tiny_llava(seed=0)
    with torch.no_grad():  # transformers' own hooks are installed at the first forward: count them after it
        model(**generative_backend(model, processor).prepare(picture, PROMPT, ANSWER).inputs)
    hooks = hooks_of(model)
    for module in model.modules():  # dropout would change the map from one call to the next if it ran
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()  # a user's model in training mode: explained in eval mode, left in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = m2ib.explain_answer(
        model, picture, PROMPT, answer=ANSWER, processor=processor, method=name, **FAST.get(name, {})
    )
    again = m2ib.explain_answer(
        model, picture, PROMPT, answer=ANSWER, processor=processor, method=name, **FAST.get(name, {})
    )
    torch.testing.assert_close(again.token_scores, exp.token_scores, rtol=0, atol=0)
    assert exp.method == name and exp.to_dict()["method"] == name
    assert exp.token_scores.shape == (16,) and exp.grid_map.shape == (4, 4) and exp.image_map.shape == (8, 8)
    assert torch.isfinite(exp.token_scores).all() and exp.grid_map.std() > 0
    assert exp.image_map.min() == 0 and exp.image_map.max() == 1
    assert {"npz", "png", "json"} <= set(exp.save(tmp_path))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and all(m.training for m in model.modules())
    assert hooks_of(model) == hooks and all(p.grad is None for p in model.parameters())
    assert model.config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("gradcam", {}, "unknown answer method 'gradcam'"),
        ("saliency", {"beta": 1.0}, "unknown setting(s) for answer method saliency: beta"),
        ("occlusion", {"window": 0}, "window=0 must be a positive integer"),
        ("occlusion", {"window": 5}, "window=5 is larger than the 4 x 4"),
        ("occlusion", {"baseline": "grey"}, "baseline='grey'"),
        ("rise", {"masks": 0}, "masks=0"),
        ("rise", {"p_keep": 2.0}, "p_keep=2.0 must be in (0, 1]"),
        ("rise", {"score": "odds"}, "score='odds'"),
        ("llava_cam", {"layer": -1}, "last block"),
        ("llava_cam", {"layer": 7}, "outside the language model's 2 blocks"),
        ("llava_cam", {"layer": 1.5}, "layer"),
        ("relevancy", {"target": "loss"}, "target='loss'"),
        ("relevancy", {"normalize": "yes"}, "normalize"),
    ],
)
def test_bad_settings_are_one_line(llava, picture, name, settings, message):
    with pytest.raises(InputError) as info:
        m2ib.explain_answer(llava[0], picture, PROMPT, answer=ANSWER, processor=llava[1], method=name, **settings)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_method_from_the_command_line(llava, picture, tmp_path, capsys):
    from m2ib.cli import main

    model, processor = llava
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    picture.save(tmp_path / "scene.png")
    args = ["explain", str(tmp_path / "scene.png"), PROMPT, "--answer", ANSWER, "--model", str(tmp_path / "model")]
    assert main([*args, "--out", str(tmp_path / "out"), "--method", "occlusion", "--baseline", "mean"]) == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert record["method"] == "occlusion" and record["settings"]["baseline"] == "mean"
    capsys.readouterr()
    refused = [
        (["--method", "rise", "--vision-beta", "1"], "--vision-beta does not apply to --answer with --method rise"),
        (["--method", "occlusion", "--window", "0"], "window=0"),
        (["--method", "llava_cam", "--layer", "x"], "layer"),
        (["--method", "all"], "one answer method"),
    ]
    for extra, message in refused:
        assert main([*args, "--out", str(tmp_path / "o2"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    # an answer method's own flag without --answer: refused, not ignored
    clip = ["explain", str(tmp_path / "scene.png"), "a circle", "--model", "random-tiny", "--window", "2"]
    assert main([*clip, "--out", str(tmp_path / "o3")]) == 2
    assert "applies with --answer only" in capsys.readouterr().err


def other_family(family: str):
    """(model, processor, prompt, image shape) of another family's tiny random model."""
    if family == "qwen2.5-vl":
        from tiny_qwen2vl import SIZE, tiny_qwen2vl

        prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is in the image ?<|im_end|>\n"
        return *tiny_qwen2vl("2.5", seed=0), prompt + "<|im_start|>assistant\n", (SIZE, SIZE)
    if family == "paligemma":
        from tiny_paligemma import tiny_paligemma

        return *tiny_paligemma(seed=0), "what is in the image ?", (8, 8)
    if family == "internvl":
        from tiny_internvl import PROMPT as INTERNVL_PROMPT, tiny_internvl

        return *tiny_internvl(seed=0), INTERNVL_PROMPT, (32, 48)
    if family in ("llava-next", "llava-onevision"):
        from tiny_llava_next import tiny_llava_next, tiny_llava_onevision

        build = tiny_llava_next if family == "llava-next" else tiny_llava_onevision
        return *build(seed=0), PROMPT, (24, 40)
    from tiny_idefics3 import tiny_idefics3

    return *tiny_idefics3(seed=0, split=True), PROMPT, (32, 48)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "paligemma", "idefics3", "internvl", "llava-next", "llava-onevision"])
def test_every_method_runs_on_every_family(family):
    model, processor, prompt, shape = other_family(family)
    g = torch.Generator().manual_seed(3)
    picture = Image.fromarray((torch.rand(*shape, 3, generator=g) * 255).byte().numpy())
    implementation = model.config.get_text_config()._attn_implementation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ANSWER_METHODS:
        exp = m2ib.explain_answer(
            model, picture, prompt, answer=ANSWER, processor=processor, method=name, **FAST.get(name, {})
        )
        assert exp.family == family and exp.method == name
        assert torch.isfinite(exp.token_scores).all() and exp.token_scores.abs().max() > 0, name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.config.get_text_config()._attn_implementation == implementation
    assert all(p.grad is None for p in model.parameters())
