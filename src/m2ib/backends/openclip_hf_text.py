"""OpenCLIP models whose text tower is a Hugging Face encoder (``open_clip.hf_model.HFTextEncoder``):
BERT (BiomedCLIP's PubMedBERT), RoBERTa and XLM-RoBERTa (``roberta-ViT-B-32``,
``xlm-roberta-base-ViT-B-32``), with OpenCLIP's poolers and ``proj``; the encoders of mT5 and NLLB
are pre-norm and run in :mod:`.hf_text_seq2seq` (:func:`hf_text_tower` picks).

BERT-style layers are post-norm (``LayerNorm(h + attention(h))``, then ``LayerNorm(h + mlp(h))``),
so they do not fit :class:`~.blocks.Block` (a pre-norm view: the residual is added after the
sublayer, never normalised). :func:`bert_layer_forward` runs one layer through the library's own
modules instead, with the attention written out so that it can be recorded.

The head is OpenCLIP's own pooler module called on the last hidden states (``cls_pooler``, also
through the transformer's ``pooler`` when the model has one; ``cls_last_hidden_state_pooler``,
``mean_pooler``) followed by ``proj``. The class-token poolers read position 0
(``pooled_positions``); the mean reads every real token (None). As in ``HFTextEncoder.forward``,
the attention mask is ``input_ids != pad_token_id``. Texts are padded to the longest in the batch
(padding keys are masked, so the class and mean poolers give the same embedding as at OpenCLIP's
fixed length). OpenCLIP's ``max_pooler`` is refused: the library's own forward fails with it
(``masked_fill`` of a long mask), and it would fill the real tokens, not the padding, with -inf.

Not handled (one-line errors): other encoder-decoder towers, BERT relative position embeddings,
and CoCa models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .base import AttentionRecord, Modality, TextBatch
from .blocks import text_mask
from .hf_text_seq2seq import EVERY_TOKEN_POOLERS, openclip_pooler, real_tokens, seq2seq_text_tower
from .hf_tokens import hf_encode, hf_readable
from .openclip_visual import image_tower, preprocessing_of
from .registry import Family, module_names, register
from .towers import Tower, TowersBackend, present


# An OpenCLIP HF text tower wraps whichever transformers encoder its config names (BERT, RoBERTa, T5, ...),
# reached through untyped OpenCLIP modules: the encoders and layers adapted here are typed Any.
def is_hf_text_encoder(module: Any) -> bool:
    return type(module).__name__ == "HFTextEncoder" and hasattr(module, "transformer")


def bert_layer_forward(
    layer: Any, hidden: torch.Tensor, mask: torch.Tensor | None, records: list[AttentionRecord] | None = None
) -> torch.Tensor:
    """One post-norm BERT/RoBERTa layer (eval: dropout is off); ``mask`` additive [N, 1, T, T]."""
    attn, out = layer.attention.self, layer.attention.output
    n, t, width = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(n, t, heads, size).transpose(1, 2)

    query, key, value = split(attn.query(hidden)), split(attn.key(hidden)), split(attn.value(hidden))
    scores = (query @ key.transpose(-1, -2)) * size**-0.5
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    output = out.dense((probs @ value).transpose(1, 2).reshape(n, t, heads * size))
    attended = out.LayerNorm(output + hidden)
    result = layer.output(layer.intermediate(attended), attended)  # LayerNorm(dense(act(...)) + attended)
    if records is not None:
        records.append(AttentionRecord(probs, query, key, value, output, hidden=result))
    return result


class HFTextTower(Tower):
    """An ``HFTextEncoder`` with a BERT-layout encoder (``embeddings``, ``encoder.layer``)."""

    def __init__(self, encoder: Any):
        transformer = encoder.transformer
        config = encoder.config
        layers = getattr(getattr(transformer, "encoder", None), "layer", None)
        if getattr(config, "is_encoder_decoder", False) or layers is None or not hasattr(transformer, "embeddings"):
            raise InputError(
                f"Hugging Face text tower {type(transformer).__name__} ({config.model_type}) is not "
                "supported (BERT, RoBERTa, XLM-RoBERTa, T5/mT5 and M2M100/NLLB encoders are)"
            )
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise InputError(
                f"Hugging Face text towers with {config.position_embedding_type} position embeddings "
                "are not supported yet"
            )
        for layer in layers:
            if not hasattr(getattr(layer.attention, "self", None), "query") or getattr(layer, "crossattention", None):
                raise InputError(
                    f"Hugging Face text layer {type(layer).__name__} is not supported "
                    "(BERT-layout self-attention layers are)"
                )
        self.pooler = openclip_pooler(encoder)
        self.encoder, self.transformer, self.layers = encoder, transformer, list(layers)
        self.pad_id = config.pad_token_id

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def records_attention(self) -> bool:
        return True

    @property
    def positions_limit(self) -> int:
        """Tokens the position embedding has room for (RoBERTa's positions start after its padding index)."""
        limit = self.encoder.config.max_position_embeddings
        padding_idx = getattr(self.transformer.embeddings, "padding_idx", None)
        return limit - (padding_idx + 1) if padding_idx is not None else limit

    def valid(self, batch: TextBatch, copies: int, device: torch.device) -> torch.Tensor:
        """OpenCLIP's attention mask: every id that is not the pad id."""
        return real_tokens(batch, self.pad_id, copies, device)

    def embed(self, batch: TextBatch) -> torch.Tensor:
        ids = batch.input_ids.to(self.transformer.embeddings.word_embeddings.weight.device)
        return self.transformer.embeddings(input_ids=ids)

    def run(self, hidden, start, stop, batch, copies, records):
        if start >= stop:
            return hidden
        mask = text_mask(self.valid(batch, copies, hidden.device), hidden.dtype, causal=False)
        for layer in self.layers[start:stop]:
            hidden = bert_layer_forward(layer, hidden, mask, records)
        return hidden

    def suffix(self, hidden, layer, batch, copies, records):
        hidden = self.run(hidden, layer + 1, self.num_layers, batch, copies, records)
        return self.head(hidden, self.valid(batch, copies, hidden.device))

    def head(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """OpenCLIP's pooler on the last hidden states, then ``proj``."""
        from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

        pooler = getattr(self.transformer, "pooler", None)
        if self.pooler == "cls_pooler" and pooler is not None and self.encoder.pooler.use_pooler_output:
            states: BaseModelOutput | BaseModelOutputWithPooling = BaseModelOutputWithPooling(
                last_hidden_state=hidden, pooler_output=pooler(hidden)
            )
        else:
            states = BaseModelOutput(last_hidden_state=hidden)
        return self.encoder.proj(self.encoder.pooler(states, valid))

    def pooled_positions(self, batch, copies, device):
        if self.pooler in EVERY_TOKEN_POOLERS:
            return None
        return torch.zeros(len(batch) * copies, dtype=torch.long, device=device)

    def parts(self):
        head = present(getattr(self.transformer, "pooler", None), self.encoder.proj)
        return head, list(self.layers), [self.transformer.embeddings]


def hf_text_tower(encoder: Any) -> Tower:
    """The tower for an ``HFTextEncoder``: a pre-norm encoder-decoder stack (mT5, NLLB) or a BERT-layout encoder."""
    return seq2seq_text_tower(encoder) or HFTextTower(encoder)


def _transformers_tokenizer(tokenizer: Any) -> Any:
    """A transformers tokenizer, also from inside OpenCLIP's ``HFTokenizer`` (its ``.tokenizer``)."""
    inner = getattr(tokenizer, "tokenizer", None)
    tokenizer = inner if inner is not None and hasattr(inner, "convert_ids_to_tokens") else tokenizer
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise InputError(
            f"OpenCLIP models with a Hugging Face text tower need its transformers tokenizer: pass "
            f"tokenizer= (got {type(tokenizer).__name__})"
        )
    return tokenizer


@dataclass
class OpenCLIPHFTextBackend(TowersBackend):
    """An OpenCLIP ``CustomTextCLIP`` whose ``text`` is an ``HFTextEncoder``."""

    def build_towers(self) -> dict[Modality, Tower]:
        model: Any = self.model  # an open_clip CustomTextCLIP: open_clip ships no types
        self.tokenizer = _transformers_tokenizer(self.tokenizer)
        if self.preprocessing is None:
            self.preprocessing = preprocessing_of(model)
        return {"image": image_tower(model.visual), "text": hf_text_tower(model.text)}

    @property
    def context_length(self) -> int:
        limit = self.towers["text"].positions_limit
        return min(limit, getattr(self.tokenizer, "model_max_length", limit) or limit)

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        enc = hf_encode(self.tokenizer, texts, self.context_length, padding="longest")
        return self.text_batch(enc["input_ids"], None, texts)

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        input_ids = input_ids.long().cpu()
        if attention_mask is None:  # what the tower reads: every id but the pad id
            attention_mask = (input_ids != self.towers["text"].pad_id).long()
        attention_mask = attention_mask.long().cpu()
        tokens, special, words = hf_readable(self.tokenizer, input_ids, attention_mask)
        if not texts:
            texts = [
                self.tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
                for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())
            ]
        return TextBatch(
            input_ids.to(self.device), attention_mask.to(self.device), tuple(texts), tokens, special, words
        )


def has_hf_text_tower(model: torch.nn.Module) -> bool:
    return is_hf_text_encoder(getattr(model, "text", None))


def _is_open_clip_hf_text_model(model: torch.nn.Module) -> bool:
    return any(m.startswith("open_clip.") for m in module_names(model)) and has_hf_text_tower(model)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> OpenCLIPHFTextBackend:
    return OpenCLIPHFTextBackend(model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer)


register(
    Family(
        name="OpenCLIP HF text",
        supports="open_clip CustomTextCLIP with a Hugging Face text tower",
        recognises=_is_open_clip_hf_text_model,
        wrap=_wrap,
    )
)

__all__ = [
    "HFTextTower",
    "OpenCLIPHFTextBackend",
    "bert_layer_forward",
    "has_hf_text_tower",
    "hf_text_tower",
    "is_hf_text_encoder",
]
