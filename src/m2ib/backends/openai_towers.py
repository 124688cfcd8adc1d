"""The towers of OpenAI's layout, shared by OpenAI ``clip`` and OpenCLIP: the ViT image tower and
the text transformer (``transformer.resblocks`` of ``ResidualAttentionBlock`` s)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import ImageBatch, TextBatch
from .blocks import openai_block, text_mask
from .towers import ClassTokenTower, PooledTextTower, present

# OpenAI clip and OpenCLIP ship no types: the visual and text modules adapted here are typed Any.

# OpenAI CLIP's image normalisation (also the default of transformers' CLIP and of OpenCLIP).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def apply_projection(x: torch.Tensor, projection: Any) -> torch.Tensor:
    """OpenAI/OpenCLIP projections: a [D, E] parameter (``x @ P``), a Linear, or None."""
    if projection is None:
        return x
    if isinstance(projection, torch.nn.Module):
        return projection(x)
    return x @ projection


class OpenAIViTTower(ClassTokenTower):
    """The ViT image tower of OpenAI ``clip`` and OpenCLIP (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``).
    Its head reads the class token (``pool_type="tok"``) or the mean of the patches (``"avg"``).
    CoCa's towers put an attentional pooler (``attn_pool``: learned queries over every token)
    before ``ln_post``; the head then reads its first query's output (``"tok"``) or the mean of the
    others (``"avg"``), so it reads every token."""

    def __init__(self, visual: Any):
        self.attn_pool = getattr(visual, "attn_pool", None)
        if getattr(visual, "attn_pool_contrastive", None) is not None:  # OpenCLIP's 'parallel' / 'cascade' WIP
            raise InputError(
                f"OpenCLIP attentional pooling {getattr(visual, 'attn_pool_type', '')!r} with a "
                "contrastive pooler is not supported (CoCa's single attentional pooler is)"
            )
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

    def pooled_positions(self, batch, copies, device):
        if self.pool == "avg" or self.attn_pool is not None:  # the head reads every token
            return None
        return super().pooled_positions(batch, copies, device)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        v = self.visual
        if self.attn_pool is not None:  # OpenCLIP's CoCa order: pooler, ln_post, then the query's row
            queries = v.ln_post(self.attn_pool(pooled))
            pooled = queries[:, 0] if self.pool == "tok" else queries[:, 1:].mean(dim=1)
        elif self.pool == "avg":
            if self.ln_after_pool:
                pooled = v.ln_post(pooled[:, 1:].mean(dim=1))
            else:
                pooled = v.ln_post(pooled)[:, 1:].mean(dim=1)
        else:
            pooled = v.ln_post(pooled)
        return apply_projection(pooled, v.proj)

    def parts(self):
        v = self.visual
        return (
            present(self.attn_pool, v.ln_post, v.proj),
            list(v.transformer.resblocks),
            present(v.conv1, v.class_embedding, v.positional_embedding, v.ln_pre),
        )


class OpenAITextTower(PooledTextTower):
    """The text tower of OpenAI ``clip`` and OpenCLIP: token + positional embeddings, blocks
    (causal unless ``causal=False``), ``ln_final``, the pooled token, ``text_projection``.

    ``pool``: ``argmax`` (the end-of-text token has the largest id: OpenAI's rule), ``eos``
    (first ``eos_id``), ``first`` or ``last``. CoCa's towers (a class embedding appended after
    the text) are :class:`m2ib.backends.coca.CoCaTextTower`.
    """

    appends_class = False  # whether the tower appends a class embedding after the text (CoCa)

    def __init__(
        self,
        owner: Any,
        causal: bool = True,
        pool: str = "argmax",
        eos_id: int | None = None,
        pad_id: int | None = None,
        pad_mask: bool = False,
    ):
        super().__init__([openai_block(b) for b in owner.transformer.resblocks], pool, eos_id, causal)
        if getattr(owner, "cls_emb", None) is not None and not self.appends_class:
            raise InputError("OpenCLIP text towers with a class embedding (CoCa) run as CoCaTextTower")
        self.owner, self.pad_id, self.pad_mask = owner, pad_id, pad_mask

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

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return apply_projection(self.owner.ln_final(pooled), self.owner.text_projection)

    def parts(self):
        o = self.owner
        return (
            present(o.ln_final, o.text_projection),
            list(o.transformer.resblocks),
            present(o.token_embedding, o.positional_embedding),
        )


__all__ = ["OpenAITextTower", "OpenAIViTTower", "apply_projection"]
