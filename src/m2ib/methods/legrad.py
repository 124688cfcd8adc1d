"""LeGrad: the gradient w.r.t. each layer's attention map is the explanation signal.

Bousselham, Boggust, Chaybouti, Strobelt, Kuehne, "LeGrad: An Explainability Method for
Vision Transformers via Feature Formation Sensitivity", 2024 (ICCV 2025),
https://arxiv.org/abs/2404.03214 (code: github.com/WalBouss/LeGrad, ``legrad/wrapper.py``).

Definition implemented, as in the released ``compute_legrad_clip``: for every block
``b >= start_layer`` with output tokens ``z_b`` [T, D] and attention probabilities ``A_b``
[heads, T, T],

    e_b = projection( final_norm( pool(z_b) ) )        (an intermediate embedding per block)
    s_b = target(e_b)                                  (cosine with the other side, or the margin)
    G_b = mean_heads( ReLU( d s_b / d A_b ) )          (one backward pass per block)
    map = sum_b  rows(G_b)

Image, ``pooling="mean"`` (released): ``pool`` is the mean over all tokens (CLS included)
and ``rows`` the mean over every query row of ``G_b``; the CLS column is dropped (the patch
grid). ``pooling="model"`` pools the CLS token instead (the model's own rule, as at the last
block) and reads the CLS row of ``G_b``. Text (LeGrad has no text variant; this follows the
same rule on the text tower): ``pool`` is the end-of-text token (the model's pooling) and
``rows`` its row of ``G_b``, the only row with a gradient. Towers whose head reads every
token (no class token) embed ``z_b`` with their own head and average every row.

Defaults and deviations: ``start_layer=0`` sums every block, as the paper describes; the
released wrapper defaults to the last two (``layer_index=-2``), which ``start_layer=-2``
reproduces. The sum over blocks is min-max normalised afterwards, as released.

Reference, held to it by ``tests/crosscheck/``: WalBouss/LeGrad at commit a9edb03
(``legrad/wrapper.py``, ``compute_legrad_clip``), image side, ``layer_index`` 0 and -2: the
upsampled min-max maps differ by at most 4e-7 (tested <= 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from .base import Method, RawScores, Settings, Target, register, setting
from .common import check_layer, pooled_positions, pooled_row, recorded_forward, require_attention

POOLINGS = ("mean", "model")


@dataclass(frozen=True)
class LeGradSettings(Settings):
    """LeGrad's settings (``m2ib.explain(..., method="legrad", start_layer=-2)``).

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        start_layer: first block whose attention gradient is summed (0-based, negative from the
            end); default ``0``: every block (the paper). ``-2``: the released wrapper's default.
        pooling: image side, the intermediate embedding pools the mean of all tokens and reads every
            attention row (``"mean"``, as released) or the CLS token and its row (``"model"``);
            default ``'mean'``.
    """

    start_layer: int = setting(
        0,
        "first block whose attention gradient is summed (0-based, negative from "
        "the end); 0: every block (the paper), -2: the released wrapper's default",
    )
    pooling: str = setting(
        "mean",
        "image side: the intermediate embedding pools the mean of all tokens and reads "
        "every attention row (mean, as released) or the CLS token and its row (model)",
        choices=POOLINGS,
    )

    def validate(self) -> None:
        super().validate()
        check_layer(self.start_layer, "start_layer")
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling={self.pooling!r}: use one of {', '.join(POOLINGS)}")


@register
class LeGrad(Method):
    """Positive gradients of per-block intermediate similarities w.r.t. that block's attention.

    Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature
    Formation Sensitivity", ICCV 2025, https://arxiv.org/abs/2404.03214. Settings:
    :class:`LeGradSettings`; the text side follows the same rule (LeGrad has none).

    Shapes: per block, the attention gradient [heads, T, T]; image, the patch columns on the grid
    [rows, cols], upsampled to [H, W]; text [T].

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="legrad")
        >>> exp.image_grid.shape, exp.text_map.shape
        (torch.Size([16, 16]), torch.Size([5]))
    """

    name = "legrad"
    title = "LeGrad"
    paper = "https://arxiv.org/abs/2404.03214"
    modalities = ("image", "text")
    Settings = LeGradSettings

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: LeGradSettings,
    ) -> RawScores:
        require_attention(backend, self.name)
        batch = images if modality == "image" else texts
        start = backend.resolve_layer(modality, settings.start_layer, "start_layer")
        last = backend.num_layers(modality) - 1
        _, records = recorded_forward(backend, modality, batch)
        positions = pooled_positions(backend, modality, batch)
        mean_rows = positions is None or (modality == "image" and settings.pooling == "mean")
        rows_index = torch.arange(len(batch), device=backend.device)
        total = None
        used = records[start:]
        for i, record in enumerate(used):
            z = record.hidden
            if z is None:
                raise InputError(
                    f"legrad needs each block's output recorded with its attention, which the "
                    f"{type(backend).__name__} backend does not provide (AttentionRecord.hidden)"
                )
            if mean_rows and positions is not None:  # released: the mean over tokens, read where CLS pools
                z = z.clone()
                z[rows_index, positions] = record.hidden.mean(1)
            score = target.score(backend.suffix(modality, z, last, batch))
            (grad,) = torch.autograd.grad(score.sum(), record.probs, retain_graph=i < len(used) - 1)
            g = grad.float().clamp(min=0).mean(1)  # [N, T, T]
            rows = g.mean(1) if mean_rows else pooled_row(g, positions)
            total = rows if total is None else total + rows
        if total is None:
            raise InputError(
                f"legrad: the {type(backend).__name__} backend recorded no block from start_layer="
                f"{settings.start_layer} on"
            )
        if modality == "text":
            total = total * texts.attention_mask.to(total.device)
        return RawScores(total)
