"""transformers ``Idefics3ForConditionalGeneration`` and ``SmolVLMForConditionalGeneration`` (same layout).

The processor resizes the image, and with ``do_image_splitting`` cuts it into R x C square tiles of
``max_image_size`` px plus a *global* image (the whole image resized to one tile); without
splitting, or when the image fits one tile, there is the global image only. Its text holds, per
tile, ``<fake_token_around_image><row_r_col_c>`` then ``image_seq_len`` ``<image>`` tokens (a
newline after each row of tiles), then ``<fake_token_around_image><global-img>``, the global
image's ``<image>`` tokens and ``<fake_token_around_image>``.

Each tile (and the global image) goes through the SigLIP-style vision tower, then the connector:
a pixel shuffle by ``scale_factor`` s (each s x s block of patches becomes one token, its channels
concatenated) and a linear projection. ``Idefics3Model`` writes the connector's outputs, tiles in
row-major order then the global image, at the ``image_token_id`` positions (``masked_scatter``):
the bottleneck site is the connector's output. Token t = i * n + j of a tile (n = tile px /
patch / s tokens a side) covers patch rows i*s .. i*s+s-1 and columns j*s .. j*s+s-1 of that tile
(tests/generative/test_idefics3.py checks it by moving one block's pixels).

**The grid** is the tiles' tokens on one fine grid over the whole (resized) image, (R*n) x (C*n):
token (i, j) of tile (r, c) is cell ``(r*n + i) * C*n + c*n + j``. **The global image's tokens**
each cover an R x C block of that grid: the processor resizes the image to R x C tiles' size
(``resize_for_vision_encoder``), cuts the tiles from it and squashes all of it to one tile for the
global image, so both views cover the same whole image. They get cell -1 and :attr:`Query.spread`
(``image_spread``): global token (a, b) covers rows a/n .. (a+1)/n and columns b/n .. (b+1)/n of
the image, a tile cell its own px block of its tile, and its share of a cell is the area both cover
over its own (exactly its R x C block when a tile's px are n whole tokens' blocks, as in every
released model). They are scored like every other token (the last n*n entries of
``token_scores``: ``token_scores[-n*n:].view(n, n)`` is the global image's own coarse map) and drawn
spread over their blocks; RISE masks each by its block's mean and occlusion hides it with any of its
cells. Without tiles the global image is the grid, n x n, and all its tokens are drawn one a cell. The tile each
run of tokens belongs to is read from its ``<row_r_col_c>`` / ``<global-img>`` tag in the
sequence itself, not from the image size.

The prompt holds ``<image>`` once, in the model's chat format (e.g. ``"User:<image>What is shown?
<end_of_utterance>\\nAssistant:"``). Not covered: several images, video frames.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, class_names, register, whole_image_spread

_TAG = re.compile(r"<row_(\d+)_col_(\d+)>|<global-img>")


class Idefics3Backend(GenerativeBackend):
    """Idefics3 / SmolVLM: tiles + a global image, pixel-shuffle connector, causal language model."""

    default_normalisation = (0.5, 0.5)

    def side(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens a side of one tile (or of the global image): tile px / patch / scale factor, as the
        connector's pixel shuffle computes it from the tile it is given."""
        patch, scale = int(self.config.vision_config.patch_size), int(self.config.scale_factor)
        return int(inputs["pixel_values"].shape[-1]) // patch // scale

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        out = self.processor(images=image, text=prompt, return_tensors="pt")
        keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
        return {k: out[k] for k in keys if k in out}

    def tiles(self, inputs: dict[str, torch.Tensor]) -> list[tuple[int, int] | None]:
        """Each run of image tokens' tile (row, col), 0-based, in sequence order; None = the global image."""
        ids = inputs["input_ids"][0]
        positions = (ids == self.config.image_token_id).nonzero()[:, 0].tolist()
        per = self.side(inputs) ** 2
        if len(positions) % per or len(positions) // per != inputs["pixel_values"].shape[1]:
            raise InputError(
                f"the prompt holds {len(positions)} image tokens for {inputs['pixel_values'].shape[1]} image(s) of "
                f"{per} tokens: use the model's own processor (its image_seq_len) and one image"
            )
        out: list[tuple[int, int] | None] = []
        end = 0
        for k in range(0, len(positions), per):
            start = positions[k]
            if positions[k + per - 1] - start != per - 1:  # a tile's tokens are one unbroken run
                raise InputError(f"the image tokens do not come in runs of {per}: use the model's own processor")
            text = self.tokenizer.decode(ids[end:start].tolist(), skip_special_tokens=False)
            tags = list(_TAG.finditer(text))  # the last tag before the run names it
            if not tags:
                raise InputError(
                    "a run of image tokens has no <row_r_col_c> or <global-img> tag: use the model's processor"
                )
            tag = tags[-1]
            out.append(None if tag.group(0) == "<global-img>" else (int(tag.group(1)) - 1, int(tag.group(2)) - 1))
            end = start + per
        return out

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        tiles, n = self.tiles(inputs), self.side(inputs)
        split = [t for t in tiles if t is not None]
        rows, cols = (max(r for r, _ in split) + 1, max(c for _, c in split) + 1) if split else (1, 1)
        expected = [(r, c) for r in range(rows) for c in range(cols)] if split else []
        if split != expected or tiles[len(split) :] != [None]:
            raise InputError(f"unexpected image layout {tiles}: tiles row by row, then one global image")
        i, j = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)  # token t = i * n + j
        cells = [((r * n + i) * (cols * n) + c * n + j) for r, c in split]
        cells.append(torch.full((n * n,), -1) if split else i * n + j)  # the global image: drawn only alone
        return positions, torch.cat(cells).to(positions.device), (rows * n, cols * n)

    def image_spread(
        self, inputs: dict[str, torch.Tensor], cells: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """The global image's tokens over the tiles' grid (both resizes of the one image the processor resized
        to R x C tiles): each over its R x C block of cells, by area; None without tiles."""
        n = self.side(inputs)
        if bool((cells >= 0).all()):  # no tiles: the global image is the grid
            return None
        block = int(self.config.vision_config.patch_size) * int(self.config.scale_factor)  # px a token reads a side
        tiles = (grid[0] // n, grid[1] // n)
        return whole_image_spread(tiles, n, int(inputs["pixel_values"].shape[-1]), block, int(cells.numel()))

    def image_states(self, query: Query) -> torch.Tensor:
        features = self.model.model.get_image_features(
            pixel_values=query.inputs["pixel_values"], pixel_attention_mask=query.inputs.get("pixel_attention_mask")
        ).pooler_output
        states = torch.cat(list(features), 0)[None]
        if states.shape[1] != query.image_positions.numel():  # the model drops an image that is exactly 0 everywhere
            raise InputError(
                f"the vision tower gave {states.shape[1]} image tokens for {query.image_positions.numel()} slots "
                "(a tile of exactly the processor's mean colour is dropped as padding by the model)"
            )
        return states

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"][0].float().cpu()  # [tiles (+ global), 3, T, T]
        split = [t for t in self.tiles(inputs) if t is not None]
        if split:  # the tiles stitched back: the resized image the tiles were cut from
            rows, cols = split[-1][0] + 1, split[-1][1] + 1
            grid = pixels[: rows * cols].view(rows, cols, *pixels.shape[1:])
            pixels = grid.permute(2, 0, 3, 1, 4).reshape(3, rows * pixels.shape[-2], cols * pixels.shape[-1])
        else:
            pixels = pixels[-1]
        return self.unnormalised(pixels)


def _is_smolvlm(model: torch.nn.Module) -> bool:
    return "SmolVLMForConditionalGeneration" in class_names(model)


def _is_idefics3(model: torch.nn.Module) -> bool:  # SmolVLM's class derives from Idefics3's: it is its own family
    return "Idefics3ForConditionalGeneration" in class_names(model) and not _is_smolvlm(model)


register(
    GenerativeFamily(
        name="idefics3",
        supports="transformers Idefics3ForConditionalGeneration (tiles + global image)",
        recognises=_is_idefics3,
        backend=Idefics3Backend,
        model_class="Idefics3ForConditionalGeneration",
    )
)
register(
    GenerativeFamily(
        name="smolvlm",
        supports="transformers SmolVLMForConditionalGeneration (Idefics3 layout; images, not video)",
        recognises=_is_smolvlm,
        backend=Idefics3Backend,
        model_class="SmolVLMForConditionalGeneration",
    )
)
