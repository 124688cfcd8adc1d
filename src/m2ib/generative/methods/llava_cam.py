"""LLaVA-CAM: Grad-CAM on the language model's hidden states at the image positions.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391, applied inside a generative VLM's
language model, where the image tokens are positions of one causal sequence.

Definition implemented, for ``h_k`` [D] the output of decoder block ``layer`` at image position
``k`` (the block's output hidden state, before the next block's norm) and ``logL`` the answer's
summed log-likelihood, teacher-forced:

    w_c   = mean_k d logL / d h_k[c]          (channel weights: the mean over the K image positions)
    cam_k = ReLU( sum_c w_c h_k[c] )

The layer (setting ``layer``): 0-based, negative from the end; default (``None``) block
``(blocks - 1) // 2``, the middle of the language model (block 15 of LLaVA-1.5-7B's 32; block 0 of
the 2-block test model). This default is m2ib's choice, not a published one: Grad-CAM's "last
convolutional layer" has no counterpart here, since in a causal language model the last block's
output at the image positions reaches no answer logit (its gradient is exactly zero; that layer is
refused in one line). Mid-depth is where LLaVA's answer tokens read the image most (e.g. Zhang et
al., "MLLMs Know Where to Look", ICLR 2025, use LLaVA-1.5's block 14 for their gradient-weighted
attention). One forward and one backward pass; a forward hook on the block, always removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...methods.base import Settings
from ...settings import check_layer, setting
from ..base import GenerativeBackend, Query
from .base import AnswerMethod, AnswerScores, block_index, captured, decoder_layers, plain_states, register


@dataclass(frozen=True)
class LlavaCAMSettings(Settings):
    """LLaVA-CAM settings.

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
        layer: Language-model block whose output at the image positions is weighed (0-based,
            negative from the end; default: (blocks - 1) // 2, the middle block; the last block is
            refused: its output there reaches no answer logit); default ``None``.
    """

    layer: int | None = setting(
        None,
        "language-model block whose output at the image positions is weighed (0-based, negative from the "
        "end; default: (blocks - 1) // 2, the middle block; the last block is refused: its output there "
        "reaches no answer logit)",
    )

    def validate(self) -> None:
        super().validate()
        check_layer(self.layer, "layer")


def cam_layer(layer: int | None, blocks: int) -> int:
    """The block LLaVA-CAM reads: ``layer`` resolved (default the middle), the last refused in one line."""
    index = (blocks - 1) // 2 if layer is None else block_index(layer, blocks)
    if index == blocks - 1:
        raise InputError(
            f"layer={layer} is the language model's last block: in a causal model its output at the image "
            f"positions reaches no answer logit (zero gradient); choose a block below {blocks - 1}"
        )
    return index


@register
class LlavaCAM(AnswerMethod):
    """Grad-CAM on a language-model block's output at the image positions."""

    name = "llava_cam"
    title = "LLaVA-CAM (Grad-CAM in the language model)"
    paper = "https://arxiv.org/abs/1610.02391"
    Settings = LlavaCAMSettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: LlavaCAMSettings) -> AnswerScores:
        layers = decoder_layers(backend)
        index = cam_layer(settings.layer, len(layers))
        states = plain_states(backend, query)
        with captured([layers[index]]) as outputs:
            value = backend.rest(query, states)
        (hidden,) = outputs  # [1, L, D]
        (grad,) = torch.autograd.grad(value.sum(), hidden)
        h = hidden.detach()[0, query.image_positions].float()  # [K, D]
        weights = grad[0, query.image_positions].float().mean(0)  # [D]
        cam = torch.relu((h * weights).sum(-1))
        return AnswerScores(cam, {"log_likelihood": float(value.detach()[0]), "layer": float(index)})
