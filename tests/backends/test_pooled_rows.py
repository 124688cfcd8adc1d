"""The row the attention methods read is the token the head really pools, on every family.

``backend.pooled_positions`` (what Chefer, rollout, LeGrad and Grad-ECLIP read) is checked
against the library's own forward, independently of m2ib's rule: a hook adds a random vector to
one token of the last block's output, and the library's ``encode_*`` / ``get_*_features`` says
whether the embedding moved. A head that pools one token moves for that token only; a head that
reads every token (``pooled_positions`` is None) moves for every spatial token.

Before this check, SigLIP text rows and average-pooled OpenCLIP image rows were the default (last
real token / class token): :func:`test_the_old_default_rows_are_ignored_by_these_heads` shows
the head never reads them, which is why their golden maps are listed in ``test_golden.CHANGED``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_backends_families import BUILDERS, TEXTS, build_hf_clip
from test_backends_hf_dual import BUILDERS as HF_DUAL_BUILDERS
from test_backends_hf_text import BUILDERS as HF_TEXT_BUILDERS
from test_backends_hf_text_seq2seq import BUILDERS as HF_SEQ2SEQ_BUILDERS
from test_backends_timm import BUILDERS as TIMM_BUILDERS

from m2ib.inputs import load_image

FAMILIES = {
    "hf-clip": build_hf_clip,
    **BUILDERS,
    **HF_DUAL_BUILDERS,
    **TIMM_BUILDERS,
    **HF_TEXT_BUILDERS,
    **HF_SEQ2SEQ_BUILDERS,
}
_CACHE: dict = {}


def family(name: str):
    if name not in _CACHE:
        _CACHE[name] = FAMILIES[name]()  # OpenCLIP / OpenAI clip builders skip without their library
    return _CACHE[name]


@pytest.fixture(scope="module")
def pictures(images):
    return [load_image(im)[0] for im in images]


def last_block(model: torch.nn.Module, modality: str) -> tuple[torch.nn.Module, str]:
    """The library module whose output is the tower's last hidden states, and its layout:
    ``"NTD"`` (batch first), ``"TND"`` (sequence first) or ``"NCHW"`` (a ResNet stage)."""
    if hasattr(model, "vision_model"):  # transformers CLIP / SigLIP
        tower = model.vision_model if modality == "image" else model.text_model
        return tower.encoder.layers[-1], "NTD"
    if modality == "image" and hasattr(model.visual, "layer4"):  # ModifiedResNet
        return model.visual.layer4, "NCHW"
    if modality == "text" and type(getattr(model, "text", None)).__name__ == "HFTextEncoder":  # OpenCLIP's
        transformer = model.text.transformer  # BERT layout; T5 stack (block); M2M100 encoder (layers)
        layers = getattr(getattr(transformer, "encoder", None), "layer", None) or getattr(transformer, "block", None)
        return (layers if layers is not None else transformer.layers)[-1], "NTD"
    if modality == "image" and hasattr(model.visual, "trunk"):  # a timm trunk: blocks, or stages
        trunk = model.visual.trunk
        return (trunk.blocks[-1], "NTD") if hasattr(trunk, "blocks") else (trunk.stages[-1], "NCHW")
    transformer = model.visual.transformer if modality == "image" else getattr(model, "text", model).transformer
    return transformer.resblocks[-1], "NTD" if getattr(transformer, "batch_first", False) else "TND"


@contextlib.contextmanager
def nudged(module: torch.nn.Module, layout: str, position: int, delta: torch.Tensor):
    """While open, ``module``'s output has ``delta`` added to token ``position`` of every row."""

    def add(_module, _inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        first = first.clone()
        if layout == "NTD":
            first[:, position] += delta
        elif layout == "TND":
            first[position] += delta
        else:
            first.flatten(2)[:, :, position] += delta
        return (first, *output[1:]) if isinstance(output, tuple) else first

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def moving_tokens(name: str, modality: str, pictures) -> tuple[list[set[int]], int, object, object]:
    """Per row of the batch, the token positions whose last hidden state moves the library's embedding;
    the number of tokens; the backend and the batch."""
    model, backend, image_fn, text_fn = family(name)
    batch = backend.preprocess_images(pictures) if modality == "image" else backend.tokenize(TEXTS)
    embed = (lambda: image_fn(batch.pixel_values)) if modality == "image" else (lambda: text_fn(batch))
    module, layout = last_block(model, modality)
    with torch.no_grad():
        plain = embed()
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        try:
            embed()
        finally:
            handle.remove()
        shape = captured[0].shape
        tokens = shape[2] * shape[3] if layout == "NCHW" else shape[1] if layout == "NTD" else shape[0]
        width = shape[1] if layout == "NCHW" else shape[2]
        delta = torch.randn(width, generator=torch.Generator().manual_seed(0))
        moved: list[set[int]] = [set() for _ in range(len(batch))]
        for position in range(tokens):
            with nudged(module, layout, position, delta):
                change = (embed() - plain).norm(dim=-1) / plain.norm(dim=-1)
            for row in torch.nonzero(change > 1e-5).flatten().tolist():
                moved[row].add(position)
    return moved, tokens, backend, batch


CASES = [
    ("hf-clip", "image"),
    ("hf-clip", "text"),
    ("siglip", "image"),
    ("siglip", "text"),
    ("siglip-padding-mask", "text"),
    ("open_clip-vit", "image"),
    ("open_clip-vit", "text"),
    ("open_clip-vit-variants", "image"),
    ("open_clip-vit-variants", "text"),
    ("open_clip-resnet", "image"),
    ("open_clip-resnet", "text"),
    ("clip-vit", "image"),
    ("clip-vit", "text"),
    ("clip-resnet", "image"),
    ("metaclip2", "image"),
    ("metaclip2", "text"),
    ("siglip2", "image"),
    ("siglip2-3x5-padded", "image"),
    ("siglip2", "text"),
    ("timm-siglip-map", "image"),
    ("timm-gap-avg", "image"),
    ("timm-token-registers", "image"),
    ("timm-eva02-rope-token", "image"),
    ("timm-pe-rope-map", "image"),
    ("timm-convnext-stages", "image"),
    ("hf-bert-cls-last-mlp", "text"),
    ("hf-bert-cls-pooler", "text"),
    ("hf-roberta-mean", "text"),
    ("hf-xlm-roberta-mean-linear", "text"),
    ("hf-mt5-mean-mlp", "text"),
    ("hf-mt5-cls-linear", "text"),
    ("hf-nllb-cls-linear", "text"),
]


@pytest.mark.parametrize("name,modality", CASES)
def test_pooled_positions_are_what_the_head_reads(name, modality, pictures):
    moved, tokens, backend, batch = moving_tokens(name, modality, pictures)
    positions = backend.pooled_positions(modality, batch)
    if positions is None and modality == "text":  # a mean over the real tokens: each of them, no padding
        real = [set(torch.nonzero(row).flatten().tolist()) for row in batch.attention_mask]
        assert moved == real, (name, modality, moved, real)
    elif positions is None:  # the head reads every spatial token (and maybe the prefix tokens)
        prefix = backend.geometry.image_prefix_tokens
        grid = backend.geometry.patch_grid
        # the model's tokens; a library input may have more (SigLIP 2's masked padding patches)
        spatial = prefix + grid[0] * grid[1]
        for row in moved:
            assert set(range(prefix, spatial)) <= row <= set(range(spatial)), (name, modality, sorted(row))
    else:
        assert [{p} for p in positions.tolist()] == moved, (name, modality)


@pytest.mark.parametrize(
    "name,modality,default",
    [
        ("siglip", "text", "last real token"),
        ("siglip-padding-mask", "text", "last real token"),
        ("open_clip-vit-variants", "image", "class token"),
        ("open_clip-vit-variants", "text", "last real token"),
    ],
)
def test_the_old_default_rows_are_ignored_by_these_heads(name, modality, default, pictures):
    """The rows these methods read before (the interface's old default) never reach the embedding."""
    moved, _, _, batch = moving_tokens(name, modality, pictures)
    if default == "class token":
        old = [0] * len(batch)
    else:
        old = (batch.attention_mask.sum(1) - 1).tolist()
    assert all(o not in row for o, row in zip(old, moved)), (name, modality, old, moved)


def test_forced_pooling_moves_the_pooled_row_and_the_embedding_together(backend):
    """``pooling("text", "argmax")`` changes the head's token and ``pooled_positions`` as one, and
    is restored after; towers that cannot (bidirectional SigLIP) refuse with a one-line error."""
    from m2ib.backends import TextBatch
    from m2ib.errors import InputError

    ids = backend.tokenize(["a red circle and a blue star"]).input_ids[:, 1:-1]  # no start/end token
    texts = TextBatch(ids, torch.ones_like(ids))
    with torch.no_grad():
        own = backend.embed("text", texts)
        with backend.pooling("text", "argmax"):
            forced_rows = backend.pooled_positions("text", texts)
            forced = backend.embed("text", texts)
        model = backend.model
        states = model.text_model(input_ids=ids, attention_mask=texts.attention_mask).last_hidden_state
        expected = model.text_projection(states[torch.arange(len(texts)), ids.argmax(-1)])
    assert forced_rows.tolist() == ids.argmax(-1).tolist() != backend.pooled_positions("text", texts).tolist()
    torch.testing.assert_close(forced, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.embed("text", texts), own)  # restored
    _, siglip, _, _ = family("siglip")
    assert not siglip.can_pool("text", "argmax")
    with pytest.raises(InputError, match="cannot pool by 'argmax'"), siglip.pooling("text", "argmax"):
        pass


@pytest.mark.parametrize("name", ["hf-clip", "siglip", "open_clip-vit", "open_clip-vit-variants", "clip-vit"])
def test_cascade_parts_run_from_the_head_down(name):
    """Head first (its projection or probe), then each block from the top, then the embeddings."""
    model, backend, _, _ = family(name)
    for modality in ("image", "text"):
        parts = backend.cascade_parts(modality)
        n = backend.num_layers(modality)
        assert [label for label, _ in parts] == ["head", *[f"block {i}" for i in reversed(range(n))], "embeddings"]
        block, _ = last_block(model, modality)
        assert parts[1][1] == [block]
        head_params = {
            id(p) for obj in parts[0][1] for p in (obj.parameters() if isinstance(obj, torch.nn.Module) else [obj])
        }
        embedding_params = {
            id(p) for obj in parts[-1][1] for p in (obj.parameters() if isinstance(obj, torch.nn.Module) else [obj])
        }
        block_params = {id(p) for _, objs in parts[1:-1] for p in objs[0].parameters()}
        every = {id(p) for p in model.parameters()}
        assert head_params and embedding_params and not (head_params & block_params)
        assert head_params | block_params | embedding_params <= every


def test_resnet_towers_say_the_sanity_check_cannot_split_them():
    from m2ib.errors import InputError

    _, backend, _, _ = family("open_clip-resnet")
    with pytest.raises(InputError, match="does not know the parts of a ResNetTower"):
        backend.cascade_parts("image")
