"""AdaIB (M2IB with objective="adaib"): equal to a plain per-sample re-implementation of the
paper's update, M2IB again under Proposition 1, settings honoured or refused, on the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import m2ib
from m2ib.errors import InputError
from m2ib.methods.m2ib import M2IBSettings, fit_bottleneck

FAST = dict(steps=3, samples=4)


def plain_relevance(image_emb, text_emb, form, embeddings="raw", eps_f=1e-6, tau=1.0):
    """The paper's f (appendix B.1, step 5), one pair, written out."""
    if form == "cosine":
        s = (1 + (image_emb / image_emb.norm()) @ (text_emb / text_emb.norm())) / 2
        return torch.log1p(torch.exp(tau * s)) + eps_f
    if embeddings == "normalised":
        image_emb, text_emb = image_emb / image_emb.norm(), text_emb / text_emb.norm()
    diff = (image_emb - text_emb).abs()
    distance = {"l1": diff.sum(), "l2": diff.square().sum().sqrt(), "linf": diff.max()}[form]
    return 1 / (distance + eps_f)


def plain_mlp(hidden, seed):
    """g's MLP as torch modules, weights drawn as documented: nn.Linear's default bounds, from a
    generator seeded with the seed, in the order w1, b1, w2, b2."""
    mlp = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, bound in zip(mlp.parameters(), (1.0, 1.0, hidden**-0.5, hidden**-0.5)):
            p.copy_(((torch.rand(p.numel(), generator=g) * 2 - 1) * bound).view_as(p))
    return mlp


def reference_adaib(model, pixel_values, input_ids, modality, layer, s: dict):
    """AdaIB for ONE pair as the paper writes it: per step, loss = g(f) * mean KL - f * mean cos
    (eq. 4 negated), autograd through the WHOLE model with a hook replacing block ``layer``'s output,
    clip_grad_norm_ over every trained parameter, Adam on alpha and g's MLP together.
    Returns the map [T] and the last step's (compression, fit, f, g)."""
    steps, samples, seed, beta = s["steps"], s["samples"], s["seed"], s.get("beta", 0.1)
    tower = model.vision_model if modality == "image" else model.text_model
    features = {}

    def capture(module, args, output):
        features["r"] = output[0] if isinstance(output, tuple) else output

    handle = tower.encoder.layers[layer].register_forward_hook(capture)
    with torch.no_grad():
        image_emb = model.get_image_features(pixel_values=pixel_values)
        text_emb = model.get_text_features(input_ids=input_ids)
    handle.remove()
    image_emb = getattr(image_emb, "pooler_output", image_emb)[0]
    text_emb = getattr(text_emb, "pooler_output", text_emb)[0]
    f = plain_relevance(image_emb, text_emb, s["relevance"], s.get("embeddings", "raw"), tau=s.get("tau", 1.0))
    r = features["r"].detach()
    alpha = torch.full_like(r, 5.0, requires_grad=True)
    mlp = plain_mlp(32, seed)
    trained = [alpha, *mlp.parameters()] if s["compression"] == "mlp" else [alpha]
    optimiser = torch.optim.Adam(trained, lr=1.0)
    noise = torch.randn(steps, samples, *r.shape[1:], generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        optimiser.zero_grad()
        lam = torch.sigmoid(alpha)
        z = lam * r + (1 - lam) * noise[step]
        kl = 0.5 * ((1 - lam) ** 2 + (lam * r) ** 2 - 1 - torch.log((1 - lam) ** 2))  # to N(0, 1)
        handle = tower.encoder.layers[layer].register_forward_hook(lambda *a: z)
        try:
            if modality == "image":
                out = model.get_image_features(pixel_values=pixel_values.expand(samples, -1, -1, -1))
                other = text_emb
            else:
                out = model.get_text_features(input_ids=input_ids.expand(samples, -1))
                other = image_emb
        finally:
            handle.remove()
        out = getattr(out, "pooler_output", out)
        if s["compression"] == "mlp":
            g = 1e-6 + F.softplus(mlp(f.view(1, 1)))[0, 0]
        elif s["compression"] == "inverse":
            g = 1 / (f + 1e-6)
        else:
            g = beta * f
        compression, fit = kl.mean(), F.cosine_similarity(out, other[None], eps=1e-6).mean()
        loss = g * compression - f * fit
        loss.backward()
        if s.get("clip", 1.0) > 0:
            torch.nn.utils.clip_grad_norm_(trained, s.get("clip", 1.0))
        optimiser.step()
    numbers = (compression.item(), fit.item(), f.item(), float(g.detach()))
    return kl.detach()[0].sum(-1), numbers


CASES = [
    ("image", 1, dict(relevance="l2", compression="mlp")),  # the paper's default
    ("text", 0, dict(relevance="l2", compression="mlp")),
    ("image", 0, dict(relevance="cosine", compression="inverse", tau=2.0)),
    ("text", 1, dict(relevance="linf", compression="mlp", embeddings="normalised", clip=0.05)),
    ("image", 2, dict(relevance="l1", compression="proportional", beta=0.5, clip=0.0)),
]


@pytest.mark.parametrize("modality,layer,case", CASES)
def test_equals_plain_per_sample_reimplementation(small_clip, backend, modality, layer, case):
    model, _ = small_clip
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    text = "a red circle and a blue star"
    s = dict(steps=6, samples=5, seed=7, **case)
    settings = dict(
        vision_layer=layer,
        text_layer=layer,
        steps=6,
        samples=5,
        seed=7,
        objective="adaib",
        adaib_relevance=case["relevance"],
        adaib_compression=case["compression"],
    )
    for key in ("tau", "embeddings", "clip"):
        if key in case:
            settings[f"adaib_{key}"] = case[key]
    if "beta" in case:
        settings["vision_beta"] = settings["text_beta"] = case["beta"]
    exp = m2ib.explain(backend, image, text, modalities=(modality,), **settings)
    images = backend.preprocess_images([m2ib.inputs.load_image(image)[0]])
    texts = backend.tokenize([text])
    ref, numbers = reference_adaib(model.float(), images.pixel_values, texts.input_ids, modality, layer, s)
    for p in model.parameters():  # the reference's backward filled .grad; our fixture stays clean
        p.grad = None
    ours = exp.image_grid.flatten() if modality == "image" else exp.text_map_raw
    torch.testing.assert_close(ours, ref[1:] if modality == "image" else ref, atol=1e-5, rtol=1e-5)
    info = exp.info[modality]
    got = (info["compression"], info["fit"], info["relevance"], info["compression_weight"])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(numbers), atol=1e-5, rtol=1e-5)
    assert info["effective_beta"] == pytest.approx(numbers[3] / numbers[2], rel=1e-5)


def test_per_pair_effective_beta_follows_f_and_g(backend, images):
    """In a batch each pair has its own f, hence its own g (fixed inverse form) and g / f; a pair's
    map does not depend on its batch (its own f, MLP and clipping)."""
    texts = ["a red circle", "a photo of a cat and a dog on a green tree", "star"]
    for compression in ("inverse", "mlp"):
        kw = dict(objective="adaib", adaib_compression=compression, seed=3, **FAST)
        batched = m2ib.explain(backend, images, texts, **kw)
        fs = [e.info["image"]["relevance"] for e in batched]
        assert len(set(fs)) == 3
        for image, text, b in zip(images, texts, batched):
            single = m2ib.explain(backend, image, text, **kw)
            torch.testing.assert_close(b.image_map_raw, single.image_map_raw, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b.text_map_raw, single.text_map_raw, atol=1e-5, rtol=1e-5)
            info = b.info["image"]
            if compression == "inverse":
                assert info["compression_weight"] == pytest.approx(1 / (info["relevance"] + 1e-6), rel=1e-5)
            assert info["effective_beta"] == pytest.approx(info["compression_weight"] / info["relevance"], rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_proposition_1_constant_f_and_g_beta_f_is_m2ib(backend, images, beta):
    """f = 1 for every pair and g = beta * f (no clipping: an optimiser detail, not the objective):
    exactly the published M2IB maps."""
    texts = ["a red circle", "a cat", "star"]
    common = dict(vision_beta=beta, text_beta=beta, seed=2, **FAST)
    published = m2ib.explain(backend, images, texts, **common)
    adaib = m2ib.explain(
        backend,
        images,
        texts,
        objective="adaib",
        adaib_relevance="constant",
        adaib_compression="proportional",
        adaib_clip=0.0,
        **common,
    )
    for p, a in zip(published, adaib):
        assert torch.equal(p.image_map_raw, a.image_map_raw) and torch.equal(p.text_map_raw, a.text_map_raw)
        assert a.info["image"]["effective_beta"] == pytest.approx(beta)


def test_proposition_1_any_constant_gives_m2ib_up_to_adams_epsilon(backend, images):
    """f = c: the loss is c times M2IB's, which Adam's update ignores but for its epsilon."""
    s = M2IBSettings(objective="adaib", adaib_relevance="constant", adaib_compression="proportional", adaib_clip=0.0)
    published = M2IBSettings()
    with backend.attribution_mode():
        batch = backend.preprocess_images([m2ib.inputs.load_image(images[0])[0]])
        target = F.normalize(backend.embed("text", backend.tokenize(["a red circle"])), dim=-1).detach()
        ref, _ = fit_bottleneck(backend, "image", batch, 1, target, 0.3, published)
        for c in (0.25, 4.0):
            kl, info = fit_bottleneck(backend, "image", batch, 1, target, 0.3, s, torch.tensor([c]))
            torch.testing.assert_close(kl, ref, atol=1e-3, rtol=1e-3)
            assert info[0]["effective_beta"] == pytest.approx(0.3)
        with pytest.raises(InputError, match="relevance"):
            fit_bottleneck(backend, "image", batch, 1, target, 0.3, s)


def test_adaib_differs_from_published_and_default_is_published(backend, images):
    """The default objective is the paper's; AdaIB's default changes the maps (f and g are used)."""
    a = m2ib.explain(backend, images[0], "a cat", seed=1, **FAST)
    b = m2ib.explain(backend, images[0], "a cat", seed=1, objective="published", **FAST)
    c = m2ib.explain(backend, images[0], "a cat", seed=1, objective="adaib", **FAST)
    assert torch.equal(a.image_map_raw, b.image_map_raw) and a.settings["objective"] == "published"
    assert "relevance" not in a.info["image"] and "relevance" in c.info["image"]
    assert not torch.allclose(a.image_map_raw, c.image_map_raw)


@pytest.mark.parametrize(
    "bad,name",
    [
        (dict(objective="adaptive"), "objective"),
        (dict(objective="adaib", adaib_relevance="l3"), "adaib_relevance"),
        (dict(objective="adaib", adaib_compression="tanh"), "adaib_compression"),
        (dict(objective="adaib", adaib_embeddings="unit"), "adaib_embeddings"),
        (dict(objective="adaib", adaib_eps_f=0.0), "adaib_eps_f"),
        (dict(objective="adaib", adaib_eps_g=-1.0), "adaib_eps_g"),
        (dict(objective="adaib", adaib_relevance="cosine", adaib_tau=float("nan")), "adaib_tau"),
        (dict(objective="adaib", adaib_relevance="constant", adaib_constant=0.0), "adaib_constant"),
        (dict(objective="adaib", adaib_hidden=0), "adaib_hidden"),
        (dict(objective="adaib", adaib_clip=-0.5), "adaib_clip"),
        # honoured or refused, never ignored
        (dict(adaib_compression="inverse"), "adaib_compression"),  # objective=published
        (dict(adaib_relevance="l1"), "adaib_relevance"),
        (dict(adaib_clip=0.0), "adaib_clip"),
        (dict(objective="adaib", adaib_tau=2.0), "adaib_tau"),  # tau with l2
        (dict(objective="adaib", adaib_constant=2.0), "adaib_constant"),
        (dict(objective="adaib", adaib_relevance="cosine", adaib_embeddings="normalised"), "adaib_embeddings"),
        (dict(objective="adaib", adaib_compression="inverse", adaib_hidden=8), "adaib_hidden"),
        (dict(objective="adaib", adaib_compression="proportional", adaib_eps_g=0.1), "adaib_eps_g"),
        (dict(objective="adaib", adaib_relevance="constant", adaib_eps_f=0.1), "adaib_eps_f"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(bad, name):
    with pytest.raises(InputError) as info:
        M2IBSettings(**bad)
    message = str(info.value)
    assert f"{name}=" in message and "\n" not in message


def test_accepted_combinations():
    # beta is read only by g = beta * f, but not refused: models recommend a beta (shapes: 1.0)
    M2IBSettings(objective="adaib", vision_beta=0.5)
    M2IBSettings(objective="adaib", adaib_compression="proportional", vision_beta=0.5)  # beta read by g = beta f
    M2IBSettings(objective="adaib", adaib_relevance="cosine", adaib_tau=3.0)
    M2IBSettings(objective="adaib", adaib_relevance="constant", adaib_constant=2.0)


def test_command_line_end_to_end_on_the_shapes_model(tmp_path, capsys):
    from m2ib.cli import main
    from m2ib.datasets.shapes import make_caption, render_scene

    scene = render_scene(3, size=64)
    image = tmp_path / "scene.png"
    scene.to_pil().save(image)
    text = make_caption(scene, "single").text
    argv = ["explain", str(image), text, "--model", "shapes", "--steps", "3", "--samples", "3", "--no-figure"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--objective", "adaib"]) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert meta["settings"]["objective"] == "adaib" and meta["settings"]["adaib_relevance"] == "l2"
    assert meta["settings"]["adaib_compression"] == "mlp"
    info = json.dumps(meta)
    assert "effective_beta" in info and "relevance" in info
    assert main([*argv, "--out", str(tmp_path / "b"), "--adaib-tau", "2"]) == 2
    err = capsys.readouterr().err
    assert "--adaib-tau" in err and err.count("\n") == 1
