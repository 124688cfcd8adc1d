"""OpenCLIP's timm image towers with a transformer trunk (``visual.trunk.blocks``): timm's
``VisionTransformer`` as OpenCLIP's ``TimmModel`` wraps it (SigLIP / SigLIP 2, ViT-*-gap, ...).

Everything the split forward needs is read from the trunk, never from a table of names: its
patch embedding and grid (``patch_embed.grid_size``), its prefix tokens (class and register
tokens: ``num_prefix_tokens``), its position embedding (timm's own ``_pos_embed``, learned,
with or without an embedding for the class token), ``norm_pre``, the blocks (seen as
:class:`~.blocks.Block` s), ``norm``, and the head: timm's ``forward_head`` (token, average or
max pooling, or the attention-pooling "MAP" head of SigLIP, then ``fc_norm`` and timm's own
head) followed by OpenCLIP's adapter head (``visual.head``: nothing, a linear projection or an
MLP). A token-pooled head reads position 0 only, so the last block runs for that token alone;
the other heads read every token.

timm's ``Eva`` trunks (EVA01/EVA02, PE-Core) run the same way with :func:`eva_block`: queries and
keys of the patch tokens are rotated by the trunk's own rotary embedding (``trunk.rope``, timm's
``apply_rot_embed_cat``), so the last block runs in full (no one-token shortcut).

Relative-position trunks (``VisionTransformerRelPos``) have no position embedding; each
``RelPosBlock`` adds its learned bias to the attention scores (the ``Block``'s ``bias`` slot).

Not handled (a one-line error says so): blocks other than timm's plain ``Block`` / ``RelPosBlock`` /
``EvaBlock`` / ``EvaBlockPostNorm`` (parallel, post-norm relative-position), depth-dependent ("mixed") RoPE, gated or
qk-normalised attention, and convolutional or windowed trunks (ConvNeXt, FastViT, Swin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError
from .base import ImageBatch
from .blocks import Block, _identity
from .towers import TransformerTower, present

# timm and OpenCLIP ship no types: the trunks, blocks and OpenCLIP TimmModel adapted here are typed Any.
SUPPORTED_POOLS = ("token", "avg", "max", "avgmax", "map")


def is_timm_transformer(visual: torch.nn.Module) -> bool:
    """An OpenCLIP ``TimmModel`` whose trunk is a stack of transformer blocks."""
    trunk = getattr(visual, "trunk", None)
    return trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed")


def timm_block(block: Any, shared_bias: Callable[[], torch.Tensor] | None = None) -> Block:
    """timm's pre-norm ViT ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1``, ``norm2``,
    ``mlp``, ``ls2``) as a :class:`Block`; a ``RelPosBlock`` adds its relative-position bias to the
    scores (its own ``attn.rel_pos``, else the trunk's shared one, ``shared_bias``)."""
    attn: Any = getattr(block, "attn", None)  # None fails the block-type checks below
    qkv = getattr(attn, "qkv", None)
    relative = type(block).__name__ == "RelPosBlock"  # its attention adds a learned relative-position bias
    if type(block).__name__ not in ("Block", "RelPosBlock") or not isinstance(qkv, torch.nn.Linear):
        raise InputError(
            f"timm block {type(block).__name__} is not supported (timm's plain ViT Block, RelPosBlock, "
            "EvaBlock and EvaBlockPostNorm are; parallel and post-norm relative-position blocks are not)"
        )
    for name in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, name, None), (torch.nn.Identity, type(None))):
            raise InputError(f"timm attention with {name} is not supported yet")
    if getattr(attn, "gate", None) is not None:
        raise InputError("timm gated attention is not supported yet")
    width = attn.num_heads * attn.head_dim
    if width != qkv.in_features:
        raise InputError(f"timm attention of width {width} on {qkv.in_features}-wide tokens is not supported yet")
    weight, bias = qkv.weight, qkv.bias

    def proj(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(
                x, weight[i * width : (i + 1) * width], None if bias is None else bias[i * width : (i + 1) * width]
            )

        return f

    norm = getattr(attn, "norm", None)
    out = attn.proj if isinstance(norm, (torch.nn.Identity, type(None))) else torch.nn.Sequential(norm, attn.proj)
    own = getattr(attn, "rel_pos", None)  # (not `bias`: proj's closures read qkv's bias by that name)
    score_bias = (own.get_bias if own is not None else shared_bias) if relative else None
    return Block(
        norm1=block.norm1,
        q=proj(0),
        k=proj(1),
        v=proj(2),
        out=out,
        norm2=block.norm2,
        mlp=block.mlp,
        heads=attn.num_heads,
        scale=attn.scale,
        ls1=getattr(block, "ls1", _identity),
        ls2=getattr(block, "ls2", _identity),
        bias=score_bias,
    )


def _plain(module: torch.nn.Module | None) -> bool:
    return isinstance(module, (torch.nn.Identity, type(None)))


def eva_block(block: Any, rope: Callable[[], torch.Tensor | None]) -> Block:
    """timm's ``EvaBlock`` (EVA01/EVA02; PE-Core with ``AttentionRope``) as a :class:`Block`: fused or separate q/k/v
    projections, the sub-LN before ``proj``, ``gamma_1``/``gamma_2`` scales and, when ``rope()``
    gives an embedding, the rotation of every non-prefix query and key."""
    from timm.layers import apply_rot_embed_cat

    attn: Any = getattr(block, "attn", None)  # None fails the block-type checks below
    post_norm = type(block).__name__ == "EvaBlockPostNorm"  # EVA02-E: x + norm1(attn(x)), x + norm2(mlp(x))
    if type(block).__name__ not in ("EvaBlock", "EvaBlockPostNorm") or type(attn).__name__ not in (
        "EvaAttention",
        "AttentionRope",
    ):
        raise InputError(f"timm block {type(block).__name__} is not supported (timm's Block and EvaBlock are)")
    if getattr(attn, "num_kv_groups", 1) != 1:
        raise InputError("timm attention with grouped keys and values is not supported yet")
    if not (_plain(attn.q_norm) and _plain(attn.k_norm)) or getattr(attn, "gate", None) is not None:
        raise InputError("timm EVA attention with qk-norm or a gate is not supported yet")
    width = attn.num_heads * attn.head_dim
    if attn.qkv is not None:

        def proj(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def f(x: torch.Tensor) -> torch.Tensor:
                # read the parameters at each call: the model may be moved, cast or changed after wrapping
                if getattr(attn, "q_bias", None) is not None:  # EVA's separate q/v biases (k's is zero)
                    bias = (attn.q_bias, attn.k_bias, attn.v_bias)[i]
                else:
                    bias = None if attn.qkv.bias is None else attn.qkv.bias[i * width : (i + 1) * width]
                return torch.nn.functional.linear(x, attn.qkv.weight[i * width : (i + 1) * width], bias)

            return f

        q, k, v = proj(0), proj(1), proj(2)
    else:
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    prefix, half = attn.num_prefix_tokens, bool(getattr(attn, "rotate_half", False))

    def rotate(x: torch.Tensor) -> torch.Tensor:
        embed = rope()
        if embed is None:
            return x
        turned = apply_rot_embed_cat(x[:, :, prefix:], embed, half=half)
        return torch.cat([x[:, :, :prefix], turned], dim=2).type_as(x)

    def scaled(gamma: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
        return _identity if gamma is None else (lambda x: gamma * x)

    out = attn.proj if _plain(attn.norm) else torch.nn.Sequential(attn.norm, attn.proj)
    if post_norm:  # the norms move after each branch: the Block's ls1/ls2 slots, no norm before
        return Block(
            norm1=_identity,
            q=q,
            k=k,
            v=v,
            out=out,
            norm2=_identity,
            mlp=block.mlp,
            heads=attn.num_heads,
            scale=attn.scale,
            ls1=block.norm1,
            ls2=block.norm2,
            rotate=rotate,
        )
    return Block(
        norm1=block.norm1,
        q=q,
        k=k,
        v=v,
        out=out,
        norm2=block.norm2,
        mlp=block.mlp,
        heads=attn.num_heads,
        scale=attn.scale,
        ls1=scaled(block.gamma_1),
        ls2=scaled(block.gamma_2),
        rotate=rotate,
    )


class TimmViTTower(TransformerTower):
    """``visual.trunk`` (a timm ``VisionTransformer`` or ``Eva``) and OpenCLIP's ``visual.head``."""

    def __init__(self, visual: Any):
        trunk = visual.trunk
        if getattr(trunk, "dynamic_img_size", False):
            raise InputError("timm trunks with dynamic image sizes are not supported yet")
        self.eva = type(trunk).__name__ == "Eva"
        self.relpos = type(trunk).__name__ == "VisionTransformerRelPos"  # no position embedding: a score bias
        if getattr(trunk, "rope_mixed", False):
            raise InputError("timm trunks with depth-dependent (mixed) rotary embeddings are not supported yet")
        if self.eva:
            super().__init__([eva_block(b, self.rope) for b in trunk.blocks])
        else:
            if getattr(trunk, "rope", None) is not None:
                raise InputError(f"timm trunk {type(trunk).__name__} with rotary embeddings is not supported yet")
            shared = getattr(trunk, "shared_rel_pos", None)
            super().__init__([timm_block(b, None if shared is None else shared.get_bias) for b in trunk.blocks])
        self.visual, self.trunk = visual, trunk
        self.prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0))
        self.pool = "map" if getattr(trunk, "attn_pool", None) is not None else trunk.global_pool
        if self.pool not in SUPPORTED_POOLS:
            raise InputError(f"timm pooling {self.pool!r} is not supported ({', '.join(SUPPORTED_POOLS)})")
        if self.pool == "token" and self.prefix_tokens == 0:
            raise InputError("timm token pooling without a class token is not supported")
        self.patch_grid = tuple(trunk.patch_embed.grid_size)

    def grid(self, layer: int) -> tuple[int, int]:
        return self.patch_grid

    def rope(self) -> torch.Tensor | None:
        """The trunk's rotary embedding for its grid (timm's own ``_pos_embed`` rule), or None."""
        rope = self.trunk.rope
        if rope is None:
            return None
        if hasattr(rope, "feat_shape"):
            return rope.get_embed()
        return rope.get_embed(shape=self.trunk.patch_embed.grid_size)  # RoPE without a feat_shape (MRoPE)

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        t = self.trunk
        weight = next(t.patch_embed.parameters())  # a linear or convolutional (hybrid) patch embedding
        x = t.patch_embed(batch.pixel_values.to(weight.device, weight.dtype))
        if self.relpos:  # timm's forward_features: the class token, nothing added, no pre-norm
            return x if t.cls_token is None else torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = t._pos_embed(x)
        if self.eva:  # Eva's _pos_embed also gives the rotary embedding (the blocks ask self.rope for it)
            x = x[0]
            return t.norm_pre(x)  # eval: no patch dropout
        return t.norm_pre(t.patch_drop(x))

    def pooled_positions(self, batch, copies, device):
        if self.pool != "token":  # average, max or attention pooling: every token
            return None
        return torch.zeros(len(batch) * copies, dtype=torch.long, device=device)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.dim() == 2:  # the class token only: timm's token pooling reads position 0
            pooled = pooled[:, None]
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(pooled)))

    def parts(self):
        t = self.trunk
        head = present(t.norm, getattr(t, "attn_pool", None), t.fc_norm, t.head, self.visual.head)
        embeddings = present(
            t.patch_embed,
            t.cls_token,
            getattr(t, "reg_token", None),
            getattr(t, "pos_embed", None),
            getattr(t, "norm_pre", None),
        )
        return head, list(t.blocks), embeddings


__all__ = ["TimmViTTower", "is_timm_transformer", "timm_block"]
