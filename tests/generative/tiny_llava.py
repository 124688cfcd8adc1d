"""A random tiny LlavaForConditionalGeneration and its processor, built offline (no download).

The sizes follow transformers' own LLaVA test config: a CLIP vision tower on 8 px images with
2 px patches (a 4x4 grid, 16 image tokens), a 2-layer Llama of width 32, a word-level tokenizer.
"""

from __future__ import annotations

import torch

WORDS = "what is in the image a red blue green circle square star yes no left right top bottom".split()
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS + list("?:.,"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )


def tiny_llava(
    seed: int = 0, vision_feature_layer: int | list[int] = -1, strategy: str = "default", image_size: int = 8
):
    """(model, processor): random weights from ``seed``; ``vision_feature_layer=[0]`` makes the
    projector's input the patch embeddings (patch-local: a pixel reaches one token only)."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=2,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
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
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=2,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    return model, processor
