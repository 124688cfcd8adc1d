"""M2IB's standardised bottleneck (IBA's noise and prior, Schulz et al. ICLR 2020) equals a plain
re-implementation of its formula; the default stays the published bottleneck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import m2ib
from m2ib.errors import InputError
from m2ib.methods.m2ib_statistics import MIN_STD, STD_FLOOR, feature_statistics

TEXTS = ["a red circle", "a blue star", "a green cross"]  # the same token length: per-position statistics


def block_output(model, modality, pixel_values, input_ids, layer):
    """R: the output of block ``layer`` of the whole model, read with a hook."""
    tower = model.vision_model if modality == "image" else model.text_model
    found = {}

    def capture(module, args, output):
        found["r"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = tower.encoder.layers[layer].register_forward_hook(capture)
    try:
        with torch.no_grad():
            if modality == "image":
                model.get_image_features(pixel_values=pixel_values)
            else:
                model.get_text_features(input_ids=input_ids)
    finally:
        handle.remove()
    return found["r"]


def reference_standardised(model, pixel_values, input_ids, modality, layer, beta, mean, sd, var, steps, samples, seed):
    """The formula, plainly: Z = lam R + (1 - lam) eps with eps ~ N(mean, var sd^2) per feature, the
    KL to that same N(mean, var sd^2) (torch.distributions), the whole model re-run on Z; one pair."""
    tower = model.vision_model if modality == "image" else model.text_model
    r = block_output(model, modality, pixel_values, input_ids, layer)  # [1, T, D]
    alpha = torch.full_like(r, 5.0, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=1.0)
    noise = torch.randn(steps, samples, *r.shape[1:], generator=torch.Generator().manual_seed(seed))
    prior = torch.distributions.Normal(mean, sd * var**0.5)
    kl = None
    for step in range(steps):
        optimiser.zero_grad()
        lam = torch.sigmoid(alpha)
        z = lam * r + (1 - lam) * (mean + sd * var**0.5 * noise[step])
        posterior = torch.distributions.Normal(lam * r + (1 - lam) * mean, (1 - lam) * sd * var**0.5)
        kl = torch.distributions.kl_divergence(posterior, prior)
        handle = tower.encoder.layers[layer].register_forward_hook(lambda module, args, output: z)
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


def plain_statistics(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population sd over inputs, per (position, channel); the sd floored at STD_FLOOR
    times the channel's sd over every token."""
    floor = (STD_FLOOR * r.reshape(-1, r.shape[-1]).std(0, correction=0)).clamp_min(MIN_STD)
    return r.mean(0), torch.maximum(r.std(0, correction=0), floor)


def pictures(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 48, 48, generator=g) for _ in range(n)]


def check_equals_reference(small_clip, backend, exps, modality, layer, mean, sd, var, settings):
    model, _ = small_clip
    images = backend.preprocess_images([m2ib.inputs.load_image(p)[0] for p in pictures(3)])
    texts = backend.tokenize(TEXTS)
    for i, exp in enumerate(exps):
        ref = reference_standardised(
            model.float(),
            images.pixel_values[i : i + 1],
            texts.input_ids[i : i + 1],
            modality,
            layer,
            settings["vision_beta"],
            mean,
            sd,
            var,
            settings["steps"],
            settings["samples"],
            settings["seed"],
        )
        got = exp.image_grid.flatten() if modality == "image" else exp.text_map_raw
        want = ref[1:] if modality == "image" else ref
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for p in model.parameters():
        p.grad = None


@pytest.mark.parametrize("modality,layer,var", [("image", 1, 1.0), ("text", 0, 1.0), ("text", 1, 2.0)])
def test_batch_statistics_equal_the_formula(small_clip, backend, modality, layer, var):
    model, _ = small_clip
    settings = dict(
        vision_layer=layer,
        text_layer=layer,
        vision_beta=0.5,
        text_beta=0.5,
        var=var,
        steps=4,
        samples=3,
        seed=5,
        bottleneck="standardised",
    )
    exps = m2ib.explain(backend, pictures(3), TEXTS, modalities=(modality,), **settings)
    images = backend.preprocess_images([m2ib.inputs.load_image(p)[0] for p in pictures(3)])
    texts = backend.tokenize(TEXTS)
    mean, sd = plain_statistics(block_output(model.float(), modality, images.pixel_values, texts.input_ids, layer))
    check_equals_reference(small_clip, backend, exps, modality, layer, mean, sd, var, settings)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_reference_set_statistics_equal_the_formula(small_clip, backend, tmp_path, modality):
    model, _ = small_clip
    ref_images = pictures(7)[3:]  # four other inputs
    ref_texts = ["a blue circle", "a red star", "a green star", "a red cross"]
    lines = []
    for i, (picture, text) in enumerate(zip(ref_images, ref_texts)):
        Image.fromarray((picture.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / f"r{i}.png")
        lines.append(f"{text}\tr{i}.png")
    (tmp_path / "ref.tsv").write_text("\n".join(lines) + "\n")
    settings = dict(
        vision_layer=1,
        text_layer=1,
        vision_beta=0.5,
        text_beta=0.5,
        steps=4,
        samples=3,
        seed=2,
        bottleneck="standardised",
        reference=str(tmp_path / "ref.tsv"),
    )
    exps = m2ib.explain(backend, pictures(3), TEXTS, modalities=(modality,), **settings)
    ref_batch = backend.preprocess_images([Image.open(tmp_path / f"r{i}.png") for i in range(4)])
    ref_ids = backend.tokenize(ref_texts).input_ids
    assert ref_ids.shape[1] == backend.tokenize(TEXTS).input_ids.shape[1]
    mean, sd = plain_statistics(block_output(model.float(), modality, ref_batch.pixel_values, ref_ids, 1))
    check_equals_reference(small_clip, backend, exps, modality, 1, mean, sd, 1.0, settings)
    # the reference set's statistics do not depend on the batch: one pair alone gives the same map
    alone = m2ib.explain(backend, pictures(3)[1], TEXTS[1], modalities=(modality,), **settings)
    got = alone.image_grid if modality == "image" else alone.text_map_raw
    want = exps[1].image_grid if modality == "image" else exps[1].text_map_raw
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ragged_positions_take_the_pooled_statistics():
    hidden = torch.tensor([[[1.0], [2.0], [9.0]], [[3.0], [6.0], [0.0]], [[5.0], [0.0], [0.0]]])  # [3, 3, 1]
    valid = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    mean, sd = feature_statistics(hidden, valid, 4)
    # position 0: 1, 3, 5; position 1: 2, 6; positions 2 and 3: pooled over 1, 2, 9, 3, 6, 5 (mean 26/6)
    pooled = torch.tensor([1.0, 2, 9, 3, 6, 5])
    torch.testing.assert_close(mean[:, 0], torch.tensor([3.0, 4.0, 26 / 6, 26 / 6]))
    torch.testing.assert_close(
        sd[:, 0],
        torch.stack(
            [
                torch.tensor([1.0, 3, 5]).std(correction=0),
                torch.tensor(2.0),
                pooled.std(correction=0),
                pooled.std(correction=0),
            ]
        ),
    )
    # a feature that never varies gets STD_FLOOR times its channel's pooled sd
    same = torch.tensor([[[1.0], [4.0]], [[1.0], [8.0]]])
    _, sd = feature_statistics(same, torch.ones(2, 2), 2)
    assert float(sd[0, 0]) == pytest.approx(STD_FLOOR * torch.tensor([1.0, 4, 1, 8]).std(correction=0).item())


def test_default_is_published_and_the_option_changes_the_map(backend):
    default = m2ib.explain(backend, pictures(2), TEXTS[:2], steps=3, samples=2)
    published = m2ib.explain(backend, pictures(2), TEXTS[:2], steps=3, samples=2, bottleneck="published")
    standardised = m2ib.explain(backend, pictures(2), TEXTS[:2], steps=3, samples=2, bottleneck="standardised")
    assert default[0].settings["bottleneck"] == "published"
    torch.testing.assert_close(default[0].text_map_raw, published[0].text_map_raw)
    assert not torch.allclose(default[0].text_map_raw, standardised[0].text_map_raw)


def test_clear_errors(backend, tmp_path):
    with pytest.raises(InputError, match=r"2 or more pairs .*: give reference \(e.g.") as named:
        m2ib.explain(backend, pictures(1)[0], "a red circle", bottleneck="standardised", steps=2, samples=2)
    assert named.value.settings == ("reference",)  # the CLI says --reference
    with pytest.raises(InputError, match="read only with bottleneck=standardised"):
        m2ib.explain(backend, pictures(1)[0], "a red circle", reference="shapes:val:4", steps=2, samples=2)
    (tmp_path / "one.tsv").write_text("a red circle\tnone.png\n")
    with pytest.raises(InputError, match="has 1 row"):
        m2ib.explain(
            backend,
            pictures(1)[0],
            "a red circle",
            bottleneck="standardised",
            reference=str(tmp_path / "one.tsv"),
            steps=2,
            samples=2,
        )
    with pytest.raises(InputError, match="size must be >= 64"):  # the 48 px test model
        m2ib.explain(
            backend,
            pictures(1)[0],
            "a red circle",
            bottleneck="standardised",
            reference="shapes:val:4",
            steps=2,
            samples=2,
        )
    with pytest.raises(InputError, match="bottleneck="):
        m2ib.explain(backend, pictures(1)[0], "a red circle", bottleneck="iba", steps=2, samples=2)
