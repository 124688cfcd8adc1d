"""OpenCLIP text towers that are the encoder of a Hugging Face encoder-decoder model: mT5 and NLLB.

As in :mod:`test_backends_hf_text`, OpenCLIP builds the library's own ``HFTextEncoder`` (through
``CustomTextCLIP``) from a small transformers config of the same ``model_type`` (``mt5``: gated-GELU
feed-forward, RMSNorm, relative position bias; ``m2m_100``: NLLB's scaled embeddings and sinusoidal
positions), with the pooler and projection of OpenCLIP's configs (``mt5-*``: mean, MLP; ``nllb-clip-*``:
cls, linear). The tokenizers are written here with ``tokenizers`` (no hub): mT5's layout
(``text </s>``, pad 0) and NLLB's (``eng_Latn text </s>``, pad 1). Weights are unit-scale. Needs open_clip
(the families environment); skips elsewhere.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_backends_families import TEXTS, TINY_SETTINGS, _seeded, assert_split_parity, need_open_clip
from test_backends_hf_text import WORDS, small_hf_configs
from test_backends_timm import spread_weights

import m2ib
from m2ib.errors import InputError
from m2ib.inputs import load_image

# name -> (transformers model_type, OpenCLIP hf_pooler_type, hf_proj_type). mt5-base-ViT-B-32 and mt5-xl-ViT-H-14
# (mean, and CLIPTextCfg's default MLP projection); nllb-clip-* (cls, linear); an mT5 tower with a class pooler
# runs the last-block shortcut through the position bias.
VARIANTS = {
    "hf-mt5-mean-mlp": ("mt5", "mean_pooler", "mlp"),
    "hf-mt5-cls-linear": ("mt5", "cls_pooler", "linear"),
    "hf-nllb-cls-linear": ("m2m_100", "cls_pooler", "linear"),
}
LANGUAGE = "eng_Latn"


def tiny_tokenizer(model_type: str):
    """mT5's layout (``<pad>``=0, ``</s>``=1, ``<unk>``=2; ``text </s>``) or NLLB's (``<s>``=0, ``<pad>``=1,
    ``</s>``=2, ``<unk>``=3; ``eng_Latn text </s>``), over ``WORDS`` as SentencePiece-style pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    nllb = model_type == "m2m_100"
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if nllb else ["<pad>", "</s>", "<unk>"]
    pieces = specials + ["▁" + w for w in WORDS] + ([LANGUAGE] if nllb else [])
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    template = f"{LANGUAGE} $A </s>" if nllb else "$A </s>"
    ids = [("</s>", vocab["</s>"])] + ([(LANGUAGE, vocab[LANGUAGE])] if nllb else [])
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=ids)
    extra = dict(bos_token="<s>", additional_special_tokens=[LANGUAGE]) if nllb else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **extra
    )


def small_config(model_type: str, **changes):
    from transformers import AutoConfig

    if model_type == "mt5":  # few buckets, so that these short texts reach the logarithmic ones too
        sizes = dict(
            d_model=32,
            d_kv=16,
            d_ff=48,
            num_layers=2,
            num_decoder_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
        )
    else:
        sizes = dict(
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            max_position_embeddings=64,
        )
    return AutoConfig.for_model(model_type, vocab_size=32, **{**sizes, **changes})


def build_model(model_type: str, pooler: str, proj: str, **changes):
    need_open_clip()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    vision = CLIPVisionCfg(layers=2, width=32, patch_size=8, image_size=32, head_width=16)
    text = CLIPTextCfg(
        hf_model_name=f"tiny-{model_type}", hf_model_pretrained=False, hf_pooler_type=pooler, hf_proj_type=proj
    )
    with small_hf_configs(small_config(model_type, **changes)):
        model = _seeded(0, lambda: CustomTextCLIP(32, vision, text).eval())
    spread_weights(model)
    return model


def build(name: str):
    model_type, pooler, proj = VARIANTS[name]
    model = build_model(model_type, pooler, proj)
    backend = m2ib.load(model, tokenizer=tiny_tokenizer(model_type))
    return model, backend, model.encode_image, lambda batch: model.encode_text(batch.input_ids)


_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


BUILDERS = {name: (lambda name=name: family(name)) for name in VARIANTS}


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_split_forward_equals_library_forward(name, pictures):
    """prefix to block l + suffix from l = OpenCLIP's encode_text (and encode_image) for every l, to 1e-5."""
    _, backend, image_fn, text_fn = family(name)
    assert type(backend).__name__ == "OpenCLIPHFTextBackend"
    assert type(backend.towers["text"]).__name__ == "Seq2SeqTextTower"
    assert_split_parity(backend, image_fn, text_fn, pictures)


@pytest.mark.parametrize(
    "name,what",
    [
        ("hf-mt5-mean-mlp", "bias"),
        ("hf-mt5-cls-linear", "bias"),
        ("hf-mt5-mean-mlp", "padding"),
        ("hf-nllb-cls-linear", "padding"),
    ],
)
def test_the_parity_check_sees_the_bias_and_the_mask(name, what, pictures, monkeypatch):
    """Parity fails without the relative position bias, or with padding keys attended (the test can fail)."""
    _, backend, image_fn, text_fn = family(name)
    tower = backend.towers["text"]
    if what == "bias":
        monkeypatch.setattr(tower, "bias", None)
    else:
        monkeypatch.setattr(tower, "pad_id", -1)  # no id is padding: every key attended, every token pooled
    with pytest.raises(AssertionError):
        assert_split_parity(backend, image_fn, text_fn, pictures)


def test_the_bias_of_block_0_is_every_blocks(pictures, monkeypatch):
    """T5 adds block 0's bias in every block: given to block 0 only, the split forward is wrong from block 1 on."""
    _, backend, image_fn, text_fn = family("hf-mt5-mean-mlp")
    tower = backend.towers["text"]
    run, bias = tower.run, tower.bias

    def first_block_only(hidden, start, stop, batch, copies, records):
        for i in range(start, stop):
            tower.bias = bias if i == 0 else None
            hidden = run(hidden, i, i + 1, batch, copies, records)
        tower.bias = bias
        return hidden

    monkeypatch.setattr(tower, "run", first_block_only)
    with pytest.raises(AssertionError, match="layer"):
        assert_split_parity(backend, image_fn, text_fn, pictures)


@pytest.mark.parametrize("name", ["hf-mt5-mean-mlp", "hf-nllb-cls-linear"])
def test_padding_to_the_longest_text_gives_the_fixed_length_embedding(name):
    """OpenCLIP's tokenizer pads to 77; m2ib pads to the longest text: same embeddings (NLLB's positions
    count real tokens only, T5's bias never reaches a masked key)."""
    model, backend, _, _ = family(name)
    batch = backend.tokenize(TEXTS)
    ids = torch.cat([batch.input_ids, torch.full((len(TEXTS), 20), backend.towers["text"].pad_id)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(backend.embed("text", batch), model.encode_text(ids), atol=1e-5, rtol=0)


def last_layer(model: torch.nn.Module) -> torch.nn.Module:
    transformer = model.text.transformer
    return transformer.block[-1] if hasattr(transformer, "block") else transformer.layers[-1]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_pooled_positions_are_what_the_head_reads(name):
    """As in test_pooled_rows: a random vector added to one token of the last layer's output (a hook on the
    library's module) moves OpenCLIP's embedding only for the tokens the pooler reads."""
    from test_pooled_rows import nudged  # here: test_pooled_rows may import this module's BUILDERS

    model, backend, _, _ = family(name)
    batch = backend.tokenize(TEXTS)
    delta = torch.randn(32, generator=torch.Generator().manual_seed(0))
    moved: list[set[int]] = [set() for _ in TEXTS]
    with torch.no_grad():
        plain = model.encode_text(batch.input_ids)
        for position in range(batch.input_ids.shape[1]):
            with nudged(last_layer(model), "NTD", position, delta):
                change = (model.encode_text(batch.input_ids) - plain).norm(dim=-1) / plain.norm(dim=-1)
            for row in torch.nonzero(change > 1e-5).flatten().tolist():
                moved[row].add(position)
    positions = backend.pooled_positions("text", batch)
    if positions is None:  # the mean over the real tokens
        assert VARIANTS[name][1] == "mean_pooler"
        assert moved == [set(torch.nonzero(row).flatten().tolist()) for row in batch.attention_mask]
    else:
        assert [{p} for p in positions.tolist()] == moved == [{0}] * len(TEXTS)


@pytest.mark.parametrize("name,first", [("hf-mt5-mean-mlp", "▁a"), ("hf-nllb-cls-linear", LANGUAGE)])
def test_tokens_are_the_tokenizers(name, first):
    """mT5: ``text </s>``; NLLB: the language code first (the token NLLB-CLIP's cls pooler reads), then ``</s>``."""
    _, backend, _, _ = family(name)
    batch = backend.tokenize(["a red circle", "star"])
    n = 4 if name.startswith("hf-mt5") else 5
    assert len(batch.tokens[0]) == n and batch.special[0] == ((n - 1,) if n == 4 else (0, n - 1))
    assert backend.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())[0] == first
    assert batch.attention_mask.tolist()[1] == [1] * (n - 2) + [0, 0]
    assert batch.texts == ("a red circle", "star")


@pytest.mark.parametrize(
    "model_type,pooler,changes,why",
    [
        ("mt5", "max_pooler", {}, "max_pooler is not supported"),
        ("mt5", "mean_pooler", dict(d_kv=8), "attention width 16"),
        ("m2m_100", "max_pooler", {}, "max_pooler is not supported"),
    ],
)
def test_unsupported_towers_say_why_on_one_line(model_type, pooler, changes, why):
    model = build_model(model_type, pooler, "linear", **changes)
    with pytest.raises(InputError, match=why) as info:
        m2ib.load(model, tokenizer=tiny_tokenizer(model_type))
    assert "\n" not in str(info.value)
    if pooler == "max_pooler":  # the refusal is right while OpenCLIP's own forward fails with this pooler
        with pytest.raises(RuntimeError, match="masked_fill"):
            model.encode_text(torch.tensor([[4, 5, 2]]))


def test_half_precision_runs_and_leaves_the_model_alone(pictures):
    """bf16 (the CLI's --dtype) through T5's RMSNorm and the bias mask: maps are finite; the user's model stays fp32."""
    model, _, _, _ = family("hf-mt5-mean-mlp")
    backend = m2ib.load(model, tokenizer=tiny_tokenizer("mt5"), dtype="bfloat16")
    for method, settings in (("m2ib", dict(steps=2, samples=2)), ("chefer", {})):
        exp = m2ib.explain(backend, pictures[0], TEXTS[0], method=method, **settings)
        assert torch.isfinite(exp.text_map).all() and torch.isfinite(exp.image_map).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", ["hf-mt5-mean-mlp", "hf-nllb-cls-linear"])
def test_cascade_parts_run_from_the_head_down(name):
    model, backend, _, _ = family(name)
    parts = backend.cascade_parts("text")
    n = backend.num_layers("text")
    assert [label for label, _ in parts] == ["head", *[f"block {i}" for i in reversed(range(n))], "embeddings"]
    assert parts[1][1] == [last_layer(model)] and model.text.proj in parts[0][1]
    assert parts[-1][1] == [model.text.transformer.embed_tokens]


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
@pytest.mark.parametrize("name", ["hf-mt5-mean-mlp", "hf-nllb-cls-linear"])
def test_explain_runs_every_registered_method(name, method, pictures):
    from m2ib.methods import REGISTRY

    _, backend, _, _ = family(name)
    assert backend.supports_attention  # every method runs, attention methods included
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


def test_recorded_attention_is_the_bias_and_mask_softmax(pictures):
    """Recorded text attention (what the attention methods read) keeps the forward and holds the bias:
    rows sum to 1, padding keys get 0, and it differs from the plain query-key softmax."""
    _, backend, _, _ = family("hf-mt5-mean-mlp")
    batch = backend.tokenize(TEXTS)
    with torch.no_grad():
        plain = backend.embed("text", batch)
        with backend.record_attention("text") as records:
            recorded = backend.embed("text", batch)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert len(records) == backend.num_layers("text")
    probs = records[0].probs
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    padding = batch.attention_mask == 0
    assert probs.transpose(1, 3)[padding].abs().max() == 0
    unbiased = (records[0].query @ records[0].key.transpose(-1, -2)).masked_fill(padding[:, None, None], -1e9)
    assert (unbiased.softmax(-1) - probs).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["hf-mt5-mean-mlp", "hf-nllb-cls-linear"])
def test_exclip_completeness(name):
    """exCLIP (as tests/interactions/test_interactions_families.py checks it): the matrix and what it leaves out sum to the
    similarity difference of the input and the references."""
    from PIL import Image

    from m2ib.interactions import interact

    _, backend, _, _ = family(name)
    result = interact(backend, Image.new("RGB", (64, 64), (200, 40, 40)), "a red circle", steps=48)
    assert result.matrix.shape[0] == len(result.tokens) == len(backend.tokenize(["a red circle"]).tokens[0])
    assert result.info["sum"] == pytest.approx(result.info["expected_sum"], rel=0.03, abs=1e-4)
    shown = float(result.matrix.sum()) + result.info["image_prefix_sum"] + result.info["text_padding_sum"]
    assert shown == pytest.approx(result.info["sum"], rel=1e-4, abs=1e-6)
