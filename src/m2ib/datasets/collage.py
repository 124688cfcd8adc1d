"""2x2 collages of single-object shapes scenes, for the collage pointing game.

The protocol of FIxLIP (NeurIPS 2025): four single-object scenes tiled 2x2, a caption naming the
object of one of them; a map explains the model well when its mass (and its maximum) falls in
that quadrant. The four objects have four different colours and four different shapes, so the
caption's words name exactly one quadrant.

Collage ``i`` of a split is drawn from ``split_seed(split, i, base=COLLAGE_BASE)``: it picks the
four colours, the four shapes and the named quadrant; quadrant ``j`` (0 top-left, 1 top-right,
2 bottom-left, 3 bottom-right) is ``render_scene(split_seed(split, 4 i + j, base=COLLAGE_BASE),
n_objects=(1, 1))`` restricted to its colour and shape, rendered at max(64, size / 2) pixels
(the shapes world's smallest scene) and resized to size / 2 with antialiasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .shapes import COLOURS, SHAPES, Caption, make_caption, render_scene, split_seed

#: Seed base of collages: their scenes never share a seed with ``shapes:SPLIT:N`` rows (base 0).
COLLAGE_BASE = 7
SMALLEST_SCENE = 64


@dataclass(frozen=True)
class Collage:
    """One collage: the image, the caption of the named quadrant's object, and where it is."""

    image: torch.Tensor  # [3, size, size] in [0, 1]
    caption: Caption  # "a red circle" with its colour and shape spans
    quadrant: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The named quadrant as (x, y, w, h) in the collage's pixels."""
        half = self.image.shape[-1] // 2
        return (float(half * (self.quadrant % 2)), float(half * (self.quadrant // 2)), float(half), float(half))

    @property
    def mask(self) -> torch.Tensor:
        """Bool [size, size]: the named quadrant."""
        return quadrant_mask(self.image.shape[-1], self.quadrant)


def quadrant_mask(size: int, quadrant: int) -> torch.Tensor:
    """Bool [size, size], True on quadrant ``quadrant`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    half = size // 2
    mask = torch.zeros(size, size, dtype=torch.bool)
    top, left = half * (quadrant // 2), half * (quadrant % 2)
    mask[top : top + half, left : left + half] = True
    return mask


def render_collage(split: str, index: int, size: int) -> Collage:
    """Collage ``index`` of ``split`` at ``size`` x ``size`` pixels (``size`` even, >= 2)."""
    if size % 2 or size < 2:
        raise ValueError(f"a collage needs an even size, got {size}")
    rng = np.random.default_rng(split_seed(split, index, base=COLLAGE_BASE))
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:4]]
    shapes = [str(s) for s in rng.permutation(list(SHAPES))[:4]]
    named = int(rng.integers(4))
    half = size // 2
    tiles, scenes = [], []
    for j in range(4):
        scene = render_scene(
            split_seed(split, 4 * index + j, base=COLLAGE_BASE),
            size=max(SMALLEST_SCENE, half),
            n_objects=(1, 1),
            colours=[colours[j]],
            shapes=[shapes[j]],
        )
        tile = scene.image
        if tile.shape[-1] != half:
            tile = F.interpolate(tile[None], size=(half, half), mode="bilinear", antialias=True, align_corners=False)[
                0
            ].clamp(0, 1)
        tiles.append(tile)
        scenes.append(scene)
    image = torch.cat([torch.cat(tiles[:2], dim=2), torch.cat(tiles[2:], dim=2)], dim=1)
    return Collage(image, make_caption(scenes[named], "single"), named)
