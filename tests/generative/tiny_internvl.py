"""A random tiny InternVLForConditionalGeneration and its InternVLProcessor, built offline (no download).

An InternVL vision tower on 16 px tiles with 2 px patches (8 x 8 patches + a class token),
pixel shuffle by ``downsample_ratio`` 0.5 (4 x 4 = 16 image tokens per tile), the projector
(LayerNorm, Linear, GELU, Linear) into a 2-layer Qwen2 of width 32. The image processor is
``GotOcr2ImageProcessorPil`` with 16 px tiles; the processor tiles (``crop_to_patches``, up to
``max_patches`` tiles, plus a 16 px thumbnail of the whole image when there is more than one tile):
a 32 x 48 image becomes 2 rows x 3 columns of tiles and the thumbnail, 7 x 16 = 112 image tokens.
The word-level tokenizer carries InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and ``<video>``.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch

WORDS = "what is in the image a red blue green circle square star yes no left right top bottom user assistant".split()
SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
TILE = 16  # px: the image processor's tile (and thumbnail) size
PROMPT = "<|im_start|>user\n<IMG_CONTEXT>\nwhat is in the image ?<|im_end|>\n<|im_start|>assistant\n"


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS + list("?:.,\n"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens={  # the names InternVLProcessor reads off its tokenizer
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    tokenizer.add_tokens(SPECIAL[2:], special_tokens=True)  # kept whole by the pre-tokenizer
    return tokenizer


@contextlib.contextmanager
def images_only() -> Iterator[None]:
    """InternVLProcessor without its video processor, for the block (as tiny_qwen2vl's): the video
    processor needs torchvision, which this environment lacks, and transformers checks every
    sub-processor when it builds or loads a processor. With torchvision installed this does nothing."""
    import transformers as tf

    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    cls = tf.InternVLProcessor
    saved = cls.__dict__.get("get_attributes")
    try:
        cls.get_attributes = classmethod(lambda c: ["image_processor", "tokenizer"])
        yield
    finally:
        if saved is None:
            del cls.get_attributes
        else:
            cls.get_attributes = saved


def tiny_internvl(seed: int = 0, vision_layers: int = 2, max_patches: int = 6):
    """(model, processor): random weights from ``seed``; ``vision_layers=0`` makes the pixel shuffle's
    input the patch embeddings (patch-local: a pixel reaches one image token only); ``max_patches=1``
    turns tiling off (one 16 px image, 16 tokens)."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    vision = tf.InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=TILE,
        patch_size=2,
    )
    text = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = tf.InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=(TILE // 2 // 2) ** 2,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = tf.InternVLForConditionalGeneration(config).eval()
    images = tf.GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=max_patches
    )
    with images_only():
        processor = tf.InternVLProcessor(image_processor=images, tokenizer=tokenizer, image_seq_length=16)
    return model, processor
