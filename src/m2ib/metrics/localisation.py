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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..backends.base import Backend
from ..errors import InputError
from ..settings import setting
from .base import Key, Measured, MethodRun, Metric, MetricSettings, PairBatch, number, register
from .common import top_fraction_mask, word_positions

if TYPE_CHECKING:
    from ..datasets.tables import Row

__all__ = [
    "pointing_game",
    "pointing_hit",
    "energy_inside",
    "topk_iou",
    "boxes_to_mask",
    "localisation",
    "text_pointing",
    "ground_truth_mask",
    "relevant_tokens",
]


def pointing_hit(image_map: torch.Tensor, mask: torch.Tensor) -> bool:
    """Pointing game: is the map's maximum inside the mask?

    The maximum is the *first* argmax in row-major order (``torch.argmax`` of the flattened
    map), so a constant map points at pixel (0, 0), which no shapes object covers (objects keep
    a border): a map that says nothing counts as a miss. NaNs never win. ``image_map`` is
    [H, W]; ``mask`` is a bool [H, W] of the same shape. True is good.
    """
    _check_pair(image_map, mask)
    flat = torch.nan_to_num(image_map.detach().float().flatten(), nan=float("-inf"))
    return bool(mask.flatten()[int(torch.argmax(flat))])


def energy_inside(image_map: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the map's mass inside the mask: ``sum(map * mask) / sum(map)``, in [0, 1].

    Negative values and NaNs are counted as 0 (maps from ``explain`` are in [0, 1] anyway). A
    map with no mass at all gives 0.0. Higher is better; a uniform map scores the mask's area
    fraction.
    """
    _check_pair(image_map, mask)
    m = torch.nan_to_num(image_map.detach().double(), nan=0.0, posinf=0.0).clamp_min(0.0)
    total = float(m.sum())
    if total <= 0.0:
        return 0.0
    return float(m[mask.bool()].sum()) / total


def _check_pair(image_map: torch.Tensor, mask: torch.Tensor) -> None:
    if image_map.ndim != 2 or tuple(image_map.shape) != tuple(mask.shape):
        raise ValueError(
            f"image_map {tuple(image_map.shape)} and mask {tuple(mask.shape)} must both be "
            "[H, W] of the same size (render scenes at the model's input size)"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")


def pointing_game(image_map: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when the map's maximum (first argmax) lies in ``mask`` (bool [H, W])."""
    return pointing_hit(image_map, mask)


def topk_iou(
    image_map: torch.Tensor, mask: torch.Tensor, k: float | None = None, generator: torch.Generator | None = None
) -> float:
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


def localisation(
    maps: torch.Tensor, masks: torch.Tensor, k: float | None = None, seeds: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
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


def ground_truth_mask(backend: Backend, row: Row, original_size: tuple[int, int]) -> torch.Tensor | None:
    """The row's mask at the model's input size: its own mask, else its boxes mapped there."""
    height, width = backend.geometry.image_size
    size = (height, width)
    if row.mask is not None:
        if tuple(row.mask.shape) != size:
            raise InputError(f"row {row.id}: mask {tuple(row.mask.shape)} does not match the model's input {size}")
        return row.mask.bool()
    if row.boxes:
        mapper = getattr(backend, "preprocessing", None)
        boxes = [mapper.map_box(b, original_size) if mapper is not None else b for b in row.boxes]
        return boxes_to_mask(boxes, size)
    return None


def relevant_tokens(backend: Backend, text: str, spans: Sequence[tuple[int, int]]) -> list[int] | None:
    """Token positions (start/end included in the numbering) overlapping the character ``spans``;
    None when the tokenizer gives no offsets."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not spans:
        return None
    try:
        enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=backend.geometry.context_length)
    except (NotImplementedError, TypeError, ValueError):
        return None
    out = []
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(max(start, a) < min(end, b) for a, b in spans):
            out.append(j)
    return out


@dataclass(frozen=True)
class LocalisationSettings(MetricSettings):
    """Localisation's options (``m2ib evaluate --iou-k 0.1``, ``{"localisation": {"iou_k": 0.1}}``).

    Attributes:
        iou_k: share of the pixels in the top-k region whose IoU with the mask is measured;
            default ``None``: each mask's own area share (a perfect map then scores 1).
    """

    # "iou_k": the flag and recorded key it had before metric options were per metric
    iou_k: float | None = setting(
        None,
        "share of pixels in the top-k region for the IoU (default: the ground-truth mask's own area)",
        alias="iou_k",
    )

    def validate(self) -> None:
        if self.iou_k is not None and not 0 < self.iou_k <= 1:
            raise InputError(f"iou_k={self.iou_k!r} must be a share in (0, 1]")


@register
class Localisation(Metric):
    """Image maps against the rows' ground-truth masks or boxes; text maps against the words that
    name what is in the image (rows with ``relevant`` spans). Rows without either get no value.

    Pointing game: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016,
    https://arxiv.org/abs/1608.00507; energy inside and top-k IoU as in this module's docstring.
    Options: :class:`LocalisationSettings`. Reads image maps [N, H, W] against masks [H, W] at
    the model's input size, and text maps [T_i] against the rows' ``relevant`` character spans.

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"localisation": {}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['image_energy', 'image_iou', 'image_pointing', 'text_pointing']
    """

    name = "localisation"
    title = "Localisation (shares of pairs / of map mass)"
    paper = "https://arxiv.org/abs/1608.00507"
    keys = (
        Key("image_pointing", "higher"),
        Key("image_energy", "higher"),
        Key("image_iou", "higher"),
        Key("text_pointing", "higher"),
    )
    needs = frozenset({"masks"})
    Settings = LocalisationSettings
    settings: LocalisationSettings

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """Pointing, energy and IoU of the image maps, or text pointing, for the rows that have ground truth."""
        out = Measured.empty(len(batch))
        if side == "image":
            have = [i for i, mask in enumerate(batch.masks) if mask is not None]
            masks = [mask for mask in batch.masks if mask is not None]
            if have:
                r = localisation(
                    maps[have],
                    torch.stack(masks),
                    k=self.settings.iou_k,
                    seeds=[batch.pair_seeds[i] for i in have],
                )
                for j, i in enumerate(have):
                    for name in ("pointing", "energy", "iou"):
                        out.values[i][f"image_{name}"] = number(r[name][j])
            return out
        for i, row in enumerate(batch.rows):
            relevant = relevant_tokens(batch.backend, row.text, row.relevant) if row.relevant else None
            if relevant is not None:
                out.values[i]["text_pointing"] = number(
                    text_pointing(maps[i], word_positions(batch.texts, i), relevant)
                )
        return out
