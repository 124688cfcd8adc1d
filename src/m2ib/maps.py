"""Map arithmetic every room shares (methods, explanations, figures, reports): no NaN, min-max."""

from __future__ import annotations

import torch


def finite(x: torch.Tensor) -> torch.Tensor:
    """Replace NaN and +-inf so that no map ever carries them."""
    return torch.nan_to_num(x, nan=0.0, posinf=torch.finfo(x.dtype).max / 4, neginf=0.0)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row of ``x`` [N, ...] to [0, 1]; a constant row becomes zeros (never NaN)."""
    x = finite(x)
    flat = x.reshape(x.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    flat_ok = span > 1e-12 * hi.abs().clamp(min=1.0)
    out = torch.where(flat_ok, (flat - lo) / torch.where(flat_ok, span, torch.ones_like(span)), 0.0)
    return out.clamp_(0.0, 1.0).reshape(x.shape)
