"""OpenCLIP timm image towers (``visual.trunk.blocks``): tiny random copies of real configs.

The towers are built through OpenCLIP's own ``TimmModel`` from the config's timm model name,
pool and projection; only timm's size arguments are made small (:func:`scaled_timm`). Each
variant checks a geometry or head the tower reads from the model: SigLIP's attention-pooling
(MAP) head with no prefix token, average pooling with no class token (``*_gap``), and token
pooling with a class token plus register tokens and no position embedding for them. The split
forward equals ``encode_image`` at every layer (1e-5); every registered method runs. Needs
open_clip and timm (the families environment); skips elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
from pathlib import Path

import pytest
import torch
from test_backends_families import TEXTS, TINY_SETTINGS, _seeded, assert_split_parity, need_open_clip

import m2ib
from m2ib.errors import InputError, ModelNotAvailableError
from m2ib.inputs import load_image

ROOT = Path(__file__).resolve().parents[2]
SMALL_TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


@contextlib.contextmanager
def scaled_timm(**overrides):
    """While open, OpenCLIP's ``timm.create_model`` builds with ``overrides`` (smaller sizes): the
    same timm class and options, restored after."""
    import open_clip.timm_model as timm_model

    original = timm_model.timm.create_model

    def create(name, **kwargs):
        return original(name, **{**kwargs, **overrides})

    timm_model.timm.create_model = create
    try:
        yield
    finally:
        timm_model.timm.create_model = original


# (timm model, OpenCLIP timm_pool, timm_proj, extra timm options): one per head kind
VARIANTS = {
    "timm-siglip-map": ("vit_base_patch16_siglip_224", "map", "none", {}),
    "timm-gap-avg": ("vit_medium_patch16_gap_256", "avg", "linear", {}),
    "timm-token-registers": ("vit_base_patch16_clip_224", "token", "linear", {"reg_tokens": 2, "no_embed_class": True}),
    "timm-eva02-rope-token": ("eva02_base_patch16_clip_224", "token", None, {}),
    "timm-pe-rope-map": ("vit_pe_core_base_patch16_224", "map", None, {}),
    "timm-eva01-qv-bias": ("eva_giant_patch14_224", "token", None, {"patch_size": 8}),
    "timm-eva02-e-post-norm": ("eva02_enormous_patch14_clip_224", "token", None, {"patch_size": 8}),  # EVA02-E-14
    # relative-position blocks (no position embedding; a score bias): per-block log-coordinate MLP with a class
    # token (vit_relpos_medium_patch16_cls_224's), and one bias table shared by every block
    "timm-relpos-mlp-cls": ("vit_relpos_medium_patch16_cls_224", "", "linear", {}),
    "timm-relpos-shared": ("vit_srelpos_small_patch16_224", "avg", "linear", {}),
}
# convolutional trunks as stages (their own size arguments; a 64-pixel input)
STAGED = {
    "timm-convnext-stages": ("convnext_tiny", "", "linear", {"depths": (1, 1, 1, 1), "dims": (16, 24, 32, 48)}),
    # MobileCLIP-S1's trunk (RepMixer stages, an attention stage with a conditional position encoding)
    "timm-fastvit-stages": ("fastvit_mci1", "avg", None, {"layers": (1, 1, 1, 1), "embed_dims": (32, 32, 64, 64)}),
}


def spread_weights(model: torch.nn.Module, seed: int = 7) -> None:
    """timm and OpenCLIP initialise small (std 0.02, zero heads): embeddings of about 1e-5, which would
    make a 1e-5 parity test vacuous. Weights of unit-scale outputs instead (norm scales near 1,
    matrices with std 1/sqrt(fan_in)), so that attention is peaked and every part shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=g)
            if param.dim() == 0:  # the logit scale
                continue
            if param.dim() == 1:
                param.copy_(1 + 0.1 * noise if param.abs().max() > 0.5 else 0.1 * noise)  # norm scales, biases
            else:
                param.copy_(noise / param[0].numel() ** 0.5)


def build_timm(name: str):
    oc = need_open_clip()
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    staged = name in STAGED
    timm_name, pool, proj, extra = STAGED[name] if staged else VARIANTS[name]
    vision = CLIPVisionCfg(
        timm_model_name=timm_name,
        timm_model_pretrained=False,
        timm_pool=pool,
        timm_proj=proj,
        image_size=64 if staged else 32,
    )
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    with scaled_timm(**(extra if staged else {**SMALL_TIMM, **extra})):
        model = _seeded(0, lambda: CLIP(32, vision, text).eval())  # embed_dim = trunk width, as in the configs
    spread_weights(model)
    tok = oc.get_tokenizer("ViT-B-32")
    backend = m2ib.load(model, tokenizer=tok)
    return model, backend, model.encode_image, lambda batch: model.encode_text(tok(list(batch.texts)))


BUILDERS = {name: (lambda name=name: build_timm(name)) for name in (*VARIANTS, *STAGED)}
_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = BUILDERS[name]()
    return _CACHE[name]


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


@pytest.mark.parametrize("name", [*VARIANTS, *STAGED])
def test_split_forward_equals_library_forward(name, pictures):
    _, backend, image_fn, text_fn = family(name)
    assert_split_parity(backend, image_fn, text_fn, pictures)


@pytest.mark.parametrize(
    "name,prefix,pooled",
    [
        ("timm-siglip-map", 0, None),
        ("timm-gap-avg", 0, None),
        ("timm-token-registers", 3, 0),
        ("timm-eva02-rope-token", 1, 0),
        ("timm-pe-rope-map", 1, None),
    ],
)
def test_geometry_comes_from_the_trunk(name, prefix, pooled, pictures):
    model, backend, _, _ = family(name)
    assert backend.geometry.image_prefix_tokens == prefix == model.visual.trunk.num_prefix_tokens
    assert backend.geometry.patch_grid == (4, 4) and backend.geometry.image_size == (32, 32)
    rows = backend.pooled_positions("image", backend.preprocess_images(pictures))
    assert (rows is None) if pooled is None else rows.tolist() == [pooled] * len(pictures)


@pytest.mark.parametrize("name", list(STAGED))
def test_staged_trunks_grids_come_from_the_model(name, pictures):
    """Each stage's grid is the library's own feature map size; M2IB runs on a middle stage."""
    model, backend, _, _ = family(name)
    trunk = model.visual.trunk
    x = trunk.stem(torch.zeros(1, 3, 64, 64))
    expected = [tuple(x.shape[-2:])]
    for stage in trunk.stages:
        x = stage(x)
        expected.append(tuple(x.shape[-2:]))
    layers = range(-1, backend.num_layers("image"))
    assert [backend.token_grid("image", layer) for layer in layers] == expected
    assert not backend.supports_attention and backend.geometry.image_prefix_tokens == 0
    exp = m2ib.explain(backend, pictures[0], "a red circle", vision_layer=1, steps=2, samples=2, modalities=("image",))
    assert tuple(exp.image_grid.shape) == expected[2] and exp.image_map.shape == (64, 64)


def test_an_overflowing_fit_fails_on_one_line_and_never_returns_a_nan_map(pictures):
    """A FastViT trunk with weights 8x unit scale (as the zoo's full-size random copies had) gives
    embeddings of about 1e28 (finite, but M2IB's KL overflows) or, with torch 2.14.1 on the 2-core Xeon
    of 2026-12, embeddings that overflow already. Either way the explanation must fail with the one-line
    'diverged' error, not come back as a NaN (or silently zero) map."""
    model, backend, image_fn, _ = build_timm("timm-fastvit-stages")
    with torch.no_grad():
        for param in model.visual.trunk.parameters():
            if param.dim() > 1:
                param.mul_(8)
        pixels = backend.preprocess_images(pictures[:1]).pixel_values
        embedding = image_fn(pixels)
        assert not torch.isfinite(embedding).all() or embedding.abs().max() > 1e20
    with pytest.raises(InputError, match="image fit diverged") as info:
        m2ib.explain(backend, pictures[0], "a red circle", method="m2ib", steps=2, samples=2, modalities=("image",))
    assert "\n" not in str(info.value)


def test_unsupported_trunks_say_why_on_one_line():
    need_open_clip()
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(
        timm_model_name="vit_base_patch16_clip_224",
        timm_model_pretrained=False,
        timm_pool="avg",
        timm_proj="linear",
        image_size=32,
    )
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    with scaled_timm(**SMALL_TIMM, qk_norm=True):
        model = CLIP(16, vision, text).eval()
    with pytest.raises(InputError, match="q_norm is not supported") as info:
        m2ib.load(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["timm-eva02-rope-token", "timm-pe-rope-map"])
def test_rotary_trunks_need_the_rotation(name, pictures, monkeypatch):
    """Parity holds with the trunk's rotary embedding and fails without it (the test can fail)."""
    _, backend, image_fn, text_fn = family(name)
    assert backend.towers["image"].eva and not backend.towers["image"].shortcut
    for block in backend.towers["image"].blocks:
        monkeypatch.setattr(block, "rotate", lambda x: x)
    with pytest.raises(AssertionError):
        assert_split_parity(backend, image_fn, text_fn, pictures)


@pytest.mark.parametrize("name", ["timm-eva01-qv-bias", "timm-siglip-map"])
def test_the_tower_reads_the_parameters_live(name, pictures):
    """Weights changed after wrapping (as a fine-tune, a device move or a cast would) are the ones
    used: parity still holds (EVA's q/v biases were once copied at wrapping time)."""
    model, backend, image_fn, text_fn = build_timm(name)
    spread_weights(model, seed=11)
    assert_split_parity(backend, image_fn, text_fn, pictures)


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
@pytest.mark.parametrize(
    "name",
    ["timm-siglip-map", "timm-token-registers", "timm-eva02-rope-token", "timm-convnext-stages", "timm-fastvit-stages"],
)
def test_explain_runs_every_registered_method(name, method, pictures):
    from m2ib.methods import REGISTRY

    _, backend, _, _ = family(name)
    cls = REGISTRY[method]
    fields = {f.name for f in dataclasses.fields(cls.Settings)}
    tiny = {k: v for k, v in TINY_SETTINGS.items() if k in fields}
    if (
        any(getattr(cls, a, False) for a in ("needs_attention", "requires_attention"))
        and not backend.supports_attention
    ):
        pytest.skip(f"{method} needs attention weights; {name}'s stages record none")
    try:
        exps = m2ib.explain(
            backend, [pictures[0], pictures[1]], TEXTS[:2], method=method, modalities=cls.modalities, **tiny
        )
    except (NotImplementedError, InputError) as exc:  # the method's one-line refusal
        if not backend.supports_attention and "attention" in str(exc).lower():
            pytest.skip(f"{method} needs attention weights; {name}'s stages record none ({exc})")
        raise
    for exp in exps:
        if "image" in cls.modalities:
            assert exp.image_map.shape == backend.geometry.image_size
            assert torch.isfinite(exp.image_map).all() and torch.isfinite(exp.image_map_raw).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cascade_parts_run_from_the_head_down(name):
    model, backend, _, _ = family(name)
    parts = backend.cascade_parts("image")
    n = backend.num_layers("image")
    assert [label for label, _ in parts] == ["head", *[f"block {i}" for i in reversed(range(n))], "embeddings"]
    assert parts[1][1] == [model.visual.trunk.blocks[-1]]


# --- SigLIP / SigLIP 2 configs by name: their Hugging Face tokenizer ---------------------------------
SIGLIP2 = "timm/ViT-B-16-SigLIP2"
WORDS = ["a", "red", "circle", "photo", "of", "cat", "and", "dog", "on", "green", "tree", "star"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (the developer's own is never read), the hub switched off; the
    fixture returns a function that puts a small WordPiece tokenizer in the cache under a repo id."""
    import huggingface_hub.constants as constants
    from transformers import BertTokenizerFast

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def put(repo: str):
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        folder = cache / f"models--{repo.replace('/', '--')}"
        commit = "0" * 40
        BertTokenizerFast(str(vocab)).save_pretrained(folder / "snapshots" / commit)
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        return folder / "snapshots" / commit

    return put


def build_siglip2_small():
    """ViT-B-16-SigLIP2's config (MAP head, bidirectional 'last'-pooled text tower with a biased
    projection), small: a 32-wide trunk and text tower, a 64-id vocabulary."""
    oc = need_open_clip()
    cfg = oc.get_model_config("ViT-B-16-SigLIP2")
    vision = {**cfg["vision_cfg"], "image_size": 32}
    text = {**cfg["text_cfg"], "width": 32, "heads": 2, "layers": 2, "vocab_size": 64}
    with scaled_timm(**SMALL_TIMM):
        model = _seeded(
            0,
            lambda: oc.create_model(
                "ViT-B-16-SigLIP2", pretrained=None, embed_dim=32, vision_cfg=vision, text_cfg=text
            ).eval(),
        )
    spread_weights(model)
    return model


def test_a_cached_hugging_face_tokenizer_is_the_real_one(hub_cache, pictures, capsys):
    """Cached, the config's tokenizer is read (no stand-in, nothing on stderr) and wrapped as
    open_clip.get_tokenizer wraps it: same ids; the split forward on its tokens equals encode_text."""
    oc = need_open_clip()
    from open_clip.tokenizer import HFTokenizer

    from m2ib.backends.openclip_tokens import hub_tokenizer

    local = hub_cache(SIGLIP2)
    cfg = oc.get_model_config("ViT-B-16-SigLIP2")
    tok = hub_tokenizer(oc, "ViT-B-16-SigLIP2", cfg["text_cfg"], True, "open_clip:ViT-B-16-SigLIP2@random")
    assert isinstance(tok, HFTokenizer) and capsys.readouterr().err == ""
    own = HFTokenizer(str(local), context_length=64, clean="canonicalize")
    assert torch.equal(tok(TEXTS, context_length=64), own(TEXTS))
    model = build_siglip2_small()
    backend = m2ib.load(model, tokenizer=tok)
    batch = backend.tokenize(TEXTS)
    assert batch.input_ids.shape == (3, 64) and batch.tokens[0] == ("[CLS]", "a", "red", "circle", "[SEP]")
    assert_split_parity(backend, model.encode_image, lambda b: model.encode_text(own(list(b.texts))), pictures)
    exp = m2ib.explain(backend, pictures[0], TEXTS[0], method="m2ib", steps=2, samples=2)
    assert exp.tokens == ["[CLS]", "a", "red", "circle", "[SEP]"] and torch.isfinite(exp.text_map).all()


def test_named_weights_with_an_uncached_tokenizer_fail_fast_on_one_line(hub_cache):
    import time

    need_open_clip()
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=f"hf download {SIGLIP2}") as info:
        m2ib.load("open_clip:ViT-B-16-SigLIP2@webli")
    assert time.monotonic() - start < 10 and "\n" not in str(info.value)
    # a 32000-id SigLIP text tower cannot read CLIP's ids: no stand-in even for random weights
    with pytest.raises(ModelNotAvailableError, match="no stand-in") as info:
        m2ib.load("open_clip:ViT-B-16-SigLIP@random")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_readme_siglip2_random_command_runs_offline_with_an_announced_stand_in(
    hub_cache, tmp_path, capsys, monkeypatch
):
    """The README command, full size, through the CLI: offline with nothing cached, CLIP's BPE
    tokenizer stands in, said on exactly one stderr line, and the explanation is written."""
    from m2ib.cli import main

    need_open_clip()
    command = (
        'm2ib explain examples/scene1.png "a yellow star" --model open_clip:ViT-B-16-SigLIP2@random '
        "--steps 2 --samples 2"
    )
    argv = [*shlex.split(command)[1:], "--out", str(tmp_path / "out")]
    monkeypatch.chdir(ROOT)
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    stand_in = [line for line in err if "stands in" in line]
    assert len(stand_in) == 1 and "timm/ViT-B-16-SigLIP2 is not cached" in stand_in[0], err
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".json", ".npz", ".png"]
