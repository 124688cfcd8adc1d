"""Grad-CAM on a transformer block's tokens (the ViT variant used for CLIP).

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391

Definition implemented, for the hidden states ``A`` [T, D] at the output of block ``layer``
and the target ``s`` (cosine similarity, or the margin over negatives):

    w_c = mean_t dS/dA[t, c]          (gradients averaged over the tokens: channel weights)
    cam_t = ReLU( sum_c w_c A[t, c] )

The mean runs over every token of the image (CLS included) and over the real tokens of a
text (padding excluded). Image: the patch tokens' values on the patch grid (CLS dropped);
text: one value per token. This is the token form of Grad-CAM that the Grad-ECLIP and M2IB
papers compare with; the convolutional original averages over spatial positions instead.
The default layer is M2IB's (block 9 of CLIP's 12, the same relative depth otherwise), the
layer whose output the M2IB and NIB reference code hook for their Grad-CAM baselines.

One backward pass explains N pairs (the sum of their targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from .base import RawScores, Settings, Target, register, setting
from .common import check_layer, token_mask
from .layered import LayerMethod, default_layer, with_tower_layers


@dataclass(frozen=True)
class GradCAMSettings(Settings):
    """Grad-CAM settings."""

    vision_layer: int | None = setting(
        None, "image tower block whose output tokens are weighed (0-based, negative from the end); "
              "default: M2IB's rule, 9 of 12 blocks")
    text_layer: int | None = setting(None, "text tower block whose output tokens are weighed; default as for "
                                           "vision_layer")

    def validate(self) -> None:
        super().validate()
        check_layer(self.vision_layer, "vision_layer")
        check_layer(self.text_layer, "text_layer")


@register
class GradCAM(LayerMethod):
    """Gradient-weighted activations of one block's tokens."""

    name = "gradcam"
    title = "Grad-CAM"
    paper = "https://arxiv.org/abs/1610.02391"
    modalities = ("image", "text")
    Settings = GradCAMSettings

    def resolved(self, backend: Backend, settings: GradCAMSettings) -> GradCAMSettings:
        return with_tower_layers(backend, settings, default_layer)

    def attribute(self, backend: Backend, modality: Modality, images: ImageBatch, texts: TextBatch,
                  target: Target, settings: GradCAMSettings) -> RawScores:
        batch = images if modality == "image" else texts
        layer = settings.vision_layer if modality == "image" else settings.text_layer
        with torch.no_grad():
            hidden = backend.prefix(modality, batch, layer)
        hidden = hidden.detach().requires_grad_(True)
        score = target.score(backend.suffix(modality, hidden, layer, batch))
        (grad,) = torch.autograd.grad(score.sum(), hidden)
        grad, hidden = grad.float(), hidden.detach().float()
        valid = token_mask(modality, batch, hidden.shape[1], hidden.device)  # [N, T]
        weights = (grad * valid[..., None]).sum(1, keepdim=True) / valid.sum(1).clamp_min(1)[:, None, None]
        cam = torch.relu((weights * hidden).sum(-1)) * valid
        return RawScores(cam)
