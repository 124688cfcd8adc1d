"""The matplotlib canvas: a figure of exact pixel size in y-down inches, and what the figures draw on it.

matplotlib is an optional extra: :func:`load_mpl` imports it lazily and raises ``ImportError``
with an install hint without it. All text is drawn with ``parse_math=False`` and ``usetex=False``.
"""

from __future__ import annotations

import functools
import logging
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..collector import gc_paused
from .layout import Ruler, TokenBlock, fit_text
from .overlay import colormap, to_pil
from .style import (
    CB_GAP,
    CB_W,
    FRAME,
    HUE,
    IMG_GAP,
    INK,
    MAX_ALPHA,
    MUTED,
    PT,
    SCORE_GAP,
    SPECIAL,
    SUBTITLE_FS,
    TITLE_FS,
    TOK_VPAD,
    TOKEN_EDGE,
    Fonts,
)

if TYPE_CHECKING:  # matplotlib is optional: imported at run time by load_mpl only
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch, Rectangle
    from matplotlib.transforms import Affine2D

MISSING_MPL = "Figures need matplotlib: pip install 'm2ib[figures]'"


def quiet_missing_glyphs(draw: Callable) -> Callable:
    """``draw`` without matplotlib's "Glyph N missing from font(s)" warnings: one per character
    and per measurement (dozens for one CJK caption). Installed fallback fonts
    (:data:`~m2ib.viz.style.FALLBACK_FONTS`) draw what they can; the rest draws as boxes."""

    @functools.wraps(draw)
    def quiet(*args, **kwargs):
        # a fallback font without a bold face: matplotlib logs "findfont: Failed to find font weight"
        fonts_log = logging.getLogger("matplotlib.font_manager")
        level = fonts_log.level
        fonts_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
                warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
                return draw(*args, **kwargs)
        finally:
            fonts_log.setLevel(level)

    return quiet


def load_mpl() -> MplNS:
    """Import the matplotlib pieces lazily (it is an optional dependency)."""
    try:
        with gc_paused():  # matplotlib's modules live on: no full collection walks them meanwhile
            from matplotlib import patheffects
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.font_manager import FontProperties
            from matplotlib.lines import Line2D
            from matplotlib.patches import FancyBboxPatch, Rectangle
            from matplotlib.transforms import Affine2D
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(MISSING_MPL) from exc
    return MplNS(
        Figure=Figure,
        FigureCanvasAgg=FigureCanvasAgg,
        FontProperties=FontProperties,
        Line2D=Line2D,
        FancyBboxPatch=FancyBboxPatch,
        Rectangle=Rectangle,
        patheffects=patheffects,
        Affine2D=Affine2D,
    )


@dataclass(frozen=True)
class MplNS:
    """The matplotlib classes the figures use, imported once by :func:`load_mpl`."""

    Figure: type[Figure]
    FigureCanvasAgg: type[FigureCanvasAgg]
    FontProperties: type[FontProperties]
    Line2D: type[Line2D]
    FancyBboxPatch: type[FancyBboxPatch]
    Rectangle: type[Rectangle]
    patheffects: types.ModuleType
    Affine2D: type[Affine2D]


# Coordinates below are inches from the figure's top-left corner.
class Canvas:
    """A figure of known size with a y-down inch coordinate system."""

    def __init__(self, mpl: MplNS, fig, canvas, width_in: float, height_in: float, dpi: int):
        self.mpl = mpl
        self.fig = fig
        self.canvas = canvas
        self.dpi = dpi
        # Integer pixel size, with a hair of slack so Agg's int() truncation
        # cannot lose a pixel to floating-point error.
        self.wpx = int(round(width_in * dpi))
        self.hpx = int(round(height_in * dpi))
        fig.set_size_inches((self.wpx + 1e-3) / dpi, (self.hpx + 1e-3) / dpi)
        self.w = self.wpx / dpi
        self.h = self.hpx / dpi
        self.T = mpl.Affine2D().scale(1.0, -1.0).translate(0.0, fig.get_size_inches()[1]) + (fig.dpi_scale_trans)

    def snap(self, v: float) -> float:
        return round(v * self.dpi) / self.dpi

    def text(self, x, y, s, prop, color=INK, **kw):
        return self.fig.text(
            x,
            y,
            s,
            fontproperties=prop,
            color=color,
            transform=self.T,
            parse_math=False,
            usetex=False,
            **kw,
        )

    def add(self, artist):
        artist.set_transform(self.T)
        self.fig.add_artist(artist)
        return artist

    def axes(self, x, y, w, h):
        """Axes whose box is exactly (x, y, w, h) inches, y measured downward."""
        H = self.fig.get_size_inches()[1]
        W = self.fig.get_size_inches()[0]
        return self.fig.add_axes((x / W, (H - y - h) / H, w / W, h / H))

    def to_pil(self):
        from PIL import Image

        self.canvas.draw()
        buf = self.canvas.buffer_rgba()
        w, h = self.canvas.get_width_height()
        img = Image.frombuffer("RGBA", (w, h), bytes(buf), "raw", "RGBA", 0, 1).convert("RGB")
        if img.size != (self.wpx, self.hpx):  # pragma: no cover - defensive
            img = img.crop((0, 0, self.wpx, self.hpx))
        return img


def new_canvas(mpl: MplNS, dpi: int) -> tuple:
    """A white figure (resized later by :class:`Canvas`) and its Agg canvas, used to measure text first."""
    fig = mpl.Figure(figsize=(4, 3), dpi=dpi, facecolor="white", edgecolor="white")
    canvas = mpl.FigureCanvasAgg(fig)
    return fig, canvas


def panel_size(h: int, w: int, side: float, dpi: int) -> tuple[float, float]:
    """Display size (inches, whole pixels) of an image panel.

    The panel has the area of a ``side`` x ``side`` square at the image's
    aspect ratio, with the long side at most 1.45 ``side`` and the short side
    at least 0.5 ``side`` where the aspect ratio allows (the long-side cap wins).
    """
    aspect = w / h  # > 1: wide
    pw, ph = side * aspect**0.5, side / aspect**0.5
    grow = max(1.0, 0.5 * side / min(pw, ph))
    pw, ph = pw * grow, ph * grow
    shrink = min(1.0, 1.45 * side / max(pw, ph))  # the cap wins; the aspect ratio is kept
    pw, ph = pw * shrink, ph * shrink
    return max(1, round(pw * dpi)) / dpi, max(1, round(ph * dpi)) / dpi


def display_array(rgb: torch.Tensor, wpx: int, hpx: int):
    """[3,H,W] float -> uint8 numpy [hpx, wpx, 3] resampled for display."""
    import numpy as np
    from PIL import Image

    pil = to_pil(rgb)
    if pil.size != (wpx, hpx):
        up = wpx >= pil.size[0] and hpx >= pil.size[1]
        pil = pil.resize((wpx, hpx), Image.Resampling.BICUBIC if up else Image.Resampling.LANCZOS)
    return np.asarray(pil)


def draw_image(cv: Canvas, x, y, w, h, rgb: torch.Tensor, boxes):
    """Draw an RGB tensor in an exactly sized, framed axes; boxes in image pixels."""
    H, W = rgb.shape[1], rgb.shape[2]
    x, y = cv.snap(x), cv.snap(y)
    ax = cv.axes(x, y, w, h)
    arr = display_array(rgb, int(round(w * cv.dpi)), int(round(h * cv.dpi)))
    ax.imshow(arr, extent=(0, W, H, 0), interpolation="none", aspect="auto", resample=False)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_linewidth(0.6)
        sp.set_edgecolor(FRAME)
    for bx in boxes or ():
        bx0, by0, bw, bh = (float(v) for v in bx)
        rect = cv.mpl.Rectangle(
            (bx0, by0),
            bw,
            bh,
            fill=False,
            edgecolor="white",
            linewidth=1.6,
            path_effects=[cv.mpl.patheffects.withStroke(linewidth=3.2, foreground=(0, 0, 0, 0.85))],
        )
        ax.add_patch(rect)
    return ax


def draw_placeholder(cv: Canvas, fonts: Fonts, x, y, w, h, note: str) -> None:
    """A dashed frame with ``note`` in its middle, for a cell a method has no map for."""
    rect = cv.mpl.Rectangle(
        (cv.snap(x), cv.snap(y)), w, h, fill=False, edgecolor=FRAME, linewidth=0.6, linestyle=(0, (3, 3))
    )
    cv.add(rect)
    cv.text(x + w / 2, y + h / 2, note, fonts.note, color=MUTED, ha="center", va="center")


def colorbar_reserve(ruler: Ruler, fonts: Fonts) -> float:
    """Horizontal space a colorbar needs, gap + bar + ticks + label (inches)."""
    tick_w = max(ruler.width(s, fonts.cb) for s in ("0", "0.5", "1"))
    _, lab_h, _ = ruler.size("relevance", fonts.cb_label)
    return CB_GAP + CB_W + 2.5 * PT + 2.0 * PT + tick_w + 4.0 * PT + lab_h


def draw_colorbar(cv: Canvas, ruler: Ruler, fonts: Fonts, x, y, h, cmap: str):
    """Slim vertical colorbar at (x, y) (x = left edge of the bar), height h."""
    x, y = cv.snap(x), cv.snap(y)
    w = cv.snap(CB_W)
    ax = cv.axes(x, y, w, h)
    n = 256
    grad = colormap(torch.linspace(1.0, 0.0, n).unsqueeze(1), cmap)  # [3, n, 1], top = 1
    arr = (grad.permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    ax.imshow(arr, extent=(0, 1, 0, 1), aspect="auto", interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_linewidth(0.6)
        sp.set_edgecolor(FRAME)
    tick_len, pad = 2.5 * PT, 2.0 * PT
    right = x + w
    for v, s in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        ty = y + (1.0 - v) * h
        cv.add(cv.mpl.Line2D([right, right + tick_len], [ty, ty], color=MUTED, linewidth=0.6))
        cv.text(right + tick_len + pad, ty, s, fonts.cb, color=MUTED, ha="left", va="center_baseline")
    tick_w = max(ruler.width(s, fonts.cb) for s in ("0", "0.5", "1"))
    cv.text(
        right + tick_len + pad + tick_w + 4.0 * PT,
        y + h / 2,
        "relevance",
        fonts.cb_label,
        color=MUTED,
        ha="left",
        va="center",
        rotation=90,
    )


def shade(score: float) -> tuple[float, float, float]:
    """A token's background for ``score`` in [0, 1]: white to red."""
    a = MAX_ALPHA * score
    r, g, b = (1.0 - (1.0 - c) * a for c in HUE)
    return r, g, b


def draw_tokens(cv: Canvas, fonts: Fonts, block: TokenBlock, x0, y0, scores: list[float] | None):
    """Draw a laid-out token block with its top-left corner at (x0, y0)."""
    for i, cell in enumerate(block.cells):
        top = y0 + cell.line * block.pitch
        cx = x0 + cell.x + cell.w / 2
        base = top + TOK_VPAD + block.asc
        if cell.special:
            cv.text(cx, base, cell.text, fonts.special, color=SPECIAL, ha="center", va="baseline")
            continue
        s = scores[i] if scores is not None else None
        if s is not None:
            box = cv.mpl.FancyBboxPatch(
                (x0 + cell.x, top),
                cell.w,
                block.box_h,
                boxstyle=f"round,pad=0,rounding_size={2.0 * PT}",
                facecolor=shade(s),
                edgecolor=TOKEN_EDGE,
                linewidth=0.5,
            )
            cv.add(box)
        cv.text(cx, base, cell.text, fonts.token, color=INK, ha="center", va="baseline")
        if s is not None and block.show_scores:
            sy = top + block.box_h + SCORE_GAP + block.score_asc
            cv.text(cx, sy, f"{s:.2f}", fonts.score, color=MUTED, ha="center", va="baseline")


def draw_title(
    cv: Canvas, ruler: Ruler, fonts: Fonts, t_lines: list[str], s_lines: list[str], x: float, y: float, w: float
) -> None:
    """The wrapped title and subtitle, centred over the ``w`` inches from ``x``, from ``y`` down."""
    cx = x + w / 2
    asc, _ = ruler.metrics(fonts.title)
    for k, line in enumerate(t_lines):
        cv.text(cx, y + asc + k * TITLE_FS * 1.25 * PT, line, fonts.title, ha="center", va="baseline")
    y += len(t_lines) * TITLE_FS * 1.25 * PT + (2.0 * PT if t_lines else 0.0)
    asc, _ = ruler.metrics(fonts.subtitle)
    for k, line in enumerate(s_lines):
        cv.text(
            cx,
            y + asc + k * SUBTITLE_FS * 1.3 * PT,
            line,
            fonts.subtitle,
            color=MUTED,
            ha="center",
            va="baseline",
        )


def draw_heading(cv: Canvas, ruler: Ruler, fonts: Fonts, x: float, y: float, w: float, s: str) -> None:
    """A column heading centred over the ``w`` inches from ``x`` (shortened if it does not fit)."""
    asc, _ = ruler.metrics(fonts.head)
    cv.text(
        x + w / 2,
        y + asc,
        fit_text(ruler, s, fonts.head, w + IMG_GAP),
        fonts.head,
        color=MUTED,
        ha="center",
        va="baseline",
    )
