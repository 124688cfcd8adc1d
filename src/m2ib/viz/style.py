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

TOK_HPAD = 3.0 * PT
TOK_VPAD = 2.5 * PT
TOK_HGAP = 3.5 * PT
LINE_GAP = 5.0 * PT
SCORE_GAP = 1.5 * PT


class Fonts:
    """The FontProperties of every kind of text in a figure."""

    def __init__(self, FontProperties):
        self.token = FontProperties(size=TOKEN_FS)
        self.special = FontProperties(size=TOKEN_FS, style="italic")
        self.score = FontProperties(size=SCORE_FS)
        self.title = FontProperties(size=TITLE_FS, weight="bold")
        self.subtitle = FontProperties(size=SUBTITLE_FS)
        self.head = FontProperties(size=HEAD_FS)
        self.name = FontProperties(size=NAME_FS, weight="bold")
        self.cb = FontProperties(size=CB_FS)
        self.cb_label = FontProperties(size=CB_FS + 1)
        self.note = FontProperties(size=NOTE_FS, style="italic")
