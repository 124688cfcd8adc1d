"""The image side of an audit: each pair's map as mass over the patch grid, the dataset's mean
map (the model's spatial prior), the regions that mean map singles out, and per-pair numbers.

A pair's *mass* is its patch grid with negative scores set to 0, divided by its sum (a map that
is 0 everywhere spreads evenly), so every pair weighs the same in the mean. The *prior* is the
mean mass over the pairs. Its *regions* are the 4-connected groups of patches holding at least
``factor`` times the even share (1 / patches), largest mass first; there may be none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: A patch belongs to a region when the prior gives it at least this many times the even share.
REGION_FACTOR = 2.0
#: At most this many regions are reported (the ones with the most mass).
MAX_REGIONS = 4


def patch_mass(grid: torch.Tensor) -> torch.Tensor:
    """[R, C] scores -> [R, C] non-negative mass adding up to 1 (even when the scores are all <= 0)."""
    grid = torch.nan_to_num(grid.double(), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    total = grid.sum()
    return grid / total if total > 0 else torch.full_like(grid, 1.0 / grid.numel())


def to_grid(image_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A full-resolution map [H, W] averaged down to the patch grid (for methods with no grid)."""
    return F.adaptive_avg_pool2d(image_map[None, None].double(), grid)[0, 0]


def concentration(mass: torch.Tensor) -> float:
    """1 - entropy / log(patches): 0 for an even map, 1 for all the mass on one patch."""
    n = mass.numel()
    if n < 2:
        return 1.0
    p = mass.flatten().double()
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    return 1.0 - entropy / math.log(n)


@dataclass
class Region:
    name: str  # "R1", "R2", ... by mass
    mask: torch.Tensor = field(repr=False)  # [R, C] bool: its patches
    mass: float  # its share of the prior's mass
    box: tuple[int, int, int, int]  # (row0, col0, row1, col1) of its patches, inclusive
    control_mass: float | None = None  # its share of the control's mean map (None: no control measured)
    artefact: bool = False  # the control's mean map singles it out too (m2ib.auditing.control.judge)

    def where(self, grid: tuple[int, int]) -> str:
        """Which third of the image its centre falls in, in words: 'top-left', 'left', 'centre', ...;
        'corner' or 'edge' added when its patches touch the image's border there."""
        rows, cols = grid
        ys = (self.box[0] + self.box[2] + 1) / 2 / rows
        xs = (self.box[1] + self.box[3] + 1) / 2 / cols
        vertical = "top" if ys < 1 / 3 else "bottom" if ys > 2 / 3 else ""
        horizontal = "left" if xs < 1 / 3 else "right" if xs > 2 / 3 else ""
        touches = {
            "top": self.box[0] == 0,
            "bottom": self.box[2] == rows - 1,
            "left": self.box[1] == 0,
            "right": self.box[3] == cols - 1,
        }
        place = "-".join(w for w in (vertical, horizontal) if w) or "centre"
        if vertical and horizontal and touches[vertical] and touches[horizontal]:
            return place + " corner"
        if any(touches.get(w) for w in (vertical, horizontal) if w):
            return place + " edge"
        return place


def components(mask: torch.Tensor) -> list[torch.Tensor]:
    """The 4-connected components of a bool grid, each as a bool grid."""
    rows, cols = mask.shape
    seen = torch.zeros_like(mask)
    found = []
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c] or seen[r, c]:
                continue
            part = torch.zeros_like(mask)
            stack = [(r, c)]
            seen[r, c] = True
            while stack:
                y, x = stack.pop()
                part[y, x] = True
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < rows and 0 <= nx < cols and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            found.append(part)
    return found


def hot_regions(prior: torch.Tensor, factor: float = REGION_FACTOR, limit: int = MAX_REGIONS) -> list[Region]:
    """The regions the prior singles out (none when no patch reaches ``factor``: no spatial prior)."""
    hot = prior >= factor / prior.numel()
    parts = sorted(components(hot), key=lambda m: -float(prior[m].sum()))[:limit]
    regions = []
    for k, part in enumerate(parts, 1):
        ys, xs = torch.nonzero(part, as_tuple=True)
        box = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
        regions.append(Region(f"R{k}", part, float(prior[part].sum()), box))
    return regions


def box_cover(
    grid: tuple[int, int], box: tuple[float, float, float, float], image_size: tuple[int, int]
) -> torch.Tensor:
    """[R, C] share of each patch that a pixel box (x, y, w, h) on the model's input covers."""
    rows, cols = grid
    height, width = image_size
    x, y, w, h = box
    ph, pw = height / rows, width / cols
    top = torch.arange(rows, dtype=torch.float64) * ph
    left = torch.arange(cols, dtype=torch.float64) * pw
    cover_y = (torch.clamp(top + ph, max=y + h) - torch.clamp(top, min=y)).clamp(min=0) / ph
    cover_x = (torch.clamp(left + pw, max=x + w) - torch.clamp(left, min=x)).clamp(min=0) / pw
    return cover_y[:, None] * cover_x[None, :]


def mass_in(masses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mass of each map [N, R, C] (or one [R, C]) inside ``weights`` [R, C] (a bool region or a box cover)."""
    return (masses * weights.to(masses.dtype)).sum(dim=(-2, -1))


def dataset_prior(masses: torch.Tensor) -> torch.Tensor:
    """The mean mass over the pairs' masses [N, R, C]: [R, C], adding up to 1."""
    return masses.mean(0)
