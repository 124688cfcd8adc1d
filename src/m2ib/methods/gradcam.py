"""Grad-CAM on a transformer block's tokens (the ViT variant used for CLIP).

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391

Definition implemented, for the hidden states ``A`` [T, D] at the output of block ``layer``
and the target ``s`` (cosine similarity, or the margin over negatives):

    w_c = mean_{t in P} dS/dA[t, c]   (gradients averaged over the tokens P: channel weights)
    cam_t = ReLU( sum_c w_c A[t, c] )

Image: the patch tokens' values on the patch grid (prefix tokens such as CLS dropped). Text:
one value per token. Which tokens the mean ``P`` runs over is the setting ``tokens``:

* ``"patches"`` (default): the image's patch tokens only, the prefix tokens (CLS, registers)
  excluded. This is the paper's spatial average over the feature map, and what
  pytorch-grad-cam's ``GradCAM`` computes on a ViT with the usual ``reshape_transform`` (drop
  the class token, fold the patches into a grid): the implementation most users run. ResNet
  stages have no prefix token, so there it is the mean over every spatial position.
* ``"all"``: every image token, CLS included; m2ib's form before it was checked against
  pytorch-grad-cam, kept to reproduce earlier numbers. The class token's gradient is far larger
  than a patch's (its norm a median 500 times a patch's on the shipped shapes model at the
  default block, 20 test pairs), so it sets the channel weights: the map then shows which
  patches align with the class token's gradient, not the patches' own.

A text has no prefix token: under both settings the mean runs over its real tokens (padding
excluded). The default layer is M2IB's (block 9 of CLIP's 12, the same relative depth
otherwise), the layer whose output the M2IB and NIB reference code hook for their Grad-CAM
baselines.

Reference, held to it by ``tests/crosscheck/``: pytorch-grad-cam 1.5.7 ``GradCAM``, its target
layer the block whose output is weighed (ViTs with the ``reshape_transform`` above, ResNets on
their last stage as they are). On tiny random transformers and OpenCLIP ViTs and an OpenCLIP
ResNet, our upsampled min-max map equals the library's to 5e-6 (tested <= 1e-5); with
``tokens="all"`` the two differ by up to 1.0 on the same pairs. ``"all"`` is also the Grad-CAM
baseline of the Grad-ECLIP code (``grad_cam`` in its notebooks: the gradient mean over every token).

One backward pass explains N pairs (the sum of their targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from .base import RawScores, Settings, Target, register, setting
from .common import check_layer, token_mask
from .layered import LayerMethod


@dataclass(frozen=True)
class GradCAMSettings(Settings):
    """Grad-CAM's settings (``m2ib.explain(..., method="gradcam", vision_layer=8)``).

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        vision_layer: image tower block whose output tokens A [T, D] are weighed (0-based, negative
            from the end); default ``None``: M2IB's rule (9 of 12 blocks), the block whose output the
            M2IB and NIB reference code hook for their Grad-CAM baselines. Paper (CNNs): the last
            convolutional layer.
        text_layer: text tower block whose output tokens are weighed; default ``None``, as for
            ``vision_layer``.
        tokens: image side, the tokens whose gradients are averaged into the channel weights:
            ``"patches"`` (the prefix tokens excluded: the paper's spatial mean, pytorch-grad-cam's
            ViT recipe) or ``"all"`` (CLS included, m2ib's earlier form); default ``'patches'``.
    """

    vision_layer: int | None = setting(
        None,
        "image tower block whose output tokens are weighed (0-based, negative from the end); "
        "default: M2IB's rule, 9 of 12 blocks",
    )
    text_layer: int | None = setting(
        None, "text tower block whose output tokens are weighed; default as for vision_layer"
    )
    tokens: Literal["patches", "all"] = setting(
        "patches",
        "image side: the tokens whose gradients are averaged into the channel weights: patches (the "
        "class/prefix tokens excluded, as pytorch-grad-cam and the paper's spatial mean) or all (CLS "
        "included, m2ib's earlier form)",
    )

    def validate(self) -> None:
        super().validate()
        check_layer(self.vision_layer, "vision_layer")
        check_layer(self.text_layer, "text_layer")


@register
class GradCAM(LayerMethod):
    """Gradient-weighted activations of one block's tokens.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017, https://arxiv.org/abs/1610.02391. Settings:
    :class:`GradCAMSettings`; the definition is in this module's docstring.

    Shapes: the hidden states A [T, D] at the output of the block; the map ReLU(sum_c w_c A[t, c]):
    image [rows, cols] on the patch grid (``image_grid``), upsampled to [H, W]; text [T].

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="gradcam")
        >>> exp.image_grid.shape, exp.image_map.shape
        (torch.Size([16, 16]), torch.Size([96, 96]))
        >>> exp.settings["vision_layer"]  # M2IB's rule: block 4 of the shapes model's 6 (9 of CLIP's 12)
        4
    """

    name = "gradcam"
    title = "Grad-CAM"
    paper = "https://arxiv.org/abs/1610.02391"
    modalities = ("image", "text")
    Settings = GradCAMSettings

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: GradCAMSettings,
    ) -> RawScores:
        batch, layer = self.side(modality, images, texts, settings)
        with torch.no_grad():
            hidden = backend.prefix(modality, batch, layer)
        hidden = hidden.detach().requires_grad_(True)
        score = target.score(backend.suffix(modality, hidden, layer, batch))
        (grad,) = torch.autograd.grad(score.sum(), hidden)
        grad, hidden = grad.float(), hidden.detach().float()
        valid = token_mask(modality, batch, hidden.shape[1], hidden.device)  # [N, T]
        averaged = valid
        if modality == "image" and settings.tokens == "patches":
            averaged = valid.clone()
            averaged[:, : backend.geometry.image_prefix_tokens] = 0
        weights = (grad * averaged[..., None]).sum(1, keepdim=True) / averaged.sum(1).clamp_min(1)[:, None, None]
        cam = torch.relu((weights * hidden).sum(-1)) * valid
        return RawScores(cam)
