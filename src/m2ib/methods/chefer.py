"""Chefer et al.: gradient-weighted attention relevancy, as applied to CLIP (both towers).

Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021, https://arxiv.org/abs/2103.15679
(code: github.com/hila-chefer/Transformer-MM-Explainability, ``CLIP_explainability.ipynb``).

Definition implemented, per tower, with ``A_b`` [heads, T, T] the attention probabilities of
block ``b`` and ``s`` the target (cosine similarity of the two embeddings, or the margin over
negatives), all gradients from one backward pass:

    R = I  (T x T)
    for b = start_layer .. L-1:   R = R + mean_heads( ReLU( dS/dA_b * A_b ) ) @ R

Image: the CLS row of R, CLS dropped (the patch grid). Text: the row of the end-of-text token
(the pooled one), every token; its own identity entry (the 1 of R = I) is removed so that the
end token is scored by what it gathered, not by the identity. Towers whose head reads every
token (no class token: average or attention pooling) use the mean of R's rows.

Defaults and deviations: ``start_layer=0`` uses every block, as the paper's rule. The CLIP
notebook defaults to the last block only (``start_layer=-1`` reproduces that) and
differentiates the logit (``logit_scale * cosine``) where we use the cosine: with several
blocks the scale changes the relative weight of the products in R, with one block it does not.

Reference, held to it by ``tests/crosscheck/``: Transformer-MM-Explainability at commit 58eaea8
(``CLIP_explainability.ipynb``, ``interpret``). With ``start_layer=-1`` the maps equal the
notebook's up to the logit scale (max relative difference 6e-7 after dividing by the sum); with
every block and the cosine target they are equal (3e-7); the notebook's logit target over every
block moves the map by 0.7 % (relative, the deviation above). Text: the notebook's end-token
row, tokens 1 .. eot-1, equals ours (tested <= 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from .base import Method, RawScores, Settings, Target, register, setting
from .common import check_layer, pooled_positions, pooled_row, recorded_forward, require_attention


@dataclass(frozen=True)
class CheferSettings(Settings):
    """Chefer et al.'s settings (``m2ib.explain(..., method="chefer", start_layer=-1)``).

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        start_layer: first block whose attention enters R (0-based, negative from the end);
            default ``0``: every block (the paper's rule). ``-1``: the last block only (the CLIP notebook).
    """

    start_layer: int = setting(
        0,
        "first block whose attention enters R (0-based, negative from the end); "
        "0: every block (the paper), -1: the last block only (the CLIP notebook)",
    )

    def validate(self) -> None:
        super().validate()
        check_layer(self.start_layer, "start_layer")


def relevancy(probs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """R = I; R += mean_heads(ReLU(grad * A)) @ R for each block in order: [N, T, T]."""
    n, _, t, _ = probs[0].shape
    r = torch.eye(t, device=probs[0].device).expand(n, t, t)
    for a, g in zip(probs, grads):
        cam = (g.float() * a.detach().float()).clamp(min=0).mean(1)
        r = r + torch.bmm(cam, r)
    return r


@register
class Chefer(Method):
    """Gradient-weighted attention relevancy propagated through the blocks.

    Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021, https://arxiv.org/abs/2103.15679. Settings:
    :class:`CheferSettings`; needs a backend that records attention (transformer towers).

    Shapes: R [T, T] per tower; image, the class token's row on the patch grid [rows, cols],
    upsampled to [H, W]; text [T], the end token's row.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="chefer")
        >>> exp.image_grid.shape, exp.text_map.shape
        (torch.Size([16, 16]), torch.Size([5]))
    """

    name = "chefer"
    title = "Chefer et al."
    paper = "https://arxiv.org/abs/2103.15679"
    modalities = ("image", "text")
    Settings = CheferSettings

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: CheferSettings,
    ) -> RawScores:
        require_attention(backend, self.name)
        batch = images if modality == "image" else texts
        start = backend.resolve_layer(modality, settings.start_layer, "start_layer")
        embedding, records = recorded_forward(backend, modality, batch)
        probs = [r.probs for r in records[start:]]
        grads = torch.autograd.grad(target.score(embedding).sum(), probs)
        r = relevancy(probs, grads)
        positions = pooled_positions(backend, modality, batch)
        row = pooled_row(r, positions)  # [N, T]
        if modality == "text":
            if positions is not None:
                row = row - torch.nn.functional.one_hot(positions.to(row.device), row.shape[1]).float()
            row = row * texts.attention_mask.to(row.device)
        return RawScores(row)
