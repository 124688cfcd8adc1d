"""A random tiny Idefics3ForConditionalGeneration (or SmolVLMForConditionalGeneration) and an
Idefics3Processor, built offline (no download).

A SigLIP-style (Idefics3) vision tower on 16 px tiles with 2 px patches (8x8 patches), pixel shuffle
by 2 (4x4 = 16 image tokens per tile), a 2-layer Llama of width 32, the word-level tokenizer of
``tiny_llava`` with Idefics3's ``<fake_token_around_image>``, ``<global-img>`` and ``<row_r_col_c>``
tags added. With ``split=True`` an image is resized to a longest edge of 48 px and cut into 16 px
tiles (a 32 x 48 image: 2 rows x 3 columns) plus the global 16 px image; with ``split=False`` it is
resized to one 16 px image.
"""

from __future__ import annotations

import torch
from tiny_llava import tiny_tokenizer

TILE = 16


def tiny_idefics3(seed: int = 0, vision_layers: int = 2, split: bool = False, smolvlm: bool = False):
    """(model, processor): random weights from ``seed``; ``vision_layers=0`` makes the connector's
    input the patch embeddings (patch-local: a pixel reaches one pixel-shuffled token only)."""
    import transformers
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig, LlamaConfig

    tokenizer = tiny_tokenizer()
    tags = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tags += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer.add_tokens(tags, special_tokens=True)
    images = Idefics3ImageProcessorPil(
        do_image_splitting=split,
        size={"longest_edge": 3 * TILE},
        max_image_size={"longest_edge": TILE},
    )
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=(TILE // 2 // 2) ** 2)
    vision = Idefics3VisionConfig(
        image_size=TILE,
        patch_size=2,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    name = "SmolVLM" if smolvlm else "Idefics3"
    config = getattr(transformers, f"{name}Config")(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=2,
        image_token_id=processor.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{name}ForConditionalGeneration")(config).eval()
    return model, processor
