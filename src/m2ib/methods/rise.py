"""RISE: randomised input sampling (image side).

Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018, https://arxiv.org/abs/1806.07421

Definition implemented: ``K = masks`` random masks ``M_k`` [H, W] in [0, 1]; each is a
``grid x grid`` binary grid whose cells are kept with probability ``p = p_keep``, upsampled
bilinearly to ``(grid + 1) x`` the cell size and cropped at a random shift (the paper's
smooth masks).
The masked image is ``x * M_k`` on the preprocessed (normalised) pixels, so hidden regions
take the dataset's mean colour, as in the CLIP RISE baselines of the Grad-ECLIP and NIB code.
With ``s`` the target (cosine similarity of the masked image's embedding with the text, or
the margin over negatives):

    saliency = sum_k s(x * M_k) M_k / (K p)

Image only (no text variant). The same seed gives the same masks for every pair, so a pair's
map does not depend on its batch. Masks are made chunk by chunk and all pairs of a batch are
evaluated together, at most ``max_batch`` masked images per forward pass (memory cap).
Defaults: 2000 masks, an 8 x 8 grid, p = 0.5, as in Grad-ECLIP's RISE baseline for CLIP
(NIB's code uses 6000, 8, 0.1).

Reference, held to it by ``tests/crosscheck/``: eclique/RISE at commit d91ea00
(``explanations.py``). The estimator ``sum_k s(x * M_k) M_k / (N p)`` on our masks equals
ours to 4e-7 relative. The masks equal skimage's ``resize(order=1, mode="edge")`` of the same
grids, crops and shifts (tested <= 1e-5); the released ``mode="reflect"`` mirrors about the
edge pixel instead, which changes the outer half grid cell of the upsampled grid (mask values
there differ by up to 0.48 on a test draw) and nothing inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from .base import Method, RawScores, Settings, Target, register, setting
from .common import check_positive_int, chunks


@dataclass(frozen=True)
class RISESettings(Settings):
    """RISE's settings (``m2ib.explain(..., method="rise", masks=4000)``).

    Defaults are Grad-ECLIP's RISE baseline for CLIP (NIB's code uses 6000 masks, grid 8, p 0.1).

    Attributes:
        seed: seed of the random draws; the same seed gives the same maps for a pair, alone or
            in a batch; default ``0``.
        masks: number of random masks K; default ``2000`` (Grad-ECLIP's baseline; NIB's: 6000).
        grid: cells per side of the random binary grid each mask is upsampled from; default ``8``.
        p_keep: probability that a grid cell is kept (the paper's p1); default ``0.5``
            (Grad-ECLIP's baseline; NIB's: 0.1).
        max_batch: most masked images per forward pass (a memory cap; no effect on the map);
            default ``256``.
    """

    masks: int = setting(2000, "number of random masks")
    grid: int = setting(8, "mask resolution: cells per side of the random binary grid")
    p_keep: float = setting(0.5, "probability that a grid cell is kept (the paper's p1)")
    max_batch: int = setting(256, "most masked images per forward pass (memory cap)")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.masks, "masks")
        check_positive_int(self.grid, "grid")
        check_positive_int(self.max_batch, "max_batch")
        p = self.p_keep
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InputError(f"p_keep={p!r} must be in (0, 1]")


class MaskSampler:
    """RISE's smooth random masks, all drawn up front as small grids; made in chunks."""

    def __init__(self, count: int, grid: int, p: float, size: tuple[int, int], seed: int, device: torch.device):
        g = torch.Generator().manual_seed(seed)
        self.size, self.grid, self.device = size, grid, device
        self.cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
        self.grids = (torch.rand(count, grid, grid, generator=g) < p).float()
        self.dy = torch.randint(0, self.cell[0], (count,), generator=g)
        self.dx = torch.randint(0, self.cell[1], (count,), generator=g)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Masks ``start .. stop - 1``: [k, H, W] in [0, 1]."""
        up = ((self.grid + 1) * self.cell[0], (self.grid + 1) * self.cell[1])
        big = F.interpolate(
            self.grids[start:stop, None].to(self.device), size=up, mode="bilinear", align_corners=False
        )[:, 0]
        h, w = self.size
        rows = self.dy[start:stop, None].to(self.device) + torch.arange(h, device=self.device)
        cols = self.dx[start:stop, None].to(self.device) + torch.arange(w, device=self.device)
        k = torch.arange(stop - start, device=self.device)
        return big[k[:, None, None], rows[:, :, None], cols[:, None, :]]


@register
class RISE(Method):
    """Randomised input sampling: the target averaged over random masks, weighted by each mask.

    Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018, https://arxiv.org/abs/1806.07421. Settings: :class:`RISESettings`. Image side only.

    Shapes: ``masks`` smooth masks [K, H, W] at the input size; the map sum_k s(x * M_k) M_k / (K p)
    is [H, W] (no grid: ``image_grid`` is None); ``text_map`` is None.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="rise", masks=50)
        >>> exp.image_map.shape, exp.image_grid, exp.text_map
        (torch.Size([96, 96]), None, None)
    """

    name = "rise"
    title = "RISE"
    paper = "https://arxiv.org/abs/1806.07421"
    Settings = RISESettings
    modalities = ("image",)

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: RISESettings,
    ) -> RawScores:
        pixels = images.pixel_values.to(backend.device, backend.dtype)
        n, _, h, w = pixels.shape
        sampler = MaskSampler(settings.masks, settings.grid, settings.p_keep, (h, w), settings.seed, backend.device)
        pair_chunk = min(n, settings.max_batch)
        mask_chunk = max(1, settings.max_batch // pair_chunk)
        saliency = torch.zeros(n, h, w, device=backend.device)
        with torch.no_grad():
            for m0, m1 in chunks(settings.masks, mask_chunk):
                masks = sampler(m0, m1)  # [k, H, W]
                for p0, p1 in chunks(n, pair_chunk):
                    masked = (pixels[p0:p1, None] * masks[None, :, None].to(pixels.dtype)).flatten(0, 1)
                    index = torch.arange(p0, p1)
                    score = target.select(index).score(backend.embed("image", ImageBatch(masked)))
                    saliency[p0:p1] += torch.einsum("pk,khw->phw", score.view(p1 - p0, m1 - m0), masks.float())
        return RawScores(saliency / (settings.masks * settings.p_keep))
