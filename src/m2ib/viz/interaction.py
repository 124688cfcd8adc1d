"""The interaction figure: the image once per phrase, each with that phrase's signed map.

Red where the phrase and the region raise the similarity together, blue where they lower it;
one colour scale for all panels (the largest |score| of any panel), so panels compare. Drawn from
tensors and strings only (the result classes pick the phrases: :meth:`m2ib.interactions.Interaction.figure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .canvas import load_mpl, quiet_missing_glyphs
from .overlay import to_pil

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[float, float, float, float]  # (x, y, w, h) in the image's pixels


def signed_overlay(image: torch.Tensor, signed: torch.Tensor, scale: float) -> torch.Tensor:
    """[3, H, W] in [0, 1]: the image dimmed (colours kept: they are what captions name), red for
    positive and blue for negative scores."""
    grey = image.float() * 0.55 + 0.2
    level = (signed.float() / max(scale, 1e-12)).clamp(-1, 1)
    red = torch.tensor([0.85, 0.1, 0.1])[:, None, None]
    blue = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    colour = torch.where(level >= 0, red, blue)
    alpha = level.abs()[None] * 0.8
    return grey * (1 - alpha) + colour * alpha


@quiet_missing_glyphs
def interaction_figure(
    image: torch.Tensor,
    panels: Sequence[tuple[str, torch.Tensor]],
    title: str,
    subtitle: str,
    boxes: Sequence[Box] | None = None,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> Image.Image:
    """A PIL image: the image [3, H, W], then one panel per ``(label, signed map [H, W])`` on one
    colour scale (the largest |score| of any panel), ``boxes`` drawn on every panel.

    :meth:`m2ib.interactions.Interaction.figure <m2ib.interactions.result.Interaction.figure>`
    draws with it (one panel per phrase). Needs matplotlib.

    Args:
        image: [3, H, W] in [0, 1], the picture as the model saw it.
        panels: ``(label, signed map [H, W])`` pairs; red is positive, blue negative.
        title: the first line above the panels.
        subtitle: the second line (the colour scale is appended).
        boxes: ``(x, y, w, h)`` rectangles in the image's pixels; default ``None``.
        panel_inches: the side of each panel in inches; default ``2.0``.
        dpi: resolution; default ``100``.

    Returns:
        An RGB ``PIL.Image.Image``, ``len(panels) + 1`` panels wide.

    Examples:
        >>> import torch
        >>> from m2ib.viz.interaction import interaction_figure
        >>> signed = torch.randn(96, 96)
        >>> picture = interaction_figure(torch.rand(3, 96, 96), [("red circle", signed)], "a red circle", "fixlip")
        >>> picture.mode, picture.size  # 2 panels of 2 inches at 100 dpi, plus the title
        ('RGB', (400, 250))
    """
    mpl = load_mpl()
    scale = max((float(m.abs().max()) for _, m in panels), default=0.0)
    n = len(panels) + 1
    head = 0.5  # inches of title above the panels
    fig = mpl.Figure(figsize=(panel_inches * n, panel_inches + head), dpi=dpi)
    canvas = mpl.FigureCanvasAgg(fig)
    fig.text(
        0.5,
        1 - 0.08 / (panel_inches + head),
        f"{title}\n{subtitle} · red +, blue −, one scale ±{scale:.3g}",
        fontsize=8,
        ha="center",
        va="top",
    )
    box = panel_inches * 0.8 / (panel_inches + head)  # panel height as a share of the figure's
    for k, (label, signed) in enumerate([("image", None), *panels]):
        ax = fig.add_axes((k / n + 0.1 / n, 0.03, 0.8 / n, box))
        ax.set_axis_off()
        picture = image if signed is None else signed_overlay(image, signed, scale)
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        for x, y, w, h in boxes or ():
            ax.add_patch(
                mpl.Rectangle(
                    (x, y),
                    w,
                    h,
                    fill=False,
                    edgecolor="white",
                    linewidth=1.2,
                    path_effects=[mpl.patheffects.withStroke(linewidth=2.4, foreground=(0, 0, 0, 0.85))],
                )
            )
    canvas.draw()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    width, height = canvas.get_width_height()
    return to_pil(rgba.reshape(height, width, 4)[..., :3].permute(2, 0, 1).float() / 255)
