"""The Hugging Face CLIP backend: split forward equals the library's own forward."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import m2ib
from m2ib.errors import InputError, ModelNotAvailableError
from m2ib.inputs import load_image
from m2ib.models import RandomCLIPSpec, random_clip

TEXTS = ["a red circle", "a photo of a cat and a dog on a green tree", "star"]


def _features(out):
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize(
    "spec",
    [
        RandomCLIPSpec(48, 12, 32, 3, 2, 32, 3, 2, 16),
        RandomCLIPSpec(64, 16, 32, 2, 4, 24, 4, 2, 8),  # another grid (4x4) and depth
    ],
)
def test_split_forward_equals_library_forward(spec, images):
    model, tokenizer = random_clip(spec, seed=3)
    backend = m2ib.load(model, tokenizer=tokenizer)
    image_batch = backend.preprocess_images([load_image(im)[0] for im in images])
    text_batch = backend.tokenize(TEXTS)  # different lengths: padding and masks matter
    assert text_batch.attention_mask.sum(1).tolist() != [text_batch.input_ids.shape[1]] * 3
    with torch.no_grad():
        ref_image = _features(model.get_image_features(pixel_values=image_batch.pixel_values))
        ref_text = _features(
            model.get_text_features(input_ids=text_batch.input_ids, attention_mask=text_batch.attention_mask)
        )
        for layer in range(spec.vision_layers):
            got = backend.suffix("image", backend.prefix("image", image_batch, layer), layer, image_batch)
            torch.testing.assert_close(got, ref_image, atol=1e-5, rtol=0)
        for layer in range(spec.text_layers):
            got = backend.suffix("text", backend.prefix("text", text_batch, layer), layer, text_batch)
            torch.testing.assert_close(got, ref_text, atol=1e-5, rtol=0)
        # k copies of each item through the suffix give k copies of its embedding
        hidden = backend.prefix("text", text_batch, 0).repeat_interleave(4, 0)
        torch.testing.assert_close(
            backend.suffix("text", hidden, 0, text_batch), ref_text.repeat_interleave(4, 0), atol=1e-5, rtol=0
        )


def test_geometry_comes_from_config():
    model, tok = random_clip(RandomCLIPSpec(84, 14, 32, 5, 2, 32, 2, 2, 16), seed=0)
    g = m2ib.load(model, tokenizer=tok).geometry
    assert g.image_size == (84, 84) and g.patch_grid == (6, 6)
    assert (g.vision_layers, g.text_layers, g.image_prefix_tokens) == (5, 2, 1)


def test_preprocessing_matches_transformers_processor(backend):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from m2ib.backends.hf_clip import preprocessing_from

    processor = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    ours = preprocessing_from(processor, 48)
    rng = np.random.default_rng(0)
    for shape in [(70, 50, 3), (40, 90, 3), (48, 48, 3)]:
        image = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
        expected = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"]))
        got, display = ours([image])
        torch.testing.assert_close(got, expected.float(), atol=2e-2, rtol=0)  # PIL resize rounding
        assert display.min() >= 0 and display.max() <= 1


def test_half_precision_model_runs_in_fp32_on_a_copy(small_clip):
    model, tok = small_clip
    half = copy.deepcopy(model).half()
    backend = m2ib.load(half, tokenizer=tok)
    assert backend.dtype == torch.float32
    assert next(half.parameters()).dtype == torch.float16  # the user's model is untouched
    kept = m2ib.load(half, tokenizer=tok, dtype="model")
    assert kept.model is half


def test_load_from_directory_with_recommended_settings(small_clip, tmp_path):
    model, tok = small_clip
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "m2ib.json").write_text(json.dumps({"recommended": {"m2ib": {"vision_layer": 0}}}))
    backend = m2ib.load(str(tmp_path))
    assert backend.recommended["m2ib"]["vision_layer"] == 0
    text = backend.tokenize(["a red circle"])
    with torch.no_grad():
        ref = _features(model.get_text_features(input_ids=text.input_ids))
        torch.testing.assert_close(backend.embed("text", text), ref, atol=1e-5, rtol=0)
    exp = m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=2, samples=2)
    assert exp.settings["vision_layer"] == 0  # the model's recommendation is the default


def test_unavailable_hub_model_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="hf download"):
        m2ib.load("someone/clip-model-that-is-not-cached")
    assert time.monotonic() - start < 10
    with pytest.raises(InputError, match="no such model directory"):
        m2ib.load("./not/a/dir")


def test_long_text_is_truncated_with_a_warning(backend):
    text = " ".join(["cat"] * 100)
    with pytest.warns(UserWarning, match="the last 25 tokens were dropped"):
        batch = backend.tokenize([text])
    assert batch.input_ids.shape[1] == 77
    assert batch.tokens[0][-1] == "<|endoftext|>"


def test_user_model_is_never_moved_or_changed(small_clip):
    model, tok = small_clip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    try:
        m2ib.explain(m2ib.load(model, tokenizer=tok), torch.rand(3, 48, 48), "a cat", steps=2, samples=2)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_recorded_attention_keeps_the_forward_and_cleans_up(backend, images):
    image_batch = backend.preprocess_images([load_image(im)[0] for im in images])
    text_batch = backend.tokenize(TEXTS)
    with torch.no_grad():
        plain_image, plain_text = backend.embed("image", image_batch), backend.embed("text", text_batch)
    assert backend.supports_attention
    with backend.record_attention("image") as image_records, backend.record_attention("text") as text_records:
        with torch.no_grad():
            torch.testing.assert_close(backend.embed("image", image_batch), plain_image, atol=1e-5, rtol=0)
            torch.testing.assert_close(backend.embed("text", text_batch), plain_text, atol=1e-5, rtol=0)
    assert len(image_records) == backend.num_layers("image") and len(text_records) == backend.num_layers("text")
    probs = text_records[0].probs  # [N, heads, T, T]: causal, padding keys masked, rows sum to 1
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert probs[0, :, 0, 1:].abs().max() == 0
    length = int(text_batch.lengths[2])
    assert probs[2, :, :, length:].abs().max() == 0
    assert image_records[-1].output.shape == (3, 17, 32)
    assert backend._recording == {}  # nothing left installed
    with torch.no_grad():  # and the fast path is back
        torch.testing.assert_close(backend.embed("image", image_batch), plain_image, atol=1e-5, rtol=0)


def test_embeddings_layer_index_runs_every_block(backend):
    from m2ib.backends import EMBEDDINGS

    text_batch = backend.tokenize(TEXTS)
    with torch.no_grad():
        hidden = backend.prefix("text", text_batch, EMBEDDINGS)
        torch.testing.assert_close(
            backend.suffix("text", hidden, EMBEDDINGS, text_batch), backend.embed("text", text_batch), atol=1e-5, rtol=0
        )


# --- families as data ------------------------------------------------------------------------------
def test_models_module_does_not_import_the_backends():
    """Built-in models are data that the backends read: m2ib.models imports no backend (no cycle)."""
    import ast
    from pathlib import Path

    import m2ib.models

    tree = ast.parse(Path(m2ib.models.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if "backends" in m]
    assert m2ib.models.BUILTIN_MODELS["shapes"].directory == m2ib.models.SHAPES_DIR


def test_a_new_family_is_one_registry_entry(small_clip, monkeypatch):
    """An entry makes load_backend take the family's objects and its PREFIX: names; nothing else changes."""
    from m2ib.backends import registry
    from m2ib.backends.hf_clip import HFCLIPBackend

    class Wrapped(torch.nn.Module):  # a "library" whose model holds a CLIPModel
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

    model, tok = small_clip
    family = registry.Family(
        name="wrapped",
        supports="Wrapped",
        recognises=lambda m: isinstance(m, Wrapped),
        wrap=lambda m, name, tokenizer, processor, info: HFCLIPBackend(model=m.clip, name=name, tokenizer=tok),
        prefix="wrapped:",
        load=lambda spec, *, name, **_: HFCLIPBackend(model=model, name=name, tokenizer=tok),
    )
    registry.register(family)
    try:
        assert m2ib.load(Wrapped(model), dtype="model").model is model
        assert m2ib.load("wrapped:anything", dtype="model").name == "wrapped:anything"
        with pytest.raises(ValueError, match="twice"):
            registry.register(family)
        with pytest.raises(
            InputError, match="no m2ib backend for Linear: supported are transformers CLIPModel, .* and Wrapped models"
        ):
            m2ib.load(torch.nn.Linear(2, 2))
    finally:  # the table is restored after
        registry.FAMILIES.unregister("wrapped")
    assert "wrapped" not in registry.FAMILIES


def test_every_family_is_registered_with_disjoint_names():
    from m2ib.backends import registry

    names = [f.name for f in registry.families()]
    assert names == [
        "transformers CLIP",
        "MetaCLIP 2",
        "OpenCLIP",
        "OpenAI clip",
        "OpenCLIP HF text",
        "SigLIP",
        "SigLIP 2 (NaFlex)",
    ]
    prefixes = [f.prefix for f in registry.families() if f.prefix]
    assert sorted(prefixes) == ["clip:", "hf:", "open_clip:"]
    assert registry.model_types() == ["clip", "metaclip_2", "siglip", "siglip2"]
    assert all(not p.startswith(q) for p in prefixes for q in prefixes if p != q)  # no prefix shadows another
