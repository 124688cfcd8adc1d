"""Occlusion on an answer: how much the answer's log-likelihood drops when image tokens are hidden.

Zeiler, Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
https://arxiv.org/abs/1311.2901 (a grey square slid over the image); here the square slides over
the image-token grid and hides tokens, not pixels.

Definition implemented: for every ``window x window`` square of grid cells (stride 1), the image
tokens of those cells take the ``baseline`` state (``zeros``, default; or ``mean``: the mean of
this image's token states) and the answer's summed log-likelihood is recomputed:

    drop(W) = logL(all states) - logL(the tokens of W hidden)
    score_k = mean of drop(W) over the squares W that hide token k

(captum's ``Occlusion`` rule: each feature's attribution is the mean over the windows covering it).
A token spread over several cells (:attr:`Query.spread`: LLaVA-NeXT's base image, Idefics3's
global image, InternVL's thumbnail) is hidden by every square holding a cell where its share is
above zero (the square hides that part of the image, which it reads), its score the mean over
those squares. A token that covers no pixel (cell -1 and no spread, e.g. a row newline) is hidden on
its own once. With ``window=1`` (default) a one-cell token's score is exactly the drop when its cell
is hidden (alone, unless a spread token shares the cell). Copies are
batched through ``backend.rest``, at most ``max_batch`` a pass; no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...methods.base import Settings
from ...settings import check_choice, check_positive_int, setting
from ..base import GenerativeBackend, Query
from .base import BASELINES, AnswerMethod, AnswerScores, baseline_states, batched_rest, mixed, plain_states, register


@dataclass(frozen=True)
class OcclusionSettings(Settings):
    """Occlusion settings.

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
        window: Side of the square of grid cells hidden at once (stride 1); default ``1``.
        baseline: The state a hidden image token takes: zeros, or mean (of this image's token
            states); default ``'zeros'``.
        max_batch: Most occluded copies per forward pass of the language model (memory cap); default
            ``16``.
    """

    window: int = setting(1, "side of the square of grid cells hidden at once (stride 1)")
    baseline: str = setting(
        "zeros",
        "the state a hidden image token takes: zeros, or mean (of this image's token states)",
        choices=BASELINES,
    )
    max_batch: int = setting(16, "most occluded copies per forward pass of the language model (memory cap)")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.window, "window")
        check_positive_int(self.max_batch, "max_batch")
        check_choice(self.baseline, "baseline", BASELINES)


def occlusion_windows(
    cells: torch.Tensor, grid: tuple[int, int], window: int, spread: torch.Tensor | None = None
) -> torch.Tensor:
    """Which tokens each occlusion hides: [W, K] bool, the squares row-major, then each no-pixel token alone.
    A square hides the tokens of its cells and every token spread over several cells (``spread`` [K, rows *
    cols], :attr:`Query.spread`) with a share above zero in one of them."""
    rows, cols = grid
    if window > min(rows, cols):
        raise InputError(f"window={window} is larger than the {rows} x {cols} image-token grid")
    cell = torch.arange(rows * cols, device=cells.device)
    r, c = cell.div(cols, rounding_mode="floor"), cell % cols  # each cell's row and column
    inside = torch.stack(  # [squares, rows * cols]: the cells of each square
        [
            (r >= i) & (r < i + window) & (c >= j) & (c < j + window)
            for i in range(rows - window + 1)
            for j in range(cols - window + 1)
        ]
    )
    hide = inside[:, cells.clamp(min=0)] & (cells >= 0)[None]
    lone = cells < 0
    if spread is not None:
        touches = spread.to_dense().to(cells.device) > 0  # [K, rows * cols]
        hide = hide | ((inside.float() @ touches.T.float()) > 0)
        lone = lone & ~touches.any(1)
    alone = [torch.arange(cells.numel(), device=cells.device) == k for k in lone.nonzero()[:, 0].tolist()]
    return torch.cat([hide, torch.stack(alone)]) if alone else hide


@register
class AnswerOcclusion(AnswerMethod):
    """Drop of the answer's log-likelihood when a square of image tokens is hidden."""

    name = "occlusion"
    title = "Occlusion (image tokens)"
    paper = "https://arxiv.org/abs/1311.2901"
    Settings = OcclusionSettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: OcclusionSettings) -> AnswerScores:
        states = plain_states(backend, query)
        hide = occlusion_windows(query.cells, query.grid, settings.window, query.spread)  # [W, K]
        base = baseline_states(states, settings.baseline)
        with torch.no_grad():
            full = float(backend.rest(query, states)[0])
        values = batched_rest(
            backend, query, lambda a, b: mixed(states, ~hide[a:b], base), hide.shape[0], settings.max_batch
        )
        drops = full - values  # [W]
        covered = hide.float()
        scores = (covered.T @ drops.to(covered.device)) / covered.sum(0)
        return AnswerScores(scores, {"log_likelihood": full, "occlusions": float(hide.shape[0])})
