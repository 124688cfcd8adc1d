"""transformers ``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration`` (one image).

**Where the image tokens enter the language model.** The processor resizes the image with
``smart_resize`` (each side a multiple of ``patch_size * merge_size``, the pixel count within the
processor's min/max pixels: this decides the grid), cuts it into ``patch_size`` patches, repeats
each patch ``temporal_patch_size`` times (a still image is a one-step video) and flattens them
into ``pixel_values`` [grid_h * grid_w, 3 * temporal_patch_size * patch_size^2], ordered merged
cell by merged cell (row-major), the ``merge_size`` x ``merge_size`` patches of a cell together;
``image_grid_thw`` is [[1, grid_h, grid_w]]. The vision tower (``model.model.visual``: a Conv3d
patch embedding over the temporal patches, vision blocks, then the ``PatchMerger`` MLP that joins
each cell's merge_size^2 patches into one vector) gives ``get_image_features(...).pooler_output``:
one token per merged cell, in that row-major order. Qwen2.5-VL's tower runs window attention over
a window-permuted order and restores the row-major order after its merger. ``Qwen2VLModel.forward``
writes these tokens, in order, where ``input_ids == config.image_token_id`` (``masked_scatter``);
that merger output is the bottleneck site.

**Tokens back to pixels.** K = (grid_h / merge) * (grid_w / merge) tokens; token k is merged cell
(k // cols, k % cols) of the rows x cols = (grid_h / merge, grid_w / merge) grid, each cell
``patch_size * merge_size`` pixels square of the resized image (which is what the display shows).

**Positions (M-RoPE).** The language model rotates by three position ids per token (time, row,
column): ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw)`` gives image tokens their
(0, row, col) offsets and the text after the image positions that continue from the image's largest
one, not from its token count. From ``inputs_embeds`` alone the model cannot rebuild them (it falls
back to stale ``rope_deltas`` or plain 0..L-1), so :meth:`answer_logits` passes the model's own
``get_rope_index`` output as ``position_ids`` (the same ids a plain forward computes). That also keeps the
model's ``rope_deltas`` cache untouched; :meth:`generate` restores it after ``model.generate``.

**Prompt and answer.** The prompt holds ``<|image_pad|>`` (the processor's ``image_token``) exactly
once; the processor expands it to the K image tokens. Qwen's chat template writes it as
``<|vision_start|><|image_pad|><|vision_end|>`` inside the user turn, e.g.
``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\\n<|im_start|>assistant\\n``:
give the prompt in that form (not checked). The answer's tokens follow the prompt (text type 0 in
``mm_token_type_ids``). A video placeholder is refused.

Not covered: videos, several images per prompt, batches of prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, is_class, register

EXAMPLE = (
    "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\\n<|im_start|>assistant\\n"
)


class Qwen2VLBackend(GenerativeBackend):
    """Qwen2-VL and Qwen2.5-VL: native-resolution vision tower, 2x2 patch merger, M-RoPE language model."""

    image_token = "<|image_pad|>"

    def __init__(self, model: torch.nn.Module, processor: Any):
        super().__init__(model, processor)
        self.video_token = str(getattr(processor, "video_token", None) or "<|video_pad|>")

    def check_prompt(self, prompt: str) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: give a question or instruction about the image")
        if self.video_token in prompt:
            raise InputError(
                f"the prompt holds the video placeholder {self.video_token!r}: only one image is supported"
            )
        count = prompt.count(self.image_token)
        if count != 1:
            raise InputError(
                f"the prompt must contain the image placeholder {self.image_token!r} exactly once "
                f"(found {count}), e.g. '{EXAMPLE}'"
            )

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        out = self.processor(images=image, text=prompt, return_tensors="pt")
        inputs = {k: out[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
        # the text / image token types M-RoPE groups by (transformers 5 processors return them)
        types = out.get("mm_token_type_ids")
        inputs["mm_token_type_ids"] = (
            types if types is not None else (out["input_ids"] == self.config.image_token_id).long()
        )
        return inputs

    def append_answer(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().append_answer(inputs, answer_ids)
        types = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, answer_ids.numel())], 1)  # text
        return out

    def merged_grid(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(rows, cols) of image tokens: the patch grid of ``image_grid_thw`` over the merge size."""
        thw = inputs["image_grid_thw"]
        if thw.shape[0] != 1 or int(thw[0, 0]) != 1:
            raise InputError(f"one still image is supported, got image_grid_thw {thw.tolist()}")
        merge = int(self.config.vision_config.spatial_merge_size)
        return int(thw[0, 1]) // merge, int(thw[0, 2]) // merge

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        rows, cols = self.merged_grid(inputs)
        cells = torch.arange(rows * cols, device=positions.device)  # the merger's row-major order
        if positions.numel() != cells.numel():
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens but the image gives {cells.numel()}: "
                "use the model's own processor (its patch_size and merge_size)"
            )
        return positions, cells, (rows, cols)

    def image_states(self, query: Query) -> torch.Tensor:
        features = self.model.model.get_image_features(
            pixel_values=query.inputs["pixel_values"], image_grid_thw=query.inputs["image_grid_thw"]
        ).pooler_output
        return torch.cat(list(features), 0)[None]

    def rope_positions(self, query: Query) -> torch.Tensor:
        """The M-RoPE position ids [3, 1, L] the model computes for ``query``'s full sequence."""
        inputs = query.inputs
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        return positions

    def answer_logits(self, query: Query, embeds: torch.Tensor) -> torch.Tensor:
        start, end = query.answer_start, query.answer_end
        batch = embeds.shape[0]
        mask = query.inputs["attention_mask"].expand(batch, -1)
        positions = self.rope_positions(query).expand(-1, batch, -1)
        keep = embeds.shape[1] - (start - 1)  # the positions start-1 .. L-1
        out = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False
        )
        return out.logits[:, : end - start]

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        vision = self.config.vision_config
        patch, merge = int(vision.patch_size), int(vision.spatial_merge_size)
        steps = int(vision.temporal_patch_size)
        rows, cols = self.merged_grid(inputs)
        pixels = inputs["pixel_values"].float().cpu()
        if pixels.shape != (rows * cols * merge * merge, 3 * steps * patch * patch):
            raise InputError(
                f"pixel_values {tuple(pixels.shape)} do not fit the model's patches: use the model's own processor"
            )
        # undo the processor's flattening: [rows, cols, merge, merge, C, T, p, p], time step 0
        cells = pixels.view(rows, cols, merge, merge, 3, steps, patch, patch)[:, :, :, :, :, 0]
        image = cells.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, rows * merge * patch, cols * merge * patch)
        return self.unnormalised(image)

    def generate(self, image: Any, prompt: str, max_new_tokens: int = 32) -> str:
        # model.generate caches the prompt's rope offsets on the model (model.model.rope_deltas): restore them
        inner = self.model.model
        saved = inner.rope_deltas
        try:
            return super().generate(image, prompt, max_new_tokens)
        finally:
            inner.rope_deltas = saved


register(
    GenerativeFamily(
        name="qwen2-vl",
        supports="transformers Qwen2VLForConditionalGeneration (one image)",
        recognises=is_class("Qwen2VLForConditionalGeneration"),
        backend=Qwen2VLBackend,
        model_class="Qwen2VLForConditionalGeneration",
    )
)
register(
    GenerativeFamily(
        name="qwen2.5-vl",
        supports="transformers Qwen2_5_VLForConditionalGeneration (one image)",
        recognises=is_class("Qwen2_5_VLForConditionalGeneration"),
        backend=Qwen2VLBackend,
        model_class="Qwen2_5_VLForConditionalGeneration",
    )
)
