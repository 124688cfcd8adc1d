"""OpenCLIP configs whose tokenizer is a Hugging Face one (SigLIP, SigLIP 2, multilingual SigLIP).

By name (``open_clip:ViT-B-16-SigLIP2@...``) the tokenizer is the config's ``hf_tokenizer_name``,
read from the Hugging Face cache (or downloaded when the hub answers) and wrapped exactly as
``open_clip.get_tokenizer`` wraps it (OpenCLIP's ``HFTokenizer``: its text cleaning, padding to
the context, truncation). Offline and not cached:

- with random weights (``@random`` or no tag), CLIP's BPE tokenizer stands in for it, announced
  on one line on stderr (maps from random weights mean nothing anyway; the vocabulary differs);
  only where CLIP's 49408 ids fit the text tower's vocabulary, else the one-line error;
- with named weights, one line saying how to get it, at once.

The tokens of an ``HFTokenizer`` (or a bare transformers tokenizer) are read here: the library's
own ids, real tokens = every id but the pad id, readable pieces from the transformers tokenizer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError, ModelNotAvailableError
from . import hub
from .base import TextBatch
from .hf_tokens import hf_readable

TOKENIZER_FILES = [
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "vocab*",
    "merges.txt",
    "spiece*",
    "config.json",
]
CLIP_VOCABULARY = 49408


def hub_tokenizer(oc: Any, arch: str, text_cfg: dict, random_weights: bool, name: str) -> Any:
    """OpenCLIP's ``HFTokenizer`` for ``arch`` from the cache (or the hub); offline and not cached,
    the announced stand-in (random weights only) or a one-line error."""
    repo = text_cfg["hf_tokenizer_name"]
    howto = (
        f"download it where there is internet (`hf download {repo} --include 'tokenizer*' "
        f"'special_tokens_map.json' '*.model'`, which fills the Hugging Face cache), or build the model with "
        f"open_clip and pass m2ib.load(model, tokenizer=open_clip.get_tokenizer('{arch}'))"
    )
    try:
        path = hub.hub_snapshot(repo, patterns=TOKENIZER_FILES, howto=howto)
    except ModelNotAvailableError as exc:
        vocabulary = int(text_cfg.get("vocab_size", CLIP_VOCABULARY))
        if not random_weights or vocabulary < CLIP_VOCABULARY:
            if random_weights:
                raise ModelNotAvailableError(
                    f"{exc} (no stand-in: CLIP's {CLIP_VOCABULARY} token ids do not fit this text tower's {vocabulary})"
                ) from None
            raise
        why = "HF_HUB_OFFLINE is set" if hub.hub_offline() else "the hub cannot be reached"
        print(
            f"m2ib: {name}: the weights are random and its tokenizer {repo} is not cached ({why}), so CLIP's "
            f"BPE tokenizer stands in for it (other tokens and ids than the real one's)",
            file=sys.stderr,
        )
        return oc.get_tokenizer("ViT-B-32")
    from open_clip.tokenizer import HFTokenizer

    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    try:
        return HFTokenizer(
            str(path),
            context_length=text_cfg.get("context_length", 77),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    except Exception as exc:  # e.g. sentencepiece missing for a .model tokenizer
        raise InputError(
            f"the tokenizer {repo} in {path} did not load ({str(exc).splitlines()[0][:120]}): "
            "pip install sentencepiece protobuf, or re-download it"
        ) from None


def hf_text_by_name(arch: str, text_cfg: dict) -> tuple[dict, Any]:
    """For a config whose text tower is a Hugging Face model (``hf_model_name``: BiomedCLIP's
    PubMedBERT, XLM-R, mT5, NLLB): the ``text_cfg`` that builds it from the local copy of its
    config (the cache, or the hub when it answers; never its weights: the CLIP checkpoint holds
    them, or they are random) and OpenCLIP's ``HFTokenizer`` from the same place."""
    from pathlib import Path

    from open_clip.tokenizer import HFTokenizer

    def local(repo: str) -> Path:
        if Path(repo).expanduser().is_dir():
            return Path(repo).expanduser()
        howto = (
            f"download it where there is internet (`hf download {repo} --include config.json 'tokenizer*' "
            f"'vocab*' 'special_tokens_map.json' '*.model'`, which fills the Hugging Face cache), or build "
            f"the model with open_clip and pass m2ib.load(model, tokenizer=open_clip.get_tokenizer('{arch}'))"
        )
        return hub.hub_snapshot(repo, patterns=TOKENIZER_FILES, howto=howto)

    model_path = local(text_cfg["hf_model_name"])
    tokenizer_repo = text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"]
    tokenizer_path = model_path if tokenizer_repo == text_cfg["hf_model_name"] else local(tokenizer_repo)
    try:
        tokenizer = HFTokenizer(
            str(tokenizer_path),
            context_length=text_cfg.get("context_length", 77),
            **dict(text_cfg.get("tokenizer_kwargs", {})),
        )
    except Exception as exc:  # e.g. sentencepiece missing for a .model tokenizer
        raise InputError(
            f"the tokenizer {tokenizer_repo} in {tokenizer_path} did not load "
            f"({str(exc).splitlines()[0][:120]}): pip install sentencepiece protobuf, or re-download it"
        ) from None
    return {**text_cfg, "hf_model_name": str(model_path), "hf_model_pretrained": False}, tokenizer


def transformers_tokenizer(tokenizer: Any) -> Any | None:
    """The transformers tokenizer of OpenCLIP's ``HFTokenizer`` (its ``.tokenizer``), a bare one
    as given, or None (CLIP's BPE tokenizers)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
        return inner
    return tokenizer if hasattr(tokenizer, "convert_ids_to_tokens") else None


def hf_library_ids(tokenizer: Any, texts: Sequence[str], context: int) -> torch.Tensor:
    """The ids OpenCLIP's tokenizer gives (an ``HFTokenizer`` is called as OpenCLIP calls it)."""
    inner = transformers_tokenizer(tokenizer)
    if inner is not None and inner is tokenizer:  # a bare transformers tokenizer: OpenCLIP's padding
        return inner(
            list(texts), return_tensors="pt", max_length=context, padding="max_length", truncation=True
        ).input_ids
    return torch.as_tensor(tokenizer(list(texts), context_length=context)).long()


def hf_text_batch(
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    texts: Sequence[str],
    device: torch.device,
) -> TextBatch:
    """A TextBatch of an HF tokenizer's ids: real tokens are every id but the pad id."""
    inner = transformers_tokenizer(tokenizer)
    if inner is None:
        raise InputError(
            f"tokenizer {type(tokenizer).__name__} is not a transformers tokenizer (none inside it either)"
        )
    input_ids = input_ids.long().cpu()
    if attention_mask is None:
        pad = inner.pad_token_id
        if pad is None:
            raise InputError(f"tokenizer {type(inner).__name__} has no pad token: pass attention_mask")
        attention_mask = (input_ids != pad).long()
    attention_mask = attention_mask.long().cpu()
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):  # maps read the real tokens as a prefix
        raise InputError(f"tokenizer {type(inner).__name__} pads on the left: set tokenizer.padding_side = 'right'")
    tokens, special, words = hf_readable(inner, input_ids, attention_mask)
    if not texts:
        texts = [
            inner.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())
        ]
    return TextBatch(input_ids.to(device), attention_mask.to(device), tuple(texts), tokens, special, words)


__all__ = ["hf_library_ids", "hf_text_batch", "hf_text_by_name", "hub_tokenizer", "transformers_tokenizer"]
