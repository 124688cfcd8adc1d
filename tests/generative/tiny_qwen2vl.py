"""Random tiny Qwen2-VL / Qwen2.5-VL models and their processors, built offline (no download).

A 16 x 16 px image with 2 px patches is an 8 x 8 patch grid; the merger joins 2 x 2 patches into
one token: a 4 x 4 grid of 16 image tokens (min_pixels = max_pixels = 256 pin the processor's
``smart_resize`` to 16 x 16). The vision tower has ``depth`` blocks (0: patch embedding + merger
only, a patch-local tower); the language model is a 2-layer Qwen2 of width 32 with M-RoPE
(head dim 16, ``mrope_section`` [4, 2, 2]). A word-level tokenizer with Qwen's special tokens.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch

WORDS = "what is in the image a red blue green circle square star yes no left right top bottom user assistant".split()
SPECIAL = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
SIZE = 16  # px: the processor's resize target (smart_resize with min = max = SIZE * SIZE pixels)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS + list("?:.,\n"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[2:],
    )


@contextlib.contextmanager
def images_only() -> Iterator[None]:
    """Qwen2-VL's processors without their video processor, for the block. Their video processor
    needs torchvision, which this environment lacks; without it transformers cannot even build (or
    load) the processor, as it checks every sub-processor's class. Images need only the image
    processor and the tokenizer. With torchvision installed this does nothing."""
    import transformers as tf

    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    classes = (tf.Qwen2VLProcessor, tf.Qwen2_5_VLProcessor)
    saved = [c.__dict__.get("get_attributes") for c in classes]
    try:
        for c in classes:
            c.get_attributes = classmethod(lambda cls: ["image_processor", "tokenizer"])
        yield
    finally:
        for c, old in zip(classes, saved, strict=True):
            if old is None:
                del c.get_attributes
            else:
                c.get_attributes = old


def tiny_qwen2vl(
    version: str = "2", seed: int = 0, depth: int = 2, fullatt: tuple[int, ...] = (1,), pixels: int = SIZE * SIZE
):
    """(model, processor) of ``Qwen2VLForConditionalGeneration`` (``version="2"``) or
        ``Qwen2_5_VLForConditionalGeneration`` (``"2.5"``: window attention over 4 x 4 patches = 2 x 2
        tokens, full attention in the blocks ``fullatt``), random weights from ``seed``. The processor resizes
    every image to ``pixels`` pixels (a 16 x 24 image with ``pixels=384`` keeps its size: a 4 x 6 grid)."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        initializer_range=0.2,  # sharper attention than the default 0.02: positions matter more
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision = dict(depth=depth, num_heads=4, in_channels=3, patch_size=2, spatial_merge_size=2, temporal_patch_size=2)
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if version == "2":
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class, processor_class = tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    elif version == "2.5":
        vision.update(
            hidden_size=32, out_hidden_size=32, intermediate_size=37, window_size=8, fullatt_block_indexes=list(fullatt)
        )
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class, processor_class = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    else:
        raise ValueError(version)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    images = tf.Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=2, temporal_patch_size=2, merge_size=2
    )
    with images_only():
        processor = processor_class(image_processor=images, tokenizer=tokenizer)
    return model, processor
