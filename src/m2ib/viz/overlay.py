"""Heatmap colouring and blending, in torch only (no matplotlib).

Everything here takes and returns torch tensors; PIL appears only in
:func:`to_pil`, at the edge.  Maps are sanitised on the way in: NaN becomes 0,
+inf becomes 1, -inf becomes 0 and everything is clamped to [0, 1], so no
function here ever produces a NaN colour.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["colormap", "overlay", "to_pil", "COLORMAPS"]

# "inferno"-like: 17 evenly spaced anchors (value i/16), linearly interpolated.
# Sampled from the CC0 "inferno" colour map; max deviation from it is < 0.03.
_INFERNO_ANCHORS = (
    (0.0015, 0.0005, 0.0139),
    (0.0423, 0.0281, 0.1411),
    (0.1293, 0.0473, 0.2908),
    (0.2383, 0.0366, 0.3964),
    (0.3415, 0.0623, 0.4294),
    (0.4412, 0.0993, 0.4316),
    (0.5409, 0.1347, 0.4151),
    (0.6401, 0.1714, 0.3811),
    (0.7357, 0.2159, 0.3302),
    (0.8224, 0.2752, 0.2661),
    (0.8943, 0.3534, 0.1936),
    (0.9470, 0.4492, 0.1153),
    (0.9784, 0.5579, 0.0349),
    (0.9879, 0.6753, 0.0653),
    (0.9746, 0.7977, 0.2063),
    (0.9476, 0.9174, 0.4107),
    (0.9884, 0.9984, 0.6449),
)

COLORMAPS = ("jet", "inferno", "gray")


def _sanitize(values: torch.Tensor) -> torch.Tensor:
    """float32 on CPU, detached, NaN -> 0, +inf -> 1, clamped to [0, 1]."""
    v = values.detach().to(device="cpu", dtype=torch.float32)
    return torch.nan_to_num(v, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def _jet(v: torch.Tensor) -> torch.Tensor:
    # The classic piecewise-linear "jet" (the OpenCV COLORMAP_JET /
    # pytorch-grad-cam look): 0 -> dark blue (0, 0, 0.5), 0.5 -> green-ish,
    # 1 -> dark red (0.5, 0, 0).
    four = 4.0 * v
    r = (1.5 - (four - 3.0).abs()).clamp(0.0, 1.0)
    g = (1.5 - (four - 2.0).abs()).clamp(0.0, 1.0)
    b = (1.5 - (four - 1.0).abs()).clamp(0.0, 1.0)
    return torch.stack((r, g, b), dim=0)


def _lut(v: torch.Tensor, anchors: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    table = torch.tensor(anchors, dtype=torch.float32)  # [K, 3]
    k = table.shape[0] - 1
    pos = v * k
    lo = pos.floor().clamp(0, k - 1)
    frac = (pos - lo).unsqueeze(-1)  # [..., 1]
    lo = lo.long()
    rgb = table[lo] * (1.0 - frac) + table[lo + 1] * frac  # [..., 3]
    return rgb.movedim(-1, 0)


def colormap(values: torch.Tensor, name: str = "jet") -> torch.Tensor:
    """Colour a map of values in [0, 1].

    Args:
        values: ``[H, W]`` (any shape works) with values in [0, 1]; out-of-range
            values are clamped and NaN is treated as 0.
        name: ``"jet"`` (OpenCV / grad-cam look), ``"inferno"`` or ``"gray"``.

    Returns:
        float32 RGB tensor ``[3, *values.shape]`` in [0, 1], on the CPU.
    """
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    v = _sanitize(values)
    key = name.lower()
    if key == "jet":
        rgb = _jet(v)
    elif key == "inferno":
        rgb = _lut(v, _INFERNO_ANCHORS)
    elif key in ("gray", "grey"):
        rgb = torch.stack((v, v, v), dim=0)
    else:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    return rgb.clamp_(0.0, 1.0)


def _as_image(image: torch.Tensor) -> torch.Tensor:
    """Validate and sanitise an image to float32 ``[3, H, W]`` in [0, 1] on the CPU."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    img = image.detach().cpu()
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be [3, H, W] (or [1, H, W]), got shape {tuple(image.shape)}")
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    return _sanitize(img)


def _as_map(heatmap: torch.Tensor) -> torch.Tensor:
    """Validate and sanitise a heatmap to float32 ``[h, w]`` in [0, 1] on the CPU."""
    if not isinstance(heatmap, torch.Tensor):
        heatmap = torch.as_tensor(heatmap)
    m = heatmap.detach().cpu()
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2:
        raise ValueError(f"heatmap must be [H, W], got shape {tuple(heatmap.shape)}")
    return _sanitize(m)


def _resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape) == tuple(size):
        return m
    out = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0)


def overlay(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> torch.Tensor:
    """Blend a coloured heatmap onto an image.

    Args:
        image: float ``[3, H, W]`` in [0, 1] (uint8 is accepted and rescaled).
        heatmap: ``[h, w]`` in [0, 1]; resized bilinearly to ``(H, W)`` if needed.
        alpha: weight of the heatmap colour (0 = image only, 1 = heatmap only).
        cmap: colour map name, see :func:`colormap`.

    Returns:
        float32 ``[3, H, W]`` in [0, 1] on the CPU:
        ``(1 - alpha) * image + alpha * colormap(heatmap)``.
    """
    img = _as_image(image)
    m = _resize_map(_as_map(heatmap), (img.shape[1], img.shape[2]))
    a = float(alpha)
    if math.isnan(a):
        a = 0.0
    a = min(max(a, 0.0), 1.0)
    return ((1.0 - a) * img + a * colormap(m, cmap)).clamp_(0.0, 1.0)


def to_pil(image: torch.Tensor):
    """float ``[3, H, W]`` in [0, 1] -> RGB ``PIL.Image.Image`` (uint8)."""
    from PIL import Image

    img = _as_image(image)
    arr = (img * 255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr)  # [H, W, 3] uint8 -> mode "RGB"
