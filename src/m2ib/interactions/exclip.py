"""exCLIP: second-order attributions of the similarity to pairs of caption tokens and image patches.

Möller, Tilli, Vu, Padó, "Explaining Caption-Image Interactions in CLIP Models with Second-Order
Attributions", TMLR 2025, https://openreview.net/forum?id=HUUL19U7HP (re-implemented here on
the backend interface; the `exclip` package is not used).

With ``x`` the text's hidden states at the input of block ``text_layer`` and ``y`` the image's at
the input of ``image_layer``, ``f(x)`` and ``g(y)`` the embeddings the rest of each tower makes,
and references ``r`` (a text of a start token, one token id 0 and an end token, as exCLIP) and
``q`` (an all-zero normalised image), integrated Jacobians ``J_f = mean_a df/dx (r + a (x - r))``
give the first-order attributions of each embedding dimension ``k`` to each token
``A_f[k, i] = sum_d (x - r)[i, d] J_f[k, i, d]`` (likewise ``A_g`` per patch). The interaction
of token ``i`` and patch ``j`` is

    M[i, j] = sum_k A_f[k, i] A_g[k, j] / (|f(x)| |g(y)|)

and the matrix sums to ``(f(x) - f(r)) . (g(y) - g(q)) / (|f(x)| |g(y)|)`` (exactly as the steps
grow): the cosine similarity up to the reference terms, which ``info`` records. The same
numbers as exCLIP's ``d_txt * J_txt^T J_img * d_img`` summed over the channels, computed as
one product of two [E, tokens] matrices instead of a [tokens x channels]^2 one, and the image
side's product directly by backward passes weighted with the text's attributions.

Towers that read the text padded to their full context (SigLIP, some OpenCLIP models): the rows
of the padding positions are left out of the matrix; ``info["text_padding_sum"]`` is their sum.
The image's prefix tokens (CLS) are left out likewise (``info["image_prefix_sum"]``).

Integration: ``steps`` midpoints of the path (a = (s + 1/2) / steps; exCLIP's own grid may
differ, the limit is the same). Batched backward passes: the text tower one per embedding
dimension, the image tower one per text token (``chunk`` at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import EMBEDDINGS, Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..methods.base import Settings, setting
from ..settings import check_positive_int
from .base import InteractionMethod, check_one_pair, new_interaction, register


@dataclass(frozen=True)
class ExCLIPSettings(Settings):
    """exCLIP settings (defaults: the paper's last-block layers and 10 interpolation steps)."""

    text_layer: int = setting(-1, "text block whose input is attributed (negative: from the end; exCLIP: the last)")
    image_layer: int = setting(-1, "image block whose input is attributed (negative: from the end)")
    steps: int = setting(10, "interpolation steps of the integrated Jacobians (exCLIP's N)")
    chunk: int = setting(64, "backward passes batched together (memory vs speed; same result)")
    normalise: bool = setting(True, "divide by the embeddings' norms, so the matrix sums to a cosine difference")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.chunk, "chunk")


def text_reference(text: TextBatch) -> TextBatch:
    """exCLIP's text reference at the text's length: start token, token id 0, end token, id 0 after."""
    ids = torch.zeros_like(text.input_ids)
    length = ids.shape[1]
    start, end = text.special[0][0], text.special[0][-1]
    ids[:, 0] = text.input_ids[0, start]
    ids[:, min(2, length - 1)] = text.input_ids[0, end]
    return TextBatch(ids, text.attention_mask, text.texts, text.tokens, text.special)


def image_reference(image: ImageBatch) -> ImageBatch:
    """exCLIP's image reference: zeros in the normalised input (the dataset's mean colour)."""
    return ImageBatch(torch.zeros_like(image.pixel_values))


def block_input(backend: Backend, modality: Modality, layer: int, setting_name: str) -> int:
    """The prefix/suffix split index whose hidden states are the input of block ``layer``."""
    block = backend.resolve_layer(modality, layer, setting_name)
    return EMBEDDINGS if block == 0 else block - 1


def integrated_attributions(
    backend: Backend,
    modality: Modality,
    batch,
    reference,
    split: int,
    steps: int,
    chunk: int,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A [R, tokens], embedding of the input [E], embedding of the reference [E]) for one input.

    ``A[k, i] = sum_d (x - r)[i, d] * mean_a d (w_k . emb) / d h[i, d] at h = r + a (x - r)`` for
    each row ``w_k`` of ``weights`` [R, E]; without weights, the unit vectors (R = E: one row per
    embedding dimension). The image side passes ``A_text^T`` as weights, so it needs one backward
    pass per text token instead of one per embedding dimension (the same product, fewer passes).
    """
    with torch.no_grad():
        x = backend.prefix(modality, batch, split)
        r = backend.prefix(modality, reference, split)
        if x.ndim != 3:
            raise InputError(
                f"exCLIP needs token hidden states [N, tokens, width]; the {modality} tower of "
                f"{backend.name!r} gives {tuple(x.shape)} at that layer"
            )
        ends = backend.suffix(modality, torch.cat([x, r]), split, batch.select([0, 0])).float()
    delta = (x - r)[0].float()
    alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
    path = (r + alphas[:, None, None] * (x - r)).requires_grad_(True)
    emb = backend.suffix(modality, path, split, batch)  # [steps, E]
    if weights is None:
        weights = torch.eye(emb.shape[1], device=emb.device)
    rows = []
    for first in range(0, weights.shape[0], chunk):
        part = weights[first : first + chunk].to(emb.dtype)
        cotangents = part[:, None, :].expand(-1, steps, -1)
        (grads,) = torch.autograd.grad(
            emb, path, cotangents, retain_graph=first + chunk < weights.shape[0], is_grads_batched=True
        )
        rows.append((grads.float().mean(1) * delta).sum(-1))  # [rows of this chunk, tokens]
    return torch.cat(rows), ends[0], ends[1]


@register
class ExCLIP(InteractionMethod):
    """Integrated second-order attributions (exCLIP)."""

    name = "exclip"
    title = "exCLIP (second-order)"
    paper = "https://openreview.net/forum?id=HUUL19U7HP"
    Settings = ExCLIPSettings

    def interact(self, backend: Backend, image: ImageBatch, text: TextBatch, settings: ExCLIPSettings):
        check_one_pair(image, text)
        image, text = image.to(backend.device), text.to(backend.device)
        text_split = block_input(backend, "text", settings.text_layer, "text_layer")
        image_split = block_input(backend, "image", settings.image_layer, "image_layer")
        with backend.attribution_mode():
            a_text, f_x, f_r = integrated_attributions(
                backend, "text", text, text_reference(text), text_split, settings.steps, settings.chunk
            )
            products, g_y, g_q = integrated_attributions(
                backend, "image", image, image_reference(image), image_split, settings.steps, settings.chunk, a_text.T
            )
        scale = float(f_x.norm() * g_y.norm()) if settings.normalise else 1.0
        matrix = products / scale  # [T, image tokens] = A_text^T A_image / scale
        rows, cols = backend.token_grid("image", image_split)
        prefix = matrix.shape[1] - rows * cols
        if prefix < 0:
            raise InputError(f"{matrix.shape[1]} image tokens do not hold the {rows}x{cols} patch grid")
        terms = {"xy": float(f_x @ g_y), "ry": float(f_r @ g_y), "xq": float(f_x @ g_q), "rq": float(f_r @ g_q)}
        shown = len(text.tokens[0]) if text.tokens else matrix.shape[0]  # towers fed the full padded context
        info = {
            "sum": float(matrix.sum()),
            "image_prefix_sum": float(matrix[:shown, :prefix].sum()),
            "text_padding_sum": float(matrix[shown:].sum()),
            "expected_sum": (terms["xy"] - terms["ry"] - terms["xq"] + terms["rq"]) / scale,
        }
        grid = matrix[:shown, prefix:].reshape(-1, rows, cols)
        return new_interaction(self, backend, image, text, grid, settings, info)
