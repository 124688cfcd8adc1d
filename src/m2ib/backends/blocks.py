"""Transformer blocks written out once for every family: the forward, masks, recorded attention.

A :class:`Block` views one pre-norm block through its parts, whatever library made it
(:func:`openai_block` for OpenAI ``clip`` / OpenCLIP ``ResidualAttentionBlock``, :func:`hf_block`
for transformers CLIP/SigLIP layers). :func:`block_forward` runs it on every token (recording
its attention when asked); :func:`block_forward_at` runs it for one token per row (the last
block's shortcut when the head pools one token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import AttentionRecord


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Block:
    """A pre-norm transformer block seen through its parts:
    ``h + ls1(out(attn(norm1(h)))``, then ``h + ls2(mlp(norm2(h)))``."""

    norm1: Callable[[torch.Tensor], torch.Tensor]
    q: Callable[[torch.Tensor], torch.Tensor]  # [.., D] -> [.., D] (all heads)
    k: Callable[[torch.Tensor], torch.Tensor]
    v: Callable[[torch.Tensor], torch.Tensor]
    out: Callable[[torch.Tensor], torch.Tensor]  # attention output projection
    norm2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    heads: int
    scale: float
    ls1: Callable[[torch.Tensor], torch.Tensor] = _identity  # LayerScale (OpenCLIP), else identity
    ls2: Callable[[torch.Tensor], torch.Tensor] = _identity
    # rotary position embedding of queries and keys, [N, heads, T, head_dim] (EVA02, PE); None: none
    rotate: Callable[[torch.Tensor], torch.Tensor] | None = None
    # additive attention-score bias, [1 or N, heads, T, T] (timm's relative-position blocks); None: none
    bias: Callable[[], torch.Tensor] | None = None


def _with_bias(block: Block, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The additive mask plus the block's score bias (read at each call: the weights may change)."""
    if block.bias is None:
        return mask
    bias = block.bias()
    return bias if mask is None else mask + bias


# The blocks adapted here are typed Any: OpenAI clip and OpenCLIP ship no types, and a transformers layer
# arrives from an nn.ModuleList as a bare Module (four families' layer classes share the duck type).
def openai_block(block: Any) -> Block:
    """OpenAI ``clip`` / OpenCLIP ``ResidualAttentionBlock`` (``ln_1``, ``attn``: nn.MultiheadAttention,
    ``mlp``, ``ln_2``, optional ``ls_1``/``ls_2``)."""
    attn = getattr(block, "attn", None)
    if (
        not isinstance(attn, torch.nn.MultiheadAttention)
        or attn.in_proj_weight is None
        or attn.bias_k is not None
        or hasattr(block, "ln_1_kv")
    ):
        raise InputError(
            f"transformer block {type(block).__name__} is not supported (custom attention, "
            "qk-norm or scaled-cosine blocks are not handled yet)"
        )
    width = attn.embed_dim
    weight, bias = attn.in_proj_weight, attn.in_proj_bias

    def proj(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(x: torch.Tensor) -> torch.Tensor:
            return F.linear(
                x, weight[i * width : (i + 1) * width], None if bias is None else bias[i * width : (i + 1) * width]
            )

        return f

    return Block(
        norm1=block.ln_1,
        q=proj(0),
        k=proj(1),
        v=proj(2),
        out=attn.out_proj,
        norm2=block.ln_2,
        mlp=block.mlp,
        heads=attn.num_heads,
        scale=attn.head_dim**-0.5,
        ls1=getattr(block, "ls_1", _identity),
        ls2=getattr(block, "ls_2", _identity),
    )


def hf_block(layer: Any) -> Block:
    """A transformers CLIP/SigLIP encoder layer (``layer_norm1``, ``self_attn.{q,k,v,out}_proj``,
    ``layer_norm2``, ``mlp``)."""
    attn = layer.self_attn
    return Block(
        norm1=layer.layer_norm1,
        q=attn.q_proj,
        k=attn.k_proj,
        v=attn.v_proj,
        out=attn.out_proj,
        norm2=layer.layer_norm2,
        mlp=layer.mlp,
        heads=attn.num_heads,
        scale=attn.scale,
    )


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, t, width = x.shape
    return x.view(n, t, heads, width // heads).transpose(1, 2)


def block_forward(
    block: Block, hidden: torch.Tensor, mask: torch.Tensor | None, records: list[AttentionRecord] | None = None
) -> torch.Tensor:
    """One block on every token; ``mask`` is additive, [N or 1, 1, T, T]. With ``records``, the
    attention is computed explicitly and appended (same numbers)."""
    n, t, width = hidden.shape
    normed = block.norm1(hidden)
    query, key, value = (_heads(f(normed), block.heads) for f in (block.q, block.k, block.v))
    if block.rotate is not None:
        query, key = block.rotate(query), block.rotate(key)
    mask = _with_bias(block, mask)
    if records is None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=block.scale)
        output = block.out(out.transpose(1, 2).reshape(n, t, width))
    else:
        scores = (query @ key.transpose(-1, -2)) * block.scale
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1)
        output = block.out((probs @ value).transpose(1, 2).reshape(n, t, width))
        record = AttentionRecord(probs, query, key, value, output)
        records.append(record)
    hidden = hidden + block.ls1(output)
    hidden = hidden + block.ls2(block.mlp(block.norm2(hidden)))
    if records is not None:
        record.hidden = hidden
    return hidden


def block_forward_at(
    block: Block, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The block's output at one position per row, [N, width]: the query, attention output and
    MLP of that token only; keys and values from every token (same numbers as the full block)."""
    if block.rotate is not None:  # a rotated query needs its position in the whole sequence
        raise ValueError("block_forward_at does not run rotary blocks: run them with block_forward")
    n, t, width = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    normed = block.norm1(hidden)
    query = block.q(normed[rows, positions]).view(n, block.heads, 1, width // block.heads)
    key, value = _heads(block.k(normed), block.heads), _heads(block.v(normed), block.heads)
    mask = _with_bias(block, mask)
    if mask is not None:  # the pooled query's row of the mask (and bias)
        mask = mask.expand(n, -1, -1, -1)[rows, :, positions][:, :, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=block.scale)
    hidden = hidden[rows, positions] + block.ls1(block.out(out.reshape(n, width)))
    return hidden + block.ls2(block.mlp(block.norm2(hidden)))


def text_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """Additive [N, 1, T, T] mask: padding keys hidden, and later keys too when ``causal``.
    A causal row always keeps its real tokens before it, so no row is fully masked."""
    n, t = attention_mask.shape
    allowed = attention_mask.bool()[:, None, None, :].expand(n, 1, t, t)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    mask = torch.zeros(n, 1, t, t, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


__all__ = ["Block", "block_forward", "block_forward_at", "hf_block", "openai_block", "text_mask"]
