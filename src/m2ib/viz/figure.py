"""Paper-style explanation figures (matplotlib, Agg, no pyplot).

The figures are laid out by hand in inches from measured text extents, so the
output size is a deterministic function of the inputs (and the dpi), long
captions wrap inside their panel, and nothing depends on pyplot state or on
global rcParams being changed.  All text is drawn with ``parse_math=False`` and
``usetex=False``, so tokens such as ``$x^2_\\`` are shown literally.

matplotlib is an optional extra: it is imported lazily, and calling a figure
function without it raises ``ImportError`` with an install hint.

Rooms: ``style`` (sizes, colours, fonts), ``layout`` (measuring and wrapping text, token
cells), ``canvas`` (the matplotlib canvas and what is drawn on it) and this module (the two
figures). A new figure is a function here that measures with ``layout`` and draws with
``canvas``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

from ..fileio import atomic_write
from .canvas import (
    Canvas,
    colorbar_reserve,
    draw_colorbar,
    draw_heading,
    draw_image,
    draw_placeholder,
    draw_title,
    draw_tokens,
    load_mpl,
    new_canvas,
    panel_size,
    quiet_missing_glyphs,
)
from .layout import (
    Ruler,
    TokenBlock,
    heading_height,
    layout_tokens,
    natural_title_width,
    title_height,
    title_lines,
    wrap_text,
)
from .overlay import _as_image, _as_map, _sanitize, overlay
from .style import (
    CB_GAP,
    IMG_GAP,
    IMG_SIDE,
    IMG_SIDE_CMP,
    MARGIN,
    NAME_FS,
    NAME_MAX_W,
    PANEL_GAP,
    PT,
    ROW_GAP,
    TEXT_W,
    TEXT_W_ALONE,
    Fonts,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["explanation_figure", "comparison_figure", "save_png"]

T = TypeVar("T")


def _laid_out(value: T | None, column: str) -> T:
    """``value``, which the layout promises wherever it placed a ``column`` column."""
    if value is None:
        raise RuntimeError(f"internal error: the figure layout placed a {column} column with nothing to draw in it")
    return value


@quiet_missing_glyphs
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
) -> Image.Image:
    """Render one explanation: image heatmap and/or shaded tokens.

    Layout, left to right: the input image, the image with ``image_map``
    overlaid (jet, alpha 0.5) and a slim "relevance" colorbar, then the tokens
    with each background shaded by its score (white -> red), the score printed
    small under each token, wrapped to the panel width.  Special tokens
    (``special_tokens``, e.g. start/end) are drawn in grey italics, unshaded.
    With ``image_map=None`` only the text panel is drawn; with
    ``text_map=None`` only the image panels.  ``boxes`` are ``(x, y, w, h)``
    rectangles in the image's pixel coordinates, outlined on both images.
    :meth:`m2ib.Explanation.figure <m2ib.explanation.Explanation.figure>` draws with it.
    Needs matplotlib (``pip install 'm2ib[figures]'``).

    Args:
        image: [3, H, W] in [0, 1], the picture as the model saw it.
        image_map: [H, W] in [0, 1], or None (text panel only).
        tokens: the readable tokens (length T), or None with ``text_map=None``.
        text_map: [T] in [0, 1], one score per token, or None (image panels only).
        title: the line above the panels (the text explained); default ``None``.
        subtitle: a smaller line under it (method, model, similarity); default ``None``.
        boxes: ``(x, y, w, h)`` rectangles in the image's pixels; default ``None``.
        special_tokens: indices of the start/end tokens in ``tokens``; default ``()``.
        dpi: resolution; default ``150``.

    Returns:
        An RGB ``PIL.Image.Image``; its size depends only on the inputs and dpi.

    Examples:
        >>> import torch
        >>> from m2ib.viz.figure import explanation_figure
        >>> image, image_map = torch.rand(3, 96, 96), torch.rand(96, 96)
        >>> tokens = ["<start>", "a", "red", "circle", "<end>"]
        >>> text_map = torch.tensor([0.0, 0.2, 1.0, 0.6, 0.0])
        >>> picture = explanation_figure(image, image_map, tokens, text_map, title="a red", special_tokens=(0, 4))
        >>> picture.mode
        'RGB'
    """
    mpl = load_mpl()
    img = _as_image(image)
    H, W = int(img.shape[1]), int(img.shape[2])
    dpi = int(dpi)
    toks: list[str] = []
    scores: list[float] | None = None
    special: set[int] = set()
    if text_map is not None:
        toks, scores, special = _text_inputs(tokens, text_map, special_tokens)
    show_txt = len(toks) > 0
    show_map = image_map is not None
    show_img = show_map or not show_txt  # nothing else to show: the clean image alone
    ov = overlay(img, _as_map(image_map)) if image_map is not None else None

    fig, canvas, ruler, fonts = _blank(mpl, dpi)
    pw, ph = panel_size(H, W, IMG_SIDE, dpi)
    cols, block, right = _explanation_columns(ruler, fonts, pw, show_img, show_map, toks if show_txt else None, special)
    page = _page(ruler, fonts, title, subtitle, right)
    body_y = page.body_y
    body_h = max(ph if show_img else 0.0, block.height if block is not None else 0.0)

    cv = Canvas(mpl, fig, canvas, page.content_w + 2 * MARGIN, body_y + body_h + MARGIN, dpi)
    draw_title(cv, ruler, fonts, page.t_lines, page.s_lines, MARGIN, page.title_y, page.content_w)
    for kind, cx, cw in cols:
        cx += page.shift
        if kind == "input":
            draw_heading(cv, ruler, fonts, cx, page.head_y, cw, "input")
            draw_image(cv, cx, body_y, pw, ph, img, boxes)
        elif kind == "overlay":
            draw_heading(cv, ruler, fonts, cx, page.head_y, cw, "image attribution")
            draw_image(cv, cx, body_y, pw, ph, _laid_out(ov, "overlay"), boxes)
        elif kind == "colorbar":
            draw_colorbar(cv, ruler, fonts, cx + CB_GAP, body_y, ph, "jet")
        else:
            draw_heading(cv, ruler, fonts, cx, page.head_y, cw, "text attribution")
            tokens_block = _laid_out(block, "text")
            off = (body_h - tokens_block.height) / 2 if show_img else 0.0
            draw_tokens(cv, fonts, tokens_block, cx + (cw - tokens_block.width) / 2, body_y + off, scores)
    return cv.to_pil()


@quiet_missing_glyphs
def comparison_figure(
    image: torch.Tensor,
    rows: list[tuple[str, torch.Tensor | None, torch.Tensor | None]],
    tokens: list[str] | None,
    *,
    title: str | None = None,
    special_tokens: tuple[int, ...] = (),
    boxes: list[tuple[float, float, float, float]] | None = None,
    dpi: int = 150,
) -> Image.Image:
    """Compare several attribution methods on one image-text pair.

    One row per method: ``[name | input image (first row only) | overlay |
    shaded tokens]``, with one shared "relevance" colorbar beside the overlay
    column (beside the first row) and the same visual language as :func:`explanation_figure`.  A row
    whose image map (or text map) is None shows a dashed "n/a" placeholder in
    that cell; a column that is None in every row is left out.
    :meth:`m2ib.Comparison.figure <m2ib.comparison.Comparison.figure>` draws with it. Needs matplotlib.

    Args:
        image: [3, H, W] in [0, 1], the picture as the model saw it.
        rows: one ``(name, image_map [H, W] or None, text_map [T] or None)`` per method, maps in [0, 1].
        tokens: the readable tokens (length T) every text map scores, or None.
        title: the line above the rows; default ``None``.
        special_tokens: indices of the start/end tokens in ``tokens``; default ``()``.
        boxes: ``(x, y, w, h)`` rectangles in the image's pixels; default ``None``.
        dpi: resolution; default ``150``.

    Returns:
        An RGB ``PIL.Image.Image``; its size depends only on the inputs and dpi.

    Examples:
        >>> import torch
        >>> from m2ib.viz.figure import comparison_figure
        >>> tokens = ["<start>", "a", "red", "circle", "<end>"]
        >>> rows = [
        ...     ("M2IB", torch.rand(96, 96), torch.tensor([0.0, 0.1, 1.0, 0.5, 0.0])),
        ...     ("RISE", torch.rand(96, 96), None),  # an image-only method: an "n/a" text cell
        ... ]
        >>> comparison_figure(torch.rand(3, 96, 96), rows, tokens, title="a red circle", special_tokens=(0, 4)).mode
        'RGB'
    """
    mpl = load_mpl()
    rows = list(rows)
    if not rows:
        raise ValueError("comparison_figure needs at least one row")
    img = _as_image(image)
    H, W = int(img.shape[1]), int(img.shape[2])
    dpi = int(dpi)
    row_scores, toks, special = _row_scores(rows, tokens, special_tokens)
    any_img = any(r[1] is not None for r in rows)
    any_txt = any(r[2] is not None for r in rows) and len(toks) > 0
    overlays = [overlay(img, _as_map(m)) if m is not None else None for _, m, _ in rows]

    fig, canvas, ruler, fonts = _blank(mpl, dpi)
    pw, ph = panel_size(H, W, IMG_SIDE_CMP, dpi)
    grid = _comparison_grid(ruler, fonts, [str(r[0]) for r in rows], pw, any_img, any_txt, toks, special)
    page = _page(ruler, fonts, title, None, grid.right)
    row_tops, row_hs, bottom = _row_extents(grid, ph, page.body_y)

    cv = Canvas(mpl, fig, canvas, page.content_w + 2 * MARGIN, bottom - ROW_GAP + MARGIN, dpi)
    shift = page.shift
    draw_title(cv, ruler, fonts, page.t_lines, [], MARGIN, page.title_y, page.content_w)
    if grid.input_x is not None:
        draw_heading(cv, ruler, fonts, grid.input_x + shift, page.head_y, pw, "input")
    if grid.overlay_x is not None:
        draw_heading(cv, ruler, fonts, grid.overlay_x + shift, page.head_y, pw, "image attribution")
    if grid.text_x is not None:
        draw_heading(cv, ruler, fonts, grid.text_x + shift, page.head_y, grid.text_w, "text attribution")
    for k in range(len(rows)):
        _draw_row(
            cv,
            ruler,
            fonts,
            grid,
            shift,
            k,
            row_tops[k],
            row_hs[k],
            (pw, ph),
            img if k == 0 else None,
            overlays[k],
            row_scores[k],
            boxes,
        )
    if grid.cb_x is not None:
        first = row_tops[0] + ((row_hs[0] - ph) / 2)
        draw_colorbar(cv, ruler, fonts, grid.cb_x + shift, first, ph, "jet")
    return cv.to_pil()


def save_png(image, path) -> None:
    """Write ``image`` (a PIL image) as PNG at ``path`` atomically (missing folders are created)."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))


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


def _row_scores(rows, tokens, special_tokens) -> tuple[list[list[float] | None], list[str], set[int]]:
    """Each row's token scores (None without a text map), the tokens and the special indices."""
    row_scores: list[list[float] | None] = []
    toks: list[str] = []
    special: set[int] = set()
    for _, _, tmap in rows:
        if tmap is None:
            row_scores.append(None)
            continue
        toks, sc, special = _text_inputs(tokens, tmap, special_tokens)
        row_scores.append(sc)
    return row_scores, toks, special


# --------------------------------------------------------------------------
# Layout shared by the figures: title on top, a heading over each column.
# --------------------------------------------------------------------------
def _blank(mpl, dpi: int) -> tuple:
    """A blank figure, its Agg canvas, a ruler measuring with it and the fonts."""
    fig, canvas = new_canvas(mpl, dpi)
    return fig, canvas, Ruler(canvas.get_renderer(), dpi), Fonts(mpl.FontProperties)


@dataclass
class _Page:
    """Where a figure's title, column headings and body go (inches from the top-left corner)."""

    content_w: float  # width inside the margins: the panels', or a wider title's
    shift: float  # moves the panels right to centre them under a wider title
    t_lines: list[str]  # the title, wrapped
    s_lines: list[str]  # the subtitle, wrapped
    title_y: float
    head_y: float
    body_y: float


def _page(ruler: Ruler, fonts: Fonts, title: str | None, subtitle: str | None, right: float) -> _Page:
    """The page of panels that end at ``right``, with the title and subtitle wrapped above them."""
    content_w = right - MARGIN
    content_w = max(content_w, min(natural_title_width(ruler, fonts, title, subtitle), TEXT_W_ALONE))
    t_lines, s_lines = title_lines(ruler, fonts, title, subtitle, content_w)
    shift = (content_w - (right - MARGIN)) / 2
    y = MARGIN
    title_y = y
    y += title_height(ruler, fonts, t_lines, s_lines)
    head_y = y
    y += heading_height(ruler, fonts)
    return _Page(content_w, shift, t_lines, s_lines, title_y, head_y, y)


def _explanation_columns(
    ruler: Ruler, fonts: Fonts, pw: float, show_img: bool, show_map: bool, toks: list[str] | None, special: set[int]
) -> tuple[list[tuple[str, float, float]], TokenBlock | None, float]:
    """The explanation figure's columns, left to right: ([(kind, x, width)], token block or None, right end)."""
    x = MARGIN
    cols = []
    if show_img:
        cols.append(("input", x, pw))
        x += pw
        if show_map:
            x += IMG_GAP
            cols.append(("overlay", x, pw))
            x += pw
            cols.append(("colorbar", x, 0.0))
            x += colorbar_reserve(ruler, fonts)
    block = None
    if toks is not None:
        if show_img:
            x += PANEL_GAP
        block = layout_tokens(ruler, fonts, toks, special, TEXT_W if show_img else TEXT_W_ALONE)
        text_w = max(block.width, ruler.width("text attribution", fonts.head))
        cols.append(("text", x, text_w))
        x += text_w
    return cols, block, x


# --------------------------------------------------------------------------
# The comparison figure's grid.
# --------------------------------------------------------------------------
@dataclass
class _Grid:
    """The comparison figure's columns (left edges in inches; None: the column is left out)."""

    names: list[list[str]]  # each row's name, wrapped
    name_x: float
    input_x: float | None
    overlay_x: float | None
    cb_x: float | None
    text_x: float | None
    text_w: float
    block: TokenBlock | None
    right: float


def _comparison_grid(
    ruler: Ruler,
    fonts: Fonts,
    names: Sequence[str],
    pw: float,
    any_img: bool,
    any_txt: bool,
    toks: list[str],
    special: set[int],
) -> _Grid:
    wrapped = [wrap_text(ruler, name, fonts.name, NAME_MAX_W) for name in names]
    name_w = max((ruler.width(line, fonts.name) for ls in wrapped for line in ls), default=0.0)
    x = MARGIN
    name_x = x
    x += name_w + 0.18
    input_x = overlay_x = cb_x = text_x = None
    if any_img or not any_txt:
        input_x = x
        x += pw
    if any_img:
        x += IMG_GAP
        overlay_x = x
        x += pw
        cb_x = x + CB_GAP
        x += colorbar_reserve(ruler, fonts)
    block, text_w = None, 0.0
    if any_txt:
        if input_x is not None:
            x += PANEL_GAP
        text_x = x
        block = layout_tokens(ruler, fonts, toks, special, TEXT_W if input_x is not None else TEXT_W_ALONE)
        text_w = max(block.width, ruler.width("text attribution", fonts.head))
        x += text_w
    return _Grid(wrapped, name_x, input_x, overlay_x, cb_x, text_x, text_w, block, x)


def _name_line_height() -> float:
    return NAME_FS * 1.25 * PT


def _row_extents(grid: _Grid, ph: float, y: float) -> tuple[list[float], list[float], float]:
    """Each row's top and height from ``y`` down, and the y after the last row's gap."""
    name_lh = _name_line_height()
    row_tops, row_hs = [], []
    for lines in grid.names:
        h = ph if grid.input_x is not None else 0.0
        if grid.block is not None:
            h = max(h, grid.block.height)
        h = max(h, len(lines) * name_lh)
        row_tops.append(y)
        row_hs.append(h)
        y += h + ROW_GAP
    return row_tops, row_hs, y


def _draw_row(
    cv: Canvas,
    ruler: Ruler,
    fonts: Fonts,
    grid: _Grid,
    shift: float,
    k: int,
    top: float,
    rh: float,
    panel: tuple[float, float],
    image: torch.Tensor | None,
    overlaid: torch.Tensor | None,
    scores: list[float] | None,
    boxes,
) -> None:
    """Row ``k``: its name, the input ``image`` (first row only), its overlay and its tokens."""
    pw, ph = panel
    name_asc, _ = ruler.metrics(fonts.name)
    name_lh = _name_line_height()
    img_top = top + ((rh - ph) / 2 if grid.input_x is not None else 0.0)
    ny = top + (rh - len(grid.names[k]) * name_lh) / 2 + name_asc  # the name, centred on the row
    for j, line in enumerate(grid.names[k]):
        cv.text(grid.name_x + shift, ny + j * name_lh, line, fonts.name, ha="left", va="baseline")
    if grid.input_x is not None and image is not None:
        draw_image(cv, grid.input_x + shift, img_top, pw, ph, image, boxes)
    if grid.overlay_x is not None:
        if overlaid is not None:
            draw_image(cv, grid.overlay_x + shift, img_top, pw, ph, overlaid, boxes)
        else:
            draw_placeholder(cv, fonts, grid.overlay_x + shift, img_top, pw, ph, "no image attribution")
    if grid.text_x is not None:
        block = _laid_out(grid.block, "text")
        ty = top + (rh - block.height) / 2
        if scores is not None:
            draw_tokens(cv, fonts, block, grid.text_x + shift + (grid.text_w - block.width) / 2, ty, scores)
        else:
            draw_placeholder(cv, fonts, grid.text_x + shift, ty, grid.text_w, block.height, "no text attribution")
