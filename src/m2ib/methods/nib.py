"""NIB: Narrowing Information Bottleneck, as released (integrated gradients of hidden states).

Zhu et al., "Narrowing Information Bottleneck Theory for Multimodal Image-Text
Representations Interpretability", ICLR 2025, https://arxiv.org/abs/2502.14889
(code: github.com/LMBTough/NIB, ``salicncy/nib.py``).

Definition implemented, as in the released code: for the hidden states ``h`` [T, D] entering
the tower's remaining blocks and the target ``s`` (cosine similarity of the two embeddings,
or the margin over negatives),

    attribution_t = sum_c  h[t, c] * (1/n) sum_{i=1..n} d s(f(h * i/n)) / d h'[t, c]

where ``f`` runs the rest of the tower (blocks, pooling, projection) and the gradient is taken
at the scaled input ``h' = h * i / n``: integrated gradients from a zero baseline with the
right Riemann sum, ``n = steps`` = 10. No noise and no beta: the information-bottleneck view
of the paper reduces to this deterministic path integral in the released code.

Layers: the released ``target_layer=9`` means the hidden states after 9 blocks, i.e. the
output of block 8 (0-based) of CLIP's 12; here ``vision_layer``/``text_layer`` name that block
(the output of block ``layer``). The default keeps the released relative depth: one block
before M2IB's default layer (8 of 12). Image: the patch tokens on the grid (CLS dropped);
text: every token (padding 0). All pairs and all steps of a batch run through the tower
together (at most ``max_batch`` rows at once), with one backward pass per chunk.

Reference, held to it by ``tests/crosscheck/``: LMBTough/NIB at commit d4d1138
(``salicncy/nib.py``, ``nib_v`` / ``nib_t``), one pair at a time: text maps equal to 1e-7
relative, image maps to 6e-4 (float32 rounding of small channel sums; tested <= 1e-3). Known
difference: the released loss is the batch mean of the cosine, so a batch of N scales every
gradient by 1/N (the min-max afterwards removes it); here each pair has its own target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from .base import RawScores, Target, register, setting
from .common import check_positive_int, chunks
from .layered import LayerMethod, LayerSettings, default_layer


@dataclass(frozen=True)
class NIBSettings(LayerSettings):
    """NIB's settings (``m2ib.explain(..., method="nib", steps=20)``); defaults are the released code's.

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        vision_layer: image tower block whose output h [T, D] is integrated (0-based, negative from
            the end); default ``None``: one block before M2IB's (8 of 12 blocks, the released
            ``target_layer=9``).
        text_layer: text tower block whose output is integrated; default ``None``, as for ``vision_layer``.
        steps: integration steps n (h scaled by i/n, i = 1..n); default ``10``. Released: 10.
        max_batch: most rows (pairs x steps) through the tower at once (a memory cap); default ``256``.
    """

    vision_layer: int | None = setting(
        None,
        "image tower block whose output is integrated (0-based, negative from the end); default: one "
        "before M2IB's layer (8 of 12 blocks: the released target_layer=9)",
    )
    text_layer: int | None = setting(None, "text tower block whose output is integrated; default as for vision_layer")
    steps: int = setting(10, "integration steps n: the hidden states are scaled by i/n, i = 1..n")
    max_batch: int = setting(256, "most rows (pairs x steps) run through the tower at once (memory cap)")

    def validate(self) -> None:
        """``steps`` and ``max_batch`` are positive integers."""
        super().validate()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.max_batch, "max_batch")


@register
class NIB(LayerMethod):
    """Integrated gradients of the hidden states at one block, zero baseline.

    Zhu et al., "Narrowing Information Bottleneck Theory for Multimodal Image-Text
    Representations Interpretability", ICLR 2025, https://arxiv.org/abs/2502.14889, as released
    (github.com/LMBTough/NIB). Settings: :class:`NIBSettings`.

    Shapes: h [T, D] at the block's output; the map sums h * (mean gradient) over D: image, the
    patch tokens on the grid [rows, cols], upsampled to [H, W]; text [T].

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="nib")
        >>> exp.image_grid.shape, exp.settings["steps"]
        (torch.Size([16, 16]), 10)
        >>> exp.settings["vision_layer"]  # one before M2IB's rule: 3 of the shapes model's 6 blocks
        3
    """

    name = "nib"
    title = "NIB"
    paper = "https://arxiv.org/abs/2502.14889"
    modalities = ("image", "text")
    Settings = NIBSettings

    def default_layer(self, num_layers: int) -> int:
        """One block before M2IB's (the output of block 8 of 12: the released target_layer=9)."""
        return max(0, default_layer(num_layers) - 1)

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: NIBSettings,
    ) -> RawScores:
        batch, layer = self.side(modality, images, texts, settings)
        with torch.no_grad():
            hidden = backend.prefix(modality, batch, layer).detach()
        n_pairs, n = len(batch), settings.steps
        alphas = torch.arange(1, n + 1, device=hidden.device, dtype=hidden.dtype) / n
        pair_chunk = min(n_pairs, settings.max_batch)
        step_chunk = max(1, settings.max_batch // pair_chunk)
        grad_sum = torch.zeros_like(hidden, dtype=torch.float32)
        for p0, p1 in chunks(n_pairs, pair_chunk):
            index = torch.arange(p0, p1)
            sub_batch, sub_target, h = batch.select(index), target.select(index), hidden[p0:p1]
            for s0, s1 in chunks(n, step_chunk):
                k = s1 - s0
                scaled = (h[:, None] * alphas[s0:s1, None, None]).reshape(-1, *h.shape[1:]).requires_grad_(True)
                score = sub_target.score(backend.suffix(modality, scaled, layer, sub_batch))
                (grad,) = torch.autograd.grad(score.sum(), scaled)
                grad_sum[p0:p1] += grad.float().view(p1 - p0, k, *h.shape[1:]).sum(1)
        scores = (hidden.float() * grad_sum / n).sum(-1)
        if modality == "text":
            scores = scores * texts.attention_mask.to(scores.device)
        return RawScores(scores)
