"""The page's "Interactions" tab as plain functions: which words go with which image regions.

One press of the button computes an :class:`m2ib.interactions.Interaction` for the pair
(:func:`compute_interaction`; a pair already computed with the same settings comes from an
:class:`InteractionCache`). After that nothing runs the model again:

* :func:`select_word`: a click on a word of the caption (or :func:`select_phrase`: a typed
  phrase) shows that word's ``span_map`` over the image;
* :func:`click_image`: two clicks on the picture are the corners of a box; the second shows
  every word's ``region_scores`` for that box.

What the page shows is :func:`render_view` of the Interaction and a :class:`View` (the selected
tokens and the box), so a click is a pure function of those two.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import InputError
from ..settings import fields_of
from .controls import AUTO, SettingSpec, clean_values
from .limits import MAX_MEGAPIXELS, MAX_UPLOAD_MB, check_text, read_image
from .render import signed_tokens_html

#: The picture is enlarged (nearest neighbour) to at least this many pixels a side: Gradio maps a
#: click to image pixels only for pictures shown no larger than their own size.
PICTURE_SIDE = 384
SELECTED = "selected"  # the caption's label of the selected words

Box = tuple[int, int, int, int]  # (x, y, w, h) in the model's input pixels


@dataclass(frozen=True)
class View:
    """What the page shows of one Interaction: the selected tokens, a box's first corner, a box."""

    selected: tuple[int, ...] = ()  # token positions whose span_map is shown
    corner: tuple[int, int] | None = None  # first corner of a box being drawn (input pixels)
    box: Box | None = None


class InteractionView(NamedTuple):
    """The tab's outputs for one View, in the order of the page's components (then the numbers)."""

    picture: Any  # PIL image: the selection's map over the image (enlarged), the box drawn on it
    caption: list[tuple[str, str | None]]  # the words for gr.HighlightedText, the selected ones labelled
    scores: str  # HTML: every word's score for the box
    note: str  # Markdown: what the picture shows
    map: torch.Tensor | None  # [H, W] the span_map shown (None: no word selected)
    box_scores: torch.Tensor | None  # [T] region_scores of the box (None: no box)
    view: View


class InteractionCache:
    """The last ``size`` (Interaction, download paths) by (image pixels, text, method, settings,
    model), so pressing the button again for a pair already computed costs nothing. Safe across
    the server's threads."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def registered_interactions() -> dict[str, Any]:
    """The interaction methods the tab offers: the registry, in its order."""
    from ..interactions import REGISTRY

    return dict(REGISTRY)


def interaction_specs(name: str) -> list[SettingSpec]:
    """The controls of interaction method ``name``'s settings (its dataclass's defaults)."""
    cls = registered_interactions()[name]
    return [
        SettingSpec(f"interaction-{name}", f, f.default, f.help, AUTO if f.default is None else None)
        for f in fields_of(cls.Settings)
    ]


def clean_interaction_settings(name: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Page values -> keyword arguments of the interaction method (empty text: its default)."""
    methods = registered_interactions()
    if name not in methods:
        raise InputError(f"unknown interaction method {name!r}: choose one of {', '.join(methods)}")
    return clean_values(methods[name].Settings, settings)


def compute_interaction(
    backend: Any,
    image: Any,
    text: Any,
    method: str,
    settings: Mapping[str, Any] | None = None,
    *,
    cache: InteractionCache | None = None,
    workdir: str | os.PathLike | None = None,
    progress: Callable | None = None,
    max_bytes: float = MAX_UPLOAD_MB * 1e6,
    max_pixels: float = MAX_MEGAPIXELS * 1e6,
) -> tuple[Any, InteractionView, list[str], str]:
    """One press of "Compute interactions": (the Interaction, its first view, downloads, status).

    The first view selects the caption's first content word. Raises InputError for bad input.
    """
    report = progress or (lambda *a, **k: None)
    started = time.perf_counter()
    pil = read_image(image, max_bytes, max_pixels)
    text = check_text(text)
    values = clean_interaction_settings(method, settings)
    from ..interactions import REGISTRY as INTERACTIONS

    algorithm = INTERACTIONS.get(method)()
    chosen = algorithm.make_settings(**values)  # bad values: one line, before the model runs
    key = (
        hashlib.sha256(pil.tobytes()).hexdigest(),
        pil.size,
        pil.mode,
        text,
        method,
        tuple(sorted(chosen.as_dict().items())),
        getattr(backend, "name", ""),
    )
    hit = cache.get(key) if cache is not None else None
    result, files = hit if hit is not None else (None, [])
    cached = result is not None
    if result is None:
        report(0.1, desc=f"computing {algorithm.title}")
        result = algorithm.interact(
            backend, backend.preprocess_images([pil], [_source(image)]), backend.tokenize([text]), chosen
        )
    if not files or not all(Path(f).is_file() for f in files):  # downloads deleted after an hour: again
        report(0.8, desc="drawing the figure")
        out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="m2ib-serve-"))
        paths = result.save(out, f"{_stem(image)}_{method}", figure=True)
        files = [str(paths[k]) for k in ("png", "npz", "json") if k in paths]
    if cache is not None:
        cache.put(key, (result, files))
    seconds = time.perf_counter() - started
    status = f"{algorithm.title} · {getattr(backend, 'name', '')} · {seconds:.1f} s" + (
        " (computed before: from the cache)" if cached else ""
    )
    return result, render_view(result, View(selected=_first_content_word(result))), files, status


def select_word(interaction: Any, view: View, index: int, extend: bool = False) -> InteractionView:
    """A click on the caption's ``index``-th word: show its map (``extend``: add or remove it
    from the selected phrase instead)."""
    shown = interaction.words
    if not 0 <= int(index) < len(shown):
        raise InputError(f"word {index} is not in the caption (it has {len(shown)} words)")
    position = shown[int(index)]
    if extend:
        picked = set(view.selected) ^ {position}
        selected = tuple(sorted(picked))
    else:
        selected = (position,)
    return render_view(interaction, replace(view, selected=selected))


def select_phrase(interaction: Any, view: View, phrase: str) -> InteractionView:
    """A phrase typed by the user (its first occurrence in the text): show its map."""
    return render_view(interaction, replace(view, selected=tuple(interaction.token_positions(phrase.strip()))))


def click_image(interaction: Any, view: View, x: float, y: float) -> InteractionView:
    """A click on the picture at its pixel ``(x, y)``: the first corner of a box, or the second
    (then the box is scored). The picture is :func:`picture_scale` times the model's input."""
    scale = picture_scale(interaction)
    height, width = interaction.image_size
    px = min(max(int(x // scale), 0), width - 1)
    py = min(max(int(y // scale), 0), height - 1)
    if view.corner is None:
        return render_view(interaction, replace(view, corner=(px, py), box=None))
    (cx, cy) = view.corner
    box = (min(cx, px), min(cy, py), abs(px - cx) + 1, abs(py - cy) + 1)  # both corner pixels inside
    return render_view(interaction, replace(view, corner=None, box=box))


def picture_scale(interaction: Any) -> int:
    """How many times the picture enlarges the model's input (a whole number, at least 1)."""
    return max(1, math.ceil(PICTURE_SIDE / max(interaction.image_size)))


def render_view(interaction: Any, view: View) -> InteractionView:
    """What the page shows of ``interaction`` for ``view``."""
    from ..viz.interaction import signed_overlay

    words = interaction.words
    signed = interaction.span_map(list(view.selected)) if view.selected else None
    if signed is None:
        picture = interaction.image.float()
        note = "Click a word of the caption to see its region."
    else:
        scale = max(_word_scale(interaction), float(signed.abs().max()))
        picture = signed_overlay(interaction.image, signed, scale)
        phrase = " ".join(_word_texts(interaction)[words.index(i)].strip() for i in view.selected if i in words)
        total = float(interaction.span_grid(list(view.selected)).sum())
        note = (
            f"**{phrase or 'start/end tokens'}**: red where it and the region raise the similarity together, "
            f"blue where they lower it (sum {total:+.3g}; scale ±{scale:.3g}, as for every word of this pair)."
        )
    pil = _enlarged(picture, picture_scale(interaction), view)
    texts = _word_texts(interaction)
    caption = [(texts[k], SELECTED if i in view.selected else None) for k, i in enumerate(words)]
    box_scores: torch.Tensor | None = None
    if view.box is None:
        hint = (
            "corner 1 set: click the opposite corner"
            if view.corner is not None
            else "click two opposite corners of a box on the image"
        )
        scores = signed_tokens_html([], [], f"The words' scores for a region: {hint}.")
    else:
        box_scores = interaction.region_scores(view.box)
        x, y, w, h = view.box
        rest = float(box_scores.sum() - box_scores[words].sum()) if words else float(box_scores.sum())
        scores = signed_tokens_html(
            [t.strip() for t in texts],
            [float(box_scores[i]) for i in words],
            f"box x={x}, y={y}, {w}x{h} px of the {interaction.image_size[1]}x"
            f"{interaction.image_size[0]} input; red: the word goes with the box, blue: "
            f"against it; start/end tokens {rest:+.2e}",
        )
    return InteractionView(pil, caption, scores, note, signed, box_scores, view)


def _enlarged(picture: torch.Tensor, scale: int, view: View):
    """The picture as PIL, ``scale`` times larger, with the box (or its first corner) drawn."""
    from PIL import Image, ImageDraw

    from ..viz.overlay import to_pil

    pil = to_pil(picture.clamp(0, 1))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pil)
    if view.box is not None:
        x, y, w, h = view.box
        outer = (x * scale - 1, y * scale - 1, (x + w) * scale, (y + h) * scale)
        draw.rectangle(outer, outline=(0, 0, 0), width=3)  # black and white: seen on any colour
        draw.rectangle((outer[0] + 1, outer[1] + 1, outer[2] - 1, outer[3] - 1), outline=(255, 255, 255), width=1)
    if view.corner is not None:
        cx, cy = (v * scale + scale // 2 for v in view.corner)
        for colour, r in (((0, 0, 0), 5), ((255, 255, 255), 3)):
            draw.line((cx - r, cy, cx + r, cy), fill=colour, width=3 if r == 5 else 1)
            draw.line((cx, cy - r, cx, cy + r), fill=colour, width=3 if r == 5 else 1)
    return pil


def _word_texts(interaction: Any) -> list[str]:
    """Each word token as the caption writes it, with the space after it (for the display)."""
    out = []
    text, offsets, words = interaction.text, interaction.offsets, interaction.words
    for k, i in enumerate(words):
        if offsets is None or offsets[i][1] <= offsets[i][0]:
            out.append(f"{interaction.tokens[i]} ")
            continue
        start, end = offsets[i]
        following = offsets[words[k + 1]][0] if k + 1 < len(words) else end
        out.append(text[start : max(end, following)])  # the word and what follows it up to the next
    return out


def _word_scale(interaction: Any) -> float:
    """One colour scale for the pair: the largest |score| of any word's map."""
    rows = interaction.matrix[interaction.words] if interaction.words else interaction.matrix
    return float(rows.abs().max()) or 1e-12


def _first_content_word(interaction: Any) -> tuple[int, ...]:
    words = interaction.content_words()
    if not words:
        return tuple(interaction.words[:1])
    first = words[0]
    return tuple(interaction.token_positions(first if isinstance(first, str) else list(first)))


def _source(image: Any) -> str:
    return Path(image).name if isinstance(image, (str, os.PathLike)) else "<uploaded image>"


def _stem(image: Any) -> str:
    from ..pairs import output_stem

    return output_stem(None, str(image)) if isinstance(image, (str, os.PathLike)) else "image"
