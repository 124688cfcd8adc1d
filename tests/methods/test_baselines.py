"""The baselines behind the method interface: each one checked against a plain computation on
the transformers model itself (autograd, hooks, eager attention), plus the shared contract
(shapes, range, no NaN, determinism, batch independence, nothing left behind) and targets."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

import m2ib
from m2ib.cli import main
from m2ib.errors import InputError
from m2ib.inputs import load_image
from m2ib.methods import REGISTRY, Target

# Settings that keep every method quick on the small CLIPs.
FAST = {
    "m2ib": dict(steps=2, samples=2),
    "rise": dict(masks=32),
    "kernelshap": dict(samples=32, grid=3),
    "nib": dict(steps=3),
}
METHODS = list(REGISTRY)
TEXT = "a red circle and a blue star"


def fast(name: str) -> dict:
    return dict(FAST.get(name, {}))


@pytest.fixture(scope="module")
def pair(small_clip):
    """A preprocessed image and tokenised text, and the model's own embeddings of them."""
    model, tokenizer = small_clip
    backend = m2ib.load(model, tokenizer=tokenizer)
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(3))
    pixels = backend.preprocess_images([load_image(image)[0]]).pixel_values
    texts = backend.tokenize([TEXT])
    with torch.no_grad():
        img = features(model.get_image_features(pixel_values=pixels))
        txt = features(model.get_text_features(input_ids=texts.input_ids, attention_mask=texts.attention_mask))
    return dict(
        image=image,
        pixels=pixels,
        ids=texts.input_ids,
        mask=texts.attention_mask,
        img=F.normalize(img, dim=-1),
        txt=F.normalize(txt, dim=-1),
        eos=int(backend.pooled_positions("text", texts)[0]),
    )


def features(out):
    return getattr(out, "pooler_output", out)


def explain(backend, pair, method, **kwargs):
    return m2ib.explain(backend, pair["image"], TEXT, method=method, **{**fast(method), **kwargs})


def eager(model):
    m = copy.deepcopy(model)
    m.set_attn_implementation("eager")
    return m


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


def test_registry_order_and_metadata():
    assert m2ib.list_methods()[0] == "m2ib"
    assert set(METHODS) >= {
        "gradcam",
        "saliency",
        "rise",
        "kernelshap",
        "chefer",
        "rollout",
        "nib",
        "gradeclip",
        "legrad",
    }
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.title and cls.paper.startswith("https://")
        assert set(cls.modalities) <= {"image", "text"} and cls.modalities
        assert dataclasses.is_dataclass(cls.Settings) and cls.Settings.__dataclass_params__.frozen
        for f in dataclasses.fields(cls.Settings):
            assert f.metadata.get("help"), (name, f.name)
        module = __import__(cls.__module__, fromlist=["_"])
        assert cls.paper in module.__doc__, name


@pytest.mark.parametrize("method", METHODS)
def test_shapes_range_finite_and_clean(small_clip, backend, method):
    model, _ = small_clip
    flags = [p.requires_grad for p in model.parameters()]
    images = [torch.rand(3, 48, 48), torch.rand(3, 40, 61)]
    exps = m2ib.explain(backend, images, ["a cat", TEXT], method=method, **fast(method))
    for exp in exps:
        assert exp.method == method
        assert exp.image_map.shape == (48, 48) and exp.image_map_raw.shape == (48, 48)
        assert torch.isfinite(exp.image_map_raw).all()
        assert exp.image_map.min() >= 0 and exp.image_map.max() <= 1
        if "text" in REGISTRY[method].modalities:
            assert exp.text_map.shape == (len(exp.tokens),)
            assert torch.isfinite(exp.text_map_raw).all() and 0 <= exp.text_map.min() <= exp.text_map.max() <= 1
        else:
            assert exp.text_map is None
    # nothing left behind: flags, gradients, hooks, recordings, modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert not backend._recording


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_batch_independent(backend, method):
    image, other = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(5)), torch.rand(3, 48, 48)
    alone = m2ib.explain(backend, image, TEXT, method=method, **fast(method))
    again = m2ib.explain(backend, image, TEXT, method=method, **fast(method))
    batched = m2ib.explain(backend, [other, image], ["a cat", TEXT], method=method, **fast(method))[1]
    for exp in (again, batched):
        torch.testing.assert_close(exp.image_map_raw, alone.image_map_raw, atol=2e-5, rtol=1e-4)
        if alone.text_map is not None:
            torch.testing.assert_close(exp.text_map_raw, alone.text_map_raw, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["rise", "kernelshap"])
def test_seed_changes_sampled_methods(backend, method):
    image = torch.rand(3, 48, 48)
    a = m2ib.explain(backend, image, TEXT, method=method, modalities=("image",), seed=1, **fast(method))
    b = m2ib.explain(backend, image, TEXT, method=method, modalities=("image",), seed=2, **fast(method))
    assert not torch.allclose(a.image_map_raw, b.image_map_raw)


def test_image_only_method_and_bad_settings(backend):
    assert m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", method="rise", masks=8).text_map is None
    with pytest.raises(InputError, match="rise cannot explain the text side"):
        m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", method="rise", modalities=("text",))
    for method, bad, message in [
        ("rise", dict(p_keep=0.0), "p_keep=0.0"),
        ("rise", dict(masks=0), "masks=0"),
        ("saliency", dict(channels="mean"), "channels='mean'"),
        ("gradcam", dict(vision_layer=7), "vision_layer=7 is outside"),
        ("legrad", dict(pooling="cls"), "pooling='cls'"),
        ("chefer", dict(start_layer=3), "start_layer=3 is outside"),
        ("kernelshap", dict(samples=1), "samples=1"),
        ("nib", dict(steps=0), "steps=0"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", method=method, **bad)


# --------------------------------------------------------------------------------------------
# Each method against a plain computation on the transformers model
# --------------------------------------------------------------------------------------------


def test_saliency_equals_autograd_of_the_cosine(small_clip, backend, pair):
    model, _ = small_clip
    pixels = pair["pixels"].clone().requires_grad_(True)
    cos = F.cosine_similarity(features(model.get_image_features(pixel_values=pixels)), pair["txt"], eps=1e-6)
    (grad,) = torch.autograd.grad(cos.sum(), pixels)
    exp = explain(backend, pair, "saliency")
    torch.testing.assert_close(exp.image_map_raw, grad.abs().amax(1)[0], atol=1e-6, rtol=1e-4)
    summed = explain(backend, pair, "saliency", channels="sum", modalities=("image",))
    torch.testing.assert_close(summed.image_map_raw, grad.abs().sum(1)[0], atol=1e-6, rtol=1e-4)
    # text: the norm of the gradient w.r.t. the input embeddings (token + position)
    store = {}

    def leaf(module, args, output):
        store["e"] = output.detach().requires_grad_(True)
        return store["e"]

    handle = model.text_model.embeddings.register_forward_hook(leaf)
    try:
        txt = features(model.get_text_features(input_ids=pair["ids"], attention_mask=pair["mask"]))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(F.cosine_similarity(txt, pair["img"], eps=1e-6).sum(), store["e"])
    torch.testing.assert_close(exp.text_map_raw, grad[0].norm(dim=-1), atol=1e-6, rtol=1e-4)


def _block_output(model, modality, layer, run):
    """Run ``run()`` with block ``layer``'s output captured (in the graph)."""
    tower = model.vision_model if modality == "image" else model.text_model
    store = {}

    def capture(module, args, output):
        store["h"] = output[0] if isinstance(output, tuple) else output

    handle = tower.encoder.layers[layer].register_forward_hook(capture)
    try:
        out = features(run())
    finally:
        handle.remove()
    return out, store["h"]


def test_gradcam_equals_hand_computation_from_a_hook(small_clip, backend, pair):
    model, _ = small_clip
    pixels = pair["pixels"].clone().requires_grad_(True)  # makes the block output part of a graph
    emb, h = _block_output(model, "image", 1, lambda: model.get_image_features(pixel_values=pixels))
    (g,) = torch.autograd.grad(F.cosine_similarity(emb, pair["txt"], eps=1e-6).sum(), h)
    patches = torch.relu((g[:, 1:].mean(1, keepdim=True) * h).sum(-1))[0, 1:].reshape(4, 4)  # CLS left out
    every = torch.relu((g.mean(1, keepdim=True) * h).sum(-1))[0, 1:].reshape(4, 4)
    exp = explain(backend, pair, "gradcam", vision_layer=1, text_layer=0)
    torch.testing.assert_close(exp.image_grid, patches.detach(), atol=1e-7, rtol=1e-4)
    exp_all = explain(backend, pair, "gradcam", vision_layer=1, text_layer=0, tokens="all")
    torch.testing.assert_close(exp_all.image_grid, every.detach(), atol=1e-7, rtol=1e-4)
    assert not torch.allclose(patches, every, rtol=1e-2)  # the two settings differ on this pair
    emb_t, h_t = _block_output(
        model, "text", 0, lambda: model.get_text_features(input_ids=pair["ids"], attention_mask=pair["mask"])
    )  # in a graph through the fixture's weights
    (g,) = torch.autograd.grad(F.cosine_similarity(emb_t, pair["img"], eps=1e-6).sum(), h_t)
    cam_t = torch.relu((g.mean(1, keepdim=True) * h_t).sum(-1))[0]
    torch.testing.assert_close(exp.text_map_raw, cam_t.detach(), atol=1e-7, rtol=1e-4)


def test_nib_equals_a_plain_integrated_gradients_loop(small_clip, backend, pair):
    model, _ = small_clip
    layer, n = 1, 4
    with torch.no_grad():
        _, h = _block_output(model, "image", layer, lambda: model.get_image_features(pixel_values=pair["pixels"]))
    total = torch.zeros_like(h)
    for i in range(1, n + 1):  # the released loop: replace the block's output by h * i / n, one pass each
        x = (h * i / n).requires_grad_(True)
        handle = model.vision_model.encoder.layers[layer].register_forward_hook(lambda m, a, o, x=x: x)
        try:
            emb = features(model.get_image_features(pixel_values=pair["pixels"]))
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(F.cosine_similarity(pair["txt"], emb, eps=1e-6).mean(), x)
        total += h * g / n
    expected = total.sum(-1)[0, 1:].reshape(4, 4)
    exp = explain(backend, pair, "nib", vision_layer=layer, steps=n, max_batch=3, modalities=("image",))
    torch.testing.assert_close(exp.image_grid, expected, atol=1e-7, rtol=1e-4)


def _attentions(model, modality, pair, **kw):
    m = eager(model)
    if modality == "image":
        pixels = pair["pixels"].clone().requires_grad_(True)
        out = m.vision_model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        emb = m.visual_projection(out.pooler_output)
        other = pair["txt"]
    else:
        out = m.text_model(
            input_ids=pair["ids"], attention_mask=pair["mask"], output_attentions=True, output_hidden_states=True
        )
        emb = m.text_projection(out.pooler_output)
        other = pair["img"]
    return m, out, F.cosine_similarity(emb, other, eps=1e-6).sum()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_chefer_and_rollout_equal_formulas_on_eager_attention(small_clip, backend, pair, modality):
    model, _ = small_clip
    _, out, score = _attentions(model, modality, pair)
    grads = torch.autograd.grad(score, out.attentions)
    t = out.attentions[0].shape[-1]
    r = torch.eye(t)
    joint = torch.eye(t)
    for a, g in zip(out.attentions, grads):
        r = r + (g * a).clamp(min=0).mean(1)[0] @ r
        aug = a[0].mean(0).detach() + torch.eye(t)
        joint = (aug / aug.sum(-1, keepdim=True)) @ joint
    exp = explain(backend, pair, "chefer", modalities=(modality,))
    roll = explain(backend, pair, "rollout", modalities=(modality,))
    if modality == "image":
        torch.testing.assert_close(exp.image_grid, r[0, 1:].reshape(4, 4).detach(), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(roll.image_grid, joint[0, 1:].reshape(4, 4), atol=1e-6, rtol=1e-4)
    else:
        row = r[pair["eos"]].detach()
        row[pair["eos"]] -= 1.0
        torch.testing.assert_close(exp.text_map_raw, row, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(roll.text_map_raw, joint[pair["eos"]], atol=1e-6, rtol=1e-4)


def test_chefer_start_layer_uses_the_last_blocks(small_clip, backend, pair):
    model, _ = small_clip
    _, out, score = _attentions(model, "image", pair)
    g = torch.autograd.grad(score, out.attentions[-1])[0]
    cam = (g * out.attentions[-1]).clamp(min=0).mean(1)[0, 0, 1:].reshape(4, 4)
    exp = explain(backend, pair, "chefer", start_layer=-1, modalities=("image",))
    torch.testing.assert_close(exp.image_grid, cam.detach(), atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "model"])
def test_legrad_equals_the_released_formula(small_clip, backend, pair, pooling):
    model, _ = small_clip
    m, out, _ = _attentions(model, "image", pair)
    total = 0
    for layer in range(1, 3):  # start_layer=1 of 3
        z = out.hidden_states[layer + 1]  # block ``layer``'s output
        pooled = z.mean(1) if pooling == "mean" else z[:, 0]
        emb = m.visual_projection(m.vision_model.post_layernorm(pooled))
        score = F.cosine_similarity(emb, pair["txt"], eps=1e-6).sum()
        (g,) = torch.autograd.grad(score, out.attentions[layer], retain_graph=True)
        g = g.clamp(min=0).mean(1)[0]
        total = total + (g.mean(0) if pooling == "mean" else g[0])
    exp = explain(backend, pair, "legrad", start_layer=1, pooling=pooling, modalities=("image",))
    torch.testing.assert_close(exp.image_grid, total[1:].reshape(4, 4), atol=1e-7, rtol=1e-4)
    # text: the end token's intermediate embedding and its attention row
    m, out, _ = _attentions(model, "text", pair)
    total = 0
    for layer in range(3):
        z = out.hidden_states[layer + 1][:, pair["eos"]]
        emb = m.text_projection(m.text_model.final_layer_norm(z))
        score = F.cosine_similarity(emb, pair["img"], eps=1e-6).sum()
        (g,) = torch.autograd.grad(score, out.attentions[layer], retain_graph=True)
        total = total + g.clamp(min=0).mean(1)[0, pair["eos"]]
    exp = explain(backend, pair, "legrad", modalities=("text",))
    torch.testing.assert_close(exp.text_map_raw, total, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("modality,blocks", [("image", 1), ("image", 2), ("text", 2)])
def test_gradeclip_equals_value_features_times_gradient_at_the_attention_output(
    small_clip, backend, pair, modality, blocks
):
    """The released form: the gradient at the attention output (before the out-projection) of the
    pooled token, times the value features, times the min-max query-key cosine; ReLU of the sum."""
    model, _ = small_clip
    tower = model.vision_model if modality == "image" else model.text_model
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    n_layers = len(tower.encoder.layers)
    for b in range(n_layers - blocks, n_layers):
        attn = tower.encoder.layers[b].self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            handles.append(
                getattr(attn, name).register_forward_hook(lambda mod, a, o, key=(name, b): store.__setitem__(key, o))
            )
        handles.append(
            attn.out_proj.register_forward_pre_hook(lambda mod, a, key=("ctx", b): store.__setitem__(key, a[0]))
        )
    try:
        if modality == "image":
            pixels = pair["pixels"].clone().requires_grad_(True)
            emb, other, p = features(model.get_image_features(pixel_values=pixels)), pair["txt"], 0
        else:
            emb = features(model.get_text_features(input_ids=pair["ids"], attention_mask=pair["mask"]))
            other, p = pair["img"], pair["eos"]
    finally:
        for h in handles:
            h.remove()
    score = F.cosine_similarity(emb, other, eps=1e-6).sum()
    keys = range(n_layers - blocks, n_layers)
    grads = torch.autograd.grad(score, [store[("ctx", b)] for b in keys])
    total = 0
    for b, g in zip(keys, grads):
        q, k, v = store[("q_proj", b)][0], store[("k_proj", b)][0], store[("v_proj", b)][0]
        cos = F.cosine_similarity(q[p][None], k, dim=-1)
        valid = slice(1, None) if modality == "image" else slice(0, p + 1)
        lam = torch.zeros_like(cos)
        c = cos[valid]
        lam[valid] = (c - c.min()) / (c.max() - c.min())
        total = total + lam * (g[0, p][None] * v).sum(-1)
    expected = torch.relu(total).detach()
    if modality == "image":
        exp = explain(backend, pair, "gradeclip", vision_blocks=blocks, modalities=("image",))
        torch.testing.assert_close(exp.image_grid, expected[1:].reshape(4, 4), atol=1e-7, rtol=1e-4)
    else:
        exp = explain(backend, pair, "gradeclip", text_blocks=blocks, modalities=("text",))
        expected[p + 1 :] = 0
        torch.testing.assert_close(exp.text_map_raw, expected, atol=1e-7, rtol=1e-4)


def _shapley(f, m):
    """Exact Shapley values of ``f`` (a function of a frozenset of features) by enumeration."""
    f = functools.lru_cache(maxsize=None)(f)
    phi = torch.zeros(m, dtype=torch.float64)
    for j in range(m):
        others = [i for i in range(m) if i != j]
        for k in range(m):
            for subset in itertools.combinations(others, k):
                w = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
                phi[j] += w * (f(frozenset(subset) | {j}) - f(frozenset(subset)))
    return phi


def test_kernelshap_is_exact_when_the_budget_covers_every_coalition(small_clip, backend, pair):
    model, _ = small_clip
    cells = (torch.arange(48)[:, None] // 24) * 2 + (torch.arange(48)[None, :] // 24)  # 2 x 2 grid

    def f_image(present):
        keep = torch.zeros(48, 48)
        for c in present:
            keep[cells == c] = 1.0
        with torch.no_grad():
            emb = features(model.get_image_features(pixel_values=pair["pixels"] * keep))
        return float(F.cosine_similarity(emb, pair["txt"], eps=1e-6))

    exp = explain(backend, pair, "kernelshap", grid=2, samples=14)
    torch.testing.assert_close(exp.image_grid.double(), _shapley(f_image, 4).view(2, 2), atol=2e-6, rtol=1e-4)
    words = [j for j in range(len(exp.tokens)) if j not in exp.special_tokens]

    def f_text(present):
        mask = pair["mask"].clone()
        mask[0, words] = 0
        mask[0, [words[i] for i in present]] = 1
        with torch.no_grad():
            emb = features(model.get_text_features(input_ids=pair["ids"], attention_mask=mask))
        return float(F.cosine_similarity(emb, pair["img"], eps=1e-6))

    exact = _shapley(f_text, len(words))  # 6 words: 62 coalitions, within the default budget
    text = explain(backend, pair, "kernelshap", samples=None, modalities=("text",))
    torch.testing.assert_close(text.text_map_raw[words].double(), exact, atol=2e-6, rtol=1e-4)
    assert text.text_map_raw[list(exp.special_tokens)].abs().max() == 0


def test_kernelshap_sampled_values_are_efficient(backend, pair):
    exp = explain(backend, pair, "kernelshap", grid=4, samples=40, modalities=("image",))
    full = exp.similarity
    with torch.no_grad():
        emb = F.normalize(backend.embed("image", m2ib.backends.ImageBatch(torch.zeros(1, 3, 48, 48))), dim=-1)
    empty = float(emb @ pair["txt"].T)
    assert abs(float(exp.image_grid.sum()) - (full - empty)) < 1e-4


def test_rise_equals_a_plain_loop_and_is_the_similarity_when_nothing_is_masked(small_clip, backend, pair):
    from m2ib.methods.rise import MaskSampler

    model, _ = small_clip
    masks = MaskSampler(10, 3, 0.5, (48, 48), seed=4, device=torch.device("cpu"))(0, 10)
    expected = torch.zeros(48, 48)
    with torch.no_grad():
        for mask in masks:
            emb = features(model.get_image_features(pixel_values=pair["pixels"] * mask))
            expected += float(F.cosine_similarity(emb, pair["txt"], eps=1e-6)) * mask
    exp = explain(backend, pair, "rise", masks=10, grid=3, p_keep=0.5, seed=4, max_batch=3)
    torch.testing.assert_close(exp.image_map_raw, expected / (10 * 0.5), atol=1e-6, rtol=1e-4)
    assert masks.min() >= 0 and masks.max() <= 1 and 0.2 < float(masks.mean()) < 0.8
    everything = explain(backend, pair, "rise", masks=5, p_keep=1.0)
    torch.testing.assert_close(everything.image_map_raw, torch.full((48, 48), everything.similarity), atol=1e-5, rtol=0)


def test_rise_mask_pattern_script_agrees_with_the_sanity_metric(capsys):
    """benchmarks/rise_mask_pattern.py (quoted in the README) measures the same rho as the
    evaluation's sanity check."""
    import importlib.util
    from pathlib import Path

    from m2ib.datasets.tables import load_table
    from m2ib.metrics import cascading_randomization

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "rise_mask_pattern.py"
    spec = importlib.util.spec_from_file_location("rise_mask_pattern", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    backend = m2ib.load("random-tiny")  # shapes scenes need 64 px or more
    rows = load_table("shapes:test:1", size=backend.geometry.image_size[0]).rows
    table = script.measure(backend, rows, masks=8, steps=2)
    images = backend.preprocess_images([load_image(rows[0].image)[0]], [rows[0].id])
    reference = cascading_randomization(
        backend,
        images,
        backend.tokenize([rows[0].text]),
        method="rise",
        modality="image",
        settings={"masks": 8},
        steps=2,
    )
    assert list(table) == ["trained", *reference["labels"]]
    for label, rho in zip(reference["labels"], reference["spearman"][0]):
        assert table[label][0][0] == pytest.approx(float(rho), abs=1e-5)
        assert -1 <= table[label][0][1] <= 1
    assert script.main(["--model", "random-tiny", "--pairs", "1", "--masks", "4", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained map vs mask sum" in out and out.count("\n| ") == 4  # header, rule, two cascade points


# --------------------------------------------------------------------------------------------
# Targets: the margin over negative texts
# --------------------------------------------------------------------------------------------


def test_target_score_is_the_cosine_or_the_margin():
    g = torch.Generator().manual_seed(0)
    e, t, negs = (
        torch.randn(3, 8, generator=g),
        F.normalize(torch.randn(3, 8, generator=g), dim=-1),
        F.normalize(torch.randn(2, 8, generator=g), dim=-1),
    )
    cos = F.cosine_similarity(e, t, eps=1e-6)
    torch.testing.assert_close(Target(t).score(e), cos)
    margin = cos - (F.normalize(e, dim=-1) @ negs.T).mean(1)
    torch.testing.assert_close(Target(t, negs).score(e), margin)
    copies = Target(t, negs).score(e.repeat_interleave(2, 0))  # k copies of each pair, adjacent
    torch.testing.assert_close(copies, margin.repeat_interleave(2))
    torch.testing.assert_close(Target(t, negs).select([2, 0]).score(e[[2, 0]]), margin[[2, 0]])


def test_negatives_make_the_margin_the_target(small_clip, backend, pair):
    model, _ = small_clip
    negatives = ["a dog", "a green square"]
    neg = backend.tokenize(negatives)
    with torch.no_grad():
        neg_emb = F.normalize(
            features(model.get_text_features(input_ids=neg.input_ids, attention_mask=neg.attention_mask)), dim=-1
        )
    pixels = pair["pixels"].clone().requires_grad_(True)
    emb = F.normalize(features(model.get_image_features(pixel_values=pixels)), dim=-1)
    margin = (emb @ pair["txt"].T)[0, 0] - (emb @ neg_emb.T).mean()
    (grad,) = torch.autograd.grad(margin, pixels)
    exp = explain(backend, pair, "saliency", negatives=negatives)
    torch.testing.assert_close(exp.image_map_raw, grad.abs().amax(1)[0], atol=1e-6, rtol=1e-4)
    assert exp.settings["negatives"] == negatives
    assert abs(exp.info["margin"] - margin.item()) < 1e-5
    plain = explain(backend, pair, "saliency")
    assert not torch.allclose(plain.image_map_raw, exp.image_map_raw)
    # text side: the negatives' term is a constant of the text, so the text maps are unchanged
    torch.testing.assert_close(plain.text_map_raw, exp.text_map_raw)
    # M2IB's fit term uses the same margin (its default, without negatives, is tested elsewhere)
    a = explain(backend, pair, "m2ib", modalities=("image",))
    b = explain(backend, pair, "m2ib", modalities=("image",), negatives=negatives)
    assert torch.isfinite(b.image_map_raw).all() and not torch.equal(a.image_map_raw, b.image_map_raw)
    assert abs(b.info["image"]["fit"] - a.info["image"]["fit"]) > 0.05  # the fit term is the margin
    with pytest.raises(InputError, match="rollout has no target"):
        explain(backend, pair, "rollout", negatives=negatives)


# --------------------------------------------------------------------------------------------
# Command line: several methods in one figure, --negative
# --------------------------------------------------------------------------------------------


def test_cli_compares_methods_in_one_figure(tmp_path, capsys):
    from m2ib.datasets.shapes import render_scene

    image = tmp_path / "scene.png"
    render_scene(5, size=64).to_pil().save(image)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(image),
            "a red circle",
            "--model",
            "random-tiny",
            "--out",
            str(out),
            "--method",
            "gradcam,rise,rollout",
            "--masks",
            "8",
            "--negative",
            "a blue star",
            "--negative",
            "a cat",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {"scene.png", "scene.npz", "scene.json"}
    meta = json.loads((out / "scene.json").read_text())
    assert list(meta["methods"]) == ["gradcam", "rise", "rollout"]
    assert meta["methods"]["rise"]["settings"]["masks"] == 8
    assert meta["methods"]["gradcam"]["settings"]["negatives"] == ["a blue star", "a cat"]
    assert "negatives" not in meta["methods"]["rollout"]["settings"]  # no target: not applied
    assert meta["methods"]["rise"]["text_scores"] is None
    assert "3/3" in capsys.readouterr().err  # a progress step per method
    assert main(["explain", str(image), "a cat", "--model", "random-tiny", "--method", "gradcam,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and err.count("\n") == 1
    assert (
        main(
            ["explain", str(image), "a cat", "--model", "random-tiny", "--method", "gradcam,rise", "--vision-beta", "1"]
        )
        == 2
    )
    assert "applies to none of gradcam, rise" in capsys.readouterr().err
