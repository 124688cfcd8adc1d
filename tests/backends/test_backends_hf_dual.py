"""transformers dual encoders beyond CLIPModel and SiglipModel: MetaCLIP 2 and SigLIP 2 (NaFlex).

Tiny random models built from configs (no download). The split forward equals the library's
``get_image_features`` / ``get_text_features`` at every layer (1e-5); SigLIP 2's reference gets
its patches from transformers' own image-processor function (``convert_image_to_patches``, the PIL processor's), with
and without the processor's padding patches; every registered method runs; directories load by
their ``model_type``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_backends_families import TEXTS, TINY_SETTINGS, TOL, _features, _seeded, assert_split_parity

import m2ib
from m2ib.errors import InputError
from m2ib.inputs import load_image

PATCH = 8


def _word_tokenizer():
    from m2ib.models import DEMO_WORDS
    from m2ib.tokenizer import build_word_tokenizer

    return build_word_tokenizer(DEMO_WORDS)


def build_metaclip2(eos_token_id: int | None = None):
    from transformers import MetaClip2Config, MetaClip2Model

    tok = _word_tokenizer()
    eos = tok.eos_token_id if eos_token_id is None else eos_token_id
    config = MetaClip2Config(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            max_position_embeddings=20,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
            bos_token_id=tok.bos_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=PATCH,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    model = _seeded(0, lambda: MetaClip2Model(config).eval())
    backend = m2ib.load(model, tokenizer=tok)

    def text_fn(batch):
        return _features(model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask))

    return model, backend, lambda px: _features(model.get_image_features(pixel_values=px)), text_fn


def library_patches(pixels: torch.Tensor, pad_to: int | None = None):
    """transformers' Siglip2 processor layout: its own patch function, padded to ``pad_to`` patches
    with a zero mask there (as the processor does below ``max_num_patches``)."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    patches = torch.stack([torch.from_numpy(convert_image_to_patches(p.numpy(), PATCH)) for p in pixels])
    mask = torch.ones(patches.shape[:2], dtype=torch.long)
    if pad_to is not None and pad_to > patches.shape[1]:
        extra = pad_to - patches.shape[1]
        patches = torch.cat([patches, patches.new_zeros(len(patches), extra, patches.shape[2])], 1)
        mask = torch.cat([mask, mask.new_zeros(len(mask), extra)], 1)
    shapes = torch.tensor([[pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH]] * len(pixels))
    return patches, mask, shapes


def build_siglip2(grid: tuple[int, int] | None = None, pad_to: int | None = None):
    from transformers import Siglip2Config, Siglip2Model

    from m2ib.backends.siglip2 import Siglip2Backend

    tok = _word_tokenizer()
    config = Siglip2Config(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            max_position_embeddings=20,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        ),
        vision_config=dict(
            num_patches=16,
            patch_size=PATCH,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
        ),
    )
    model = _seeded(0, lambda: Siglip2Model(config).eval())
    backend = m2ib.load(model, tokenizer=tok) if grid is None else Siglip2Backend(model=model, tokenizer=tok, grid=grid)

    def image_fn(pixels):
        patches, mask, shapes = library_patches(pixels, pad_to)
        return _features(
            model.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        )

    return model, backend, image_fn, lambda b: _features(model.get_text_features(input_ids=b.input_ids))


BUILDERS = {
    "metaclip2": build_metaclip2,
    "siglip2": build_siglip2,
    "siglip2-3x5-padded": lambda: build_siglip2(grid=(3, 5), pad_to=16),
    "siglip2-5x6-beyond-the-table": lambda: build_siglip2(grid=(5, 6)),  # 30 patches, a 16-entry table resized
}
_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = BUILDERS[name]()
    return _CACHE[name]


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_split_forward_equals_library_forward(name, pictures):
    _, backend, image_fn, text_fn = family(name)
    assert_split_parity(backend, image_fn, text_fn, pictures)


def test_families_are_recognised_by_object_and_model_type():
    from m2ib.backends import registry

    assert type(family("metaclip2")[1]).__name__ == "MetaClip2Backend"
    assert type(family("siglip2")[1]).__name__ == "Siglip2Backend"
    assert registry.family_of_model_type("metaclip_2").model_class == "MetaClip2Model"
    assert registry.family_of_model_type("siglip2").model_class == "Siglip2Model"


def test_metaclip2_reads_the_first_end_token_even_when_its_id_is_2(pictures):
    """CLIP's legacy rule (eos_token_id == 2: the largest id) is not MetaCLIP 2's: with id 2 as the
    end token and larger ids after it, only the first-end-token rule matches the library."""
    model, backend, _, _ = build_metaclip2(eos_token_id=2)
    ids = torch.tensor([[0, 7, 9, 2, 11, 12], [0, 5, 2, 13, 14, 15]])
    batch = backend.text_batch(ids, torch.ones_like(ids))
    with torch.no_grad():
        ref = _features(model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)))
        assert backend.pooled_positions("text", batch).tolist() == [3, 2]
        for layer in (-1, 0, 2):
            got = backend.suffix("text", backend.prefix("text", batch, layer), layer, batch)
            torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
        backend.towers["text"].pool = "argmax"  # CLIP's legacy rule: reads ids 12 and 15 instead
        assert not torch.allclose(backend.embed("text", batch), ref, atol=1e-3)


def test_siglip2_grid_and_geometry(pictures):
    _, square, _, _ = family("siglip2")
    _, wide, _, _ = family("siglip2-3x5-padded")
    assert square.geometry.patch_grid == (4, 4) and square.geometry.image_size == (32, 32)
    assert wide.geometry.patch_grid == (3, 5) and wide.geometry.image_size == (24, 40)
    assert square.geometry.image_prefix_tokens == 0
    assert wide.preprocess_images(pictures).pixel_values.shape == (3, 3, 24, 40)
    exp = m2ib.explain(wide, pictures[0], "a red circle", steps=2, samples=2, modalities=("image",))
    assert tuple(exp.image_grid.shape) == (3, 5) and exp.image_map.shape == (24, 40)
    model = family("siglip2")[0]
    from m2ib.backends.siglip2 import Siglip2Backend

    with pytest.raises(InputError, match="needs at least one patch a side"):
        Siglip2Backend(model=model, tokenizer=square.tokenizer, grid=(0, 5))


def test_siglip2_patches_equal_the_library_processor():
    """Our patch layout is the processor's: the same pixels give the same patch vectors."""
    from m2ib.backends.siglip2 import patchify

    pixels = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(patchify(pixels, PATCH), library_patches(pixels)[0], atol=0, rtol=0)


def test_siglip2_per_image_grids_are_the_processors():
    """backend.for_image(im): the NaFlex processor's grid for that image (aspect ratio kept), its exact
    pixels, and an embedding equal at every layer to get_image_features on the processor's padded
    batch (its pixel_attention_mask and spatial_shapes); the maps come back at that grid and size.
    The transposed grid (same patch count) gives another embedding: the check can fail."""
    import numpy as np
    from PIL import Image
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    from m2ib.backends.siglip2 import Siglip2Backend, patchify

    model, backend, _, _ = family("siglip2")
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40, 100, 3), dtype=np.uint8)),  # wide, then tall
        Image.fromarray(rng.integers(0, 255, (90, 50, 3), dtype=np.uint8)),
    ]
    library = Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=16, resample=backend.preprocessing.resample)
    out = library(images, return_tensors="pt")
    with torch.no_grad():
        reference = _features(
            model.get_image_features(
                pixel_values=out["pixel_values"],
                spatial_shapes=out["spatial_shapes"],
                pixel_attention_mask=out["pixel_attention_mask"],
            )
        )
        grids = []
        for i, image in enumerate(images):
            own = backend.for_image(image)
            grid = own.geometry.patch_grid
            grids.append(grid)
            assert list(grid) == out["spatial_shapes"][i].tolist() and own.geometry.image_size == (
                grid[0] * PATCH,
                grid[1] * PATCH,
            )
            batch = own.preprocess_images([image])
            patches = patchify(batch.pixel_values, PATCH)[0]
            torch.testing.assert_close(patches, out["pixel_values"][i, : len(patches)], atol=0, rtol=0)
            for layer in (-1, *range(own.num_layers("image"))):
                got = own.suffix("image", own.prefix("image", batch, layer), layer, batch)
                torch.testing.assert_close(got[0], reference[i], atol=TOL, rtol=0)
            transposed = Siglip2Backend(model=model, tokenizer=backend.tokenizer, grid=grid[::-1])
            pixels = batch.pixel_values.reshape(1, 3, grid[1] * PATCH, grid[0] * PATCH)  # same values, other shape
            wrong = transposed.embed("image", dataclasses.replace(batch, pixel_values=pixels))
            assert (wrong[0] - reference[i]).abs().max() > 1e-3
    exp = m2ib.explain(
        backend.for_image(images[0]), images[0], "a red circle", steps=2, samples=2, modalities=("image",)
    )
    assert grids == [(2, 5), (5, 3)] and backend.geometry.patch_grid == (4, 4)  # the backend itself is unchanged
    assert tuple(exp.image_grid.shape) == (2, 5) and exp.image_map.shape == (16, 40)
    # m2ib.explain (and the CLI) of one image uses its own grid by itself, with the same maps
    plain = m2ib.explain(backend, images[0], "a red circle", steps=2, samples=2, modalities=("image",))
    assert tuple(plain.image_grid.shape) == (2, 5)
    torch.testing.assert_close(plain.image_map, exp.image_map)
    # images of several grids in one call share the backend's grid (one batch, one grid)
    both = m2ib.explain(backend, images, "a red circle", steps=2, samples=2, modalities=("image",))
    assert [tuple(e.image_grid.shape) for e in both] == [(4, 4), (4, 4)]
    same = m2ib.explain(backend, [images[0], images[0]], "a red circle", steps=2, samples=2, modalities=("image",))
    assert [tuple(e.image_grid.shape) for e in same] == [(2, 5), (2, 5)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_directories_load_by_model_type(name, tmp_path, pictures):
    model, backend, _, _ = family(name)
    model.save_pretrained(tmp_path)
    backend.tokenizer.save_pretrained(tmp_path)
    loaded = m2ib.load(str(tmp_path))
    assert type(loaded) is type(backend)
    if name.startswith("siglip2-") and name != "siglip2":  # a directory gets the default (square) grid
        assert loaded.geometry.patch_grid == (4, 4)
        return
    images, texts = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed("image", images), backend.embed("image", images), atol=TOL, rtol=0)
        torch.testing.assert_close(loaded.embed("text", texts), backend.embed("text", texts), atol=TOL, rtol=0)


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
@pytest.mark.parametrize("name", ["metaclip2", "siglip2-3x5-padded"])
def test_explain_runs_every_registered_method(name, method, pictures):
    from m2ib.methods import REGISTRY

    _, backend, _, _ = family(name)
    cls = REGISTRY[method]
    fields = {f.name for f in dataclasses.fields(cls.Settings)}
    tiny = {k: v for k, v in TINY_SETTINGS.items() if k in fields}
    exps = m2ib.explain(
        backend, [pictures[0], pictures[1]], TEXTS[:2], method=method, modalities=cls.modalities, **tiny
    )
    for exp, text in zip(exps, TEXTS[:2]):
        if "image" in cls.modalities:
            assert exp.image_map.shape == backend.geometry.image_size
            assert torch.isfinite(exp.image_map).all() and torch.isfinite(exp.image_map_raw).all()
        if "text" in cls.modalities:
            n = int(backend.tokenize([text]).lengths[0])
            assert exp.text_map.shape == (n,) and torch.isfinite(exp.text_map).all()


@pytest.mark.parametrize("name", ["metaclip2", "siglip2"])
def test_recorded_attention_keeps_the_forward(name, pictures):
    _, backend, _, _ = family(name)
    image_batch, text_batch = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    with torch.no_grad():
        plain = backend.embed("image", image_batch), backend.embed("text", text_batch)
    with backend.record_attention("image") as image_records, backend.record_attention("text") as text_records:
        with torch.no_grad():
            torch.testing.assert_close(backend.embed("image", image_batch), plain[0], atol=TOL, rtol=0)
            torch.testing.assert_close(backend.embed("text", text_batch), plain[1], atol=TOL, rtol=0)
    assert len(image_records) == backend.num_layers("image") and len(text_records) == backend.num_layers("text")
    assert backend._recording == {}


@pytest.mark.parametrize("name", ["metaclip2", "siglip2"])
def test_cascade_parts_run_from_the_head_down(name):
    model, backend, _, _ = family(name)
    for modality in ("image", "text"):
        parts = backend.cascade_parts(modality)
        n = backend.num_layers(modality)
        assert [label for label, _ in parts] == ["head", *[f"block {i}" for i in reversed(range(n))], "embeddings"]
        tower = model.vision_model if modality == "image" else model.text_model
        assert parts[1][1] == [tower.encoder.layers[-1]]


# Every transformers family saved with save_pretrained, an m2ib.json beside it: its "recommended"
# settings are the loaded backend's, and a method run on it uses them (CLIP, SigLIP: their builders
# in test_backends_families; SigLIP 2, MetaCLIP 2: here). OpenCLIP directories: test_backends_families.
@pytest.mark.parametrize("name", ["clip", "siglip", "siglip2", "metaclip2"])
def test_a_saved_directory_s_m2ib_json_gives_its_recommended_settings(name, tmp_path):
    import json

    import test_backends_families as families

    model, backend, _, _ = {
        "clip": families.build_hf_clip,
        "siglip": lambda: families.family("siglip"),
        "siglip2": lambda: family("siglip2"),
        "metaclip2": lambda: family("metaclip2"),
    }[name]()
    model.save_pretrained(tmp_path)
    backend.tokenizer.save_pretrained(tmp_path)
    recommended = {"m2ib": {"vision_layer": 1, "vision_beta": 7.0}, "gradcam": {"text_layer": 0}}
    (tmp_path / "m2ib.json").write_text(json.dumps({"name": name, "recommended": recommended}))
    loaded = m2ib.load(str(tmp_path))
    assert loaded.recommended == recommended
    settings = m2ib.methods.REGISTRY["m2ib"]().make_settings(loaded)
    assert (settings.vision_layer, settings.vision_beta) == (1, 7.0)
    assert m2ib.load(f"hf:{tmp_path}").recommended == recommended
    (tmp_path / "m2ib.json").write_text("{not json")
    with pytest.raises(InputError, match="m2ib.json"):
        m2ib.load(str(tmp_path))
