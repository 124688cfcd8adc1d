"""Phrase grounding on two-object captions: does each object's phrase map point at that object?

For a caption naming two objects ("a red circle and a blue star") with exact masks, each
object's phrase (its colour and shape words) gets an image map from an interaction method.
Per phrase, higher is better:

* **phrase pointing**: 1 when the map's maximum (first argmax, as :func:`pointing_hit`) lies in
  the phrase's own object, else 0;
* **right-object mass share**: ``m(own) / (m(own) + m(other))`` with ``m(mask)`` the map's
  positive mass on the mask (negative scores count as 0); 0.5 when both are 0. Chance is 0.5.

A pair's value is the mean over its two phrases. These are functions of maps and masks; the
interaction methods and the two-object shapes pairs meet in :func:`grounding_scores`.

In ``m2ib evaluate`` the metric is ``grounding`` (``--metrics grounding``) on rows with object
phrases and masks (``--data shapes-two:SPLIT:N``): it measures the :data:`~m2ib.metrics.base.PHRASES`
side, which every interaction method in ``--methods`` gives (its span maps) and every first-order
method too (its map of each phrase explained alone: the baseline to beat).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..datasets.tables import Row, object_phrases
from ..errors import InputError
from .base import PHRASES, Key, Measured, MethodRun, Metric, PairBatch, number, register
from .localisation import pointing_hit

__all__ = ["phrase_pointing", "right_object_share", "grounding_scores", "two_object_phrases", "Grounding"]


def phrase_pointing(phrase_map: torch.Tensor, own: torch.Tensor) -> float:
    """1.0 when the map's first maximum lies in ``own`` (bool [H, W]), else 0.0."""
    return float(pointing_hit(phrase_map, own))


def right_object_share(phrase_map: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> float:
    """Positive mass of the map on ``own`` over that on ``own`` and ``other`` together (0.5: none)."""
    positive = torch.nan_to_num(phrase_map.detach().double(), nan=0.0, posinf=0.0).clamp_min(0.0)
    mine, theirs = float(positive[own.bool()].sum()), float(positive[other.bool()].sum())
    return 0.5 if mine + theirs <= 0.0 else mine / (mine + theirs)


def grounding_scores(maps: torch.Tensor, masks: Sequence[torch.Tensor]) -> dict[str, float]:
    """Mean phrase pointing and right-object share of two phrase maps [2, H, W] against their
    objects' masks (``masks[k]`` is phrase ``k``'s object)."""
    if maps.shape[0] != 2 or len(masks) != 2:
        raise ValueError(f"two phrase maps and two masks are needed, got {maps.shape[0]} and {len(masks)}")
    pointing = [phrase_pointing(maps[k], masks[k]) for k in range(2)]
    share = [right_object_share(maps[k], masks[k], masks[1 - k]) for k in range(2)]
    return {"phrase_pointing": sum(pointing) / 2, "right_object_share": sum(share) / 2}


def two_object_phrases(caption) -> list[tuple[tuple[int, int], int]]:
    """A shapes :class:`~m2ib.datasets.shapes.Caption`'s phrases: ((start, end) from the colour word
    to the shape word, object index), one per present object, in caption order."""
    return object_phrases(caption)


def grounded(row: Row) -> bool:
    """Whether a row has two object phrases, each with its object's mask."""
    return len(row.phrases) == 2 and len(row.object_masks) == 2


@register
class Grounding(Metric):
    """Phrase maps of two-object rows: is each phrase's maximum on its object, and how much of the
    two objects' positive mass is on the right one.

    m2ib's own measure (no paper): the pointing game (Zhang et al., ECCV 2016,
    https://arxiv.org/abs/1608.00507) per object phrase, on ``shapes-two:SPLIT:N`` rows. No
    options. Reads the :data:`~m2ib.metrics.base.PHRASES` side: per row, phrase maps [P, H, W].

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes-two:test:2", size=96)  # two objects, two phrases
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"grounding": {}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['phrase_pointing', 'right_object_share']
    """

    name = "grounding"
    title = "Phrase grounding on two-object captions (maximum on the phrase's object / its share of the mass)"
    sides = (PHRASES,)
    keys = (Key("phrase_pointing", "higher"), Key("right_object_share", "higher"))

    @classmethod
    def check_rows(cls, rows: Sequence[Row], data: str) -> None:
        """One line, before any model work, when no row has two object phrases with masks."""
        if not any(grounded(row) for row in rows):
            raise InputError(
                f"--metrics grounding needs rows with two object phrases and per-object masks; "
                f"{data!r} has none: use --data shapes-two:SPLIT:N (e.g. shapes-two:test:200)"
            )

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        out = Measured.empty(len(batch))
        if side != PHRASES:
            return out
        for i, row in enumerate(batch.rows):
            if maps[i] is None or not grounded(row):
                continue
            size = tuple(maps[i].shape[-2:])
            if any(tuple(m.shape) != size for m in row.object_masks):
                raise InputError(
                    f"row {row.id}: object masks {tuple(row.object_masks[0].shape)} do not match "
                    f"the maps {size} (the model's input size)"
                )
            for key, value in grounding_scores(maps[i], row.object_masks).items():
                out.values[i][key] = number(value)
        return out
