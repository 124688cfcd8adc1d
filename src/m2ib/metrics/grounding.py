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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .localisation import pointing_hit

__all__ = ["phrase_pointing", "right_object_share", "grounding_scores", "two_object_phrases"]


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
    out, start = [], None
    for span in caption.spans:
        if span.role == "colour":
            start = span.start
        elif span.present:
            out.append(((start, span.end), span.object_index))
    return out
