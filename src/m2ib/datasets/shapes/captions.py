"""Captions of a scene: plain-English text with a character span for every colour and shape word.

``"a red circle"``, ``"a red circle and a blue star"``, ``"a red circle, a blue star and an
orange cross"`` (the article is "an" before a vowel, as a person would type it: :func:`phrase`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .world import COLOURS, SHAPES, Scene

#: Caption kinds accepted by :func:`make_caption`.
KINDS: tuple[str, ...] = ("single", "subset", "all", "mixed")

# Stable integer codes for caption kinds (used to derive caption seeds; never
# Python's salted ``hash``).
_KIND_CODE = {"single": 1, "subset": 2, "all": 3, "mixed": 4}


@dataclass(frozen=True)
class Span:
    """A colour or shape word inside a caption."""

    start: int  # char offset into the caption text
    end: int  # exclusive
    word: str  # == text[start:end]
    role: str  # "colour" or "shape"
    object_index: int  # index into scene.objects, or -1 for an absent object
    present: bool


@dataclass(frozen=True)
class Caption:
    text: str
    kind: str  # "single" | "subset" | "all" | "mixed"
    objects: tuple[int, ...]  # present objects named, in caption order
    absent: tuple[tuple[str, str], ...]  # (colour, shape) named but absent
    spans: tuple[Span, ...]  # colour span then shape span per named object

    def named(self) -> tuple[tuple[str, str], ...]:
        """Every (colour, shape) the caption names, in caption order."""
        out: list[tuple[str, str]] = []
        colour: str | None = None
        for sp in self.spans:
            if sp.role == "colour":
                colour = sp.word
            else:
                if colour is None:
                    raise ValueError(f"caption {self.text!r}: the shape {sp.word!r} has no colour span before it")
                out.append((colour, sp.word))
                colour = None
        return tuple(out)

    def spans_for(self, present: bool) -> tuple[Span, ...]:
        """The spans of the present (or absent) objects."""
        return tuple(sp for sp in self.spans if sp.present == present)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def phrase(colour: str, shape: str) -> str:
    """The caption phrase for one object: "a red circle", "an orange star"."""
    return f"{_article(colour)} {colour} {shape}"


def _build_caption(items: Sequence[tuple[str, str, int]], kind: str) -> Caption:
    """items: (colour, shape, object_index or -1) in caption order."""
    text = ""
    spans: list[Span] = []
    n = len(items)
    for j, (colour, shape, idx) in enumerate(items):
        if j > 0:
            text += " and " if j == n - 1 else ", "
        text += _article(colour) + " "
        present = idx >= 0
        start = len(text)
        text += colour
        spans.append(Span(start, len(text), colour, "colour", idx, present))
        text += " "
        start = len(text)
        text += shape
        spans.append(Span(start, len(text), shape, "shape", idx, present))
    return Caption(
        text=text,
        kind=kind,
        objects=tuple(idx for _, _, idx in items if idx >= 0),
        absent=tuple((c, s) for c, s, idx in items if idx < 0),
        spans=tuple(spans),
    )


def _pick_absent(rng: np.random.Generator, scene: Scene, named: tuple[str, str], distractor: str):
    present = set(scene.pairs)
    candidates = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    if distractor == "disjoint":
        # Prefer a distractor sharing neither colour nor shape with anything in
        # the scene (always possible with <= 4 objects and the full
        # vocabulary), then one sharing no word with the named object.
        used_c = {c for c, _ in present}
        used_s = {s for _, s in present}
        tiers = [
            [(c, s) for c, s in candidates if c not in used_c and s not in used_s],
            [(c, s) for c, s in candidates if c != named[0] and s != named[1]],
            candidates,
        ]
        candidates = next(t for t in tiers if t)
    elif distractor != "any":
        raise ValueError(f"distractor must be 'disjoint' or 'any', got {distractor!r}")
    return candidates[int(rng.integers(len(candidates)))]


def make_caption(
    scene: Scene,
    kind: str = "subset",
    seed: int | None = None,
    *,
    distractor: str = "disjoint",
) -> Caption:
    """Caption ``scene``.  Deterministic: ``seed=None`` derives the seed from
    ``scene.seed`` and ``kind``.

    kinds: "single" (one present object), "subset" (one object with
    probability 0.6, else 2..n of them), "all" (every object, random order),
    "mixed" (one present object and one absent (colour, shape), random order).
    For "mixed", ``distractor="disjoint"`` (default) picks an absent object
    whose colour and shape both occur nowhere in the scene when possible;
    ``"any"`` picks any absent (colour, shape).
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"unknown caption kind {kind!r}; expected one of {KINDS}")
    if not scene.objects:
        raise ValueError("scene has no objects")
    if seed is None:
        rng = np.random.default_rng([int(scene.seed), _KIND_CODE[kind], 0x5EED])
    else:
        rng = np.random.default_rng(seed)
    n = len(scene.objects)
    objs = scene.objects

    if kind == "single" or kind == "mixed":
        chosen = [int(rng.integers(n))]
    elif kind == "all":
        chosen = [int(i) for i in rng.permutation(n)]
    else:  # subset
        k = 1 if (n == 1 or rng.random() < 0.6) else int(rng.integers(2, n + 1))
        chosen = [int(i) for i in rng.permutation(n)[:k]]

    items = [(objs[i].colour, objs[i].shape, i) for i in chosen]
    if kind == "mixed":
        c, s = _pick_absent(rng, scene, (items[0][0], items[0][1]), distractor)
        absent_item = (c, s, -1)
        items = [items[0], absent_item] if rng.random() < 0.5 else [absent_item, items[0]]
    return _build_caption(items, kind)


def caption_matches(caption: Caption, scene: Scene) -> bool:
    """True iff every (colour, shape) the caption names is present in scene."""
    return all(scene.has(c, s) for c, s in caption.named())


def class_prompts() -> list[tuple[str, str, str]]:
    """(colour, shape, prompt) for every colour x shape, canonical order.

    The prompt is :func:`phrase` (same wording as the captions, so "an orange
    circle" rather than "a orange circle")."""
    return [(c, s, phrase(c, s)) for c in COLOURS for s in SHAPES]
