"""transformers ``LlavaNextForConditionalGeneration`` (LLaVA-1.6) and ``LlavaOnevisionForConditionalGeneration``
(LLaVA-OneVision), one image: the "anyres" layout (a base image + high-resolution tiles, unpadded, row newlines).

**Where the image tokens enter the language model.** The image processor picks the grid pinpoint
(``image_grid_pinpoints``, e.g. 672 x 336) that best fits the image (``select_best_resolution``),
resizes the image into it keeping its aspect ratio, pads the rest (centred), and cuts it into
R x C tiles of T px (``crop_size`` / ``size``, the vision tower's ``image_size``); the *base*
image is the whole image resized (squashed) to T x T. ``pixel_values`` is [1, 1 + R*C, 3, T, T]:
the base image, then the tiles row-major; ``image_sizes`` [[H, W]] the original size. Each goes
through the vision tower and ``multi_modal_projector`` (n x n tokens a tile, n = T / patch; NeXT's
CLIP tower's class token is dropped by the ``default`` feature-select strategy, OneVision's SigLIP
has none and uses ``full``). ``pack_image_features`` then lays the tiles' tokens on one
(R*n) x (C*n) grid, cuts the padding off (``unpad_image``: whole rows or whole columns, in tokens,
from the original aspect ratio), for OneVision shrinks that grid bilinearly to
``int(h // r) x int(w // r)`` when it holds more than ~1.21 x ``anyres_max_N``'s N tiles
(r = sqrt(h*w / (N n^2)) > 1.1), and appends the learned ``image_newline`` after each row. The
sequence's image tokens are: the base image's n*n tokens, then the grid row by row, each row
followed by one newline token. ``masked_scatter`` writes them at the ``image_token_id``
positions: that packed output (after projector, unpadding and newlines) is the bottleneck site,
``image_states`` [1, K, D] in that order (``get_image_features(...).pooler_output``).

**Tokens back to pixels (this module's choice).** The grid is the un-padded (for OneVision,
possibly shrunk) tile grid, h x w: its token (i, j) is cell i*w + j. Without the shrink, the
token covers the patch at row top + i, column left + j of the stitched, padded high-resolution
image (top/left: the rows/columns ``unpad_image`` removed); with it, token (i, j) is a bilinear
blend of the un-padded grid's tokens around (i + 0.5) * h_u / h - 0.5 (and likewise for columns),
so it is drawn on the coarser grid over the same region. The **row-end newline tokens** cover no
pixel: cell -1. The **base image's tokens** cover the whole image at n x n, so each covers a
block of about R x C cells, fractionally (the base is squashed, the tiles keep the aspect ratio):
cell -1, and :attr:`Query.spread` gives each one's share of every cell, the area of the original
image both cover over the token's area (``edges``: a cell's extent in the original image, through
unpadding, the tiles and the processor's resize and centred paste; the base token (a, b) covers
rows a H/n .. (a+1) H/n, columns b W/n .. (b+1) W/n). The map (``grid_scores``) thus draws a base
token's score spread over its cells by area, a tile token's in its own cell: each token's score
laid evenly over the image it reads, the base image's at its coarser resolution (as Idefics3's
global image and InternVL's thumbnail, over whole blocks there): an answer read mostly from the
base image would otherwise draw nothing. RISE masks a base token by its shares' weighted mean of
the mask over its cells; occlusion hides it with every square it has a share in. The
**display** is the tiles stitched back, cropped to the un-padded region: the image as the tile
tokens see it, at the patch grid's resolution (each tile cut to the n * patch px its patches read:
SigLIP-384/14 reads 378 of 384). The tests move one patch of a tile (and of the base image) with a
patch-local projector input and check that exactly the token these cells name moves, and check
each cell's extent against what the display shows there.

**Prompt.** ``<image>`` once (the processor expands it), in the model's chat format, e.g.
LLaVA-1.6-Mistral's ``"[INST] <image>\\nWhat is shown? [/INST]"`` or OneVision's
``"<|im_start|>user <image>\\nWhat is shown?<|im_end|><|im_start|>assistant\\n"``. Not covered:
several images (OneVision's multi-image path: no tiles, one newline), videos, batches of prompts.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, area_spread, is_class, register


class LlavaNextBackend(GenerativeBackend):
    """LLaVA-NeXT (and OneVision): a base image + un-padded high-resolution tiles, row newlines."""

    #: the packed features' extra inputs the model's forward takes (OneVision adds ``batch_num_images``)
    extra_inputs: tuple[str, ...] = ("image_sizes",)

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        out = self.processor(images=image, text=prompt, return_tensors="pt")
        keys = ("input_ids", "attention_mask", "pixel_values", *self.extra_inputs)
        return {k: torch.as_tensor(out[k]) for k in keys if k in out}

    def tokens_a_side(self) -> int:
        """n: tokens a side of one tile (and of the base image), the tower's image size / patch size."""
        vision = self.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def tile_grid(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(R, C): the tiles the processor cut the image into, as the model recomputes them."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        size = [int(v) for v in inputs["image_sizes"][0]]
        pinpoints = self.config.image_grid_pinpoints
        rows, cols = get_anyres_image_grid_shape(size, pinpoints, int(self.config.vision_config.image_size))
        if inputs["pixel_values"].dim() != 5 or inputs["pixel_values"].shape[1] < 1 + rows * cols:
            raise InputError(
                f"pixel_values {tuple(inputs['pixel_values'].shape)} do not hold a base image and {rows} x {cols} "
                "tiles: use the model's own processor (its image_grid_pinpoints) and one image"
            )
        return int(rows), int(cols)

    def unpadded(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
        """(top, left, h, w): the un-padded region of the (R*n) x (C*n) tile grid, in tokens (the model's
        own ``unpad_image``, run on a grid of indices)."""
        from transformers.models.llava_next.modeling_llava_next import unpad_image

        rows, cols = self.tile_grid(inputs)
        n = self.tokens_a_side()
        index = torch.arange(rows * n * cols * n).view(1, rows * n, cols * n)
        size = [int(v) for v in inputs["image_sizes"][0]]
        kept = unpad_image(index, size)
        if kept.numel() == 0:  # the model then packs the base image only: nothing to draw
            raise InputError(
                f"the {size[0]} x {size[1]} image is too thin for this model: unpadding leaves no row or column of "
                "its tiles' tokens; crop or pad it to a less extreme aspect ratio"
            )
        top, left = divmod(int(kept[0, 0, 0]), cols * n)
        return top, left, int(kept.shape[1]), int(kept.shape[2])

    def packed_grid(self, height: int, width: int) -> tuple[int, int]:
        """The grid the tokens are written on: the un-padded h x w itself (NeXT)."""
        return height, width

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        n = self.tokens_a_side()
        _, _, height, width = self.unpadded(inputs)
        rows, cols = self.packed_grid(height, width)
        grid = torch.arange(rows * cols).view(rows, cols)
        newline = torch.full((rows, 1), -1)  # the row-end newline: no pixel
        cells = torch.cat([torch.full((n * n,), -1), torch.cat([grid, newline], 1).flatten()])  # base: not drawn
        if positions.numel() != cells.numel():
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens but the image gives {cells.numel()} "
                f"({n * n} base, {rows} x {cols} tiles' + {rows} newlines): use the model's own processor "
                "(its image_grid_pinpoints, patch_size, vision_feature_select_strategy) and one image"
            )
        return positions, cells.to(positions.device), (rows, cols)

    def edges(self, inputs: dict[str, torch.Tensor], axis: int, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each of the grid's ``cells`` along ``axis`` (0: rows, 1: columns) starts and ends, in the
        original image's pixels: un-padded token coordinate -> padded -> the processor's canvas (tiles of T px
        holding n patches of p px: with T > n p a tile's last pixels are read by no token, so a cell's end
        is not the next one's start) -> the image resized into that canvas, centred."""
        from transformers.image_processing_utils import select_best_resolution

        size = [int(v) for v in inputs["image_sizes"][0]]
        best = select_best_resolution(tuple(size), self.config.image_grid_pinpoints)
        scale = min(best[0] / size[0], best[1] / size[1])  # as get_patch_output_size
        resized = best[axis] if best[axis] / size[axis] == scale else min(math.ceil(size[axis] * scale), best[axis])
        offset = (best[axis] - resized) // 2  # the processor's centred paste
        top, left, height, width = self.unpadded(inputs)
        start, extent = (top, height) if axis == 0 else (left, width)
        n, tile = self.tokens_a_side(), int(inputs["pixel_values"].shape[-1])
        token = start + torch.arange(cells + 1, dtype=torch.float64) * extent / cells  # padded, fractional

        def pixels(at: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:  # ``at`` inside token ``whole``
            whole = whole.clamp(start, start + extent - 1)
            canvas = (whole // n) * tile + (whole % n + at - whole) * (tile // n)
            return ((canvas - offset) * size[axis] / resized).clamp(0, size[axis])

        low, high = token[:-1], token[1:]
        return pixels(low, low.floor()), pixels(high, high.ceil() - 1)

    def image_spread(
        self, inputs: dict[str, torch.Tensor], cells: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """The base image's tokens over the grid: token (a, b) covers rows a H/n .. (a+1) H/n and columns
        b W/n .. (b+1) W/n of the original H x W image (the base is the image squashed to n x n patches); its
        share of a cell is the area both cover over the token's area (separable: rows times columns)."""
        n = self.tokens_a_side()
        tokens, extents = [], []
        for axis, count in enumerate(grid):
            base = torch.arange(n + 1, dtype=torch.float64) * float(inputs["image_sizes"][0][axis]) / n
            tokens.append((base[:-1], base[1:]))
            extents.append(self.edges(inputs, axis, count))
        # the base tokens come first in the sequence
        return area_spread((tokens[0], tokens[1]), (extents[0], extents[1]), 0, int(cells.numel()))

    def image_features(self, inputs: dict[str, torch.Tensor]) -> Any:
        extra = {k: inputs[k] for k in self.extra_inputs if k in inputs}
        return self.model.model.get_image_features(pixel_values=inputs["pixel_values"], **extra).pooler_output

    def image_states(self, query: Query) -> torch.Tensor:
        states = torch.cat(list(self.image_features(query.inputs)), 0)[None]
        if states.shape[1] != query.image_positions.numel():
            raise InputError(
                f"the model packs {states.shape[1]} image tokens for {query.image_positions.numel()} slots: use "
                "the model's own processor (its image_grid_pinpoints and vision_feature_select_strategy)"
            )
        return states

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        rows, cols = self.tile_grid(inputs)
        top, left, height, width = self.unpadded(inputs)
        n = self.tokens_a_side()
        patch = int(inputs["pixel_values"].shape[-1]) // n
        size = n * patch  # the pixels a tile's patches see (SigLIP-384/14: 378 of 384; the rest is never read)
        tiles = inputs["pixel_values"][0, 1 : 1 + rows * cols, :, :size, :size].float().cpu()  # row-major
        image = tiles.reshape(rows, cols, 3, size, size).permute(2, 0, 3, 1, 4).reshape(3, rows * size, cols * size)
        image = image[:, top * patch : (top + height) * patch, left * patch : (left + width) * patch]  # un-padded
        return self.unnormalised(image)


class LlavaOnevisionBackend(LlavaNextBackend):
    """LLaVA-OneVision: NeXT's layout, the un-padded grid shrunk past ``anyres_max_N`` (``vision_aspect_ratio``)."""

    extra_inputs = ("image_sizes", "batch_num_images")

    def __init__(self, model: torch.nn.Module, processor: Any):
        super().__init__(model, processor)
        self.video_token = str(getattr(processor, "video_token", None) or "<video>")

    def check_prompt(self, prompt: str) -> None:
        if isinstance(prompt, str) and self.video_token in prompt:
            raise InputError(f"the prompt holds the video placeholder {self.video_token!r}: one image is supported")
        super().check_prompt(prompt)

    def packed_grid(self, height: int, width: int) -> tuple[int, int]:
        """The un-padded h x w, shrunk as ``pack_image_features`` does past ``anyres_max_N``'s N tiles."""
        found = re.fullmatch(r"anyres_max_(\d+)", str(self.config.vision_aspect_ratio))
        if found is None:  # the model itself parses only this form
            raise InputError(f"vision_aspect_ratio {self.config.vision_aspect_ratio!r} is not 'anyres_max_N'")
        most = int(found.group(1))
        n = self.tokens_a_side()
        ratio = math.sqrt(height * width / (most * n**2))
        if ratio > 1.1:
            return int(height // ratio), int(width // ratio)
        return height, width


register(
    GenerativeFamily(
        name="llava-next",
        supports="transformers LlavaNextForConditionalGeneration (LLaVA-1.6: base image + unpadded tiles)",
        recognises=is_class("LlavaNextForConditionalGeneration"),
        backend=LlavaNextBackend,
        model_class="LlavaNextForConditionalGeneration",
    )
)
register(
    GenerativeFamily(
        name="llava-onevision",
        supports="transformers LlavaOnevisionForConditionalGeneration (base image + unpadded tiles; one image)",
        recognises=is_class("LlavaOnevisionForConditionalGeneration"),
        backend=LlavaOnevisionBackend,
        model_class="LlavaOnevisionForConditionalGeneration",
    )
)
