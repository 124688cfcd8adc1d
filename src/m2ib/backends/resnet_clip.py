"""ResNet CLIP image towers (``ModifiedResNet``: OpenAI ``clip`` RN50/RN101/RN50x*, OpenCLIP ``RN50``...).

The bottleneck sits on a convolutional stage, with spatial positions playing the role of
tokens (IBA's original setting). Blocks are the stages: ``EMBEDDINGS`` is the stem's output
(3 convolutions and an average pool), blocks 0..3 are ``layer1..layer4``. Hidden states are
[N, H*W, C] tokens, row-major over the stage's H x W grid, with no prefix token; ``suffix``
reshapes them back to [N, C, H, W]. The grid shrinks with depth (for 224 px: 56, 56, 28, 14, 7),
so ``token_grid("image", layer)`` gives each layer's. The head is CLIP's attention pool, whose
only output is the query at the mean token; it is computed for that query alone (same numbers).

The text tower is the host family's (OpenCLIP or OpenAI ``clip``); this module only knows the
image tower, so both families pick it when ``model.visual`` is a ModifiedResNet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import AttentionRecord, ImageBatch
from .towers import Tower

# OpenAI clip's and OpenCLIP's ModifiedResNet (and its AttentionPool2d) ship no types: typed Any here.


def is_modified_resnet(visual: torch.nn.Module) -> bool:
    return type(visual).__name__ == "ModifiedResNet" and hasattr(visual, "attnpool") and hasattr(visual, "layer4")


def _conv_out(size: int, conv: torch.nn.Conv2d, axis: int) -> int:
    if isinstance(conv.padding, str):  # ModifiedResNet pads by numbers; a mode ('same') has no formula here
        raise ValueError(f"stem convolution padding {conv.padding!r} is not supported (numeric padding is)")
    k, s, p, d = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis], conv.dilation[axis]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class ResNetTower(Tower):
    """A ModifiedResNet split at its stages; see the module docstring."""

    prefix_tokens = 0

    def __init__(self, visual: Any):
        self.visual = visual
        size = getattr(visual, "image_size", None) or visual.input_resolution
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.stages = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        # OpenCLIP names the stem's activations act1..3, OpenAI's clip relu1..3.
        self.acts = [getattr(visual, f"act{i}", None) or getattr(visual, f"relu{i}") for i in (1, 2, 3)]
        self._grids = self._stage_grids()
        pool = visual.attnpool
        expected = pool.positional_embedding.shape[0] - 1
        rows, cols = self._grids[-1]
        if rows * cols != expected:
            raise ValueError(
                f"the attention pool expects {expected} positions but a {self.image_size} input "
                f"gives a {rows}x{cols} last stage"
            )

    def _stage_grids(self) -> list[tuple[int, int]]:
        """Spatial size after the stem, then after each stage (stride-2 stages halve it)."""
        v = self.visual
        out = []
        for axis in (0, 1):
            size = self.image_size[axis]
            for conv in (v.conv1, v.conv2, v.conv3):
                size = _conv_out(size, conv, axis)
            size //= 2  # the stem's AvgPool2d(2)
            sizes = [size]
            for stage in self.stages:
                stride = stage[0].stride
                size = size // stride if stride > 1 else size
                sizes.append(size)
            out.append(sizes)
        return list(zip(out[0], out[1]))

    @property
    def num_layers(self) -> int:
        return 4

    def grid(self, layer: int) -> tuple[int, int]:
        return self._grids[layer + 1]  # EMBEDDINGS (-1) is the stem

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        v = self.visual
        x = batch.pixel_values.to(v.conv1.weight.device, v.conv1.weight.dtype)
        for conv, bn, act in zip((v.conv1, v.conv2, v.conv3), (v.bn1, v.bn2, v.bn3), self.acts):
            x = act(bn(conv(x)))
        return _tokens(v.avgpool(x))

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
        hidden = self.run(hidden, layer + 1, 4, batch, copies, records)
        return attention_pool(self.visual.attnpool, hidden)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def _spatial(hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N, H*W, C] -> [N, C, H, W] (contiguous, as the convolutions expect)."""
    n, t, c = hidden.shape
    if t != grid[0] * grid[1]:
        raise ValueError(f"hidden states have {t} positions, the stage's grid is {grid[0]}x{grid[1]}")
    return hidden.transpose(1, 2).reshape(n, c, *grid).contiguous()


def attention_pool(pool: Any, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's AttentionPool2d on [N, H*W, C] tokens: the mean token, with positional embeddings,
    attends over itself and every position; only its output (after ``c_proj``) is computed."""
    n, t, c = tokens.shape
    x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + pool.positional_embedding.to(tokens.dtype)
    heads = pool.num_heads
    query = pool.q_proj(x[:, :1]).view(n, 1, heads, c // heads).transpose(1, 2)
    key = pool.k_proj(x).view(n, t + 1, heads, c // heads).transpose(1, 2)
    value = pool.v_proj(x).view(n, t + 1, heads, c // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value)  # scale: head_dim ** -0.5, as in the library
    return pool.c_proj(out.reshape(n, c))
