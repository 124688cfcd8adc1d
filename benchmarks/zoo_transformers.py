"""The transformers dual encoders m2ib runs (CLIP, SigLIP, SigLIP 2 NaFlex, MetaCLIP 2), for the zoo table:
tiny copies from configs at unit-scale random weights, checked as the OpenCLIP rows are (parity at
every layer against ``get_image_features`` / ``get_text_features``, M2IB, Chefer et al.).

    python benchmarks/zoo_transformers.py
"""

from __future__ import annotations

import sys

import torch
from zoo_coverage import TEXTS, TOL, Row, parity, spread_weights, table

import m2ib

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def _patches(pixels: torch.Tensor, patch: int):
    """SigLIP 2's processor layout, by transformers' own function."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    patches = torch.stack([torch.from_numpy(convert_image_to_patches(p.numpy(), patch)) for p in pixels])
    shapes = torch.tensor([[pixels.shape[-2] // patch, pixels.shape[-1] // patch]] * len(pixels))
    return dict(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
        spatial_shapes=shapes,
    )


def families(tok):
    import transformers as tr

    text = dict(
        SMALL,
        vocab_size=len(tok),
        max_position_embeddings=24,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    vision = dict(SMALL, image_size=32, patch_size=8)
    return {
        "CLIPModel": tr.CLIPModel(tr.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)),
        "SiglipModel": tr.SiglipModel(tr.SiglipConfig(text_config=text, vision_config=vision)),
        "Siglip2Model": tr.Siglip2Model(
            tr.Siglip2Config(text_config=text, vision_config=dict(SMALL, num_patches=16, patch_size=8))
        ),
        "MetaClip2Model": tr.MetaClip2Model(
            tr.MetaClip2Config(text_config=text, vision_config=vision, projection_dim=16)
        ),
    }


def check(name: str, model: torch.nn.Module, tok, pictures) -> Row:
    row = Row(f"transformers {name}", image_tower=name, text_tower=name)
    torch.manual_seed(0)
    spread_weights(model.eval())
    backend = m2ib.load(model, tokenizer=tok)
    images, texts = backend.preprocess_images(pictures), backend.tokenize(TEXTS)
    extra = _patches(images.pixel_values, 8) if name == "Siglip2Model" else dict(pixel_values=images.pixel_values)
    with torch.no_grad():
        image_ref = model.get_image_features(**extra)
        text_ref = model.get_text_features(
            input_ids=texts.input_ids,
            attention_mask=texts.attention_mask if name in ("CLIPModel", "MetaClip2Model") else None,
        )
        row.image_parity = parity(backend, "image", images, getattr(image_ref, "pooler_output", image_ref))
        row.text_parity = parity(backend, "text", texts, getattr(text_ref, "pooler_output", text_ref))
    m2ib.explain(backend, pictures[0], TEXTS[0], method="m2ib", steps=2, samples=2)
    row.m2ib = True
    m2ib.explain(backend, pictures[0], TEXTS[0], method="chefer")
    row.attention = "chefer"
    if not row.covered:
        row.reason = f"parity {max(row.image_parity, row.text_parity):.1e} > {TOL:.0e}"
    return row


def run() -> list[Row]:
    from m2ib.inputs import load_image
    from m2ib.models import DEMO_WORDS
    from m2ib.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(DEMO_WORDS)
    g = torch.Generator().manual_seed(0)
    pictures = [load_image(torch.rand(3, 72, 96, generator=g))[0]]
    return [check(name, model, tok, pictures) for name, model in families(tok).items()]


if __name__ == "__main__":
    rows = run()
    print(table(rows) + f"\n\ncovered: {sum(r.covered for r in rows)} of {len(rows)} transformers families")
    sys.exit(0)
