"""OpenCLIP's convolutional timm image towers as stages (ConvNeXt; FastViT, which MobileCLIP uses).

The way ResNet towers work (:mod:`.resnet_clip`): the bottleneck sits on a stage's output, with
spatial positions as the tokens. ``EMBEDDINGS`` is the stem's output (``trunk.stem``), blocks are
``trunk.stages``; hidden states are [N, H*W, C], row-major over the stage's grid. The grids come
from the model: one forward of a blank image through the stem and each stage when the tower is
built (no table of strides). After the last stage: the trunk's own tail (ConvNeXt's ``norm_pre``,
FastViT's ``final_conv``), timm's ``forward_head`` (its pooling, norm and head) and OpenCLIP's
adapter head (``visual.head``). No attention is recorded, so methods that need it are skipped.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import AttentionRecord, ImageBatch
from .towers import Tower

# timm and OpenCLIP ship no types: the OpenCLIP TimmModel and its trunk are typed Any here.
STAGED_TRUNKS = ("ConvNeXt", "FastVit")  # trunks whose forward_features is stem, stages, then a tail


def is_timm_staged(visual: torch.nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    return type(trunk).__name__ in STAGED_TRUNKS and hasattr(trunk, "stem") and hasattr(trunk, "stages")


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _spatial(hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    n, t, c = hidden.shape
    if t != grid[0] * grid[1]:
        raise ValueError(f"hidden states have {t} positions, the stage's grid is {grid[0]}x{grid[1]}")
    return hidden.transpose(1, 2).reshape(n, c, *grid).contiguous()


class TimmStagesTower(Tower):
    """A staged timm trunk and OpenCLIP's adapter head; see the module docstring."""

    prefix_tokens = 0

    def __init__(self, visual: Any):
        trunk = visual.trunk
        if getattr(trunk, "fork_feat", False):
            raise InputError("timm trunks built for dense features (fork_feat) are not supported")
        self.visual, self.trunk, self.stages = visual, trunk, list(trunk.stages)
        size = visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._grids = self._stage_grids()

    def _stage_grids(self) -> list[tuple[int, int]]:
        """The grid after the stem, then after each stage, read off one blank image."""
        weight = next(self.trunk.parameters())
        x = torch.zeros(1, 3, *self.image_size, device=weight.device, dtype=weight.dtype)
        grids = []
        with torch.no_grad():
            x = self.trunk.stem(x)
            grids.append(tuple(x.shape[-2:]))
            for stage in self.stages:
                x = stage(x)
                grids.append(tuple(x.shape[-2:]))
        return grids

    @property
    def num_layers(self) -> int:
        return len(self.stages)

    def grid(self, layer: int) -> tuple[int, int]:
        return self._grids[layer + 1]  # EMBEDDINGS (-1) is the stem

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        weight = next(self.trunk.stem.parameters())
        return _tokens(self.trunk.stem(batch.pixel_values.to(weight.device, weight.dtype)))

    def run(
        self, hidden: torch.Tensor, start: int, stop: int, batch, copies: int, records: list[AttentionRecord] | None
    ) -> torch.Tensor:
        if start >= stop:
            return hidden
        x = _spatial(hidden, self.grid(start - 1))
        for stage in self.stages[start:stop]:
            x = stage(x)
        return _tokens(x)

    def suffix(
        self, hidden: torch.Tensor, layer: int, batch, copies: int, records: list[AttentionRecord] | None
    ) -> torch.Tensor:
        last = self.num_layers - 1
        x = _spatial(self.run(hidden, layer + 1, last + 1, batch, copies, records), self.grid(last))
        t = self.trunk
        for tail in ("norm_pre", "final_conv"):  # the trunk's forward_features after its stages
            module = getattr(t, tail, None)
            if module is not None:
                x = module(x)
        return self.visual.head(t.forward_head(x))


__all__ = ["STAGED_TRUNKS", "TimmStagesTower", "is_timm_staged"]
