"""A random tiny LlavaNextForConditionalGeneration or LlavaOnevisionForConditionalGeneration and its
processor, built offline (no download).

Tiles of 8 px with 2 px patches (4 x 4 = 16 tokens a tile; NeXT's CLIP tower adds a class token that
the ``default`` strategy drops, OneVision's SigLIP tower has none and uses ``full``), a 2-layer Llama of
width 32, the word-level tokenizer of ``tiny_llava`` (with ``<video>`` for OneVision). The grid
pinpoints are 1 x 2, 2 x 1, 2 x 2, 1 x 3 and 3 x 1 tiles: an 8 x 48 (wide) image is cut as 1 x 3
tiles with rows of padding, a 48 x 8 (tall) one as 3 x 1 with columns of padding.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
from tiny_llava import tiny_tokenizer

TILE = 8
PINPOINTS = [[8, 16], [16, 8], [16, 16], [8, 24], [24, 8]]


@contextlib.contextmanager
def images_only(cls) -> Iterator[None]:
    """``cls`` (a processor) without its video processor, for the block: the video processor needs
    torchvision, which this environment lacks (as tiny_internvl's). With torchvision installed this does nothing."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    saved = cls.__dict__.get("get_attributes")
    try:
        cls.get_attributes = classmethod(lambda c: ["image_processor", "tokenizer"])
        yield
    finally:
        if saved is None:
            del cls.get_attributes
        else:
            cls.get_attributes = saved


def text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def tiny_llava_next(seed: int = 0, patch_local: bool = False):
    """(model, processor) of LLaVA-NeXT; ``patch_local`` makes the projector's input the patch embeddings
    (``vision_feature_layer=[0]``; a plain 0 reads as "none"): a pixel reaches one token of its tile only."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    vision = tf.CLIPVisionConfig(
        image_size=TILE,
        patch_size=2,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    )
    config = tf.LlavaNextConfig(
        vision_config=vision,
        text_config=text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=[0] if patch_local else -1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=PINPOINTS,
    )
    torch.manual_seed(seed)
    model = tf.LlavaNextForConditionalGeneration(config).eval()
    images = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = tf.LlavaNextProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=2,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_llava_onevision(seed: int = 0, patch_local: bool = False, aspect: str = "anyres_max_9", tile: int = TILE):
    """(model, processor) of LLaVA-OneVision; ``aspect="anyres_max_1"`` makes the model shrink the
    un-padded tile grid of any image of more than ~1.2 tiles (bilinear), as ``anyres_max_9`` does past 9;
    ``tile=9`` gives tiles whose last pixel row and column no patch reads (as SigLIP-384/14's last 6)."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<video>"], special_tokens=True)
    vision = tf.SiglipVisionConfig(
        image_size=tile,
        patch_size=2,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    pinpoints = [[tile * r // TILE, tile * c // TILE] for r, c in PINPOINTS]
    config = tf.LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=text_config(tokenizer).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=[0] if patch_local else -1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=aspect,
    )
    torch.manual_seed(seed)
    model = tf.LlavaOnevisionForConditionalGeneration(config).eval()
    images = tf.LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    with images_only(tf.LlavaOnevisionProcessor):
        processor = tf.LlavaOnevisionProcessor(
            image_processor=images,
            tokenizer=tokenizer,
            num_image_tokens=(tile // 2) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio=aspect,
        )
    return model, processor
