"""Localisation of image maps against ground-truth masks or boxes, and of text maps against words.

All in [0, 1] per pair (reported as shares); **higher is better** for each.

* **Pointing game** (Zhang et al., 2018): is the map's maximum inside the mask? The maximum is
  the first argmax in row-major order, so a constant map points at pixel (0, 0).
* **Energy inside**: ``sum(map * mask) / sum(map)`` (negative values count as 0); a uniform map
  scores the mask's area share.
* **IoU of the top-k % region**: the ``k %`` highest-scoring pixels (ties broken at random with
  the pair's seed) against the mask. ``k`` defaults to the mask's own area share, so a perfect
  map scores 1 whatever the object's size.
* **Text pointing**: is the highest-scoring word token (start/end excluded) one of the words
  that name what is in the image (e.g. the colour and shape words of the objects a shapes
  caption names)?

Boxes are ``(x, y, w, h)`` in the model's input pixels (see
:meth:`m2ib.inputs.ImagePreprocessing.map_box` for boxes given in the original image); a pixel
belongs to a box when its centre lies inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from ..evaluation.shapes_quality import energy_inside, pointing_hit
from .common import top_fraction_mask

__all__ = ["pointing_game", "energy_inside", "topk_iou", "boxes_to_mask", "localisation", "text_pointing"]


def pointing_game(image_map: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when the map's maximum (first argmax) lies in ``mask`` (bool [H, W])."""
    return pointing_hit(image_map, mask)


def topk_iou(image_map: torch.Tensor, mask: torch.Tensor, k: float | None = None,
             generator: torch.Generator | None = None) -> float:
    """IoU of the top ``k`` share (0 < k <= 1) of pixels with ``mask``; ``k=None``: the mask's area share."""
    if image_map.shape != mask.shape:
        raise InputError(f"map {tuple(image_map.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool().cpu()
    area = float(mask.float().mean())
    fraction = area if k is None else float(k)
    if not 0 <= fraction <= 1:
        raise InputError(f"k={k!r} must be a share in [0, 1]")
    top = top_fraction_mask(image_map.cpu(), fraction, generator or torch.Generator().manual_seed(0))
    union = int((top | mask).sum())
    return float((top & mask).sum()) / union if union else 0.0


def boxes_to_mask(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> torch.Tensor:
    """Bool [H, W] of the pixels whose centre lies in any box ``(x, y, w, h)`` (input pixels)."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    mask = torch.zeros(h, w, dtype=torch.bool)
    for box in boxes:
        x, y, bw, bh = (float(v) for v in box)
        mask |= (xs >= x) & (xs < x + bw) & (ys >= y) & (ys < y + bh)
    return mask


def localisation(maps: torch.Tensor, masks: torch.Tensor, k: float | None = None,
                 seeds: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Pointing game, energy inside and top-k IoU of image maps [N, H, W] against bool masks [N, H, W].

    Returns ``{"pointing": [N] (0/1), "energy": [N], "iou": [N]}``; NaN where a mask is empty.
    """
    maps = maps[None] if maps.ndim == 2 else maps
    masks = masks[None] if masks.ndim == 2 else masks
    n = maps.shape[0]
    seeds = [0] * n if seeds is None else list(seeds)
    out = {key: torch.full((n,), float("nan")) for key in ("pointing", "energy", "iou")}
    for i in range(n):
        m, mask = maps[i].detach().float().cpu(), masks[i].bool().cpu()
        if not mask.any():
            continue
        out["pointing"][i] = float(pointing_game(m, mask))
        out["energy"][i] = energy_inside(m, mask)
        out["iou"][i] = topk_iou(m, mask, k, torch.Generator().manual_seed(int(seeds[i])))
    return out


def text_pointing(text_map: torch.Tensor, words: Sequence[int], relevant: Sequence[int]) -> float:
    """1.0 when the highest-scoring token among ``words`` (positions; first one on ties) is in
    ``relevant``, else 0.0; NaN without words."""
    words = list(words)
    if not words:
        return float("nan")
    scores = text_map.detach().float().cpu()[words]
    best = words[int(torch.argmax(torch.nan_to_num(scores, nan=float("-inf"))))]
    return 1.0 if best in set(relevant) else 0.0
