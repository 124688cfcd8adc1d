"""OpenCLIP models with a Hugging Face text tower (``HFTextEncoder``): tiny random copies, offline.

OpenCLIP builds the tower from ``AutoConfig.from_pretrained(hf_model_name)``; here that call returns
a small config of the same ``model_type`` (:func:`small_hf_config`), so the tower is the library's
own ``HFTextEncoder`` with its pooler and ``proj`` options, through ``CustomTextCLIP``. The
tokenizer is a transformers ``BertTokenizer`` written here from a tiny vocabulary (no hub). Weights
are unit-scale (``spread_weights``) so that 1e-5 parity means something. Needs open_clip
(the families environment); skips elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from test_backends_families import TEXTS, TINY_SETTINGS, _seeded, assert_split_parity, need_open_clip
from test_backends_timm import spread_weights

import m2ib
from m2ib.errors import InputError
from m2ib.inputs import load_image

WORDS = ["a", "red", "circle", "photo", "of", "cat", "and", "dog", "on", "green", "tree", "star", "blue"]
# (transformers model_type, OpenCLIP hf_pooler_type, hf_proj_type): BiomedCLIP (PubMedBERT, last-hidden-state
# class token, MLP projection), BERT's own pooler, the RoBERTa / XLM-R configs (mean)
VARIANTS = {
    "hf-bert-cls-last-mlp": ("bert", "cls_last_hidden_state_pooler", "mlp"),
    "hf-bert-cls-pooler": ("bert", "cls_pooler", "linear"),
    "hf-roberta-mean": ("roberta", "mean_pooler", None),
    "hf-xlm-roberta-mean-linear": ("xlm-roberta", "mean_pooler", "linear"),
}


def tiny_tokenizer(tmp_dir, roberta: bool):
    """A WordPiece tokenizer over ``WORDS``; RoBERTa's special-token ids (<s>=0, <pad>=1, </s>=2) when ``roberta``."""
    from transformers import BertTokenizer

    specials = (
        ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"] if roberta else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    path = tmp_dir / ("vocab-roberta.txt" if roberta else "vocab-bert.txt")
    path.write_text("\n".join(specials + WORDS) + "\n")
    return BertTokenizer(str(path))


def small_hf_config(model_type: str):
    from transformers import AutoConfig

    sizes = dict(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    if model_type != "bert":
        sizes.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, max_position_embeddings=42)
    return AutoConfig.for_model(model_type, **sizes)


@contextlib.contextmanager
def small_hf_configs(config):
    """While open, OpenCLIP's ``AutoConfig.from_pretrained`` gives ``config`` (no hub access)."""
    import open_clip.hf_model as hf_model

    original = hf_model.AutoConfig

    class Small:
        @staticmethod
        def from_pretrained(_name, *args, **kwargs):
            return config

    hf_model.AutoConfig = Small
    try:
        yield
    finally:
        hf_model.AutoConfig = original


def build_hf_text(name: str, tmp_dir):
    need_open_clip()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    model_type, pooler, proj = VARIANTS[name]
    vision = CLIPVisionCfg(layers=2, width=32, patch_size=8, image_size=32, head_width=16)
    text = CLIPTextCfg(
        hf_model_name=f"tiny-{model_type}", hf_model_pretrained=False, hf_pooler_type=pooler, hf_proj_type=proj
    )
    with small_hf_configs(small_hf_config(model_type)):
        model = _seeded(0, lambda: CustomTextCLIP(32, vision, text).eval())
    spread_weights(model)
    tokenizer = tiny_tokenizer(tmp_dir, roberta=model_type != "bert")
    backend = m2ib.load(model, tokenizer=tokenizer)
    return model, backend, model.encode_image, lambda batch: model.encode_text(batch.input_ids)


_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        import tempfile
        from pathlib import Path

        _CACHE[name] = build_hf_text(name, Path(tempfile.mkdtemp()))
    return _CACHE[name]


BUILDERS = {name: (lambda name=name: family(name)) for name in VARIANTS}


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_split_forward_equals_library_forward(name, pictures):
    _, backend, image_fn, text_fn = family(name)
    assert type(backend).__name__ == "OpenCLIPHFTextBackend"
    assert_split_parity(backend, image_fn, text_fn, pictures)


@pytest.mark.parametrize("name", ["hf-bert-cls-pooler", "hf-roberta-mean"])
def test_padding_to_the_longest_text_gives_the_fixed_length_embedding(name):
    """OpenCLIP's tokenizer pads to a fixed length; m2ib pads to the longest text: same embeddings."""
    model, backend, _, _ = family(name)
    batch = backend.tokenize(TEXTS)
    pad = backend.towers["text"].pad_id
    ids = torch.cat([batch.input_ids, torch.full((len(TEXTS), 20), pad)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(backend.embed("text", batch), model.encode_text(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name,pooled", [("hf-bert-cls-last-mlp", 0), ("hf-bert-cls-pooler", 0), ("hf-roberta-mean", None)]
)
def test_pooled_positions_follow_the_pooler(name, pooled):
    _, backend, _, _ = family(name)
    rows = backend.pooled_positions("text", backend.tokenize(TEXTS))
    assert (rows is None) if pooled is None else rows.tolist() == [pooled] * len(TEXTS)


def test_the_attention_mask_matters(pictures, monkeypatch):
    """Parity fails when padding keys are not masked (the test can fail)."""
    _, backend, image_fn, text_fn = family("hf-roberta-mean")
    monkeypatch.setattr(backend.towers["text"], "pad_id", -1)  # no id is padding: every key attended
    with pytest.raises(AssertionError):
        assert_split_parity(backend, image_fn, text_fn, pictures)


def test_tokens_are_the_tokenizers():
    _, backend, _, _ = family("hf-bert-cls-pooler")
    batch = backend.tokenize(["a red circle", "star"])
    assert batch.tokens[0] == ("[CLS]", "a", "red", "circle", "[SEP]") and batch.special[0] == (0, 4)
    assert batch.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch.words[0][1:4] == (0, 1, 2)


@pytest.mark.parametrize(
    "pooler,relative,why",
    [("mean_pooler", True, "relative_key position embeddings"), ("max_pooler", False, "max_pooler is not supported")],
)
def test_unsupported_towers_say_why_on_one_line(pooler, relative, why, tmp_path):
    need_open_clip()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    config = small_hf_config("bert")
    if relative:
        config.position_embedding_type = "relative_key"
    vision = CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16)
    text = CLIPTextCfg(hf_model_name="tiny", hf_model_pretrained=False, hf_pooler_type=pooler, hf_proj_type="linear")
    with small_hf_configs(config):
        model = CustomTextCLIP(16, vision, text).eval()
    with pytest.raises(InputError, match=why) as info:
        m2ib.load(model, tokenizer=tiny_tokenizer(tmp_path, roberta=False))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="need its transformers tokenizer"):
        m2ib.load(family("hf-bert-cls-pooler")[0])


def test_cascade_parts_run_from_the_head_down():
    model, backend, _, _ = family("hf-bert-cls-pooler")
    parts = backend.cascade_parts("text")
    n = backend.num_layers("text")
    assert [label for label, _ in parts] == ["head", *[f"block {i}" for i in reversed(range(n))], "embeddings"]
    assert parts[1][1] == [model.text.transformer.encoder.layer[-1]]
    assert model.text.transformer.pooler in parts[0][1] and model.text.proj in parts[0][1]


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
@pytest.mark.parametrize("name", ["hf-bert-cls-last-mlp", "hf-roberta-mean"])
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
            assert exp.image_map.shape == backend.geometry.image_size and torch.isfinite(exp.image_map).all()
        if "text" in cls.modalities:
            assert exp.text_map.shape[0] == len(exp.tokens) == len(backend.tokenize([text]).tokens[0])
            assert torch.isfinite(exp.text_map).all()


def test_open_clip_hf_tokenizers_are_unwrapped(pictures):
    """OpenCLIP's ``HFTokenizer`` keeps the transformers tokenizer in ``.tokenizer``: m2ib reads that one."""
    model, backend, image_fn, text_fn = family("hf-roberta-mean")

    class OpenCLIPStyle:  # the attribute open_clip.tokenizer.HFTokenizer has
        tokenizer = backend.tokenizer

    wrapped = m2ib.load(model, tokenizer=OpenCLIPStyle())
    assert wrapped.tokenizer is backend.tokenizer
    assert_split_parity(wrapped, image_fn, text_fn, pictures)


def test_a_config_with_a_hugging_face_text_tower_loads_by_name(tmp_path, monkeypatch):
    """open_clip:roberta-ViT-B-32@random by name: the text tower's config and tokenizer come from the
    local copy of its hub repo (here a small one, handed out where the cache would), never its weights;
    the backend is the HF text one, its tokenizer OpenCLIP's HFTokenizer, and its split forward equals
    OpenCLIP's encode_text on the tokenizer's own ids."""
    need_open_clip()
    import m2ib.backends.hub as hub

    local = tmp_path / "roberta-base"
    small_hf_config("roberta").save_pretrained(local)
    tiny_tokenizer(tmp_path, roberta=True).save_pretrained(local)
    asked = []

    def snapshot(repo, patterns=None, howto=None):
        asked.append(repo)
        return local

    monkeypatch.setattr(hub, "hub_snapshot", snapshot)
    backend = m2ib.load("open_clip:roberta-ViT-B-32@random")
    assert type(backend).__name__ == "OpenCLIPHFTextBackend" and asked == ["roberta-base"]
    assert type(backend.tokenizer).__name__ in ("BertTokenizer", "BertTokenizerFast")  # unwrapped HFTokenizer
    batch = backend.tokenize(["a red circle", "the blue star"])
    assert backend.model.text.config.hidden_size == 32  # the small config, not roberta-base's
    with torch.no_grad():
        torch.testing.assert_close(
            backend.embed("text", batch),
            backend.model.encode_text(
                torch.cat([batch.input_ids, torch.full((2, 5), backend.towers["text"].pad_id)], dim=1)
            ),
            atol=1e-5,
            rtol=0,
        )
    exp = m2ib.explain(backend, torch.rand(3, 64, 64), "a red circle", steps=2, samples=2)
    assert exp.text_map.shape[0] == len(exp.tokens) and torch.isfinite(exp.image_map).all()


def test_a_hugging_face_text_tower_by_name_offline_fails_on_one_line(monkeypatch):
    """Not cached and the hub off: one line naming the repo and how to get it, no download tried."""
    need_open_clip()
    import time

    from m2ib.errors import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-m2ib-cache")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=r"hf download roberta-base") as info:
        m2ib.load("open_clip:roberta-ViT-B-32@random")
    assert time.monotonic() - start < 10 and "\n" not in str(info.value)


def test_a_biomedclip_style_directory_loads_with_its_hugging_face_text_tower(tmp_path, monkeypatch):
    """An OpenCLIP directory (what open_clip:hf-hub:microsoft/BiomedCLIP-... downloads) whose text tower
    is a Hugging Face BERT: the HF text backend, the directory's weights, BiomedCLIP's pooler and MLP
    proj, the tokenizer from the text model's repo; split forward = OpenCLIP's encode_text."""
    need_open_clip()
    import json

    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    import m2ib.backends.hub as hub

    bert = tmp_path / "tiny-pubmedbert"
    small_hf_config("bert").save_pretrained(bert)
    tiny_tokenizer(tmp_path, roberta=False).save_pretrained(bert)
    text_cfg = dict(
        hf_model_name="microsoft/tiny-pubmedbert",
        hf_tokenizer_name="microsoft/tiny-pubmedbert",
        hf_proj_type="mlp",
        hf_pooler_type="cls_last_hidden_state_pooler",
        context_length=40,
    )
    vision_cfg = dict(layers=2, width=32, patch_size=8, image_size=32, head_width=16)
    with small_hf_configs(small_hf_config("bert")):
        model = _seeded(
            0,
            lambda: CustomTextCLIP(
                32, CLIPVisionCfg(**vision_cfg), CLIPTextCfg(**text_cfg, hf_model_pretrained=False)
            ).eval(),
        )
    spread_weights(model)
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": {"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg},
                "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            }
        )
    )
    asked = []

    def snapshot(repo, patterns=None, howto=None):
        asked.append(repo)
        return bert

    monkeypatch.setattr(hub, "hub_snapshot", snapshot)
    backend = m2ib.load(f"open_clip:local-dir:{folder}")
    assert type(backend).__name__ == "OpenCLIPHFTextBackend" and asked == ["microsoft/tiny-pubmedbert"]
    loaded = backend.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())  # the directory's weights
    batch = backend.tokenize(["a red circle", "the blue star"])
    with torch.no_grad():
        torch.testing.assert_close(backend.embed("text", batch), model.encode_text(batch.input_ids), atol=1e-5, rtol=0)
