"""A random tiny PaliGemmaForConditionalGeneration and its processor, built offline (no download).

A SigLIP vision tower on 8 px images with 2 px patches (a 4x4 grid, 16 image tokens), a 2-layer
Gemma of width 32 (bidirectional over the prefix, as PaliGemma's config sets it), the word-level
tokenizer of ``tiny_llava`` (the processor adds PaliGemma's ``<loc>``/``<seg>`` tokens to it).
"""

from __future__ import annotations

import torch
from tiny_llava import tiny_tokenizer


def tiny_paligemma(seed: int = 0, vision_layers: int = 2, image_size: int = 8, gemma2: bool = False):
    """(model, processor): random weights from ``seed``; ``vision_layers=0`` makes the projector's
    input the patch embeddings (patch-local: a pixel reaches one token only); ``gemma2``: PaliGemma 2's
    language model (Gemma 2: logit soft-capping, a sliding window of 8 tokens on every other layer)."""
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tokenizer = tiny_tokenizer()
    images = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    images.image_seq_length = (image_size // 2) ** 2
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)  # adds <loc>/<seg> tokens
    vision = SiglipVisionConfig(
        image_size=image_size,
        patch_size=2,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        vision_use_head=False,
    )
    text = (Gemma2Config if gemma2 else GemmaConfig)(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **({"sliding_window": 8, "final_logit_softcapping": 3.0} if gemma2 else {}),
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=32,
        hidden_size=32,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    return model, processor
