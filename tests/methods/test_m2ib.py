"""M2IB: equal to a plain re-implementation of the paper, batch-independent, clean, NaN-free."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import m2ib
from m2ib.errors import InputError
from m2ib.methods.layered import default_layer
from m2ib.methods.m2ib import kl_to_prior

FAST = dict(steps=3, samples=4)  # enough to exercise every code path quickly


def reference_m2ib(
    model, pixel_values, input_ids, modality, layer, beta, var=1.0, steps=10, lr=1.0, samples=10, seed=0
):
    """The method as written in the paper and its code: a hook replaces block ``layer``'s output
    with Z, the WHOLE model (and the other tower) runs on the noise copies at every step, and
    the KL is the paper's formula. Noise is drawn like m2ib's (one generator, all steps at once)."""
    tower = model.vision_model if modality == "image" else model.text_model
    hidden = {}

    def capture(module, args, output):
        hidden["r"] = output[0] if isinstance(output, tuple) else output

    handle = tower.encoder.layers[layer].register_forward_hook(capture)
    with torch.no_grad():
        if modality == "image":
            model.get_image_features(pixel_values=pixel_values)
        else:
            model.get_text_features(input_ids=input_ids)
    handle.remove()
    r = hidden["r"].detach()  # [1, T, D]
    alpha = torch.full_like(r, 5.0, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(steps, samples, *r.shape[1:], generator=g)
    kl = None
    for step in range(steps):
        optimiser.zero_grad()
        lam = torch.sigmoid(alpha)
        eps = noise[step] * var**0.5
        z = lam * r + (1 - lam) * eps
        mu, v = lam * r, (1 - lam) ** 2 * var
        kl = 0.5 * (v / var + mu**2 / var - 1 - torch.log(v / var))  # KL(N(mu, v) || N(0, var))

        def replace(module, args, output):
            return z

        handle = tower.encoder.layers[layer].register_forward_hook(replace)
        try:
            if modality == "image":
                out = model.get_image_features(pixel_values=pixel_values.expand(samples, -1, -1, -1))
                target = model.get_text_features(input_ids=input_ids)
            else:
                out = model.get_text_features(input_ids=input_ids.expand(samples, -1))
                target = model.get_image_features(pixel_values=pixel_values)
        finally:
            handle.remove()
        out = getattr(out, "pooler_output", out)
        target = getattr(target, "pooler_output", target).detach()
        loss = beta * kl.mean() - F.cosine_similarity(out, target, eps=1e-6).mean()
        loss.backward()
        optimiser.step()
    return kl.detach()[0].sum(-1)  # [T]


@pytest.mark.parametrize(
    "modality,layer,beta,var",
    [("image", 1, 0.1, 1.0), ("text", 0, 1.0, 1.0), ("image", 0, 0.5, 2.5), ("text", 1, 0.1, 0.5)],
)
def test_equals_reference_implementation(small_clip, backend, modality, layer, beta, var):
    model, _ = small_clip
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    text = "a red circle and a blue star"
    settings = dict(
        vision_layer=layer, text_layer=layer, vision_beta=beta, text_beta=beta, var=var, steps=6, samples=5, seed=7
    )
    exp = m2ib.explain(backend, image, text, modalities=(modality,), **settings)
    images = backend.preprocess_images([m2ib.inputs.load_image(image)[0]])
    texts = backend.tokenize([text])
    ref = reference_m2ib(
        model.float(), images.pixel_values, texts.input_ids, modality, layer, beta, var, steps=6, samples=5, seed=7
    )
    for p in model.parameters():  # the reference's backward filled .grad; our fixture stays clean
        p.grad = None
    if modality == "image":
        torch.testing.assert_close(exp.image_grid.flatten(), ref[1:], atol=1e-4, rtol=1e-4)
        assert exp.text_map is None
    else:
        torch.testing.assert_close(exp.text_map_raw, ref, atol=1e-4, rtol=1e-4)
        assert exp.image_map is None


def test_kl_formula_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(50, generator=g) * 3  # lam in about (0.0001, 0.9999): float32 is exact enough here
    r = torch.randn(50, generator=g) * 3
    for var in (1.0, 0.3, 4.0):
        lam = torch.sigmoid(alpha)
        ours = kl_to_prior(lam * r, F.logsigmoid(-alpha), var)
        p = torch.distributions.Normal(lam * r, (1 - lam) * var**0.5)
        q = torch.distributions.Normal(torch.zeros(50), torch.full((50,), var**0.5))
        torch.testing.assert_close(ours, torch.distributions.kl_divergence(p, q), atol=1e-3, rtol=1e-4)
    # stays finite where the textbook formula overflows
    assert torch.isfinite(kl_to_prior(torch.ones(3), F.logsigmoid(-torch.tensor([30.0, 60.0, 200.0])), 1.0)).all()


def test_batched_equals_single_calls(backend, images):
    texts = ["a red circle", "a photo of a cat and a dog on a green tree", "star"]
    batched = m2ib.explain(backend, images, texts, seed=3, **FAST)
    for image, text, b in zip(images, texts, batched):
        single = m2ib.explain(backend, image, text, seed=3, **FAST)
        torch.testing.assert_close(b.image_map, single.image_map, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.text_map, single.text_map, atol=1e-4, rtol=0)
        assert b.tokens == single.tokens and len(b.text_map) == len(b.tokens)
    # one image against many texts, in chunks of two
    many = m2ib.explain(backend, images[0], texts, seed=3, batch_size=2, **FAST)
    single = m2ib.explain(backend, images[0], texts[2], seed=3, **FAST)
    torch.testing.assert_close(many[2].text_map, single.text_map, atol=1e-4, rtol=0)
    torch.testing.assert_close(many[2].image_map, single.image_map, atol=1e-4, rtol=0)


def test_seed_reproducible_and_var_used(backend, images):
    a = m2ib.explain(backend, images[0], "a cat", seed=5, **FAST)
    b = m2ib.explain(backend, images[0], "a cat", seed=5, **FAST)
    c = m2ib.explain(backend, images[0], "a cat", seed=6, **FAST)
    d = m2ib.explain(backend, images[0], "a cat", seed=5, var=3.0, **FAST)
    assert torch.equal(a.image_map, b.image_map) and torch.equal(a.text_map, b.text_map)
    assert not torch.allclose(a.image_map_raw, c.image_map_raw)
    assert not torch.allclose(a.image_map_raw, d.image_map_raw)


def test_negative_layers_and_default_layer_rule(backend, images):
    a = m2ib.explain(backend, images[0], "a cat", vision_layer=-1, text_layer=-2, **FAST)
    b = m2ib.explain(backend, images[0], "a cat", vision_layer=2, text_layer=1, **FAST)
    assert torch.equal(a.image_map, b.image_map) and torch.equal(a.text_map, b.text_map)
    assert (a.settings["vision_layer"], a.settings["text_layer"]) == (2, 1)
    assert default_layer(12) == 9  # the paper's layer for CLIP's 12-block towers
    assert [default_layer(n) for n in (1, 2, 4, 6, 8, 24)] == [0, 1, 2, 4, 6, 19]


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(vision_layer=3), "vision_layer=3 is outside the image encoder's 3 blocks: use 0..2"),
        (dict(text_layer=-4), "text_layer=-4 is outside"),
        (dict(steps=0), "steps=0 must be a positive integer"),
        (dict(samples=-1), "samples=-1"),
        (dict(lr=0.0), "lr=0.0 must be a positive number"),
        (dict(vision_beta=-0.1), "vision_beta=-0.1 must be a number >= 0"),
        (dict(var=0), "var=0"),
        (dict(precision="int8"), "precision='int8'"),
        (dict(temperature=1.0), "unknown setting"),
    ],
)
def test_bad_settings_are_clear_errors(backend, bad, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", **bad)


def _no_leftovers(model, flags):
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_no_leftovers_after_success_or_exception(small_clip, backend, monkeypatch):
    model, _ = small_clip
    flags = [p.requires_grad for p in model.parameters()]
    layers_before = [id(m) for m in model.modules()]
    m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", **FAST)
    _no_leftovers(model, flags)
    calls = {"n": 0}
    real_suffix = type(backend).suffix

    def failing_suffix(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom in the middle of the fit")
        return real_suffix(self, *args, **kwargs)

    monkeypatch.setattr(type(backend), "suffix", failing_suffix)
    with pytest.raises(RuntimeError, match="boom"):
        m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", **FAST)
    _no_leftovers(model, flags)
    assert [id(m) for m in model.modules()] == layers_before  # nothing swapped in


@pytest.mark.parametrize(
    "image,text",
    [
        (torch.zeros(3, 48, 48), "a cat"),  # all black
        (torch.rand(3, 48, 1), "a cat"),  # one pixel wide
        (torch.rand(3, 1, 64), "cat cat cat cat cat cat cat cat"),  # one pixel high, one repeated token
        (torch.ones(3, 48, 48), "a " * 60),  # constant white, long repetition
    ],
)
def test_maps_never_contain_nan(backend, image, text):
    exp = m2ib.explain(backend, image, text, **FAST)
    for t in (exp.image_map, exp.text_map, exp.image_map_raw, exp.text_map_raw):
        assert torch.isfinite(t).all()
    assert exp.image_map.min() >= 0 and exp.image_map.max() <= 1


def test_huge_beta_and_lr_stay_finite(backend):
    with pytest.warns(UserWarning, match="constant"):  # finite, but degenerate: said so
        exp = m2ib.explain(
            backend, torch.rand(3, 48, 48), "a cat", lr=100.0, vision_beta=1000.0, text_beta=1000.0, steps=5, samples=2
        )
    assert torch.isfinite(exp.image_map).all() and torch.isfinite(exp.text_map).all()


def test_bf16_is_opt_in_and_close_to_fp32(backend, images):
    fp32 = m2ib.explain(backend, images[1], "a red circle", seed=1, steps=4, samples=4)
    bf16 = m2ib.explain(backend, images[1], "a red circle", seed=1, steps=4, samples=4, precision="bf16")
    assert fp32.settings["precision"] == "fp32"
    corr = torch.corrcoef(torch.stack([fp32.image_map.flatten(), bf16.image_map.flatten()]))[0, 1]
    assert corr > 0.9


def test_the_shared_embeddings_run_in_the_precision_a_method_declares(backend, monkeypatch):
    """The base class asks ``precision_of`` (M2IB: its ``precision`` setting); it never reads a
    settings field by name, so a method that declares nothing is embedded in fp32."""
    import m2ib.methods.base as base
    from m2ib.backends.base import ImageBatch
    from m2ib.methods.gradcam import GradCAM, GradCAMSettings
    from m2ib.methods.m2ib import M2IB

    @dataclasses.dataclass(frozen=True)
    class WithPrecision(GradCAMSettings):
        precision: str = "bf16"

    class Undeclared(GradCAM):
        Settings = WithPrecision

    seen = []
    real = base.autocast
    monkeypatch.setattr(base, "autocast", lambda device, precision: seen.append(precision) or real(device, precision))
    images, texts = ImageBatch(torch.rand(1, 3, 48, 48)), backend.tokenize(["a cat"])
    M2IB().explain(backend, images, texts, M2IB().make_settings(backend, precision="bf16", steps=1, samples=1))
    Undeclared().explain(backend, images, texts, Undeclared().make_settings(backend))
    assert seen == ["bf16", "fp32"]


def test_weights_never_receive_gradients(small_clip, backend):
    model, _ = small_clip
    seen = []
    handles = [p.register_hook(lambda g: seen.append(g)) for p in model.parameters() if p.requires_grad]
    try:
        m2ib.explain(backend, torch.rand(3, 48, 48), "a cat", **FAST)
    finally:
        for h in handles:
            h.remove()
    assert seen == []


def test_pil_inputs_of_every_mode(backend, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    inputs = [
        rgb.convert("L"),
        rgb.convert("RGBA"),
        rgb.convert("P"),
        rgb.convert("CMYK"),
        Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)),
        rgb.convert("1"),
        Image.fromarray(rng.random((40, 30)).astype(np.float32), mode="F"),
    ]
    exps = m2ib.explain(backend, inputs, "a cat", **FAST)
    assert all(torch.isfinite(e.image_map).all() for e in exps)


def test_a_fit_that_cannot_fit_in_memory_is_refused_before_allocating(backend, monkeypatch):
    import m2ib
    import m2ib.methods.m2ib as m2ib_method
    import m2ib.methods.memory as memory
    from m2ib.errors import InputError

    settings = m2ib_method.M2IBSettings(steps=10, samples=10)
    small = m2ib_method.memory_needed(1, 17, 32, 1, settings)
    assert m2ib_method.memory_needed(1, 17, 32, 1, dataclasses.replace(settings, samples=20)) > small
    assert m2ib_method.memory_needed(2, 17, 32, 1, settings) == 2 * small
    monkeypatch.setattr(memory, "memory_available", lambda device: small // 2)
    with pytest.raises(
        InputError,
        match=r"samples=10 and steps=10 on 1 pair.*: lower samples \(or batch_size, or "
        r"steps\)$",
    ) as refused:
        m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=10, samples=10)
    assert refused.value.settings == ("samples", "batch_size", "steps")
    monkeypatch.setattr(memory, "memory_available", lambda device: 10 * 2**30)
    m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=2, samples=2)


def test_errors_name_settings_and_the_command_line_says_their_flags(backend, monkeypatch, capsys, tmp_path):
    """From Python an M2IB error or warning names settings (text_beta); the CLI says --text-beta."""
    from pathlib import Path

    import m2ib.methods.memory as memory
    from m2ib.cli import main

    scene = str(Path(__file__).resolve().parents[2] / "examples" / "scene1.png")
    fast = [
        "--model",
        "random-tiny",
        "--steps",
        "3",
        "--samples",
        "2",
        "--modalities",
        "text",
        "--no-figure",
        "--out",
        str(tmp_path),
    ]
    with pytest.warns(UserWarning, match=r"lower lr \(now 1e\+30\) or text_beta \(now 0.1\)$"):
        m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=3, samples=2, lr=1e30, modalities=["text"])
    assert main(["explain", scene, "a red circle", *fast, "--lr", "1e30"]) == 0
    err = capsys.readouterr().err
    assert err.count("lower --lr (now 1e+30) or --text-beta (now 0.1)\n") == 1, err
    monkeypatch.setattr(memory, "memory_available", lambda device: 1)
    assert main(["explain", scene, "a red circle", *fast, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2ib: error: M2IB with samples=2 and steps=3 on 1 pair(s) needs about ") and err.endswith(
        ": lower --samples (or --batch-size, or --steps)\n"
    ), err


def test_a_degenerate_fit_is_loud(backend):
    """lr=1e30 drives every alpha to -inf: a constant (all-zero) map, which must warn, naming lr."""
    import m2ib

    with pytest.warns(UserWarning, match=r"constant.*lower lr \(now 1e\+30\) or vision_beta \(now 0.1\)$"):
        m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=3, samples=2, lr=1e30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal fit says nothing
        m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=3, samples=2)
