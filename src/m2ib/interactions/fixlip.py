"""FIxLIP: weighted Banzhaf interactions of the similarity between image patches and caption tokens.

Baniecki, Muschalik, Fumagalli, Hammer, Hüllermeier, Biecek, "Explaining Similarity in
Vision-Language Encoders with Weighted Banzhaf Interactions", NeurIPS 2025,
https://openreview.net/forum?id=on22Rx5A4F (code: github.com/hbaniecki/fixlip; coalitions sampled
with the `shapiq` library's ``CoalitionSampler``, the ``interactions`` extra).

The game (as FIxLIP plays it): the players are the image patches (or squares of ``patch_group``
x ``patch_group`` patches, fewer players for speed) and the caption's tokens without the start and
end tokens. A coalition ``(A, B)`` keeps the patches in ``A`` (the others are set to 0 in the
normalised input, the dataset's mean colour, as FIxLIP multiplies the pixels by a binary mask)
and the tokens in ``B`` (the others get attention mask 0, as FIxLIP). Its value is the cosine
similarity ``v(A, B) = g(A) . f(B)`` of the unit-norm image and text embeddings (FIxLIP's value
is the logit ``scale * cos (+ bias)``: a positive factor and a constant, so its interactions are
ours times the model's logit scale).

The index: the weighted Banzhaf interaction of image player ``i`` and text player ``j``,

    phi[i, j] = sum over S in N \\ {i, j} of p^|S| (1 - p)^(n - 2 - |S|) *
                (v(S + i + j) - v(S + i) - v(S + j) + v(S)),

the top-order term of FIxLIP's faithful weighted Banzhaf fit of order 2 (they are equal for a
product weighting). Because ``v`` is a dot product of an image-only and a text-only vector and
the weighting is a product over players, this expectation factorises exactly:
``phi[i, j] = b_img[i] . b_txt[j]``, with ``b`` each modality's weighted Banzhaf *values* of its
unit embedding (vectors). So each side is its own game: coalitions sampled with shapiq's
sampler (sizes weighted ``binom(n, k) p^k (1 - p)^(n - k)``, border sizes enumerated), one
batched forward per chunk of coalitions, and the values fitted by weighted least squares on
``[1, x]`` with weights ``p^|S| (1 - p)^(n - |S|)`` times shapiq's sampling adjustment (the exact
values when every coalition is enumerated). FIxLIP's own estimator fits all order-2 terms of
the joint game on every (image, text) coalition pair; both converge to the same ``phi``; this one
costs one forward per coalition of each side instead of a regression over their product.

``budget`` counts (image coalition, text coalition) pairs, as FIxLIP's ``budget``, and is split
between the sides by FIxLIP's rule; the forwards run are ``budget_image + budget_text``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, TextBatch
from ..errors import InputError
from ..methods.base import Settings, setting
from ..settings import check_number, check_positive_int
from .base import InteractionMethod, check_one_pair, new_interaction, register

EXTRA = "pip install 'm2ib[interactions]'"


@dataclass(frozen=True)
class FIxLIPSettings(Settings):
    """FIxLIP settings (defaults: the FIxLIP repository's example, p = 0.5 and 2^19 coalition pairs)."""

    budget: int = setting(
        2**19,
        "(image coalition, text coalition) pairs, split between the sides as "
        "FIxLIP splits them; forwards run: one per coalition of each side",
    )
    banzhaf_p: float = setting(0.5, "weighted Banzhaf weight p: each player is kept with probability p")
    patch_group: int = setting(
        1,
        "image players are squares of patch_group x patch_group patches "
        "(1: one per patch; larger: fewer players, a smaller budget suffices)",
    )
    max_batch: int = setting(256, "coalitions per forward pass (memory vs speed; same result)")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.budget, "budget", minimum=4)
        check_number(self.banzhaf_p, "banzhaf_p", strict=True)
        if not self.banzhaf_p < 1:
            raise InputError(f"banzhaf_p={self.banzhaf_p!r} must be between 0 and 1 (exclusive)")
        check_positive_int(self.patch_group, "patch_group")
        check_positive_int(self.max_batch, "max_batch")


def require_shapiq():
    """shapiq's ``CoalitionSampler`` (imported on first use: shapiq is an optional extra)."""
    try:
        from shapiq.approximator.sampling import CoalitionSampler
    except ImportError:
        raise InputError(f"fixlip needs the shapiq package: {EXTRA}") from None
    return CoalitionSampler


def split_budget(budget: int, n_image: int, n_text: int) -> tuple[int, int]:
    """FIxLIP's split of ``budget`` pairs: the side with fewer players gets about
    ``sqrt(budget) * its players / the other's`` coalitions (at least 4, at most all of them; here
    also at least its players + 1, which its fit needs), the other side the rest."""

    def small_side(n_small: int, n_large: int) -> int:
        wanted = math.ceil(max(4.0, n_small + 1.0, math.sqrt(budget) * n_small / n_large))
        return int(min(2 ** min(n_small, 62), wanted))

    if n_text < n_image:
        b_text = small_side(n_text, n_image)
        return min(budget // b_text, 2 ** min(n_image, 62)), b_text
    b_image = small_side(n_image, n_text)
    return b_image, min(budget // b_image, 2 ** min(n_text, 62))


def sample_coalitions(n: int, budget: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coalitions [C, n] bool, regression weights [C]) from shapiq's sampler: weights are the
    product weighting ``p^|S| (1 - p)^(n - |S|)`` times shapiq's adjustment for sampled sizes
    (1 for enumerated ones), so the weighted fit estimates the fit over all ``2^n`` coalitions."""
    sampler_class = require_shapiq()
    sizes = np.arange(n + 1)
    log_kernel = sizes * math.log(p) + (n - sizes) * math.log1p(-p)
    log_binom = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in sizes])
    size_weights = np.exp(log_binom + log_kernel - (log_binom + log_kernel).max())
    sampler = sampler_class(n_players=n, sampling_weights=size_weights, pairing_trick=False, random_state=seed)
    with warnings.catch_warnings():  # shapiq warns when the budget (nearly) covers every coalition
        warnings.simplefilter("ignore", UserWarning)
        sampler.sample(int(min(budget, 2 ** min(n, 62))))
    coalitions = sampler.coalitions_matrix.astype(bool)
    weights = np.exp(log_kernel[coalitions.sum(1)]) * sampler.sampling_adjustment_weights
    return coalitions, weights


def banzhaf_values(values: torch.Tensor, coalitions: np.ndarray, weights: np.ndarray) -> torch.Tensor:
    """Weighted least squares of ``values`` [C, E] on ``[1, x]``: the players' values [n, E]."""
    x = torch.from_numpy(coalitions).double()
    design = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), x], 1)
    root = torch.from_numpy(np.sqrt(weights)).double()[:, None]
    solution = torch.linalg.lstsq(design * root, values.double().cpu() * root, driver="gelsd").solution
    return solution[1:]


def player_groups(rows: int, cols: int, group: int) -> torch.Tensor:
    """Per patch (row-major), the index of its image player (a square of ``group`` x ``group``)."""
    r = torch.arange(rows)[:, None] // group
    c = torch.arange(cols)[None, :] // group
    return (r * math.ceil(cols / group) + c).reshape(-1)


def image_embeddings(
    backend: Backend, image: ImageBatch, coalitions: np.ndarray, groups: torch.Tensor, grid: tuple[int, int], batch: int
) -> torch.Tensor:
    """Unit image embeddings [C, E] with each coalition's unkept patches set to 0 (normalised input)."""
    pixels = image.pixel_values[:1]
    keep_all = torch.from_numpy(coalitions).to(pixels.device)[:, groups.to(pixels.device)]
    out = []
    for first in range(0, len(keep_all), batch):
        keep = keep_all[first : first + batch].reshape(-1, 1, *grid).to(pixels.dtype)
        masks = F.interpolate(keep, size=pixels.shape[-2:], mode="nearest")  # each patch's pixels
        with torch.no_grad():
            out.append(F.normalize(backend.embed("image", ImageBatch(pixels * masks)).float(), dim=-1).cpu())
    return torch.cat(out)


def text_embeddings(
    backend: Backend, text: TextBatch, coalitions: np.ndarray, positions: list[int], batch: int
) -> torch.Tensor:
    """Unit text embeddings [C, E] with each coalition's unkept tokens given attention mask 0."""
    out = []
    keep_all = torch.from_numpy(coalitions).to(text.attention_mask.device)
    for first in range(0, len(keep_all), batch):
        keep = keep_all[first : first + batch]
        mask = text.attention_mask[:1].repeat(len(keep), 1)
        mask[:, positions] = keep.to(mask.dtype)
        with torch.no_grad():
            emb = backend.embed("text", TextBatch(text.input_ids[:1].repeat(len(keep), 1), mask))
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


def text_players(text: TextBatch) -> list[int]:
    """Token positions that are players: the shown tokens but the start/end tokens."""
    shown = len(text.tokens[0]) if text.tokens else int(text.attention_mask[0].sum())
    special = set(text.special[0]) if text.special else set()
    return [i for i in range(shown) if i not in special and bool(text.attention_mask[0, i])]


def side_values(embeddings: torch.Tensor, coalitions: np.ndarray, weights: np.ndarray, side: str) -> torch.Tensor:
    """One side's weighted Banzhaf values [n, E]; refuses a tower that ignores the masking."""
    full, empty = coalitions.all(1), ~coalitions.any(1)
    if full.any() and empty.any() and torch.equal(embeddings[full.argmax()], embeddings[empty.argmax()]):
        raise InputError(
            f"fixlip: the {side} embedding does not change when every {side} player is masked "
            f"(this tower ignores the {'attention mask' if side == 'text' else 'pixels'})"
        )
    return banzhaf_values(embeddings, coalitions, weights)


@register
class FIxLIP(InteractionMethod):
    """Weighted Banzhaf interactions of the similarity (FIxLIP), through shapiq's sampler."""

    name = "fixlip"
    title = "FIxLIP (weighted Banzhaf)"
    paper = "https://openreview.net/forum?id=on22Rx5A4F"
    Settings = FIxLIPSettings

    def interact(self, backend: Backend, image: ImageBatch, text: TextBatch, settings: FIxLIPSettings):
        check_one_pair(image, text)
        require_shapiq()
        image, text = image.to(backend.device), text.to(backend.device)
        rows, cols = backend.token_grid("image", backend.num_layers("image") - 1)
        groups = player_groups(rows, cols, settings.patch_group)
        positions = text_players(text)
        n_image, n_text = int(groups.max()) + 1, len(positions)
        if n_text == 0:
            raise InputError(
                f"fixlip: the text {text.texts[0] if text.texts else ''!r} has no tokens besides "
                "start/end tokens to explain"
            )
        b_image, b_text = split_budget(settings.budget, n_image, n_text)
        if b_image < n_image + 1 or b_text < n_text + 1:
            raise InputError(
                f"fixlip: budget={settings.budget} gives {b_image} image and {b_text} text coalitions, "
                f"fewer than the {n_image} image / {n_text} text players + 1: raise budget or "
                "patch_group"
            )
        p, seed = settings.banzhaf_p, settings.seed
        img_coalitions, img_weights = sample_coalitions(n_image, b_image, p, seed)
        txt_coalitions, txt_weights = sample_coalitions(n_text, b_text, p, seed + 1)
        img_emb = image_embeddings(backend, image, img_coalitions, groups, (rows, cols), settings.max_batch)
        txt_emb = text_embeddings(backend, text, txt_coalitions, positions, settings.max_batch)
        b_img = side_values(img_emb, img_coalitions, img_weights, "image")  # [n_image, E]
        b_txt = side_values(txt_emb, txt_coalitions, txt_weights, "text")  # [n_text, E]
        players = b_txt @ b_img.T  # [n_text, n_image]: phi[j, i] = b_txt[j] . b_img[i]
        sizes = torch.bincount(groups, minlength=n_image).double()
        shown = len(text.tokens[0]) if text.tokens else text.input_ids.shape[1]
        matrix = torch.zeros(shown, rows * cols, dtype=torch.float64)
        matrix[positions] = (players / sizes)[:, groups]  # a group's value split evenly among its patches
        info = {
            "players_image": n_image,
            "players_text": n_text,
            "budget_image": len(img_coalitions),
            "budget_text": len(txt_coalitions),
            "exact_image": len(img_coalitions) == 2**n_image,
            "exact_text": len(txt_coalitions) == 2**n_text,
            "interaction_sum": float(players.sum()),
        }
        return new_interaction(self, backend, image, text, matrix.reshape(shown, rows, cols), settings, info)
