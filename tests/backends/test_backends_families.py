"""Model families beyond transformers' CLIP: SigLIP, OpenCLIP (ViT, ResNet), OpenAI ``clip``.

Every model here is small, random and built from a config (no download). For each family:
the split forward (prefix to block l, the rest from l) equals the library's own
``encode_*`` / ``get_*_features`` for every l (EMBEDDINGS included), on texts of different
lengths; loading by the family's names and by local files/directories; offline failures are
fast one-liners; every registered method runs through ``m2ib.explain``; the README's commands
run. OpenCLIP and OpenAI clip need their extras (and a torchvision that matches torch):
without them those tests skip with the reason, and ``.ci/run`` runs this file again in a
second environment that has them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
import torch

import m2ib
from m2ib.backends import EMBEDDINGS
from m2ib.errors import InputError, M2IBError, ModelNotAvailableError
from m2ib.inputs import load_image

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a red circle", "a photo of a cat and a dog on a green tree", "star"]
TOL = 1e-5


# --- optional libraries ------------------------------------------------------------------------
def need_open_clip():
    from m2ib.backends.openclip import import_open_clip

    try:
        return import_open_clip()
    except InputError as exc:
        pytest.skip(f"OpenCLIP unavailable: {exc}")


def need_clip():
    from m2ib.backends.openai_clip import import_clip

    try:
        return import_clip()
    except InputError as exc:
        pytest.skip(f"OpenAI clip unavailable: {exc}")


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Random-init ResNets zero their last BN weights; give every BN real statistics."""
    g = torch.Generator().manual_seed(5)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data = torch.rand(n, generator=g) + 0.5
            mod.bias.data = torch.randn(n, generator=g) * 0.1
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)


# --- tiny models, one builder per family (model, backend, image_fn, text_fn, ids_fn) --------------
def _features(out):
    return getattr(out, "pooler_output", out)


def build_siglip(padding_mask: bool = False):
    from transformers import SiglipConfig, SiglipModel

    from m2ib.models import DEMO_WORDS
    from m2ib.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(DEMO_WORDS)
    config = SiglipConfig(
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
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
        ),
    )
    model = _seeded(0, lambda: SiglipModel(config).eval())
    if padding_mask:
        from m2ib.backends.siglip import SiglipBackend

        backend = SiglipBackend(model=model, tokenizer=tok, padding_mask=True)
    else:
        backend = m2ib.load(model, tokenizer=tok)

    def text_fn(batch):
        mask = batch.attention_mask if padding_mask else None
        return _features(model.get_text_features(input_ids=batch.input_ids, attention_mask=mask))

    return model, backend, lambda px: _features(model.get_image_features(pixel_values=px)), text_fn


def build_open_clip(kind: str = "vit"):
    oc = need_open_clip()
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=3)
    if kind == "vit":
        model = _seeded(
            0, lambda: CLIP(16, CLIPVisionCfg(layers=3, width=32, head_width=16, patch_size=8, image_size=32), text)
        )
    elif kind == "vit-variants":  # LayerScale, average pooling with LN after it, biased projection,
        # and a bidirectional text tower pooling the last position (context padded in full)
        vision = CLIPVisionCfg(
            layers=2,
            width=32,
            head_width=16,
            patch_size=8,
            image_size=32,
            ls_init_value=0.5,
            pool_type="avg",
            final_ln_after_pool=True,
            no_ln_pre=True,
        )
        text = CLIPTextCfg(
            context_length=24,
            vocab_size=49408,
            width=32,
            heads=2,
            layers=2,
            ls_init_value=0.5,
            no_causal_mask=True,
            pool_type="last",
            proj_bias=True,
        )
        model = _seeded(0, lambda: CustomTextCLIP(16, vision, text))
    else:  # ResNet
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=8, image_size=64)
        model = _seeded(0, lambda: CLIP(16, vision, text))
        _randomise_batchnorm(model)
    model.eval()
    tok = oc.get_tokenizer("ViT-B-32")
    backend = m2ib.load(model, tokenizer=tok)
    context = model.context_length

    def text_fn(batch):
        return model.encode_text(tok(list(batch.texts), context_length=context))

    return model, backend, model.encode_image, text_fn


def build_clip(kind: str = "vit"):
    clip = need_clip()
    # Widths are multiples of 64: clip.model.build_model infers the heads as width / 64. The text
    # width equals the embedding size (as in ViT-B/32), so a doubled projection would still run.
    if kind == "vit":
        model = _seeded(0, lambda: clip.model.CLIP(64, 32, 3, 128, 8, 77, 49408, 64, 1, 3))
    else:
        model = _seeded(0, lambda: clip.model.CLIP(64, 64, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 2))
        _randomise_batchnorm(model)
    model = model.float().eval()
    backend = m2ib.load(model)
    return model, backend, model.encode_image, lambda batch: model.encode_text(clip.tokenize(list(batch.texts)))


def build_hf_clip():
    from m2ib.models import RandomCLIPSpec, random_clip

    model, tok = random_clip(RandomCLIPSpec(32, 8, 32, 3, 2, 32, 3, 2, 16), seed=0)
    backend = m2ib.load(model, tokenizer=tok)
    return (
        model,
        backend,
        lambda px: _features(model.get_image_features(pixel_values=px)),
        lambda b: _features(model.get_text_features(input_ids=b.input_ids, attention_mask=b.attention_mask)),
    )


BUILDERS = {
    "siglip": build_siglip,
    "siglip-padding-mask": lambda: build_siglip(padding_mask=True),
    "open_clip-vit": lambda: build_open_clip("vit"),
    "open_clip-vit-variants": lambda: build_open_clip("vit-variants"),
    "open_clip-resnet": lambda: build_open_clip("resnet"),
    "clip-vit": lambda: build_clip("vit"),
    "clip-resnet": lambda: build_clip("resnet"),
}
_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = BUILDERS[name]()
    return _CACHE[name]


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


# --- parity -----------------------------------------------------------------------------------
def assert_split_parity(backend, image_fn, text_fn, pictures, atol=TOL):
    image_batch = backend.preprocess_images(pictures)
    text_batch = backend.tokenize(TEXTS)
    assert len(set(text_batch.lengths.tolist())) == 3  # different lengths: padding and masks matter
    with torch.no_grad():
        ref_image, ref_text = image_fn(image_batch.pixel_values), text_fn(text_batch)
        for modality, batch, ref in (("image", image_batch, ref_image), ("text", text_batch, ref_text)):
            for layer in (EMBEDDINGS, *range(backend.num_layers(modality))):
                got = backend.suffix(modality, backend.prefix(modality, batch, layer), layer, batch)
                torch.testing.assert_close(got, ref, atol=atol, rtol=0, msg=lambda m: f"{modality} layer {layer}: {m}")
            torch.testing.assert_close(backend.embed(modality, batch), ref, atol=atol, rtol=0)
        # k copies of each item through the suffix give k copies of its embedding
        hidden = backend.prefix("text", text_batch, 0).repeat_interleave(3, 0)
        torch.testing.assert_close(
            backend.suffix("text", hidden, 0, text_batch), ref_text.repeat_interleave(3, 0), atol=atol, rtol=0
        )
    return image_batch, text_batch


@pytest.mark.parametrize("name", list(BUILDERS))
def test_split_forward_equals_library_forward(name, pictures):
    model, backend, image_fn, text_fn = family(name)
    assert_split_parity(backend, image_fn, text_fn, pictures)


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
@pytest.mark.parametrize("name", ["siglip", "open_clip-vit", "open_clip-resnet", "clip-vit", "clip-resnet"])
def test_explain_runs_every_registered_method(name, method, pictures):
    from m2ib.methods import REGISTRY

    _, backend, _, _ = family(name)
    cls = REGISTRY[method]
    fields = {f.name for f in dataclasses.fields(cls.Settings)}
    tiny = {k: v for k, v in TINY_SETTINGS.items() if k in fields}
    needs_attention = any(getattr(cls, a, False) for a in ("needs_attention", "requires_attention"))
    if needs_attention and not backend.supports_attention:
        pytest.skip(f"{method} needs attention weights; {name}'s backend records none")
    try:
        exps = m2ib.explain(
            backend, [pictures[0], pictures[1]], TEXTS[:2], method=method, modalities=cls.modalities, **tiny
        )
    except (NotImplementedError, InputError) as exc:
        if not backend.supports_attention and "attention" in str(exc).lower():
            pytest.skip(f"{method} needs attention weights; {name}'s backend records none ({exc})")
        raise
    for exp, text in zip(exps, TEXTS[:2]):
        if "image" in cls.modalities:
            assert exp.image_map.shape == backend.geometry.image_size
            assert torch.isfinite(exp.image_map).all() and torch.isfinite(exp.image_map_raw).all()
        if "text" in cls.modalities:
            n = int(backend.tokenize([text]).lengths[0])
            assert exp.text_map.shape == (n,) and torch.isfinite(exp.text_map).all()


# Cheapest values of the cost settings methods may have (only those a method declares are passed).
TINY_SETTINGS = {
    "steps": 2,
    "samples": 2,
    "n_samples": 2,
    "num_samples": 2,
    "iterations": 2,
    "n_steps": 2,
    "masks": 4,
    "n_masks": 4,
    "num_masks": 4,
    "batch_size": 4,
}


def test_method_skip_reason_for_backends_without_attention():
    _, backend, _, _ = family("open_clip-resnet")
    assert not backend.supports_attention
    with pytest.raises(NotImplementedError, match="no attention blocks"), backend.record_attention("image"):
        pass


@pytest.mark.parametrize("name", ["siglip", "open_clip-vit", "open_clip-vit-variants", "clip-vit"])
def test_recorded_attention_keeps_the_forward(name, pictures):
    _, backend, _, _ = family(name)
    image_batch, text_batch = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    with torch.no_grad():
        plain = backend.embed("image", image_batch), backend.embed("text", text_batch)
    assert backend.supports_attention
    with backend.record_attention("image") as image_records, backend.record_attention("text") as text_records:
        with torch.no_grad():
            torch.testing.assert_close(backend.embed("image", image_batch), plain[0], atol=TOL, rtol=0)
            torch.testing.assert_close(backend.embed("text", text_batch), plain[1], atol=TOL, rtol=0)
    assert len(image_records) == backend.num_layers("image") and len(text_records) == backend.num_layers("text")
    probs = text_records[0].probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    if name in ("open_clip-vit", "clip-vit"):  # causal: the first token sees itself only
        assert probs[0, :, 0, 1:].abs().max() == 0
    assert backend._recording == {}


def test_resnet_grid_follows_the_layer(pictures):
    _, backend, _, _ = family("open_clip-resnet")
    grids = [backend.token_grid("image", layer) for layer in (EMBEDDINGS, 0, 1, 2, 3)]
    assert grids == [(16, 16), (16, 16), (8, 8), (4, 4), (2, 2)]  # 64 px input
    g = backend.geometry
    assert (g.image_prefix_tokens, g.vision_layers, g.patch_grid) == (0, 4, (2, 2))
    for layer in (0, 2):
        exp = m2ib.explain(
            backend, pictures[0], "a red circle", vision_layer=layer, steps=2, samples=2, modalities=("image",)
        )
        assert tuple(exp.image_grid.shape) == backend.token_grid("image", layer)
        assert exp.image_map.shape == (64, 64)


def test_bf16_precision_runs_on_a_family_backend(pictures):
    _, backend, _, _ = family("siglip")
    exp = m2ib.explain(backend, pictures[0], "a red circle", steps=2, samples=2, precision="bf16")
    assert torch.isfinite(exp.image_map).all() and torch.isfinite(exp.text_map).all()


# --- the public reference's OpenAI-clip bugs are caught by the parity test -----------------------
@pytest.mark.parametrize("bug", ["projection applied twice", "last position pooled", "causal mask dropped"])
def test_parity_catches_the_reference_wrappers_bugs(bug, pictures, monkeypatch):
    from m2ib.backends.openai_towers import apply_projection

    model, backend, image_fn, text_fn = family("clip-vit")
    tower = backend.towers["text"]
    if bug == "projection applied twice":
        monkeypatch.setattr(
            tower,
            "head",
            lambda pooled: apply_projection(
                apply_projection(model.ln_final(pooled), model.text_projection), model.text_projection
            ),
        )
    elif bug == "last position pooled":
        monkeypatch.setattr(tower, "pool", "last")
    else:
        monkeypatch.setattr(tower, "mask", lambda *args: None)
    with pytest.raises(AssertionError):
        assert_split_parity(backend, image_fn, text_fn, pictures)


# --- tokenisation and preprocessing equal the libraries' -----------------------------------------
def test_openai_clip_tokens_and_pixels_equal_the_package(pictures):
    clip = need_clip()
    _, backend, _, _ = family("clip-vit")
    batch = backend.tokenize(TEXTS)
    ref = clip.tokenize(TEXTS)
    assert torch.equal(batch.input_ids, ref[:, : batch.input_ids.shape[1]].long())
    assert batch.tokens[2] == ("<|startoftext|>", "star", "<|endoftext|>") and batch.special[2] == (0, 2)
    long_text = " ".join(["cat"] * 100)
    with pytest.warns(UserWarning, match="the last 25 tokens were dropped"):
        cut = backend.tokenize([long_text])
    assert torch.equal(cut.input_ids, clip.tokenize([long_text], truncate=True).long())
    transform = clip.clip._transform(32)
    for picture in pictures:
        expected = transform(picture)[None]
        torch.testing.assert_close(backend.preprocess_images([picture]).pixel_values, expected, atol=1e-6, rtol=0)


def test_open_clip_tokens_and_pixels_equal_the_library(pictures):
    oc = need_open_clip()
    model, backend, _, _ = family("open_clip-vit")
    tok = oc.get_tokenizer("ViT-B-32")
    batch = backend.tokenize(TEXTS)
    assert torch.equal(batch.input_ids, tok(TEXTS)[:, : batch.input_ids.shape[1]])
    assert batch.tokens[2] == ("<start_of_text>", "star", "<end_of_text>")
    cfg = oc.get_model_preprocess_cfg(model) or {}
    transform = oc.image_transform(32, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"))
    for picture in pictures:
        torch.testing.assert_close(
            backend.preprocess_images([picture]).pixel_values, transform(picture)[None], atol=1e-6, rtol=0
        )
    # the bidirectional tower keeps the whole context (it pools the last position)
    _, variants, _, _ = family("open_clip-vit-variants")
    assert variants.tokenize(TEXTS).input_ids.shape[1] == 24


def test_siglip_pads_to_the_context_and_squashes_images(pictures):
    _, backend, _, _ = family("siglip")
    batch = backend.tokenize(TEXTS)
    assert batch.input_ids.shape == (3, 20) and batch.lengths.tolist() == [5, 14, 3]
    pixels = backend.preprocess_images([pictures[0]])  # 40x56 -> 32x32 without a crop
    assert pixels.pixel_values.shape == (1, 3, 32, 32)
    assert backend.geometry.image_prefix_tokens == 0


# --- loading by name, file and directory; offline failures ----------------------------------------
def test_open_clip_names_and_directories(tmp_path, pictures):
    oc = need_open_clip()
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (tmp_path / "m2ib-test-tiny.json").write_text(json.dumps(cfg))
    oc.add_model_config(tmp_path / "m2ib-test-tiny.json")
    backend = m2ib.load("open_clip:m2ib-test-tiny@random")
    assert backend.name == "open_clip:m2ib-test-tiny@random" and backend.num_layers("image") == 2
    with pytest.warns(UserWarning, match="RANDOM"):
        m2ib.load("open_clip:m2ib-test-tiny")
    with pytest.raises(InputError, match="not a pretrained tag"):
        m2ib.load("open_clip:m2ib-test-tiny@no-such-tag")
    with pytest.raises(InputError, match="no architecture"):
        m2ib.load("open_clip:ViT-Q-99")
    # weights from a file, and a directory in OpenCLIP's format (config + checkpoint)
    model = backend.model
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    from_file = m2ib.load(f"open_clip:m2ib-test-tiny@{tmp_path / 'weights.pt'}")
    folder = tmp_path / "oc_dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    images = backend.preprocess_images(pictures)
    texts = backend.tokenize(TEXTS)
    with torch.no_grad():
        expected = model.encode_image(images.pixel_values), backend.embed("text", texts)
        for other in (from_file, m2ib.load(f"open_clip:local-dir:{folder}"), m2ib.load(str(folder))):
            torch.testing.assert_close(other.embed("image", images), expected[0], atol=TOL, rtol=0)
            torch.testing.assert_close(other.embed("text", texts), expected[1], atol=TOL, rtol=0)
    recommended = {"m2ib": {"vision_layer": 1, "vision_beta": 7.0}}  # a directory's m2ib.json, as HF ones
    (folder / "m2ib.json").write_text(json.dumps({"recommended": recommended}))
    assert m2ib.load(str(folder)).recommended == m2ib.load(f"open_clip:local-dir:{folder}").recommended == recommended
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(InputError, match="no checkpoint"):
        m2ib.load(str(folder))


def test_open_clip_pretrained_tags_fail_fast_offline(monkeypatch):
    need_open_clip()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="hf download") as info:
        m2ib.load("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotAvailableError, match="hf download .* --local-dir DIR"):
        m2ib.load("open_clip:hf-hub:someone/open-clip-model-that-is-not-cached")
    assert time.monotonic() - start < 10


def test_openai_clip_state_dicts_and_names(tmp_path, pictures, monkeypatch):
    need_clip()
    model, backend, _, _ = family("clip-vit")
    # a fine-tuning checkpoint: wrapped in "state_dict", with DataParallel's "module." prefixes
    state = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(state, tmp_path / "finetuned.pt")
    images, texts = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    with torch.no_grad():
        for loaded in (m2ib.load(f"clip:{tmp_path / 'finetuned.pt'}"), m2ib.load(str(tmp_path / "finetuned.pt"))):
            assert type(loaded).__name__ == "OpenAICLIPBackend"
            torch.testing.assert_close(loaded.embed("image", images), backend.embed("image", images), atol=TOL, rtol=0)
            torch.testing.assert_close(loaded.embed("text", texts), backend.embed("text", texts), atol=TOL, rtol=0)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an OpenAI CLIP state dict"):
        m2ib.load(f"clip:{tmp_path / 'other.pt'}")
    with pytest.raises(InputError, match="clip has no model"):
        m2ib.load("clip:ViT-Q/99")
    # OpenAI's weights: not cached and no network -> one line, fast, naming the file to fetch
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("m2ib.backends.hub.hub_reachable", lambda *a, **k: False)
    with pytest.raises(ModelNotAvailableError, match=r"ViT-B-32\.pt") as info:
        m2ib.load("clip:ViT-B/32")
    assert "\n" not in str(info.value)


def test_openai_architecture_table_matches_open_clip():
    oc = need_open_clip()
    from m2ib.backends.openai_clip import ARCHITECTURES

    for name, (embed, size, layers, width, patch, text_width, text_layers) in ARCHITECTURES.items():
        cfg = oc.get_model_config(name.replace("/", "-").replace("@336px", "-336"))
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        assert (cfg["embed_dim"], vision["image_size"], vision["width"], vision.get("patch_size")) == (
            embed,
            size,
            width,
            patch,
        ), name
        assert (tuple(vision["layers"]) if isinstance(layers, tuple) else vision["layers"]) == layers, name
        assert (text["width"], text["layers"], text["heads"]) == (text_width, text_layers, text_width // 64), name


def test_siglip_directories_and_hub_names(tmp_path, pictures):
    model, backend, _, _ = family("siglip")
    model.save_pretrained(tmp_path)
    backend.tokenizer.save_pretrained(tmp_path)
    images, texts = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    with torch.no_grad():
        for loaded in (m2ib.load(f"hf:{tmp_path}"), m2ib.load(str(tmp_path))):
            assert type(loaded).__name__ == "SiglipBackend"
            torch.testing.assert_close(loaded.embed("image", images), backend.embed("image", images), atol=TOL, rtol=0)
            torch.testing.assert_close(loaded.embed("text", texts), backend.embed("text", texts), atol=TOL, rtol=0)
    with pytest.raises(ModelNotAvailableError, match="hf download"):
        m2ib.load("hf:google/siglip-base-patch16-that-is-not-cached")


def test_a_directory_whose_tokenizer_needs_an_extra_names_its_familys_install_hint(tmp_path, monkeypatch):
    """The hint is data on the family's record (Family.install_hint), read where the error is made."""
    from transformers import AutoTokenizer

    from m2ib.backends.registry import FAMILIES

    model, _, _, _ = family("siglip")
    model.save_pretrained(tmp_path)

    def missing(*args, **kwargs):
        raise ImportError("SiglipTokenizer requires the SentencePiece library but it was not found")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", missing)
    hint = FAMILIES.get("SigLIP").install_hint
    assert hint.startswith("pip install 'm2ib[siglip]'")
    with pytest.raises(InputError, match=f"SigLIP's tokenizer cannot be loaded .*: {re.escape(hint)}$"):
        m2ib.load(str(tmp_path))


@pytest.mark.parametrize("name,module", [("open_clip:ViT-B-32@random", "open_clip"), ("clip:ViT-B/32@random", "clip")])
def test_missing_extra_is_a_one_line_error_naming_the_install(name, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    extra = "open_clip" if module == "open_clip" else "clip"
    with pytest.raises(InputError, match=re.escape(f"pip install 'm2ib[{extra}]'")) as info:
        m2ib.load(name)
    assert "\n" not in str(info.value)


# --- the README's commands ------------------------------------------------------------------------
def readme_family_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Model families", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("m2ib explain")]


def test_readme_lists_a_command_per_family():
    models = [re.search(r"--model (\S+)", c).group(1) for c in readme_family_commands()]
    assert any(m.startswith("open_clip:") and "RN" not in m for m in models)
    assert any(m.startswith("open_clip:RN") for m in models)
    assert any(m.startswith("clip:") for m in models) and any(m.startswith("hf:") for m in models)


# full-size SigLIP 2 (a 256000-id embedding): slow; test_backends_timm checks its stand-in line too
@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if "SigLIP2@random" in c else c for c in readme_family_commands()],
)
def test_readme_family_command_runs(command, tmp_path, monkeypatch):
    from m2ib.cli import main

    argv = shlex.split(command)[1:]
    model = argv[argv.index("--model") + 1]
    if model.startswith("open_clip:"):
        need_open_clip()
    elif model.startswith("clip:"):
        need_clip()
    elif model in ("hf:SIGLIP_DIR", "hf:SIGLIP2_DIR", "hf:METACLIP2_DIR"):  # the README's placeholders:
        import test_backends_hf_dual  # a small model of that family saved with save_pretrained

        built = {
            "hf:SIGLIP_DIR": lambda: family("siglip"),
            "hf:SIGLIP2_DIR": test_backends_hf_dual.build_siglip2,
            "hf:METACLIP2_DIR": test_backends_hf_dual.build_metaclip2,
        }[model]
        saved, backend, _, _ = built()
        saved.save_pretrained(tmp_path / "model")
        backend.tokenizer.save_pretrained(tmp_path / "model")
        argv[argv.index("--model") + 1] = f"hf:{tmp_path / 'model'}"
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(ROOT)
    assert main(argv) == 0
    written = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert ".json" in written and ".npz" in written


def test_biomedclip_hub_name_fails_fast_offline_on_one_line(capsys, monkeypatch):
    """The README's BiomedCLIP-style name: offline, one line saying how to get it (no download tried)."""
    from m2ib.cli import main

    need_open_clip()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert name in (ROOT / "README.md").read_text()
    start = time.monotonic()
    code = main(["explain", str(ROOT / "examples" / "scene1.png"), "a star", "--model", name])
    err = capsys.readouterr().err.strip()
    assert code != 0 and time.monotonic() - start < 30
    assert "hf download microsoft/BiomedCLIP" in err and len(err.splitlines()) == 1, err


def test_errors_are_m2ib_errors():
    assert issubclass(ModelNotAvailableError, M2IBError) and issubclass(InputError, M2IBError)
