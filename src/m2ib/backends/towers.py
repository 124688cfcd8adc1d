"""Split forwards shared by the family backends (OpenCLIP, OpenAI ``clip``, SigLIP, ResNet CLIP).

A model is two towers. A tower embeds its input (the input of block 0), runs blocks, then pools
and projects (its head). :class:`TowersBackend` turns that into the backend interface:
``prefix`` = embed + blocks ``0..layer``; ``suffix`` = blocks ``layer+1..`` + head.

Transformer blocks are written out here (:func:`block_forward`), for every layout through a
:class:`Block` view (OpenAI/OpenCLIP ``ResidualAttentionBlock`` with ``nn.MultiheadAttention``,
or transformers' ``q/k/v/out_proj`` layers). That gives one place for the masks, the recorded
attention, and the last-block shortcut: when a tower pools one token (CLS, end of text, last
position), only that token's query, attention output and MLP are computed in the last block.
Parity with each library's own ``encode_*`` / ``get_*_features`` is tested to 1e-5.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .base import EMBEDDINGS, AttentionRecord, Backend, Batch, Geometry, ImageBatch, Modality, TextBatch


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


def openai_block(block: torch.nn.Module) -> Block:
    """OpenAI ``clip`` / OpenCLIP ``ResidualAttentionBlock`` (``ln_1``, ``attn``: nn.MultiheadAttention,
    ``mlp``, ``ln_2``, optional ``ls_1``/``ls_2``)."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None \
            or attn.bias_k is not None or hasattr(block, "ln_1_kv"):
        raise InputError(f"transformer block {type(block).__name__} is not supported (custom attention, "
                         "qk-norm or scaled-cosine blocks are not handled yet)")
    width = attn.embed_dim
    weight, bias = attn.in_proj_weight, attn.in_proj_bias

    def proj(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, weight[i * width:(i + 1) * width],
                            None if bias is None else bias[i * width:(i + 1) * width])
        return f

    return Block(norm1=block.ln_1, q=proj(0), k=proj(1), v=proj(2), out=attn.out_proj, norm2=block.ln_2,
                 mlp=block.mlp, heads=attn.num_heads, scale=attn.head_dim ** -0.5,
                 ls1=getattr(block, "ls_1", _identity), ls2=getattr(block, "ls_2", _identity))


def hf_block(layer: torch.nn.Module) -> Block:
    """A transformers CLIP/SigLIP encoder layer (``layer_norm1``, ``self_attn.{q,k,v,out}_proj``,
    ``layer_norm2``, ``mlp``)."""
    attn = layer.self_attn
    return Block(norm1=layer.layer_norm1, q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, out=attn.out_proj,
                 norm2=layer.layer_norm2, mlp=layer.mlp, heads=attn.num_heads, scale=attn.scale)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, t, width = x.shape
    return x.view(n, t, heads, width // heads).transpose(1, 2)


def block_forward(block: Block, hidden: torch.Tensor, mask: torch.Tensor | None,
                  records: list[AttentionRecord] | None = None) -> torch.Tensor:
    """One block on every token; ``mask`` is additive, [N or 1, 1, T, T]. With ``records``, the
    attention is computed explicitly and appended (same numbers)."""
    n, t, width = hidden.shape
    normed = block.norm1(hidden)
    query, key, value = (_heads(f(normed), block.heads) for f in (block.q, block.k, block.v))
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


def block_forward_at(block: Block, hidden: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """The block's output at one position per row, [N, width]: the query, attention output and
    MLP of that token only; keys and values from every token (same numbers as the full block)."""
    n, t, width = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    normed = block.norm1(hidden)
    query = block.q(normed[rows, positions]).view(n, block.heads, 1, width // block.heads)
    key, value = _heads(block.k(normed), block.heads), _heads(block.v(normed), block.heads)
    if mask is not None:  # the pooled query's row of the mask
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


def causal_mask(t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    allowed = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return torch.zeros(1, 1, t, t, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


# --- towers ---------------------------------------------------------------------------------
class Tower(ABC):
    """One modality's encoder, split at block outputs."""

    prefix_tokens: int = 0  # image towers: tokens before the spatial ones (CLS)

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @abstractmethod
    def embed(self, batch: Batch) -> torch.Tensor:
        """The input of block 0, [N, T, D]."""

    @abstractmethod
    def run(self, hidden: torch.Tensor, start: int, stop: int, batch: Batch, copies: int,
            records: list[AttentionRecord] | None) -> torch.Tensor:
        """Blocks ``start..stop-1`` on ``hidden`` (the input of block ``start``)."""

    @abstractmethod
    def suffix(self, hidden: torch.Tensor, layer: int, batch: Batch, copies: int,
               records: list[AttentionRecord] | None) -> torch.Tensor:
        """Blocks ``layer+1..`` then the head: [N * copies, embed_dim]."""

    def grid(self, layer: int) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def records_attention(self) -> bool:
        return False


class TransformerTower(Tower):
    """A stack of :class:`Block` s between an embedding and a head. Subclasses give ``embed``,
    ``mask``, ``positions`` and ``head``."""

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def records_attention(self) -> bool:
        return True

    def mask(self, batch: Batch, copies: int, t: int, dtype: torch.dtype, device: torch.device
             ) -> torch.Tensor | None:
        """Additive attention mask for ``batch`` repeated ``copies`` times (None: full attention)."""
        return None

    def positions(self, batch: Batch, copies: int, t: int, device: torch.device) -> torch.Tensor | None:
        """Index of the pooled token per row, or None when the head reads every token."""
        return None

    @abstractmethod
    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled token [N, D] (or all tokens [N, T, D] when ``positions`` is None) -> embedding."""

    def run(self, hidden, start, stop, batch, copies, records):
        blocks = self.blocks[start:stop]
        if not blocks:
            return hidden
        mask = self.mask(batch, copies, hidden.shape[1], hidden.dtype, hidden.device)
        for block in blocks:
            hidden = block_forward(block, hidden, mask, records)
        return hidden

    def suffix(self, hidden, layer, batch, copies, records):
        n, t, _ = hidden.shape
        last = self.num_layers - 1
        positions = self.positions(batch, copies, t, hidden.device)
        rows = torch.arange(n, device=hidden.device)
        if positions is None or records is not None:  # every block in full
            hidden = self.run(hidden, layer + 1, last + 1, batch, copies, records)
            return self.head(hidden if positions is None else hidden[rows, positions])
        if layer < last:
            hidden = self.run(hidden, layer + 1, last, batch, copies, None)
            mask = self.mask(batch, copies, t, hidden.dtype, hidden.device)
            return self.head(block_forward_at(self.blocks[-1], hidden, positions, mask))
        return self.head(hidden[rows, positions])


def apply_projection(x: torch.Tensor, projection: Any) -> torch.Tensor:
    """OpenAI/OpenCLIP projections: a [D, E] parameter (``x @ P``), a Linear, or None."""
    if projection is None:
        return x
    if isinstance(projection, torch.nn.Module):
        return projection(x)
    return x @ projection


class OpenAIViTTower(TransformerTower):
    """The ViT image tower of OpenAI ``clip`` and OpenCLIP (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``)."""

    prefix_tokens = 1

    def __init__(self, visual: torch.nn.Module):
        if getattr(visual, "attn_pool", None) is not None:
            raise InputError("OpenCLIP image towers with attentional pooling (CoCa) are not supported yet")
        if getattr(visual, "class_embedding", None) is None:
            raise InputError("OpenCLIP image towers without a class token are not supported yet")
        super().__init__([openai_block(b) for b in visual.transformer.resblocks])
        self.visual = visual
        self.pool = getattr(visual, "pool_type", "tok")
        if self.pool not in ("tok", "avg"):
            raise InputError(f"OpenCLIP image pooling {self.pool!r} is not supported (tok or avg)")
        self.ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        size = getattr(visual, "image_size", None) or visual.input_resolution
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        ph, pw = visual.conv1.kernel_size
        self.patch_grid = (self.image_size[0] // ph, self.image_size[1] // pw)

    def grid(self, layer: int) -> tuple[int, int]:
        return self.patch_grid

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        v = self.visual
        x = v.conv1(batch.pixel_values.to(v.conv1.weight.device, v.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [N, grid, width]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def positions(self, batch, copies, t, device):
        if self.pool == "avg":
            return None
        return torch.zeros(len(batch) * copies, dtype=torch.long, device=device)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        v = self.visual
        if self.pool == "avg":
            if self.ln_after_pool:
                pooled = v.ln_post(pooled[:, 1:].mean(dim=1))
            else:
                pooled = v.ln_post(pooled)[:, 1:].mean(dim=1)
        else:
            pooled = v.ln_post(pooled)
        return apply_projection(pooled, v.proj)


class OpenAITextTower(TransformerTower):
    """The text tower of OpenAI ``clip`` and OpenCLIP: token + positional embeddings, blocks
    (causal unless ``causal=False``), ``ln_final``, the pooled token, ``text_projection``.

    ``pool``: ``argmax`` (the end-of-text token has the largest id: OpenAI's rule), ``eos``
    (first ``eos_id``), ``first`` or ``last``.
    """

    def __init__(self, owner: torch.nn.Module, causal: bool = True, pool: str = "argmax",
                 eos_id: int | None = None, pad_id: int | None = None, pad_mask: bool = False):
        super().__init__([openai_block(b) for b in owner.transformer.resblocks])
        if pool not in ("argmax", "eos", "first", "last"):
            raise InputError(f"text pooling {pool!r} is not supported (argmax, eos, first or last)")
        if getattr(owner, "cls_emb", None) is not None:
            raise InputError("OpenCLIP text towers with a class embedding (CoCa) are not supported yet")
        self.owner, self.causal, self.pool = owner, causal, pool
        self.eos_id, self.pad_id, self.pad_mask = eos_id, pad_id, pad_mask

    @property
    def context_length(self) -> int:
        return self.owner.positional_embedding.shape[0]

    @property
    def truncates(self) -> bool:
        """Whether padding after the pooled token can be dropped (a causal tower pooling the end
        token sees nothing after it), so that batches pad to the longest text only."""
        return self.causal and self.pool in ("argmax", "eos", "first")

    def embed(self, batch: TextBatch) -> torch.Tensor:
        o = self.owner
        ids = batch.input_ids.to(o.token_embedding.weight.device)
        x = o.token_embedding(ids)
        return x + o.positional_embedding[: ids.shape[1]].to(x.dtype)

    def mask(self, batch, copies, t, dtype, device):
        if self.causal:
            return text_mask(batch.attention_mask.to(device).repeat_interleave(copies, 0), dtype, causal=True)
        if self.pad_mask:  # OpenCLIP's bidirectional pad mask: keys whose id is not the pad id
            valid = (batch.input_ids.to(device) != self.pad_id).long().repeat_interleave(copies, 0)
            return text_mask(valid, dtype, causal=False)
        return None

    def positions(self, batch, copies, t, device):
        ids = batch.input_ids.to(device)
        if self.pool == "argmax":
            pos = ids.argmax(dim=-1)
        elif self.pool == "eos":
            pos = (ids == self.eos_id).int().argmax(dim=-1)
        elif self.pool == "first":
            pos = torch.zeros(ids.shape[0], dtype=torch.long, device=device)
        else:
            pos = torch.full((ids.shape[0],), t - 1, dtype=torch.long, device=device)
        return pos.repeat_interleave(copies, 0)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return apply_projection(self.owner.ln_final(pooled), self.owner.text_projection)


# --- the backend ----------------------------------------------------------------------------
@dataclass
class TowersBackend(Backend):
    """A backend made of two :class:`Tower` s; family subclasses build them and tokenise."""

    tokenizer: Any = None
    preprocessing: ImagePreprocessing | None = None
    towers: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.towers = self.build_towers()

    @abstractmethod
    def build_towers(self) -> dict[Modality, Tower]: ...

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @property
    def geometry(self) -> Geometry:
        image = self.towers["image"]
        return Geometry(
            image_size=self.preprocessing.crop,
            patch_grid=image.grid(image.num_layers - 1),
            image_prefix_tokens=image.prefix_tokens,
            vision_layers=image.num_layers,
            text_layers=self.towers["text"].num_layers,
            context_length=self.context_length,
        )

    def token_grid(self, modality: Modality, layer: int) -> tuple[int, int]:
        return self.towers["image"].grid(layer)

    # --- inputs --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image], sources: Sequence[str] = ()) -> ImageBatch:
        pixels, display = self.preprocessing(images)
        return ImageBatch(pixels.to(self.device), display, tuple(sources))

    def display_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocessing.mean, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=pixel_values.device).view(1, 3, 1, 1)
        return (pixel_values.float() * std + mean).clamp(0.0, 1.0)

    # --- the split forward ---------------------------------------------------------------
    def prefix(self, modality: Modality, batch: Batch, layer: int) -> torch.Tensor:
        tower = self.towers[modality]
        hidden = tower.embed(batch)
        return tower.run(hidden, 0, layer + 1, batch, 1, self._recording.get(modality))

    def suffix(self, modality: Modality, hidden: torch.Tensor, layer: int, batch: Batch) -> torch.Tensor:
        copies = hidden.shape[0] // len(batch)
        if copies * len(batch) != hidden.shape[0]:
            raise ValueError(f"hidden has {hidden.shape[0]} rows, not a multiple of the batch's {len(batch)}")
        return self.towers[modality].suffix(hidden, layer, batch, copies, self._recording.get(modality))

    def pooled_position(self, modality: Modality, batch: Batch) -> torch.Tensor | None:
        """Index [N] of the token whose last state becomes the embedding (CLS, end of text, SigLIP's
        last text position), or None when the head reads every token (SigLIP's attention-pooling
        head, average pooling, ResNet's attention pool)."""
        tower = self.towers[modality]
        if not isinstance(tower, TransformerTower):
            return None
        if modality == "text":
            t = batch.input_ids.shape[1]
        else:
            rows, cols = tower.grid(0)
            t = tower.prefix_tokens + rows * cols
        return tower.positions(batch, 1, t, self.device)

    def pool_positions(self, batch: TextBatch) -> torch.Tensor:
        """The pooled text position per row (what the baselines ask of text towers)."""
        return self.pooled_position("text", batch)

    # --- attention -----------------------------------------------------------------------
    @property
    def supports_attention(self) -> bool:
        return all(t.records_attention for t in self.towers.values())

    def can_record_attention(self, modality: Modality) -> bool:
        return self.towers[modality].records_attention


__all__ = ["Block", "EMBEDDINGS", "OpenAITextTower", "OpenAIViTTower", "Tower", "TowersBackend", "TransformerTower",
           "block_forward", "block_forward_at", "hf_block", "openai_block", "text_mask"]
