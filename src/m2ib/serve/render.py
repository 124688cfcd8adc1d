"""How the page shows an explanation: the heatmap image and the shaded tokens (HTML)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

ELEM = "m2ib"  # prefix of every elem_id and CSS class of the page
_HUE = (217, 33, 33)  # token shading: white -> red, as in the figures (m2ib.viz)
_MAX_ALPHA = 0.78


def heatmap_image(exp: Any):
    """The image as the model saw it with the image map over it (PIL, the model's input size)."""
    from ..viz.overlay import overlay, to_pil

    if exp.image_map is None:
        return None
    return to_pil(overlay(exp.image, exp.image_map))


def tokens_html(tokens: Sequence[str], scores: Sequence[float] | None, special: Sequence[int] = ()) -> str:
    """Tokens as HTML chips shaded white -> red by score (as in the figures); start/end tokens in grey."""
    special_set = {int(i) % max(1, len(tokens)) for i in special}
    note = (
        '<div id="{0}-tokens-list" class="{0}-tokens {0}-none" style="opacity:0.7;font-style:italic;'
        'padding:8px 2px">{1}</div>'
    )
    if scores is None:
        return note.format(ELEM, "this method does not explain the text")
    if not tokens:
        return note.format(ELEM, "the text's tokens appear here, each shaded by its score")
    chips = []
    for i, token in enumerate(tokens):
        text = html.escape(str(token))
        if i in special_set:
            chips.append(
                f'<span class="{ELEM}-tok {ELEM}-special" data-index="{i}" style="display:inline-flex;'
                "flex-direction:column;align-items:center;margin:3px 2px;padding:5px 3px;color:#888;"
                f'font-style:italic;font-size:0.85em;vertical-align:top">{text}</span>'
            )
            continue
        s = min(max(float(scores[i]), 0.0), 1.0) if scores[i] == scores[i] else 0.0
        a = _MAX_ALPHA * s
        r, g, b = (round(255 - (255 - c) * a) for c in _HUE)
        chips.append(
            f'<span class="{ELEM}-tok" data-index="{i}" data-score="{s:.4f}" title="score {s:.3f}" '
            f'style="display:inline-flex;flex-direction:column;align-items:center;margin:3px 2px;'
            f"padding:3px 7px 2px;border-radius:5px;border:1px solid #c8c8c8;background:rgb({r},{g},{b});"
            f'color:#1a1a1a;line-height:1.25">'
            f'<span class="{ELEM}-word" style="font-size:1.15em;color:#1a1a1a">{text}</span>'
            f'<span class="{ELEM}-score" style="font-size:0.72em;color:#444">{s:.2f}</span></span>'
        )
    legend = (
        f'<div class="{ELEM}-legend" style="margin-top:6px;font-size:0.75em;color:#777">'
        "shading: score over the words (start/end tokens excluded), 0 white to 1 red</div>"
    )
    return f'<div id="{ELEM}-tokens-list" class="{ELEM}-tokens" style="line-height:1.2">{"".join(chips)}</div>' + legend


_POSITIVE, _NEGATIVE = (217, 33, 33), (38, 89, 230)  # red and blue, as the interaction figures


def signed_tokens_html(words: Sequence[str], scores: Sequence[float], note: str = "") -> str:
    """Words as chips with their signed scores: red for positive, blue for negative, shaded by
    |score| over the largest |score|, each with a bar of that length and the number itself."""
    if not words:
        return (
            f'<div id="{ELEM}-ix-scores-list" class="{ELEM}-none" style="opacity:0.7;font-style:italic;'
            f'padding:8px 2px">{html.escape(note or "no scores yet")}</div>'
        )
    scale = max((abs(float(s)) for s in scores), default=0.0) or 1.0
    chips = []
    for i, (word, score) in enumerate(zip(words, scores)):
        level = float(score) / scale
        hue = _POSITIVE if level >= 0 else _NEGATIVE
        a = _MAX_ALPHA * abs(level)
        r, g, b = (round(255 - (255 - c) * a) for c in hue)
        chips.append(
            f'<span class="{ELEM}-ix-tok" data-index="{i}" data-score="{float(score):.6g}" '
            f'style="display:inline-flex;flex-direction:column;align-items:stretch;margin:3px 2px;'
            f"padding:3px 7px 3px;border-radius:5px;border:1px solid #c8c8c8;background:rgb({r},{g},{b});"
            f'color:#1a1a1a;line-height:1.25;min-width:3.2em">'
            f'<span class="{ELEM}-word" style="font-size:1.1em;text-align:center">{html.escape(str(word))}</span>'
            f'<span class="{ELEM}-score" style="font-size:0.72em;color:#333;text-align:center">{float(score):+.2e}'
            f'</span><span style="display:block;height:3px;margin-top:2px;width:{100 * abs(level):.0f}%;'
            f'background:rgb{hue}"></span></span>'
        )
    legend = f'<div class="{ELEM}-legend" style="margin-top:6px;font-size:0.75em;color:#777">{html.escape(note)}</div>'
    return f'<div id="{ELEM}-ix-scores-list" style="line-height:1.2">{"".join(chips)}</div>' + legend
