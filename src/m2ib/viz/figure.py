"""Paper-style explanation figures (matplotlib, Agg, no pyplot).

The figures are laid out by hand in inches from measured text extents, so the
output size is a deterministic function of the inputs (and the dpi), long
captions wrap inside their panel, and nothing depends on pyplot state or on
global rcParams being changed.  All text is drawn with ``parse_math=False`` and
``usetex=False``, so tokens such as ``$x^2_\\`` are shown literally.

matplotlib is an optional extra: it is imported lazily, and calling a figure
function without it raises ``ImportError`` with an install hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..fileio import atomic_write
from .overlay import _as_image, _as_map, _sanitize, colormap, overlay, to_pil

__all__ = ["explanation_figure", "comparison_figure", "save_png"]

_MISSING_MPL = "Figures need matplotlib: pip install 'm2ib[figures]'"

# --------------------------------------------------------------------------
# Style (sizes in points unless noted; lengths in inches).
# --------------------------------------------------------------------------
_TOKEN_FS = 12.0
_SCORE_FS = 7.5
_TITLE_FS = 13.0
_SUBTITLE_FS = 10.0
_HEAD_FS = 10.0
_NAME_FS = 11.0
_CB_FS = 8.0
_NOTE_FS = 9.5

_INK = (0.10, 0.10, 0.10)
_MUTED = (0.38, 0.38, 0.38)
_SPECIAL = (0.52, 0.52, 0.52)
_FRAME = (0.62, 0.62, 0.62)
_TOKEN_EDGE = (0.78, 0.78, 0.78)
_HUE = (0.85, 0.13, 0.13)  # token shading: white -> red, like "high" in jet
_MAX_ALPHA = 0.78  # shading at score 1 (keeps black text readable)

_PT = 1.0 / 72.0
_MARGIN = 0.16
_IMG_SIDE = 2.5  # long side of an image panel, explanation figure
_IMG_SIDE_CMP = 2.1  # long side of an image panel, comparison figure
_IMG_GAP = 0.10
_PANEL_GAP = 0.30
_CB_GAP = 0.07
_CB_W = 0.11
_TEXT_W = 4.4  # max width of the token panel beside images
_TEXT_W_ALONE = 6.2  # max width of the token panel when it is alone
_ROW_GAP = 0.16
_NAME_MAX_W = 1.5

_TOK_HPAD = 3.0 * _PT
_TOK_VPAD = 2.5 * _PT
_TOK_HGAP = 3.5 * _PT
_LINE_GAP = 5.0 * _PT
_SCORE_GAP = 1.5 * _PT


def _mpl():
    """Import the matplotlib pieces lazily (it is an optional dependency)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.font_manager import FontProperties
        from matplotlib.lines import Line2D
        from matplotlib.patches import FancyBboxPatch, Rectangle
        from matplotlib import patheffects
        from matplotlib.transforms import Affine2D
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(_MISSING_MPL) from exc
    return _MplNS(
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
class _MplNS:
    Figure: object
    FigureCanvasAgg: object
    FontProperties: object
    Line2D: object
    FancyBboxPatch: object
    Rectangle: object
    patheffects: object
    Affine2D: object


# --------------------------------------------------------------------------
# Text measurement and wrapping.
# --------------------------------------------------------------------------
class _Ruler:
    """Measures strings (in inches) with the Agg renderer, never as mathtext."""

    def __init__(self, renderer, dpi: float):
        self._r = renderer
        self._dpi = float(dpi)
        self._cache: dict = {}

    def size(self, s: str, prop) -> tuple[float, float, float]:
        """(width, height, descent) of ``s`` in inches."""
        key = (s, prop)
        hit = self._cache.get(key)
        if hit is None:
            if s == "":
                hit = (0.0, 0.0, 0.0)
            else:
                w, h, d = self._r.get_text_width_height_descent(s, prop, ismath=False)
                hit = (w / self._dpi, h / self._dpi, d / self._dpi)
            self._cache[key] = hit
        return hit

    def width(self, s: str, prop) -> float:
        return self.size(s, prop)[0]

    def metrics(self, prop) -> tuple[float, float]:
        """(ascent, descent) of a line of text in ``prop``, in inches."""
        _, h, d = self.size("ÅÉgjpqy|()", prop)
        return h - d, d


def _visible(s: str) -> str:
    """Make control characters visible so a token stays on one line."""
    return s.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _fit(ruler: _Ruler, s: str, prop, max_w: float) -> str:
    """Shorten ``s`` with an ellipsis until it fits ``max_w`` (inches)."""
    if ruler.width(s, prop) <= max_w:
        return s
    lo, hi = 0, len(s)
    while lo < hi:  # largest n with s[:n] + "…" fitting
        mid = (lo + hi + 1) // 2
        if ruler.width(s[:mid] + "…", prop) <= max_w:
            lo = mid
        else:
            hi = mid - 1
    return s[:lo] + "…"


def _break_word(ruler: _Ruler, word: str, prop, max_w: float) -> list[str]:
    """Split a single over-long word into chunks that each fit ``max_w``."""
    chunks, cur = [], ""
    for ch in word:
        if cur and ruler.width(cur + ch, prop) > max_w:
            chunks.append(cur)
            cur = ch
        else:
            cur += ch
    chunks.append(cur)
    return chunks


def _wrap(ruler: _Ruler, text: str, prop, max_w: float) -> list[str]:
    """Greedy word wrap using measured widths."""
    lines: list[str] = []
    for para in _visible_lines(text):
        cur = ""
        for word in para.split(" "):
            cand = word if not cur else f"{cur} {word}"
            if ruler.width(cand, prop) <= max_w:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            pieces = _break_word(ruler, word, prop, max_w)
            lines.extend(pieces[:-1])
            cur = pieces[-1]
        lines.append(cur)
    return lines


def _visible_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\t", " ").split("\n")


# --------------------------------------------------------------------------
# Token layout.
# --------------------------------------------------------------------------
@dataclass
class _Cell:
    text: str
    x: float  # left edge, inches from the block's left
    line: int
    w: float  # box width
    special: bool


@dataclass
class _TokenBlock:
    cells: list[_Cell]
    n_lines: int
    width: float  # widest line actually used
    box_h: float
    pitch: float  # distance between line tops
    asc: float
    score_asc: float
    show_scores: bool

    @property
    def height(self) -> float:
        if self.n_lines == 0:
            return 0.0
        return self.n_lines * self.pitch - _LINE_GAP


class _Fonts:
    def __init__(self, FontProperties):
        self.token = FontProperties(size=_TOKEN_FS)
        self.special = FontProperties(size=_TOKEN_FS, style="italic")
        self.score = FontProperties(size=_SCORE_FS)
        self.title = FontProperties(size=_TITLE_FS, weight="bold")
        self.subtitle = FontProperties(size=_SUBTITLE_FS)
        self.head = FontProperties(size=_HEAD_FS)
        self.name = FontProperties(size=_NAME_FS, weight="bold")
        self.cb = FontProperties(size=_CB_FS)
        self.cb_label = FontProperties(size=_CB_FS + 1)
        self.note = FontProperties(size=_NOTE_FS, style="italic")


def _layout_tokens(
    ruler: _Ruler, fonts: _Fonts, tokens: Sequence[str], special: set[int], max_w: float
) -> _TokenBlock:
    asc, desc = ruler.metrics(fonts.token)
    box_h = asc + desc + 2 * _TOK_VPAD
    score_asc, score_desc = ruler.metrics(fonts.score)
    score_w = ruler.width("0.00", fonts.score) + 2 * _PT
    show_scores = any(i not in special for i in range(len(tokens)))
    pitch = box_h + _LINE_GAP + ((_SCORE_GAP + score_asc + score_desc) if show_scores else 0.0)

    items = []  # (text, box width, special)
    for i, tok in enumerate(tokens):
        is_special = i in special
        prop = fonts.special if is_special else fonts.token
        text = _fit(ruler, _visible(str(tok)), prop, max_w - 2 * _TOK_HPAD)
        w = ruler.width(text, prop) + 2 * _TOK_HPAD
        if not is_special:
            w = max(w, score_w)
        items.append((text, min(w, max_w), is_special))

    def wrap(limit: float) -> tuple[list[_Cell], int, float]:
        cells: list[_Cell] = []
        x, line, used = 0.0, 0, 0.0
        for text, w, is_special in items:
            if x > 0 and x + w > limit + 1e-9:
                line += 1
                x = 0.0
            cells.append(_Cell(text, x, line, w, is_special))
            used = max(used, x + w)
            x += w + _TOK_HGAP
        return cells, line, used

    cells, line, used = wrap(max_w)
    if line > 0:
        # Balance the lines: the narrowest width that needs no more lines than
        # max_w does, so a caption never ends with a lone orphan token.
        lo, hi = max(w for _, w, _ in items), used
        for _ in range(24):
            mid = (lo + hi) / 2
            if wrap(mid)[1] <= line:
                hi = mid
            else:
                lo = mid
        cells, line, used = wrap(hi)
    n_lines = line + 1 if cells else 0
    return _TokenBlock(cells, n_lines, used, box_h, pitch, asc, score_asc, show_scores)


# --------------------------------------------------------------------------
# Drawing helpers. Coordinates are inches from the figure's top-left corner.
# --------------------------------------------------------------------------
class _Canvas:
    """A figure of known size with a y-down inch coordinate system."""

    def __init__(self, mpl: _MplNS, fig, canvas, width_in: float, height_in: float, dpi: int):
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
        self.T = mpl.Affine2D().scale(1.0, -1.0).translate(0.0, fig.get_size_inches()[1]) + (
            fig.dpi_scale_trans
        )

    def snap(self, v: float) -> float:
        return round(v * self.dpi) / self.dpi

    def text(self, x, y, s, prop, color=_INK, **kw):
        return self.fig.text(
            x, y, s, fontproperties=prop, color=color, transform=self.T,
            parse_math=False, usetex=False, **kw,
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


def _new_canvas(mpl: _MplNS, dpi: int):
    fig = mpl.Figure(figsize=(4, 3), dpi=dpi, facecolor="white", edgecolor="white")
    canvas = mpl.FigureCanvasAgg(fig)
    return fig, canvas


def _panel_size(h: int, w: int, side: float, dpi: int) -> tuple[float, float]:
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


def _display_array(rgb: torch.Tensor, wpx: int, hpx: int):
    """[3,H,W] float -> uint8 numpy [hpx, wpx, 3] resampled for display."""
    import numpy as np
    from PIL import Image

    pil = to_pil(rgb)
    if pil.size != (wpx, hpx):
        up = wpx >= pil.size[0] and hpx >= pil.size[1]
        pil = pil.resize((wpx, hpx), Image.Resampling.BICUBIC if up else Image.Resampling.LANCZOS)
    return np.asarray(pil)


def _draw_image(cv: _Canvas, x, y, w, h, rgb: torch.Tensor, boxes):
    """Draw an RGB tensor in an exactly sized, framed axes; boxes in image pixels."""
    H, W = rgb.shape[1], rgb.shape[2]
    x, y = cv.snap(x), cv.snap(y)
    ax = cv.axes(x, y, w, h)
    arr = _display_array(rgb, int(round(w * cv.dpi)), int(round(h * cv.dpi)))
    ax.imshow(arr, extent=(0, W, H, 0), interpolation="none", aspect="auto", resample=False)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_linewidth(0.6)
        sp.set_edgecolor(_FRAME)
    for bx in boxes or ():
        bx0, by0, bw, bh = (float(v) for v in bx)
        rect = cv.mpl.Rectangle(
            (bx0, by0), bw, bh, fill=False, edgecolor="white", linewidth=1.6,
            path_effects=[cv.mpl.patheffects.withStroke(linewidth=3.2, foreground=(0, 0, 0, 0.85))],
        )
        ax.add_patch(rect)
    return ax


def _placeholder(cv: _Canvas, fonts: _Fonts, x, y, w, h, note: str):
    rect = cv.mpl.Rectangle(
        (cv.snap(x), cv.snap(y)), w, h, fill=False, edgecolor=_FRAME, linewidth=0.6, linestyle=(0, (3, 3))
    )
    cv.add(rect)
    cv.text(x + w / 2, y + h / 2, note, fonts.note, color=_MUTED, ha="center", va="center")


def _colorbar_reserve(ruler: _Ruler, fonts: _Fonts) -> float:
    """Horizontal space a colorbar needs, gap + bar + ticks + label (inches)."""
    tick_w = max(ruler.width(s, fonts.cb) for s in ("0", "0.5", "1"))
    _, lab_h, _ = ruler.size("relevance", fonts.cb_label)
    return _CB_GAP + _CB_W + 2.5 * _PT + 2.0 * _PT + tick_w + 4.0 * _PT + lab_h


def _draw_colorbar(cv: _Canvas, ruler: _Ruler, fonts: _Fonts, x, y, h, cmap: str):
    """Slim vertical colorbar at (x, y) (x = left edge of the bar), height h."""
    x, y = cv.snap(x), cv.snap(y)
    w = cv.snap(_CB_W)
    ax = cv.axes(x, y, w, h)
    n = 256
    grad = colormap(torch.linspace(1.0, 0.0, n).unsqueeze(1), cmap)  # [3, n, 1], top = 1
    arr = (grad.permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    ax.imshow(arr, extent=(0, 1, 0, 1), aspect="auto", interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_linewidth(0.6)
        sp.set_edgecolor(_FRAME)
    tick_len, pad = 2.5 * _PT, 2.0 * _PT
    right = x + w
    for v, s in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        ty = y + (1.0 - v) * h
        cv.add(cv.mpl.Line2D([right, right + tick_len], [ty, ty], color=_MUTED, linewidth=0.6))
        cv.text(right + tick_len + pad, ty, s, fonts.cb, color=_MUTED, ha="left", va="center_baseline")
    tick_w = max(ruler.width(s, fonts.cb) for s in ("0", "0.5", "1"))
    cv.text(
        right + tick_len + pad + tick_w + 4.0 * _PT, y + h / 2, "relevance", fonts.cb_label,
        color=_MUTED, ha="left", va="center", rotation=90,
    )


def _shade(score: float) -> tuple[float, float, float]:
    a = _MAX_ALPHA * score
    return tuple(1.0 - (1.0 - c) * a for c in _HUE)


def _draw_tokens(cv: _Canvas, fonts: _Fonts, block: _TokenBlock, x0, y0, scores: list[float] | None):
    """Draw a laid-out token block with its top-left corner at (x0, y0)."""
    for i, cell in enumerate(block.cells):
        top = y0 + cell.line * block.pitch
        cx = x0 + cell.x + cell.w / 2
        base = top + _TOK_VPAD + block.asc
        if cell.special:
            cv.text(cx, base, cell.text, fonts.special, color=_SPECIAL, ha="center", va="baseline")
            continue
        s = scores[i] if scores is not None else None
        if s is not None:
            box = cv.mpl.FancyBboxPatch(
                (x0 + cell.x, top), cell.w, block.box_h,
                boxstyle=f"round,pad=0,rounding_size={2.0 * _PT}",
                facecolor=_shade(s), edgecolor=_TOKEN_EDGE, linewidth=0.5,
            )
            cv.add(box)
        cv.text(cx, base, cell.text, fonts.token, color=_INK, ha="center", va="baseline")
        if s is not None and block.show_scores:
            sy = top + block.box_h + _SCORE_GAP + block.score_asc
            cv.text(cx, sy, f"{s:.2f}", fonts.score, color=_MUTED, ha="center", va="baseline")


def _title_lines(ruler, fonts, title, subtitle, max_w):
    t = _wrap(ruler, title, fonts.title, max_w) if title else []
    s = _wrap(ruler, subtitle, fonts.subtitle, max_w) if subtitle else []
    return t, s


def _title_height(ruler, fonts, t_lines, s_lines) -> float:
    h = 0.0
    if t_lines:
        h += len(t_lines) * _TITLE_FS * 1.25 * _PT
    if s_lines:
        h += (2.0 * _PT if t_lines else 0.0) + len(s_lines) * _SUBTITLE_FS * 1.3 * _PT
    if h:
        h += 8.0 * _PT
    return h


def _draw_title(cv, ruler, fonts, t_lines, s_lines, x, y, w):
    cx = x + w / 2
    asc, _ = ruler.metrics(fonts.title)
    for k, line in enumerate(t_lines):
        cv.text(cx, y + asc + k * _TITLE_FS * 1.25 * _PT, line, fonts.title, ha="center", va="baseline")
    y += len(t_lines) * _TITLE_FS * 1.25 * _PT + (2.0 * _PT if t_lines else 0.0)
    asc, _ = ruler.metrics(fonts.subtitle)
    for k, line in enumerate(s_lines):
        cv.text(
            cx, y + asc + k * _SUBTITLE_FS * 1.3 * _PT, line, fonts.subtitle, color=_MUTED,
            ha="center", va="baseline",
        )


def _natural_title_width(ruler, fonts, title, subtitle) -> float:
    w = 0.0
    for text, prop in ((title, fonts.title), (subtitle, fonts.subtitle)):
        if text:
            w = max(w, max(ruler.width(line, prop) for line in _visible_lines(text)))
    return w


# --------------------------------------------------------------------------
# Input checking.
# --------------------------------------------------------------------------
def _text_inputs(tokens, text_map, special_tokens) -> tuple[list[str], list[float], set[int]]:
    if tokens is None:
        raise ValueError("text_map was given but tokens is None; pass the display tokens")
    tokens = [str(t) for t in tokens]
    tm = text_map if isinstance(text_map, torch.Tensor) else torch.as_tensor(text_map)
    tm = _sanitize(tm).reshape(-1)
    if tm.numel() != len(tokens):
        raise ValueError(f"text_map has {tm.numel()} scores but there are {len(tokens)} tokens")
    return tokens, [float(v) for v in tm.tolist()], _special_set(special_tokens, len(tokens))


def _special_set(special_tokens, n: int) -> set[int]:
    out = set()
    for i in special_tokens or ():
        i = int(i)
        if not -n <= i < n:
            raise ValueError(f"special token index {i} is out of range for {n} tokens")
        out.add(i % n)
    return out


def _heading_height(ruler, fonts) -> float:
    asc, desc = ruler.metrics(fonts.head)
    return asc + desc + 4.0 * _PT


def _draw_heading(cv, ruler, fonts, x, y, w, s):
    asc, _ = ruler.metrics(fonts.head)
    cv.text(x + w / 2, y + asc, _fit(ruler, s, fonts.head, w + _IMG_GAP), fonts.head, color=_MUTED,
            ha="center", va="baseline")


# --------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------
def explanation_figure(
    image: torch.Tensor,
    image_map: torch.Tensor | None,
    tokens: list[str] | None,
    text_map: torch.Tensor | None,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    boxes: list[tuple[float, float, float, float]] | None = None,
    special_tokens: tuple[int, ...] = (),
    dpi: int = 150,
):
    """Render one explanation: image heatmap and/or shaded tokens.

    Layout, left to right: the input image, the image with ``image_map``
    overlaid (jet, alpha 0.5) and a slim "relevance" colorbar, then the tokens
    with each background shaded by its score (white -> red), the score printed
    small under each token, wrapped to the panel width.  Special tokens
    (``special_tokens``, e.g. start/end) are drawn in grey italics, unshaded.
    With ``image_map=None`` only the text panel is drawn; with
    ``text_map=None`` only the image panels.  ``boxes`` are ``(x, y, w, h)``
    rectangles in the image's pixel coordinates, outlined on both images.

    Returns:
        An RGB ``PIL.Image.Image``; its size depends only on the inputs and dpi.
    """
    mpl = _mpl()
    img = _as_image(image)
    H, W = int(img.shape[1]), int(img.shape[2])
    dpi = int(dpi)
    show_txt = text_map is not None
    if show_txt:
        toks, scores, special = _text_inputs(tokens, text_map, special_tokens)
        show_txt = len(toks) > 0
    show_map = image_map is not None
    show_img = show_map or not show_txt  # nothing else to show: the clean image alone
    ov = overlay(img, _as_map(image_map)) if show_map else None

    fig, canvas = _new_canvas(mpl, dpi)
    ruler = _Ruler(canvas.get_renderer(), dpi)
    fonts = _Fonts(mpl.FontProperties)

    # ---- horizontal layout
    x = _MARGIN
    pw, ph = _panel_size(H, W, _IMG_SIDE, dpi)
    cols = []  # (kind, x, width)
    if show_img:
        cols.append(("input", x, pw))
        x += pw
        if show_map:
            x += _IMG_GAP
            cols.append(("overlay", x, pw))
            x += pw
            cols.append(("colorbar", x, 0.0))
            x += _colorbar_reserve(ruler, fonts)
    block = None
    if show_txt:
        if show_img:
            x += _PANEL_GAP
        block = _layout_tokens(ruler, fonts, toks, special, _TEXT_W if show_img else _TEXT_W_ALONE)
        text_w = max(block.width, ruler.width("text attribution", fonts.head))
        cols.append(("text", x, text_w))
        x += text_w
    content_w = x - _MARGIN
    content_w = max(content_w, min(_natural_title_width(ruler, fonts, title, subtitle), _TEXT_W_ALONE))
    t_lines, s_lines = _title_lines(ruler, fonts, title, subtitle, content_w)
    shift = (content_w - (x - _MARGIN)) / 2  # centre the panels under a wider title

    # ---- vertical layout
    y = _MARGIN
    title_y = y
    y += _title_height(ruler, fonts, t_lines, s_lines)
    head_y = y
    y += _heading_height(ruler, fonts)
    body_y = y
    body_h = max(ph if show_img else 0.0, block.height if block is not None else 0.0)
    height = body_y + body_h + _MARGIN
    width = content_w + 2 * _MARGIN

    cv = _Canvas(mpl, fig, canvas, width, height, dpi)
    _draw_title(cv, ruler, fonts, t_lines, s_lines, _MARGIN, title_y, content_w)
    for kind, cx, cw in cols:
        cx += shift
        if kind == "input":
            _draw_heading(cv, ruler, fonts, cx, head_y, cw, "input")
            _draw_image(cv, cx, body_y, pw, ph, img, boxes)
        elif kind == "overlay":
            _draw_heading(cv, ruler, fonts, cx, head_y, cw, "image attribution")
            _draw_image(cv, cx, body_y, pw, ph, ov, boxes)
        elif kind == "colorbar":
            _draw_colorbar(cv, ruler, fonts, cx + _CB_GAP, body_y, ph, "jet")
        else:
            _draw_heading(cv, ruler, fonts, cx, head_y, cw, "text attribution")
            off = (body_h - block.height) / 2 if show_img else 0.0
            _draw_tokens(cv, fonts, block, cx + (cw - block.width) / 2, body_y + off, scores)
    return cv.to_pil()


def comparison_figure(
    image: torch.Tensor,
    rows: list[tuple[str, torch.Tensor | None, torch.Tensor | None]],
    tokens: list[str] | None,
    *,
    title: str | None = None,
    special_tokens: tuple[int, ...] = (),
    boxes=None,
    dpi: int = 150,
):
    """Compare several attribution methods on one image-text pair.

    One row per method: ``[name | input image (first row only) | overlay |
    shaded tokens]``, with one shared "relevance" colorbar beside the overlay
    column (beside the first row) and the same visual language as :func:`explanation_figure`.  A row
    whose image map (or text map) is None shows a dashed "n/a" placeholder in
    that cell; a column that is None in every row is left out.

    Returns:
        An RGB ``PIL.Image.Image``; its size depends only on the inputs and dpi.
    """
    mpl = _mpl()
    rows = list(rows)
    if not rows:
        raise ValueError("comparison_figure needs at least one row")
    img = _as_image(image)
    H, W = int(img.shape[1]), int(img.shape[2])
    dpi = int(dpi)

    any_img = any(r[1] is not None for r in rows)
    any_txt = any(r[2] is not None for r in rows)
    row_scores: list[list[float] | None] = []
    toks: list[str] = []
    special: set[int] = set()
    for name, _, tmap in rows:
        if tmap is None:
            row_scores.append(None)
            continue
        toks, sc, special = _text_inputs(tokens, tmap, special_tokens)
        row_scores.append(sc)
    any_txt = any_txt and len(toks) > 0
    overlays = [overlay(img, _as_map(m)) if m is not None else None for _, m, _ in rows]

    fig, canvas = _new_canvas(mpl, dpi)
    ruler = _Ruler(canvas.get_renderer(), dpi)
    fonts = _Fonts(mpl.FontProperties)

    # ---- columns
    names = [_wrap(ruler, str(r[0]), fonts.name, _NAME_MAX_W) for r in rows]
    name_w = max((ruler.width(line, fonts.name) for ls in names for line in ls), default=0.0)
    pw, ph = _panel_size(H, W, _IMG_SIDE_CMP, dpi)
    x = _MARGIN
    name_x = x
    x += name_w + 0.18
    input_x = overlay_x = cb_x = text_x = None
    if any_img or not any_txt:
        input_x = x
        x += pw
    if any_img:
        x += _IMG_GAP
        overlay_x = x
        x += pw
        cb_x = x + _CB_GAP
        x += _colorbar_reserve(ruler, fonts)
    block = None
    if any_txt:
        if input_x is not None:
            x += _PANEL_GAP
        text_x = x
        block = _layout_tokens(ruler, fonts, toks, special, _TEXT_W if input_x is not None else _TEXT_W_ALONE)
        text_w = max(block.width, ruler.width("text attribution", fonts.head))
        x += text_w
    content_w = x - _MARGIN
    content_w = max(content_w, min(_natural_title_width(ruler, fonts, title, None), _TEXT_W_ALONE))
    t_lines, _ = _title_lines(ruler, fonts, title, None, content_w)
    shift = (content_w - (x - _MARGIN)) / 2

    # ---- rows
    name_asc, name_desc = ruler.metrics(fonts.name)
    name_lh = _NAME_FS * 1.25 * _PT
    y = _MARGIN
    title_y = y
    y += _title_height(ruler, fonts, t_lines, [])
    head_y = y
    y += _heading_height(ruler, fonts)
    row_tops, row_hs = [], []
    for k in range(len(rows)):
        h = ph if input_x is not None else 0.0
        if block is not None:
            h = max(h, block.height)
        h = max(h, len(names[k]) * name_lh)
        row_tops.append(y)
        row_hs.append(h)
        y += h + _ROW_GAP
    height = y - _ROW_GAP + _MARGIN
    width = content_w + 2 * _MARGIN

    cv = _Canvas(mpl, fig, canvas, width, height, dpi)
    _draw_title(cv, ruler, fonts, t_lines, [], _MARGIN, title_y, content_w)
    if input_x is not None:
        _draw_heading(cv, ruler, fonts, input_x + shift, head_y, pw, "input")
    if overlay_x is not None:
        _draw_heading(cv, ruler, fonts, overlay_x + shift, head_y, pw, "image attribution")
    if text_x is not None:
        _draw_heading(cv, ruler, fonts, text_x + shift, head_y, text_w, "text attribution")

    for k, (name, imap, tmap) in enumerate(rows):
        top, rh = row_tops[k], row_hs[k]
        img_top = top + ((rh - ph) / 2 if input_x is not None else 0.0)
        # name, vertically centred on the row
        ny = top + (rh - len(names[k]) * name_lh) / 2 + name_asc
        for j, line in enumerate(names[k]):
            cv.text(name_x + shift, ny + j * name_lh, line, fonts.name, ha="left", va="baseline")
        if input_x is not None and k == 0:
            _draw_image(cv, input_x + shift, img_top, pw, ph, img, boxes)
        if overlay_x is not None:
            if overlays[k] is not None:
                _draw_image(cv, overlay_x + shift, img_top, pw, ph, overlays[k], boxes)
            else:
                _placeholder(cv, fonts, overlay_x + shift, img_top, pw, ph, "no image attribution")
        if text_x is not None:
            ty = top + (rh - block.height) / 2
            if row_scores[k] is not None:
                _draw_tokens(cv, fonts, block, text_x + shift + (text_w - block.width) / 2, ty, row_scores[k])
            else:
                _placeholder(cv, fonts, text_x + shift, ty, text_w, block.height, "no text attribution")
    if cb_x is not None:
        first = row_tops[0] + ((row_hs[0] - ph) / 2)
        _draw_colorbar(cv, ruler, fonts, cb_x + shift, first, ph, "jet")
    return cv.to_pil()


def save_png(image, path) -> None:
    """Write ``image`` (a PIL image) as PNG at ``path`` atomically (missing folders are created)."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))

