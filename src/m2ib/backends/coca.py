"""OpenCLIP CoCa's contrastive text tower: a class embedding appended after the padded text.

CoCa's ``encode_text`` appends ``cls_emb`` after the whole padded context (76 ids), gives it the
next position embedding, runs the causal blocks with a pad mask, and pools that last position
(``ln_final`` then ``text_projection``). The pad mask is OpenCLIP's: keys whose id is not the pad
id, with the class key's entry put at the *front* in the legacy mode the released weights use
(``correct_cls_mask=False``), which shifts every key's validity by one: the class token then reads
the real tokens and the first padding token, and not itself. Both modes are reproduced exactly.

m2ib's text rows are laid out so that the real tokens come first and the padding last, as every
method and figure expects: the class token's row is moved from the end to just after the real
tokens (the *display* layout; its id is :data:`CLS_ID`, marked as a special token and a real one,
so the bottleneck acts on it as on CLIP's end-of-text token). The tower puts each row back in the
model's order for the position embeddings and the mask, and permutes the mask the same way;
attention does not depend on the order of its rows once positions and mask follow them, so the
embedding is the library's own (tested to 1e-5 at every layer). Texts are padded to the full
context: the class token's position embedding depends on it.

The padding rows (the first of which the class token reads in the legacy mode) pass through the
bottleneck unchanged, like SigLIP's padding.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import TextBatch
from .openai_towers import OpenAITextTower

CLS_ID = -1  # the id of the class token's row in a CoCa TextBatch (no vocabulary entry has it)
CLS_TOKEN = "<cls>"


def class_token_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-order ids [N, L] and real-token mask -> the display layout [N, L + 1]: the class token's
    row (:data:`CLS_ID`) right after each row's real tokens, counted as real."""
    n, length = input_ids.shape
    real = attention_mask.long().sum(1)
    ids = torch.full((n, length + 1), CLS_ID, dtype=input_ids.dtype)
    mask = torch.zeros(n, length + 1, dtype=torch.long)
    for i, k in enumerate(real.tolist()):
        ids[i, :k], ids[i, k + 1 :] = input_ids[i, :k], input_ids[i, k:]
        mask[i, : k + 1] = 1
    return ids, mask


def model_order(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Display-layout ids [N, T] -> (the model's ids [N, T - 1] without the class row, ``order``
    [N, T]: the model position of each display row, the class row's display index [N])."""
    n, t = input_ids.shape
    is_cls = input_ids == CLS_ID
    if not bool((is_cls.sum(1) == 1).all()):
        raise InputError(
            "a CoCa text batch needs exactly one class-token row (id -1) per text: make it with "
            "backend.tokenize or backend.text_batch"
        )
    where = is_cls.int().argmax(1)
    ids = input_ids[~is_cls].view(n, t - 1)
    rows = torch.arange(t, device=input_ids.device)[None].expand(n, t)
    order = torch.where(rows < where[:, None], rows, rows - 1)
    order = torch.where(rows == where[:, None], torch.full_like(rows, t - 1), order)
    return ids, order, where


class CoCaTextTower(OpenAITextTower):
    """OpenCLIP ``TextTransformer`` with ``cls_emb`` (CoCa), on display-layout batches."""

    appends_class = True

    def __init__(self, owner: Any):  # OpenCLIP's TextTransformer: untyped, duck-typed
        super().__init__(
            owner, causal=getattr(owner, "attn_mask", None) is not None, pool="last", pad_id=getattr(owner, "pad_id", 0)
        )
        self.correct_cls_mask = bool(getattr(owner, "correct_cls_mask", False))

    @property
    def context_length(self) -> int:
        return self.owner.positional_embedding.shape[0] - 1  # one position is the class token's

    @property
    def truncates(self) -> bool:
        return False  # the class token's position embedding is the one after the full context

    def can_pool(self, rule: str) -> bool:
        return False  # the head reads the class token only

    def pooled_positions(self, batch, copies, device):
        _, _, where = model_order(batch.input_ids.to(device))
        return where.repeat_interleave(copies, 0)

    def embed(self, batch: TextBatch) -> torch.Tensor:
        o = self.owner
        ids, order, _ = model_order(batch.input_ids.to(o.token_embedding.weight.device))
        x = o.token_embedding(ids)
        x = torch.cat([x, o.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + o.positional_embedding[: x.shape[1]].to(x.dtype)
        return x.gather(1, order[:, :, None].expand(-1, -1, x.shape[2]))

    def mask(self, batch, copies, t, dtype, device):
        ids, order, where = model_order(batch.input_ids.to(device))
        n, length = ids.shape
        valid = ids != self.pad_id
        ones = valid.new_ones(n, 1)
        valid = torch.cat([valid, ones] if self.correct_cls_mask else [ones, valid], 1)  # OpenCLIP's key rule
        allowed = valid[:, None, :].expand(n, t, t)
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=device).tril()
        # model order -> display order, for queries and keys alike
        allowed = allowed.gather(1, order[:, :, None].expand(-1, -1, t)).gather(2, order[:, None, :].expand(-1, t, -1))
        # real tokens (or the class row) a caller masked out (KernelSHAP coalitions, deletion) are hidden as keys
        rows = torch.arange(t, device=device)[None]
        dropped = (batch.attention_mask.to(device) == 0) & (rows <= where[:, None])
        allowed = allowed & ~dropped[:, None, :]
        mask = torch.zeros(n, 1, t, t, dtype=dtype, device=device).masked_fill(
            ~allowed[:, None], torch.finfo(dtype).min
        )
        return mask.repeat_interleave(copies, 0)

    def parts(self):
        head, blocks, embeddings = super().parts()
        return head, blocks, [*embeddings, self.owner.cls_emb]


__all__ = ["CLS_ID", "CLS_TOKEN", "CoCaTextTower", "class_token_layout", "model_order"]
