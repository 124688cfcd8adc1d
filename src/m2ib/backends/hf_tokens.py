"""transformers tokenizers on user texts, shared by every family that reads one (CLIP, MetaCLIP 2,
SigLIP, OpenCLIP's Hugging Face text towers): encoding with m2ib's rules, and the readable tokens."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .tokens import readable_tokens, short, word_ids


def hf_encode(tokenizer: Any, texts: Sequence[str], limit: int, padding: bool | str) -> dict:
    """A transformers tokenizer on user texts: special-token strings typed in a text stay text, and
    one warning per text that is cut to the model's ``limit`` tokens (from m2ib, not the tokenizer)."""
    texts = list(texts)
    full = tokenizer(texts, add_special_tokens=True, split_special_tokens=True, verbose=False)["input_ids"]
    for text, ids in zip(texts, full):
        if len(ids) > limit:
            warnings.warn(
                f"text {short(text)!r} has {len(ids)} tokens but the model reads {limit}: "
                f"the last {len(ids) - limit} tokens were dropped",
                stacklevel=4,
            )
    return tokenizer(
        texts,
        padding=padding,
        truncation=True,
        max_length=limit,
        return_tensors="pt",
        return_attention_mask=True,
        split_special_tokens=True,
    )


def hf_readable(
    tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per row of real tokens: readable tokens, start/end positions and word indices."""
    tokens, special, words = [], [], []
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        ids = [i for i, m in zip(ids, mask) if m]
        where = tuple(j for j, i in enumerate(ids) if i in specials)
        pieces = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]
        tokens.append(readable_tokens(pieces, where) if tokenizer is not None else tuple(pieces))
        special.append(where)
        words.append(word_ids(pieces, where))
    return tuple(tokens), tuple(special), tuple(words)
