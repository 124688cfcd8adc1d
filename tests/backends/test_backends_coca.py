"""OpenCLIP CoCa's contrastive towers: tiny random copies of coca_ViT-B-32 (and coca_base's vocabulary).

The image tower pools by an attentional pooler (its first query's output); the text tower appends
a class embedding after the padded text and pools it, with OpenCLIP's pad mask in both of its
modes (the released weights' legacy mode, which shifts the key mask by one, and
``correct_cls_mask``). The split forward equals ``encode_image`` / ``encode_text`` (normalize=False)
at every layer (1e-5, unit-scale weights); the row the attention methods read is the one the
library's head reads (a nudge on the last block's output moves the embedding for that row only);
every registered method runs. Needs open_clip (the families environment); skips elsewhere.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_backends_families import TEXTS, TINY_SETTINGS, _seeded, assert_split_parity, need_open_clip
from test_backends_timm import spread_weights

import m2ib
from m2ib.inputs import load_image

# (config, TextTransformer attributes: correct_cls_mask is not a config key in open_clip 3.3, only the tower's flag)
VARIANTS = {
    "coca-legacy-mask": ("coca_ViT-B-32", {}),
    "coca-correct-cls-mask": ("coca_ViT-B-32", {"correct_cls_mask": True}),
    "coca-base": ("coca_base", {}),
}
_CACHE: dict = {}


def build_coca(name: str):
    oc = need_open_clip()
    arch, text_flags = VARIANTS[name]
    cfg = oc.get_model_config(arch)
    vision = {
        **cfg["vision_cfg"],
        "layers": 2,
        "width": 32,
        "head_width": 16,
        "image_size": 32,
        "patch_size": 8,
        "attentional_pool": True,
        "attn_pooler_heads": 2,
    }
    text = {**cfg["text_cfg"], "layers": 2, "width": 32, "heads": 2}
    multimodal = {**cfg["multimodal_cfg"], "layers": 1, "width": 32, "heads": 2, "n_queries": 5, "attn_pooler_heads": 2}
    model = _seeded(
        0,
        lambda: oc.create_model(
            arch, pretrained=None, embed_dim=32, vision_cfg=vision, text_cfg=text, multimodal_cfg=multimodal
        ).eval(),
    )
    for key, value in text_flags.items():
        setattr(model.text, key, value)
    spread_weights(model)
    tok = oc.get_tokenizer(arch)
    backend = m2ib.load(model, tokenizer=tok)
    return (
        model,
        backend,
        lambda pixels: model.encode_image(pixels, normalize=False),
        lambda batch: model.encode_text(tok(list(batch.texts)), normalize=False),
    )


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = build_coca(name)
    return _CACHE[name]


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_split_forward_equals_library_forward(name, pictures):
    model, backend, image_fn, text_fn = family(name)
    assert type(model).__name__ == "CoCa" and model.visual.attn_pool is not None and model.text.cls_emb is not None
    assert model.text.correct_cls_mask == (name == "coca-correct-cls-mask")
    assert_split_parity(backend, image_fn, text_fn, pictures)


def test_text_rows_put_the_class_token_after_the_real_tokens():
    from m2ib.backends.coca import CLS_ID

    model, backend, _, _ = family("coca-legacy-mask")
    batch = backend.tokenize(TEXTS)
    context = model.text.positional_embedding.shape[0] - 1
    assert batch.input_ids.shape[1] == context + 1 == backend.context_length + 1  # the full context, and the class row
    for i, tokens in enumerate(batch.tokens):
        n = int(batch.lengths[i])
        assert tokens[-1] == "<cls>" and len(tokens) == n and int(batch.input_ids[i, n - 1]) == CLS_ID
        assert batch.special[i] == (0, n - 2, n - 1) and batch.words[i][-1] == -1
    assert backend.pooled_positions("text", batch).tolist() == (batch.lengths - 1).tolist()
    exp = m2ib.explain(backend, torch.rand(3, 40, 40), TEXTS[1], method="saliency", modalities=("text",))
    assert exp.tokens[-1] == "<cls>" and exp.text_map.shape == (len(exp.tokens),)


def _moved(model, embed, module, tokens: int) -> list[set[int]]:
    """Per row, the positions of ``module``'s output (batch first) whose nudge moves ``embed()``."""
    with torch.no_grad():
        plain = embed()
        delta = torch.randn(32, generator=torch.Generator().manual_seed(0))
        moved: list[set[int]] = [set() for _ in range(plain.shape[0])]
        for position in range(tokens):

            def add(_m, _i, out, position=position):
                out = out.clone()
                out[:, position] += delta
                return out

            handle = module.register_forward_hook(add)
            try:
                change = (embed() - plain).norm(dim=-1) / plain.norm(dim=-1)
            finally:
                handle.remove()
            for row in torch.nonzero(change > 1e-5).flatten().tolist():
                moved[row].add(position)
    return moved


@pytest.mark.parametrize("name", ["coca-legacy-mask", "coca-correct-cls-mask"])
def test_pooled_rows_are_what_the_library_head_reads(name, pictures):
    """Text: only the appended class token (the model's last position) moves encode_text, and the
    backend's pooled row, put back in the model's order, is that position (not the end-of-text
    token). Image: the attentional pooler reads every token, so pooled_positions is None."""
    from m2ib.backends.coca import model_order

    model, backend, image_fn, text_fn = family(name)
    assert model.text.transformer.batch_first and model.visual.transformer.batch_first
    batch = backend.tokenize(TEXTS)
    moved = _moved(model, lambda: text_fn(batch), model.text.transformer.resblocks[-1], batch.input_ids.shape[1])
    _, order, _ = model_order(batch.input_ids)
    rows = backend.pooled_positions("text", batch)
    in_model = order[torch.arange(len(batch)), rows].tolist()
    assert moved == [{p} for p in in_model] == [{batch.input_ids.shape[1] - 1}] * len(batch)
    images = backend.preprocess_images(pictures)
    moved = _moved(model, lambda: image_fn(images.pixel_values), model.visual.transformer.resblocks[-1], 17)
    assert backend.pooled_positions("image", images) is None
    assert all(row == set(range(17)) for row in moved)  # the class token and every patch


def _registered_methods() -> list[str]:
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
def test_explain_runs_every_registered_method(method, pictures):
    from m2ib.methods import REGISTRY

    _, backend, _, _ = family("coca-legacy-mask")
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
            assert exp.tokens[-1] == "<cls>" and exp.text_map.shape == (int(backend.tokenize([text]).lengths[0]),)
            assert torch.isfinite(exp.text_map).all()


def test_masked_real_tokens_are_hidden_keys_and_the_padding_rule_stays():
    """A caller's attention mask (KernelSHAP coalitions, deletion curves) hides real tokens only:
    dropping no token gives the model's embedding; dropping a word equals the model run on a
    plain recomputation with that key masked (the library's blocks, an explicit mask)."""
    model, backend, _, text_fn = family("coca-legacy-mask")
    batch = backend.tokenize(TEXTS[:1])
    with torch.no_grad():
        full = backend.embed("text", batch)
        torch.testing.assert_close(full, text_fn(batch), atol=1e-5, rtol=0)
        dropped_mask = batch.attention_mask.clone()
        dropped_mask[0, 2] = 0  # 'red'
        dropped = backend.embed("text", dataclasses.replace(batch, attention_mask=dropped_mask))
        # plain reference: OpenCLIP's own embeddings and mask, with key 2 hidden, through its blocks
        text = model.text
        tok_ids = torch.tensor([[int(i) for i in batch.input_ids[0] if int(i) != -1]])
        x, attn_mask = text._embeds(tok_ids)
        attn_mask = attn_mask.clone()
        attn_mask[..., 2] = float("-inf")
        out = text.transformer(x, attn_mask=attn_mask)
        expected = text.ln_final(out[:, -1]) @ text.text_projection
    torch.testing.assert_close(dropped, expected, atol=1e-5, rtol=0)
    assert (dropped - full).abs().max() > 1e-3
