"""Grad-ECLIP: gradient channel weights on the value features, with a loosened attention.

Zhao, Wang, Zeng, Zhao, Chan, "Gradient-based Visual Explanation for Transformer-based CLIP",
ICML 2024, https://proceedings.mlr.press/v235/zhao24p.html; extended with the text side in
https://arxiv.org/abs/2502.18816 (code: github.com/Cyang-Zhao/Grad-Eclip, the
``grad_eclip_image`` / ``grad_eclip_text`` notebooks).

Definition implemented, for each of the last ``blocks`` attention blocks ``b``, with ``o`` the
block's attention output (before the out-projection) at the pooled token ``p`` (CLS / end of
text), ``v_i`` the value features of token ``i``, ``q``, ``k`` the query and key features (all
heads side by side) and ``s`` the target (cosine similarity, or the margin over negatives):

    w = d s / d o_p                                            (channel weights)
    lam_i = minmax_i( cos(q_p, k_i) )                          (loosened attention)
    map_i = ReLU( sum_b  lam_i * sum_c w_c v_i[c] )

``sum_c w_c v_i[c]`` is computed as ``sum_heads d s / d A_b[head, p, i]``: the attention
probabilities ``A_b`` reach ``o_p`` only through ``o_p = sum_i A[p, i] v_i``, so the two are
equal, and one backward pass gives every block. The min-max runs over the patch tokens (image)
or over the tokens the end token sees (text). Image: the patch grid; text: every token. Towers
whose head reads every token (no class token) sum the weights over all query tokens and use
their mean query.

Defaults are the released notebooks': the last block for images (``vision_blocks=1``), the
last 8 of 12 for texts (``text_blocks``; other depths keep two thirds). Deviation: the
notebooks recompute these blocks' attention as a single head of full width, which changes
the model's output; here the model's own multi-head attention is used, so the explanation is
of the model as it runs.

Reference, held to it by ``tests/crosscheck/``: Cyang-Zhao/Grad-Eclip at commit 5c1b5cc (the two
notebooks), on towers with one head per block, where the notebooks' single full-width head is
the model's own attention: image and text maps equal to 6e-7 relative (tested <= 1e-5). Known
differences besides the heads: with several image blocks the image notebook takes the ReLU of
each block's map before summing (ours: the ReLU of the sum; equal for the default one block);
the text notebook's min-max runs over all 77 context positions, padding after the end token
included (equal when the text fills its context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from .base import Method, RawScores, Settings, Target, minmax, register, setting
from .common import check_positive_int, pooled_positions, pooled_rows, recorded_forward, require_attention


@dataclass(frozen=True)
class GradECLIPSettings(Settings):
    """Grad-ECLIP's settings (``m2ib.explain(..., method="gradeclip", vision_blocks=2)``);
    defaults are the released notebooks'.

    Attributes:
        seed: unused (the method draws nothing at random); default ``0``.
        vision_blocks: last image tower blocks whose attention is used; default ``1``. Released: 1.
        text_blocks: last text tower blocks whose attention is used; default ``None``: 8 of 12
            (released), two thirds of other depths.
    """

    vision_blocks: int = setting(1, "last image tower blocks whose attention is used (released: 1)")
    text_blocks: int | None = setting(
        None, "last text tower blocks whose attention is used; default: 8 of 12 (released), two thirds of other depths"
    )

    def validate(self) -> None:
        """The block counts are positive integers."""
        super().validate()
        check_positive_int(self.vision_blocks, "vision_blocks")
        if self.text_blocks is not None:
            check_positive_int(self.text_blocks, "text_blocks")


def default_text_blocks(num_layers: int) -> int:
    return max(1, round(8 * num_layers / 12))


@register
class GradECLIP(Method):
    """Gradient-weighted value features with the loosened query-key attention of the pooled token.

    Zhao, Wang, Zeng, Zhao, Chan, "Gradient-based Visual Explanation for Transformer-based
    CLIP", ICML 2024, https://proceedings.mlr.press/v235/zhao24p.html (text side:
    https://arxiv.org/abs/2502.18816). Settings: :class:`GradECLIPSettings`.

    Shapes: per block, value features v [T, D] and the pooled token's loosened attention [T];
    image, the patch tokens on the grid [rows, cols], upsampled to [H, W]; text [T].

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="gradeclip")
        >>> exp.image_grid.shape, exp.settings["vision_blocks"]
        (torch.Size([16, 16]), 1)
    """

    name = "gradeclip"
    title = "Grad-ECLIP"
    paper = "https://proceedings.mlr.press/v235/zhao24p.html"
    modalities = ("image", "text")
    Settings = GradECLIPSettings

    def resolved(self, backend: Backend, settings: GradECLIPSettings) -> GradECLIPSettings:
        text_blocks = settings.text_blocks
        if text_blocks is None:
            text_blocks = default_text_blocks(backend.num_layers("text"))
        return GradECLIPSettings(**{**settings.as_dict(), "text_blocks": text_blocks})

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: GradECLIPSettings,
    ) -> RawScores:
        require_attention(backend, self.name)
        batch = images if modality == "image" else texts
        blocks = settings.vision_blocks if modality == "image" else settings.text_blocks
        if blocks is None:
            raise InputError("gradeclip's text_blocks is unset: resolve the settings first (Method.resolved)")
        blocks = min(blocks, backend.num_layers(modality))
        embedding, records = recorded_forward(backend, modality, batch)
        used = records[-blocks:]
        grads = torch.autograd.grad(target.score(embedding).sum(), [r.probs for r in used])
        positions = pooled_positions(backend, modality, batch)
        n, t = len(batch), used[0].probs.shape[-1]
        keys = torch.arange(t)
        device = used[0].probs.device
        keys = keys.to(device)
        if modality == "image":
            valid = (keys[None, :] >= backend.geometry.image_prefix_tokens).expand(n, t)
        else:
            valid = texts.attention_mask.to(device).bool()
            if positions is not None:
                valid = valid & (keys[None, :] <= positions.to(device)[:, None])
        total = torch.zeros(n, t, device=device)
        for record, grad in zip(used, grads):
            weighted_values = pooled_rows(grad.float(), positions).sum(1)  # [N, T]: sum_c w_c v_i[c]
            q = record.query.detach().float().transpose(1, 2).reshape(n, t, -1)
            k = record.key.detach().float().transpose(1, 2).reshape(n, t, -1)
            q_p = q.mean(1) if positions is None else q[torch.arange(n, device=q.device), positions.to(q.device)]
            cos = F.cosine_similarity(q_p[:, None], k, dim=-1)  # [N, T]
            lam = masked_minmax(cos, valid)
            total = total + lam * weighted_values
        return RawScores(torch.relu(total) * valid)


def masked_minmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row over its ``valid`` entries; invalid entries become 0."""
    lo = torch.where(valid, x, torch.inf).amin(1, keepdim=True)
    return minmax(torch.where(valid, x, lo)) * valid  # invalid entries take the row minimum, then 0
