"""RISE on an answer: random masks over the image-token grid, weighted by the answer's likelihood.

Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018, https://arxiv.org/abs/1806.07421

Definition implemented: ``N = masks`` smooth random masks ``M_n`` over the ``rows x cols`` grid
of image tokens, made as m2ib's CLIP RISE makes them at pixel level
(:class:`m2ib.methods.rise.MaskSampler`: a ``grid x grid`` binary grid, cells kept with probability
``p = p_keep``, upsampled bilinearly and cropped at a random shift). Token ``k`` (of cell ``c_k``)
keeps ``m = M_n[c_k]`` of its state: ``m s_k + (1 - m) b`` with ``b`` the ``baseline`` (zeros,
default, or the mean of this image's token states). With ``f(M_n)`` the score of the masked states,

    score_k = sum_n f(M_n) M_n[c_k] / (N p)

``f`` (setting ``score``): ``probability`` (default) is the answer's probability relative to the
unmasked one, ``exp(logL(M_n) - logL)``: the paper's class probability with the answer's
probability in its place, divided by a constant (so the map's shape is the paper's; the ratio
keeps long answers, whose probability underflows, finite); ``log_likelihood`` is
``logL(M_n) - logL``. A token spread over several cells (:attr:`Query.spread`: LLaVA-NeXT's base
image, Idefics3's global image, InternVL's thumbnail) keeps the mean of ``M_n`` over its cells
weighted by its shares, ``m = sum_c w_kc M_n[c] / sum_c w_kc`` (soft: the image is the grid, and
it reads a blend of it), and that ``m`` stands for ``M_n[c_k]`` in the score. Tokens that cover no
pixel (cell -1, no spread: a row newline) are never masked and score 0. The same
seed gives the same masks. Defaults: 2000 masks, an 8 x 8 grid, p = 0.5, as m2ib's CLIP RISE.
Copies are batched through ``backend.rest``, at most ``max_batch`` a pass; no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...methods.base import Settings
from ...methods.rise import MaskSampler
from ...settings import check_choice, check_positive_int, setting
from ..base import GenerativeBackend, Query
from .base import BASELINES, AnswerMethod, AnswerScores, baseline_states, mixed, plain_states, progress, register

SCORES = ("probability", "log_likelihood")


@dataclass(frozen=True)
class AnswerRISESettings(Settings):
    """RISE settings (on the image-token grid).

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
        masks: Number of random masks; default ``2000``.
        grid: Mask resolution: cells per side of the random binary grid; default ``8``.
        p_keep: Probability that a grid cell is kept (the paper's p1); default ``0.5``.
        baseline: The state a masked image token tends to: zeros, or mean (of this image's token
            states); default ``'zeros'``.
        score: What weighs a mask: probability (exp(logL(masked) - logL), the paper's class
            probability, relative) or log_likelihood (logL(masked) - logL); default
            ``'probability'``.
        max_batch: Most masked copies per forward pass of the language model (memory cap); default
            ``16``.
    """

    masks: int = setting(2000, "number of random masks")
    grid: int = setting(8, "mask resolution: cells per side of the random binary grid")
    p_keep: float = setting(0.5, "probability that a grid cell is kept (the paper's p1)")
    baseline: str = setting(
        "zeros",
        "the state a masked image token tends to: zeros, or mean (of this image's token states)",
        choices=BASELINES,
    )
    score: str = setting(
        "probability",
        "what weighs a mask: probability (exp(logL(masked) - logL), the paper's class probability, relative) "
        "or log_likelihood (logL(masked) - logL)",
        choices=SCORES,
    )
    max_batch: int = setting(16, "most masked copies per forward pass of the language model (memory cap)")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.masks, "masks")
        check_positive_int(self.grid, "grid")
        check_positive_int(self.max_batch, "max_batch")
        check_choice(self.baseline, "baseline", BASELINES)
        check_choice(self.score, "score", SCORES)
        p = self.p_keep
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InputError(f"p_keep={p!r} must be in (0, 1]")


def token_masks(
    sampler: MaskSampler, start: int, stop: int, cells: torch.Tensor, spread: torch.Tensor | None = None
) -> torch.Tensor:
    """Masks ``start .. stop - 1`` per image token: [n, K] in [0, 1]. A token keeps its cell's value; a token
    spread over several cells (``spread`` [K, rows * cols], :attr:`Query.spread`) the mean of theirs weighted
    by its shares; a token of no pixel (cell -1, no spread) 1."""
    grids = sampler(start, stop).flatten(1)  # [n, rows * cols]
    out = grids[:, cells.clamp(min=0)]
    if spread is not None:
        weights = spread.to(grids.device, grids.dtype)
        total = share_sums(weights)
        mean = torch.sparse.mm(weights, grids.T).T / total.clamp(min=1e-12)  # [n, K]
        out = torch.where(total[None] > 0, mean, out)
    return torch.where(masked(cells, spread)[None], out, torch.ones_like(out))


def share_sums(spread: torch.Tensor) -> torch.Tensor:
    """[K]: each token's shares summed over the cells (0 for a token not spread)."""
    ones = torch.ones(spread.shape[1], 1, dtype=spread.dtype, device=spread.device)
    return torch.sparse.mm(spread, ones)[:, 0]


def masked(cells: torch.Tensor, spread: torch.Tensor | None) -> torch.Tensor:
    """[K] bool: the tokens a mask reaches, those with a cell or a share of some."""
    if spread is None:
        return cells >= 0
    return (cells >= 0) | (share_sums(spread.float()) > 0).to(cells.device)


@register
class AnswerRISE(AnswerMethod):
    """Average of random token masks weighted by the answer's likelihood under them."""

    name = "rise"
    title = "RISE (image tokens)"
    paper = "https://arxiv.org/abs/1806.07421"
    Settings = AnswerRISESettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: AnswerRISESettings) -> AnswerScores:
        states = plain_states(backend, query)
        cells = query.cells.to(states.device)
        sampler = MaskSampler(settings.masks, settings.grid, settings.p_keep, query.grid, settings.seed, states.device)
        base = baseline_states(states, settings.baseline)
        with torch.no_grad():
            full = float(backend.rest(query, states)[0])
        saliency = torch.zeros(cells.numel(), device=states.device)
        with progress(settings.masks, "rise") as bar:
            for start in range(0, settings.masks, settings.max_batch):
                stop = min(settings.masks, start + settings.max_batch)
                keep = token_masks(sampler, start, stop, cells, query.spread)  # [n, K]
                with torch.no_grad():
                    values = backend.rest(query, mixed(states, keep, base)).float()
                f = (values.double() - full).exp() if settings.score == "probability" else values.double() - full
                saliency += (f.to(keep.device) @ keep.double()).float()
                bar.update(stop - start)
        saliency = saliency / (settings.masks * settings.p_keep)
        saliency[~masked(cells, query.spread)] = 0.0
        return AnswerScores(saliency, {"log_likelihood": full, "masks": float(settings.masks)})


__all__ = ["AnswerRISE", "AnswerRISESettings", "masked", "share_sums", "token_masks"]
