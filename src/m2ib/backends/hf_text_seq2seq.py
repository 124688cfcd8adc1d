"""The encoder of a Hugging Face encoder-decoder model as an OpenCLIP text tower (``HFTextEncoder``
keeps ``transformer.encoder`` of such a model): mT5 (``mt5-base-ViT-B-32``, ``mt5-xl-ViT-H-14``)
and NLLB / M2M100 (``nllb-clip-base``, ``nllb-clip-large`` and their ``-siglip`` variants).

Both stacks are pre-norm (``h + attention(norm(h))``, then ``h + mlp(norm(h))``), so each layer is
a :class:`~.blocks.Block` view and runs through :func:`~.blocks.block_forward` (recorded attention
and the last-block shortcut included); both end in a norm before the pooler.

- T5 / mT5 (``T5Stack``): RMSNorm layers, no scaling of the query-key product, no absolute
  positions; block 0 computes a relative position bias [1, heads, T, T] that every block adds to
  its scores. The bias is folded into the additive attention mask once, so every block gets it.
- M2M100 / NLLB (``M2M100Encoder``): token embeddings scaled by sqrt(width) plus sinusoidal
  positions counted over the non-padding tokens (the library's own modules compute both).

The head is the last norm, OpenCLIP's pooler and ``proj``, as in ``HFTextEncoder.forward``.
``cls_pooler`` reads position 0 (these encoders return no pooler output; NLLB's position 0 is the
language code token); ``mean_pooler`` reads every real token. The libraries clamp activations near
the float16 limit in float16 models only; that clamp is not repeated here. Also here: which OpenCLIP
poolers m2ib runs (:func:`openclip_pooler`), shared with the BERT-layout towers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError
from .base import TextBatch
from .blocks import Block, text_mask
from .towers import TransformerTower, present

# The encoders (T5, M2M100, ...) come from untyped OpenCLIP HF text towers whatever their class: typed Any.
CLASS_POOLERS = ("cls_pooler", "cls_last_hidden_state_pooler")
EVERY_TOKEN_POOLERS = ("mean_pooler",)
# Relative positions set no length limit: m2ib reads what OpenCLIP's HFTokenizer gives these towers
# by default (its DEFAULT_CONTEXT_LENGTH, the length the mT5 CLIPs were trained at).
OPENCLIP_CONTEXT = 77


def _snake(name: str) -> str:  # OpenCLIP's pooler names are its class names in snake case
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def openclip_pooler(encoder: Any) -> str:
    """The name of an ``HFTextEncoder``'s pooler, or a one-line refusal for those m2ib cannot run."""
    pooler = _snake(type(encoder.pooler).__name__)
    if pooler == "max_pooler":
        raise InputError(
            "OpenCLIP's max_pooler is not supported: OpenCLIP's own forward fails with it "
            "(masked_fill with a long mask); use a model with the cls or mean pooler"
        )
    if pooler not in CLASS_POOLERS + EVERY_TOKEN_POOLERS:
        known = ", ".join(CLASS_POOLERS + EVERY_TOKEN_POOLERS)
        raise InputError(f"OpenCLIP pooler {pooler!r} is not supported ({known})")
    return pooler


def real_tokens(batch: TextBatch, pad_id: int, copies: int, device: torch.device) -> torch.Tensor:
    """OpenCLIP's attention mask for an HF text tower: every id that is not the pad id, [N * copies, T]."""
    return (batch.input_ids.to(device) != pad_id).long().repeat_interleave(copies, 0)


def t5_block(block: Any) -> Block:
    """A T5 / mT5 encoder block (``layer[0]``: RMSNorm + SelfAttention q, k, v, o; ``layer[-1]``:
    RMSNorm + DenseReluDense); unscaled scores (the bias comes in through the mask)."""
    attention, feed_forward = block.layer[0], block.layer[-1]
    attn = attention.SelfAttention
    if len(block.layer) != 2 or attn.inner_dim != attn.d_model:
        raise InputError(
            f"T5 block with {len(block.layer)} sublayers and attention width {attn.inner_dim} "
            f"(model width {attn.d_model}) is not supported (encoder blocks with heads * d_kv = "
            "d_model are)"
        )
    return Block(
        norm1=attention.layer_norm,
        q=attn.q,
        k=attn.k,
        v=attn.v,
        out=attn.o,
        norm2=feed_forward.layer_norm,
        mlp=feed_forward.DenseReluDense,
        heads=attn.n_heads,
        scale=1.0,
    )


def m2m100_block(layer: Any) -> Block:
    """An M2M100 / NLLB encoder layer (``self_attn_layer_norm``, ``self_attn``, ``final_layer_norm``,
    ``fc1`` -> activation -> ``fc2``)."""
    attn = layer.self_attn

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return layer.fc2(layer.activation_fn(layer.fc1(x)))

    return Block(
        norm1=layer.self_attn_layer_norm,
        q=attn.q_proj,
        k=attn.k_proj,
        v=attn.v_proj,
        out=attn.out_proj,
        norm2=layer.final_layer_norm,
        mlp=mlp,
        heads=attn.num_heads,
        scale=attn.scaling,
    )


class Seq2SeqTextTower(TransformerTower):
    """The pre-norm encoder stack of an encoder-decoder model inside an ``HFTextEncoder``."""

    def __init__(
        self,
        encoder: Any,
        blocks: list[Block],
        layers: list[Any],
        final_norm: Any,
        positions_limit: int,
        bias: Callable[[int, torch.device], torch.Tensor] | None = None,
    ):
        super().__init__(blocks)
        self.encoder, self.transformer, self.layers = encoder, encoder.transformer, layers
        self.pooler = openclip_pooler(encoder)
        self.pad_id = encoder.config.pad_token_id
        self.final_norm, self.positions_limit, self.bias = final_norm, positions_limit, bias

    def valid(self, batch: TextBatch, copies: int, device: torch.device) -> torch.Tensor:
        return real_tokens(batch, self.pad_id, copies, device)

    def embed(self, batch: TextBatch) -> torch.Tensor:
        ids = batch.input_ids.to(self.transformer.embed_tokens.weight.device)
        hidden = self.transformer.embed_tokens(ids)
        positions = getattr(self.transformer, "embed_positions", None)  # NLLB: sinusoidal, from the ids
        return hidden if positions is None else hidden + positions(ids, hidden).to(hidden.device)

    def mask(self, batch, copies, t, dtype, device):
        mask = text_mask(self.valid(batch, copies, device), dtype, causal=False)
        return mask if self.bias is None else mask + self.bias(t, device).to(dtype)  # [N, heads, T, T]

    def suffix(self, hidden, layer, batch, copies, records):
        if self.pooler in EVERY_TOKEN_POOLERS:
            from transformers.modeling_outputs import BaseModelOutput

            hidden = self.run(hidden, layer + 1, self.num_layers, batch, copies, records)
            states = BaseModelOutput(last_hidden_state=self.final_norm(hidden))
            return self.encoder.proj(self.encoder.pooler(states, self.valid(batch, copies, hidden.device)))
        return super().suffix(hidden, layer, batch, copies, records)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The class token [N, D] through the last norm, OpenCLIP's pooler (it reads position 0) and ``proj``."""
        from transformers.modeling_outputs import BaseModelOutput

        states = BaseModelOutput(last_hidden_state=self.final_norm(pooled)[:, None])
        return self.encoder.proj(self.encoder.pooler(states, None))

    def pooled_positions(self, batch, copies, device):
        if self.pooler in EVERY_TOKEN_POOLERS:
            return None
        return torch.zeros(len(batch) * copies, dtype=torch.long, device=device)

    def parts(self):
        return present(self.final_norm, self.encoder.proj), list(self.layers), [self.transformer.embed_tokens]


def seq2seq_text_tower(encoder: Any) -> Seq2SeqTextTower | None:
    """The tower for an ``HFTextEncoder`` over a T5/mT5 or M2M100/NLLB encoder stack; None for other models
    (the model type decides: BART is post-norm, UMT5 has a bias per block)."""
    transformer, model_type = encoder.transformer, encoder.config.model_type
    if model_type in ("t5", "mt5"):
        blocks = list(transformer.block)
        if transformer.is_decoder or any(b.layer[0].SelfAttention.has_relative_attention_bias for b in blocks[1:]):
            raise InputError(
                f"{model_type} stack with a decoder or a position bias per block is not supported "
                "(encoder stacks whose block 0 computes the bias are)"
            )
        first = blocks[0].layer[0].SelfAttention

        def bias(t: int, device: torch.device) -> torch.Tensor:  # block 0's, shared by every block
            return first.compute_bias(t, t, device=device)

        return Seq2SeqTextTower(
            encoder, [t5_block(b) for b in blocks], blocks, transformer.final_layer_norm, OPENCLIP_CONTEXT, bias
        )
    if model_type == "m2m_100":
        layers = list(transformer.layers)
        return Seq2SeqTextTower(
            encoder,
            [m2m100_block(layer) for layer in layers],
            layers,
            transformer.layer_norm,
            encoder.config.max_position_embeddings,
        )
    return None


__all__ = [
    "CLASS_POOLERS",
    "EVERY_TOKEN_POOLERS",
    "Seq2SeqTextTower",
    "m2m100_block",
    "openclip_pooler",
    "real_tokens",
    "seq2seq_text_tower",
    "t5_block",
]
