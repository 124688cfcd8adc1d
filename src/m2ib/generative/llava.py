"""transformers ``LlavaForConditionalGeneration`` (the LLaVA-1.5 layout: one fixed-size image, no tiles).

The image tokens are ``multi_modal_projector(vision_tower(pixels).hidden_states[vision_feature_layer])``,
without the class token under the ``default`` feature-select strategy (with ``full`` the class
token comes first and covers no pixel). ``LlavaModel.forward`` writes them, in order, at the
positions where ``input_ids == config.image_token_id`` (``masked_scatter``): token k is patch k of
the (H/p) x (W/p) grid, row-major. The bottleneck site is that projector output.

LLaVA-NeXT / OneVision (tiles, unpadding, row newlines) are their own families, in
:mod:`.llava_next`. Not covered here: several images per prompt, batches of prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, is_class, register


class LlavaBackend(GenerativeBackend):
    """LLaVA-1.5: CLIP-style vision tower, MLP projector, causal language model."""

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        out = self.processor(images=image, text=prompt, return_tensors="pt")
        return {k: out[k] for k in ("input_ids", "attention_mask", "pixel_values")}

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        h, w = inputs["pixel_values"].shape[-2:]
        patch = int(self.config.vision_config.patch_size)
        rows, cols = int(h) // patch, int(w) // patch
        cells = torch.arange(rows * cols, device=positions.device)
        if self.config.vision_feature_select_strategy == "full":  # the class token first: no pixel
            cells = torch.cat([cells.new_full((1,), -1), cells])
        if positions.numel() != cells.numel():
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens but the image gives {cells.numel()}: "
                "use the model's own processor (its patch_size and vision_feature_select_strategy)"
            )
        return positions, cells, (rows, cols)

    def image_states(self, query: Query) -> torch.Tensor:
        features = self.model.model.get_image_features(
            pixel_values=query.inputs["pixel_values"],
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        ).pooler_output
        return torch.cat(list(features), 0)[None]

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"][0].float().cpu()
        return self.unnormalised(pixels)


register(
    GenerativeFamily(
        name="llava",
        supports="transformers LlavaForConditionalGeneration (LLaVA-1.5 layout)",
        recognises=is_class("LlavaForConditionalGeneration"),
        backend=LlavaBackend,
        model_class="LlavaForConditionalGeneration",
    )
)
