"""Gradient saliency: how much each input unit's infinitesimal change moves the target.

Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR 2014 workshop, https://arxiv.org/abs/1312.6034

Definition implemented (the target ``s`` is the cosine similarity of the image and text
embeddings, or the margin over negatives, see :class:`~m2ib.methods.base.Target`):

* image: ``|d s / d x|`` for the preprocessed (normalised) pixels ``x`` [3, H, W], reduced over
  the colour channels by their maximum (the paper's choice; ``channels="sum"`` sums them). One
  map value per input pixel.
* text: ``|| d s / d e_t ||_2`` over the channels of each token's input embedding ``e_t`` (token
  plus position embedding, the input of block 0). Padding scores 0.

N pairs are explained with one backward pass of the sum of their targets: pairs do not
interact, so each pair's gradient is exact.

Reference, held to it by ``tests/crosscheck/``: captum 0.9 ``Saliency`` (``abs=True``) on the
same pixels and target, reduced by the maximum over colour channels: max relative difference
8e-8 (tested <= 1e-5); text: captum's ``LayerGradientXActivation(multiply_by_inputs=False)`` at
the embedding layer, L2 over channels, the same tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import EMBEDDINGS, Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from .base import Method, RawScores, Settings, Target, register, setting

CHANNEL_REDUCTIONS = ("max", "sum")


@dataclass(frozen=True)
class SaliencySettings(Settings):
    """Gradient saliency's settings (``m2ib.explain(..., method="saliency", channels="sum")``).

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        channels: image side, how |gradient| [3, H, W] is reduced over the colour channels:
            ``"max"`` (the paper's) or ``"sum"``; default ``'max'``.
    """

    channels: str = setting(
        "max",
        "image side: how |gradient| is reduced over the colour channels: max (Simonyan et al.) or sum",
        choices=CHANNEL_REDUCTIONS,
    )

    def validate(self) -> None:
        super().validate()
        if self.channels not in CHANNEL_REDUCTIONS:
            raise InputError(f"channels={self.channels!r}: use one of {', '.join(CHANNEL_REDUCTIONS)}")


@register
class Saliency(Method):
    """|gradient| of the target w.r.t. the pixels / the token embeddings.

    Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR 2014 workshop, https://arxiv.org/abs/1312.6034.
    Settings: :class:`SaliencySettings`.

    Shapes: image, one value per input pixel [H, W] (no grid: ``image_grid`` is None); text [T],
    the L2 norm of each token embedding's gradient.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="saliency")
        >>> exp.image_map.shape, exp.image_grid, exp.text_map.shape
        (torch.Size([96, 96]), None, torch.Size([5]))
    """

    name = "saliency"
    title = "Gradient saliency"
    paper = "https://arxiv.org/abs/1312.6034"
    modalities = ("image", "text")
    Settings = SaliencySettings

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: SaliencySettings,
    ) -> RawScores:
        if modality == "image":
            pixels = images.pixel_values.detach().to(backend.device, backend.dtype).requires_grad_(True)
            score = target.score(backend.embed("image", ImageBatch(pixels)))
            (grad,) = torch.autograd.grad(score.sum(), pixels)
            grad = grad.abs().float()
            maps = grad.amax(1) if settings.channels == "max" else grad.sum(1)
            return RawScores(maps)
        with torch.no_grad():
            embedded = backend.prefix("text", texts, EMBEDDINGS)
        embedded = embedded.detach().requires_grad_(True)
        score = target.score(backend.suffix("text", embedded, EMBEDDINGS, texts))
        (grad,) = torch.autograd.grad(score.sum(), embedded)
        scores = grad.float().norm(dim=-1) * texts.attention_mask.to(grad.device)
        return RawScores(scores)
