"""Shape rasterisation: the exact boolean mask of each shape in a square box.

Pixel-centre sampling with hard edges, so a mask is a pure function of (shape, side).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from .world import SHAPES


def _convex(u: np.ndarray, v: np.ndarray, verts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Points (u, v) inside the convex polygon ``verts`` (either orientation)."""
    pos = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    neg = pos.copy()
    n = len(verts)
    for k in range(n):
        x0, y0 = verts[k]
        x1, y1 = verts[(k + 1) % n]
        cross = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


def _star_vertices(inner_ratio: float = 0.44):
    # Upright five-pointed star fitting the unit box: outer radius R with
    # height 1.809 R and width 1.902 R.
    r_out = 0.52
    cx = 0.5
    cy = r_out + (1.0 - (1.0 + np.cos(np.pi / 5)) * r_out) / 2.0
    tips, inner = [], []
    for k in range(5):
        a = -np.pi / 2 + k * 2 * np.pi / 5
        tips.append((cx + r_out * np.cos(a), cy + r_out * np.sin(a)))
        b = a + np.pi / 5
        inner.append((cx + inner_ratio * r_out * np.cos(b), cy + inner_ratio * r_out * np.sin(b)))
    return tips, inner


_STAR_TIPS, _STAR_INNER = _star_vertices()


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of ``shape`` filling a side x side box."""
    c = (np.arange(side, dtype=np.float64) + 0.5) / side
    u = c[None, :]  # x
    v = c[:, None]  # y
    if shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "square":
        h = 0.45  # side 0.9 of the box: area close to the circle's
        m = (np.abs(u - 0.5) <= h) & (np.abs(v - 0.5) <= h)
    elif shape == "triangle":
        m = _convex(u, v, [(0.5, 0.04), (1.0, 0.92), (0.0, 0.92)])
    elif shape == "star":
        m = _convex(u, v, _STAR_INNER)
        for k in range(5):
            m |= _convex(u, v, [_STAR_TIPS[k], _STAR_INNER[k], _STAR_INNER[k - 1]])
    elif shape == "cross":
        t = 0.18  # half arm thickness
        e = 0.48  # half arm length
        a, b = np.abs(u - 0.5), np.abs(v - 0.5)
        m = ((a <= t) & (b <= e)) | ((b <= t) & (a <= e))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.broadcast_to(m, (side, side)).copy()


@cache  # masks are pure functions of (shape, side), made read-only so the shared copy stays intact
def _cached_mask(shape: str, side: int) -> np.ndarray:
    mask = _shape_mask(shape, side)
    mask.flags.writeable = False
    return mask
