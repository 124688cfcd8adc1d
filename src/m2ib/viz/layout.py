"""Text layout in inches from measured extents: shortening, word wrap, token cells in balanced lines, title heights.

Nothing here draws; a :class:`Ruler` measures strings with the Agg renderer (never as mathtext).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .style import (
    LINE_GAP,
    MAX_TITLE_LINES,
    MAX_TOKEN_LINES,
    PT,
    SCORE_GAP,
    SUBTITLE_FS,
    TITLE_FS,
    TOK_HGAP,
    TOK_HPAD,
    TOK_VPAD,
    Fonts,
)


class Ruler:
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


def visible(s: str) -> str:
    """Make control characters visible so a token stays on one line."""
    return s.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def fit_text(ruler: Ruler, s: str, prop, max_w: float) -> str:
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


def break_word(ruler: Ruler, word: str, prop, max_w: float) -> list[str]:
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


def wrap_text(ruler: Ruler, text: str, prop, max_w: float) -> list[str]:
    """Greedy word wrap using measured widths."""
    lines: list[str] = []
    for para in visible_lines(text):
        cur = ""
        for word in para.split(" "):
            cand = word if not cur else f"{cur} {word}"
            if ruler.width(cand, prop) <= max_w:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            pieces = break_word(ruler, word, prop, max_w)
            lines.extend(pieces[:-1])
            cur = pieces[-1]
        lines.append(cur)
    return lines


def visible_lines(text: str) -> list[str]:
    """The lines of ``text`` as drawn (tabs as spaces)."""
    return text.replace("\r\n", "\n").replace("\t", " ").split("\n")


@dataclass
class Cell:
    """One token's box in a :class:`TokenBlock`."""

    text: str
    x: float  # left edge, inches from the block's left
    line: int
    w: float  # box width
    special: bool


@dataclass
class TokenBlock:
    """Tokens laid out in lines of boxes (inches), each with room for its score below."""

    cells: list[Cell]
    n_lines: int
    width: float  # widest line actually used
    box_h: float
    pitch: float  # distance between line tops
    asc: float
    score_asc: float
    show_scores: bool

    @property
    def height(self) -> float:
        """Top of the first line to the bottom of the last (scores included)."""
        if self.n_lines == 0:
            return 0.0
        return self.n_lines * self.pitch - LINE_GAP


def layout_tokens(ruler: Ruler, fonts: Fonts, tokens: Sequence[str], special: set[int], max_w: float) -> TokenBlock:
    """Lay out ``tokens`` in boxes within ``max_w`` inches, over-long ones shortened, in balanced lines."""
    asc, desc = ruler.metrics(fonts.token)
    box_h = asc + desc + 2 * TOK_VPAD
    score_asc, score_desc = ruler.metrics(fonts.score)
    score_w = ruler.width("0.00", fonts.score) + 2 * PT
    show_scores = any(i not in special for i in range(len(tokens)))
    pitch = box_h + LINE_GAP + ((SCORE_GAP + score_asc + score_desc) if show_scores else 0.0)

    items = []  # (text, box width, special)
    for i, tok in enumerate(tokens):
        is_special = i in special
        prop = fonts.special if is_special else fonts.token
        text = fit_text(ruler, visible(str(tok)), prop, max_w - 2 * TOK_HPAD)
        w = ruler.width(text, prop) + 2 * TOK_HPAD
        if not is_special:
            w = max(w, score_w)
        items.append((text, min(w, max_w), is_special))

    def wrap(limit: float) -> tuple[list[Cell], int, float]:
        cells: list[Cell] = []
        x, line, used = 0.0, 0, 0.0
        for text, w, is_special in items:
            if x > 0 and x + w > limit + 1e-9:
                line += 1
                x = 0.0
            cells.append(Cell(text, x, line, w, is_special))
            used = max(used, x + w)
            x += w + TOK_HGAP
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
    if line + 1 > MAX_TOKEN_LINES:
        cells, line = _cut_tokens(ruler, fonts, cells, used), MAX_TOKEN_LINES - 1
    n_lines = line + 1 if cells else 0
    return TokenBlock(cells, n_lines, used, box_h, pitch, asc, score_asc, show_scores)


def _cut_tokens(ruler: Ruler, fonts: Fonts, cells: list[Cell], limit: float) -> list[Cell]:
    """The cells of the first :data:`MAX_TOKEN_LINES` lines, the last line ending in a grey "… +N more"
    cell (the figure's height stays bounded; every score is in the JSON)."""
    kept = [c for c in cells if c.line < MAX_TOKEN_LINES]
    while True:
        note = f"… +{len(cells) - len(kept)} more (all in the JSON)"
        w = ruler.width(note, fonts.special) + 2 * TOK_HPAD
        last = kept[-1]
        x = last.x + last.w + TOK_HGAP
        if x + w <= limit + 1e-9 or len(kept) == 1:
            return [*kept, Cell(note, x if x + w <= limit + 1e-9 else 0.0, last.line, min(w, limit), True)]
        kept.pop()


def title_lines(
    ruler: Ruler, fonts: Fonts, title: str | None, subtitle: str | None, max_w: float
) -> tuple[list[str], list[str]]:
    """The title and the subtitle, each wrapped to ``max_w`` inches ([] when absent)."""
    t = wrap_text(ruler, title, fonts.title, max_w) if title else []
    s = wrap_text(ruler, subtitle, fonts.subtitle, max_w) if subtitle else []
    return _at_most(ruler, t, fonts.title, max_w, MAX_TITLE_LINES), _at_most(ruler, s, fonts.subtitle, max_w, 3)


def _at_most(ruler: Ruler, lines: list[str], prop, max_w: float, n: int) -> list[str]:
    """The first ``n`` lines, the last ending in an ellipsis when lines were left out."""
    if len(lines) <= n:
        return lines
    return [*lines[: n - 1], fit_text(ruler, lines[n - 1] + " …", prop, max_w)]


def title_height(ruler: Ruler, fonts: Fonts, t_lines: list[str], s_lines: list[str]) -> float:
    """Height of the wrapped title and subtitle with the gap below them (0 without either)."""
    h = 0.0
    if t_lines:
        h += len(t_lines) * TITLE_FS * 1.25 * PT
    if s_lines:
        h += (2.0 * PT if t_lines else 0.0) + len(s_lines) * SUBTITLE_FS * 1.3 * PT
    if h:
        h += 8.0 * PT
    return h


def natural_title_width(ruler: Ruler, fonts: Fonts, title: str | None, subtitle: str | None) -> float:
    """Width of the widest title or subtitle line, unwrapped."""
    w = 0.0
    for text, prop in ((title, fonts.title), (subtitle, fonts.subtitle)):
        if text:
            w = max(w, max(ruler.width(line, prop) for line in visible_lines(text)))
    return w


def heading_height(ruler: Ruler, fonts: Fonts) -> float:
    """Height of a column heading with the gap below it."""
    asc, desc = ruler.metrics(fonts.head)
    return asc + desc + 4.0 * PT
