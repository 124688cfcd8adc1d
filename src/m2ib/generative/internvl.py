"""transformers ``InternVLForConditionalGeneration`` (InternVL 2.5 / 3 in transformers' ``-hf`` form), one image.

**Where the image tokens enter the language model.** The processor (``GotOcr2ImageProcessor``
with ``crop_to_patches``, which ``InternVLProcessor`` turns on) picks the R x C arrangement of
``max_patches`` tiles or fewer whose aspect ratio is closest to the image's, resizes the image to
R*T x C*T (T the tile size, ``size``), cuts it into T x T tiles, row by row, and, when there is
more than one tile, adds a *thumbnail*: the whole image resized to T x T. ``pixel_values`` is
[R*C + 1, 3, T, T] (tiles row-major, thumbnail last), or [1, 3, T, T] with one tile. Each goes
through the InternVL vision tower (the class token dropped), a pixel shuffle by
``downsample_ratio`` (1/s: each s x s block of patches becomes one token, its channels
concatenated) and the ``multi_modal_projector`` (LayerNorm, Linear, GELU, Linear).
``InternVLModel`` writes the projector's outputs, images in order and n*n tokens each (n = T /
patch / s), at the ``image_token_id`` (``<IMG_CONTEXT>``) positions (``masked_scatter``): the
bottleneck site is the projector's output.

**Tokens back to pixels.** Token t = i * n + j of an image covers patch rows i*s .. i*s+s-1 and
columns j*s .. j*s+s-1 of it (``InternVLModel.pixel_shuffle``'s two transposes cancel: row-major,
not transposed; tests/generative/test_internvl.py checks it by moving one block's pixels). The
tiles' tokens make one fine grid over the resized image, (R*n) x (C*n): token (i, j) of tile
(r, c) is cell ``(r*n + i) * C*n + c*n + j``, and the display is the tiles stitched back (the image
as the model's tiles see it). **The thumbnail's tokens** each cover an R x C block of that grid
(``crop_to_patches`` squashes the whole image to R*T x C*T for the tiles and to T x T for the
thumbnail: both cover the whole image). They get cell -1 and :attr:`Query.spread` (``image_spread``):
thumbnail token (a, b) covers rows a/n .. (a+1)/n and columns b/n .. (b+1)/n of the image, and its
share of a tile cell is the area both cover over its own (exactly its R x C block). They are
bottlenecked and scored like every other token (the last n*n entries of ``token_scores``) and drawn
spread over their blocks; RISE masks each by its block's mean and occlusion hides it with any of its
cells. With one tile the image is the grid, n x n, all drawn one a cell.

**Which arrangement.** The sequence holds no tile tags (``<img>``, the R*C+1 runs of n*n
``<IMG_CONTEXT>``, ``</img>``), so R x C is recomputed as the processor chose it: transformers'
``get_optimal_tiled_canvas`` on the original image size, among the arrangements of exactly the
number of tiles the processor made. The original size travels in the inputs as ``image_sizes``
[[H, W]], a keyword ``InternVLForConditionalGeneration.forward`` accepts and does not use (the
model's own forward on the query's inputs is unchanged by it; the tests hold that).

**Prompt.** The prompt holds ``<IMG_CONTEXT>`` (the processor's ``image_token``) exactly once, alone:
the processor expands it to ``<img>`` + the image tokens + ``</img>``. InternVL's chat template writes
it in the user turn, e.g. ``<|im_start|>user\\n<IMG_CONTEXT>\\nWhat is shown?<|im_end|>\\n<|im_start|>assistant\\n``.
The original InternVL code's ``<image>`` is refused with that hint, as are ``<img>`` / ``</img>``
written by hand and the video placeholder.

Not covered: several images, videos, batches of prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, class_names, register, whole_image_spread

EXAMPLE = "<|im_start|>user\\n<IMG_CONTEXT>\\nWhat is shown?<|im_end|>\\n<|im_start|>assistant\\n"


def image_size(image: Any) -> tuple[int, int]:
    """(height, width) of an image as the processor reads it (PIL, or an array in either channel order)."""
    from transformers.image_utils import get_image_size, to_numpy_array

    if hasattr(image, "height") and hasattr(image, "width"):  # PIL
        return int(image.height), int(image.width)
    height, width = get_image_size(to_numpy_array(image))
    return int(height), int(width)


class InternVLBackend(GenerativeBackend):
    """InternVL: tiles + a thumbnail, pixel shuffle, MLP projector, causal language model (Qwen2, ...)."""

    default_normalisation = (0.5, 0.5)

    image_token = "<IMG_CONTEXT>"

    def __init__(self, model: torch.nn.Module, processor: Any):
        super().__init__(model, processor)
        self.video_token = str(getattr(processor, "video_token", None) or "<video>")
        self.wrappers = (
            str(getattr(processor, "start_image_token", None) or "<img>"),
            str(getattr(processor, "end_image_token", None) or "</img>"),
        )

    def check_prompt(self, prompt: str) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: give a question or instruction about the image")
        if self.video_token in prompt:
            raise InputError(f"the prompt holds the video placeholder {self.video_token!r}: one image is supported")
        if any(w in prompt for w in self.wrappers):
            raise InputError(
                f"write the image placeholder {self.image_token!r} alone, without {' or '.join(self.wrappers)}: "
                "the processor adds them"
            )
        count = prompt.count(self.image_token)
        if count != 1:
            hint = f"; InternVL's processor expands {self.image_token!r}, not '<image>'" if "<image>" in prompt else ""
            raise InputError(
                f"the prompt must contain InternVL's image placeholder {self.image_token!r} exactly once "
                f"(found {count}{hint}), e.g. '{EXAMPLE}'"
            )

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        out = self.processor(images=image, text=prompt, return_tensors="pt")
        inputs = {k: out[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        inputs["image_sizes"] = torch.tensor([image_size(image)])  # the tile arrangement's input (see above)
        return inputs

    def side(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens a side of one tile: tile px / patch / s, as the model computes it from the tile it is given."""
        pixels = inputs["pixel_values"]
        if pixels.dim() != 4 or pixels.shape[-1] != pixels.shape[-2]:
            raise InputError(f"pixel_values {tuple(pixels.shape)} are not square tiles: use the model's own processor")
        return int(pixels.shape[-1]) // self.token_px()

    def token_px(self) -> int:
        """Pixels a side of the block one token reads: patch x s (s = 1 / ``downsample_ratio``)."""
        patch = self.config.vision_config.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        return patch * round(1 / float(self.config.downsample_ratio))

    def tile_grid(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int] | None:
        """(rows, cols) of tiles the processor cut the image into (a thumbnail last); None for one image only."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        images = int(inputs["pixel_values"].shape[0])
        if images == 1:
            return None
        tiles, size = images - 1, int(inputs["pixel_values"].shape[-1])
        height, width = (int(v) for v in inputs["image_sizes"][0])
        # among the arrangements of exactly `tiles` tiles, the processor's rule picks the one it picked
        cols, rows = get_optimal_tiled_canvas((height, width), (size, size), tiles, tiles)
        return rows, cols

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        n, grid = self.side(inputs), self.tile_grid(inputs)
        images = int(inputs["pixel_values"].shape[0])
        if positions.numel() != images * n * n or (
            positions.numel() and int(positions[-1] - positions[0]) != positions.numel() - 1
        ):
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens for {images} image(s) of {n * n} tokens in one "
                "run: use the model's own processor (its image_seq_length) and one image"
            )
        i, j = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)  # token t = i * n + j
        if grid is None:
            return positions, (i * n + j).to(positions.device), (n, n)
        rows, cols = grid
        cells = [(r * n + i) * (cols * n) + c * n + j for r in range(rows) for c in range(cols)]  # tiles row-major
        cells.append(torch.full((n * n,), -1))  # the thumbnail: scored, not drawn
        return positions, torch.cat(cells).to(positions.device), (rows * n, cols * n)

    def image_spread(
        self, inputs: dict[str, torch.Tensor], cells: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """The thumbnail's tokens over the tiles' grid (both resizes of the whole image): each over its R x C
        block of cells, by area; None with one tile (no thumbnail)."""
        tiles = self.tile_grid(inputs)
        if tiles is None:
            return None
        n, size = self.side(inputs), int(inputs["pixel_values"].shape[-1])
        return whole_image_spread(tiles, n, size, self.token_px(), int(cells.numel()))

    def image_states(self, query: Query) -> torch.Tensor:
        features = self.model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output
        return features.reshape(1, -1, features.shape[-1])  # [images, n*n, D] -> images in order

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"].float().cpu()  # [tiles (+ thumbnail), 3, T, T]
        grid = self.tile_grid(inputs)
        if grid is None:
            image = pixels[0]
        else:  # the tiles stitched back: the resized image they were cut from
            rows, cols = grid
            tiles = pixels[: rows * cols].view(rows, cols, *pixels.shape[1:])
            image = tiles.permute(2, 0, 3, 1, 4).reshape(3, rows * pixels.shape[-2], cols * pixels.shape[-1])
        return self.unnormalised(image)


register(
    GenerativeFamily(
        name="internvl",
        supports="transformers InternVLForConditionalGeneration (tiles + thumbnail; one image)",
        recognises=lambda model: "InternVLForConditionalGeneration" in class_names(model),
        backend=InternVLBackend,
        model_class="InternVLForConditionalGeneration",
    )
)
