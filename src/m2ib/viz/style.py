"""The figures' look: font sizes (points), colours, lengths (inches) and the fonts built from them."""

from __future__ import annotations

TOKEN_FS = 12.0
SCORE_FS = 7.5
TITLE_FS = 13.0
SUBTITLE_FS = 10.0
HEAD_FS = 10.0
NAME_FS = 11.0
CB_FS = 8.0
NOTE_FS = 9.5

INK = (0.10, 0.10, 0.10)
MUTED = (0.38, 0.38, 0.38)
SPECIAL = (0.52, 0.52, 0.52)
FRAME = (0.62, 0.62, 0.62)
TOKEN_EDGE = (0.78, 0.78, 0.78)
HUE = (0.85, 0.13, 0.13)  # token shading: white -> red, like "high" in jet
MAX_ALPHA = 0.78  # shading at score 1 (keeps black text readable)

PT = 1.0 / 72.0
MARGIN = 0.16
IMG_SIDE = 2.5  # long side of an image panel, explanation figure
IMG_SIDE_CMP = 2.1  # long side of an image panel, comparison figure
IMG_GAP = 0.10
PANEL_GAP = 0.30
CB_GAP = 0.07
CB_W = 0.11
TEXT_W = 4.4  # max width of the token panel beside images
TEXT_W_ALONE = 6.2  # max width of the token panel when it is alone
ROW_GAP = 0.16
NAME_MAX_W = 1.5
MAX_TITLE_LINES = 2  # a longer title (the text explained) ends in an ellipsis
MAX_TOKEN_LINES = 12  # a longer text shows its first words and "… +N more": the figure's height is bounded

TOK_HPAD = 3.0 * PT
TOK_VPAD = 2.5 * PT
TOK_HGAP = 3.5 * PT
LINE_GAP = 5.0 * PT
SCORE_GAP = 1.5 * PT


# Fonts tried after matplotlib's own for characters it lacks (CJK, emoji, symbols), where installed
# (Debian: fonts-noto-cjk, fonts-wqy-microhei, fonts-symbola); matplotlib falls back glyph by glyph.
FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Noto Emoji",
    "Symbola",
)


def font_families() -> list[str]:
    """matplotlib's default sans-serif font, then the installed :data:`FALLBACK_FONTS`."""
    from matplotlib import font_manager, rcParams

    installed = {f.name for f in font_manager.fontManager.ttflist}
    first = [f for f in rcParams["font.sans-serif"] if f in installed][:1] or ["sans-serif"]
    return first + [f for f in FALLBACK_FONTS if f in installed and f not in first]


class Fonts:
    """The FontProperties of every kind of text in a figure."""

    def __init__(self, FontProperties):
        family = font_families()

        def font(**kw):
            return FontProperties(family=family, **kw)

        self.token = font(size=TOKEN_FS)
        self.special = font(size=TOKEN_FS, style="italic")
        self.score = font(size=SCORE_FS)
        self.title = font(size=TITLE_FS, weight="bold")
        self.subtitle = font(size=SUBTITLE_FS)
        self.head = font(size=HEAD_FS)
        self.name = font(size=NAME_FS, weight="bold")
        self.cb = font(size=CB_FS)
        self.cb_label = font(size=CB_FS + 1)
        self.note = font(size=NOTE_FS, style="italic")
