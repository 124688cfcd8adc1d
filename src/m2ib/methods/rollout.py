"""Attention rollout: the plain attention reference (no gradients, no target).

Abnar, Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
https://arxiv.org/abs/2005.00928

Definition implemented, per tower, with ``A_b`` [heads, T, T] the attention probabilities of
block ``b``:

    Â_b = normalise_rows( mean_heads(A_b) + I )      (= 0.5 A + 0.5 I: the residual)
    rollout = Â_{L-1} @ ... @ Â_{start_layer}

Image: the CLS row, CLS dropped (the patch grid). Text: the row of the end-of-text token.
Towers whose head reads every token (no class token) use the mean of the rows.
The map depends on one input only: the other modality, and so ``negatives``, play no part
(passing negatives is an error). It is the reference for what attention alone shows.

Reference, held to it by ``tests/crosscheck/``: ``compute_rollout_attention`` of
Transformer-MM-Explainability at commit 58eaea8 (``VisualBERT/mmf/models/transformers/backends/
ExplanationGenerator.py``), which multiplies ``mean_heads(A) + I`` without renormalising the
rows: ours times ``2^blocks`` equals it (max relative difference 2e-7, tested <= 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from .base import Method, RawScores, Settings, Target, register, setting
from .common import check_layer, pooled_positions, pooled_row, recorded_forward, require_attention


@dataclass(frozen=True)
class RolloutSettings(Settings):
    """Attention rollout's settings (``m2ib.explain(..., method="rollout", start_layer=4)``).

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        start_layer: first block whose attention enters the product (0-based, negative from the
            end); default ``0``: every block, as the paper.
    """

    start_layer: int = setting(
        0, "first block whose attention enters the product (0-based, negative from the end); 0: every block"
    )

    def validate(self) -> None:
        super().validate()
        check_layer(self.start_layer, "start_layer")


def rollout(probs: list[torch.Tensor]) -> torch.Tensor:
    """Product of the residual-augmented, head-averaged attention matrices: [N, T, T]."""
    t = probs[0].shape[-1]
    eye = torch.eye(t, device=probs[0].device)

    def augmented(a: torch.Tensor) -> torch.Tensor:
        aug = a.float().mean(1) + eye
        return aug / aug.sum(-1, keepdim=True)

    joint = augmented(probs[0])
    for a in probs[1:]:
        joint = torch.bmm(augmented(a), joint)
    return joint


@register
class Rollout(Method):
    """Attention rollout: what attention alone shows (no gradient, no target).

    Abnar, Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
    https://arxiv.org/abs/2005.00928. Settings: :class:`RolloutSettings`. The map of a side
    depends on that side's input only (``negatives`` are refused).

    Shapes: the product of [T, T] matrices; image, the class token's row on the patch grid
    [rows, cols], upsampled to [H, W]; text [T], the end token's row.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="rollout")
        >>> exp.image_grid.shape, exp.text_map.shape
        (torch.Size([16, 16]), torch.Size([5]))
    """

    name = "rollout"
    title = "Attention rollout"
    paper = "https://arxiv.org/abs/2005.00928"
    modalities = ("image", "text")
    Settings = RolloutSettings
    uses_target = False

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: RolloutSettings,
    ) -> RawScores:
        require_attention(backend, self.name)
        batch = images if modality == "image" else texts
        start = backend.resolve_layer(modality, settings.start_layer, "start_layer")
        with torch.no_grad():
            _, records = recorded_forward(backend, modality, batch, grad=False)
            joint = rollout([r.probs for r in records[start:]])
        row = pooled_row(joint, pooled_positions(backend, modality, batch))
        if modality == "text":
            row = row * texts.attention_mask.to(row.device)
        return RawScores(row)
