"""transformers ``PaliGemmaForConditionalGeneration`` (PaliGemma 1 and 2: one fixed-size image, no tiles).

The image tokens are ``multi_modal_projector(vision_tower(pixels).last_hidden_state)`` (SigLIP, no
class token, no pooling head): token k is patch k of the (H/p) x (W/p) grid, row-major.
``PaliGemmaModel.forward`` writes them unchanged where ``input_ids == image_token_index``
(``masked_scatter``); the bottleneck site is that projector output. The 1/sqrt(hidden) scale of
older transformers (image features divided, to cancel Gemma's sqrt(hidden) embedding scale) is
gone from the installed version: Gemma's *word* embedding now carries its own scale
(``GemmaTextScaledWordEmbedding``) and image features are written as they leave the projector, so
``image_states`` is exactly what sits at the image positions of ``inputs_embeds``
(tests/generative/test_paligemma.py checks it against a hook on the language model's input).

Attention: the prefix (image tokens, ``<bos>``, prompt, ``\\n``) attends bidirectionally, the suffix
(the answer) causally; the model reads which is which from ``token_type_ids`` (0 prefix, 1 suffix).
The answer is appended with type 1 and ``answer_logits`` passes ``token_type_ids``: left out, the
model falls back to a causal mask over the whole sequence and its logits change.

Prompt: PaliGemma's processor puts the image tokens and ``<bos>`` before the text itself, so the
prompt is plain text (a task prefix such as ``"answer en what is on the table?"``); a prompt that
starts with ``<image>`` once (the processor's documented form) is passed through as is; ``<image>``
anywhere else, or twice, is one line. The tokens are those of ``processor(images=, text=prompt)``.
The answer is tokenized on its own (PaliGemma's suffix, as the processor's ``suffix`` does, without
the ``<eos>`` it appends).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import GenerativeBackend, GenerativeFamily, Query, is_class, register


class PaliGemmaBackend(GenerativeBackend):
    """PaliGemma: SigLIP vision tower, linear projector, Gemma with a bidirectional prefix."""

    default_normalisation = (0.5, 0.5)

    def check_prompt(self, prompt: str) -> None:
        """Plain text, or ``<image>`` once at the very start; anything else is one line."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: give PaliGemma a task prefix, e.g. 'answer en what is shown?'")
        token, count = self.image_token, prompt.count(self.image_token)
        if count > 1:
            raise InputError(f"PaliGemma takes one image: the prompt holds {token!r} {count} times; give plain text")
        if count == 1 and not prompt.startswith(token):
            raise InputError(
                f"PaliGemma's processor puts the image before the prompt: give plain text, or {token!r} at its very start"
            )

    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        text = prompt if prompt.startswith(self.image_token) else self.image_token + prompt  # the processor's own form
        out = self.processor(images=image, text=text, return_tensors="pt")
        return {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}

    def append_answer(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().append_answer(inputs, answer_ids)
        types = inputs["token_type_ids"]
        suffix = types.new_ones((1, int(answer_ids.numel())))  # type 1: the answer is the causal suffix
        out["token_type_ids"] = torch.cat([types, suffix], 1)
        return out

    def answer_logits(self, query: Query, embeds: torch.Tensor) -> torch.Tensor:
        start, end = query.answer_start, query.answer_end
        batch = embeds.shape[0]
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=query.inputs["attention_mask"].expand(batch, -1),
            token_type_ids=query.inputs["token_type_ids"].expand(batch, -1),  # the bidirectional prefix
            logits_to_keep=embeds.shape[1] - (start - 1),
            use_cache=False,
        )
        return out.logits[:, : end - start]

    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        positions = (inputs["input_ids"][0] == self.config.image_token_id).nonzero()[:, 0]
        h, w = inputs["pixel_values"].shape[-2:]
        patch = int(self.config.vision_config.patch_size)
        rows, cols = int(h) // patch, int(w) // patch
        if positions.numel() != rows * cols:
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens but the image gives {rows * cols}: "
                "use the model's own processor (its image_seq_length and image size)"
            )
        return positions, torch.arange(rows * cols, device=positions.device), (rows, cols)

    def image_states(self, query: Query) -> torch.Tensor:
        return self.model.model.get_image_features(pixel_values=query.inputs["pixel_values"]).pooler_output

    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"][0].float().cpu()
        return self.unnormalised(pixels)


register(
    GenerativeFamily(
        name="paligemma",
        supports="transformers PaliGemmaForConditionalGeneration (PaliGemma 1 and 2, prompt as plain text)",
        recognises=is_class("PaliGemmaForConditionalGeneration"),
        backend=PaliGemmaBackend,
        model_class="PaliGemmaForConditionalGeneration",
    )
)
