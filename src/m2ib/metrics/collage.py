"""Collage pointing game (the protocol of FIxLIP, NeurIPS 2025) on ``shapes-collage:SPLIT:N`` rows.

A 2x2 collage of single-object scenes is captioned with the object of one quadrant
(:mod:`m2ib.datasets.collage`). For the image map of that pair:

* **quadrant mass**: the share of the map's mass in the named quadrant, ``sum(map * quadrant) /
  sum(map)`` (negative values count as 0; a map with no mass scores 0); a uniform map scores 0.25;
* **quadrant max**: 1 when the map's maximum (first argmax in row-major order) lies in the named
  quadrant, else 0; a constant map points at pixel (0, 0), the top-left quadrant.

Higher is better for both. Rows that are not collages get no value.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Key, Measured, MethodRun, Metric, PairBatch, number, register

COLLAGE_ROW = "shapes-collage:"


def quadrant_of(box: tuple[float, float, float, float], size: tuple[int, int]) -> torch.Tensor:
    """Bool [H, W]: the pixels of the box ``(x, y, w, h)`` (whole pixels: a quadrant)."""
    x, y, w, h = (int(round(v)) for v in box)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[y : y + h, x : x + w] = True
    return mask


def quadrant_scores(image_map: torch.Tensor, quadrant: torch.Tensor) -> tuple[float, float]:
    """(mass share, max inside) of an image map [H, W] for a bool quadrant mask [H, W]."""
    if image_map.shape != quadrant.shape:
        raise ValueError(f"image map {tuple(image_map.shape)} and quadrant {tuple(quadrant.shape)} differ")
    m = torch.nan_to_num(image_map.detach().double().cpu(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    total = float(m.sum())
    mass = float(m[quadrant].sum()) / total if total > 0 else 0.0
    flat = torch.nan_to_num(image_map.detach().float().cpu().flatten(), nan=float("-inf"))
    return mass, float(quadrant.flatten()[int(torch.argmax(flat))])


@register
class CollagePointing(Metric):
    """Image maps of collage rows: the named quadrant's share of the map's mass, and its maximum.

    The collage pointing game of FIxLIP (Baniecki et al., NeurIPS 2025,
    https://openreview.net/forum?id=on22Rx5A4F), on ``shapes-collage:SPLIT:N`` rows. No options.
    Reads image maps [N, H, W]; records ``collage_mass`` and ``collage_max`` for collage rows.

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes-collage:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"collage": {}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['collage_mass', 'collage_max']
    """

    name = "collage"
    title = "Collage pointing game (share of map mass / of pairs in the named quadrant)"
    sides = ("image",)
    keys = (Key("collage_mass", "higher"), Key("collage_max", "higher"))

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """Quadrant mass and maximum of each collage row's image map (other rows: no value)."""
        out = Measured.empty(len(batch))
        if side != "image":
            return out
        for i, row in enumerate(batch.rows):
            if not row.id.startswith(COLLAGE_ROW) or not row.boxes:
                continue
            mass, hit = quadrant_scores(maps[i], quadrant_of(row.boxes[0], tuple(maps[i].shape)))
            out.values[i]["collage_mass"] = number(mass)
            out.values[i]["collage_max"] = number(hit)
        return out
