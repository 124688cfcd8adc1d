"""The shapes world's scenes and captions as model inputs, for the quality measures of
:mod:`research.shapes_quality`: scene size, token-to-word alignment, attribution pairs
(checked to align pixel for pixel with the maps), and the present-vs-absent text margin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from m2ib import api
from m2ib.backends.base import Backend
from m2ib.datasets.shapes import SPLITS, Caption, Scene, Span, make_caption, render_scene, split_seed

#: Objects per scene for the attribution metrics (inclusive range).
ATTRIBUTION_OBJECTS: tuple[int, int] = (2, 4)


def scene_size(backend: Backend) -> int:
    """Side in pixels at which scenes are rendered for ``backend``: its input size (square)."""
    height, width = backend.geometry.image_size
    if height != width:
        raise ValueError(f"the model reads {height}x{width} images; shapes scenes are square")
    return int(height)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def check_n(n: int, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name}={n!r} must be a positive integer")


def token_word_alignment(backend: Backend, caption: Caption) -> list[Span | None]:
    """For each token of ``backend.tokenize([caption.text]).tokens[0]``, the caption span it lies in.

    A token belongs to a span (a colour or shape word, see :class:`~m2ib.datasets.shapes.Span`)
    when its character range, from the tokenizer's offsets
    (``backend.tokenizer(text, return_offsets_mapping=True)``), overlaps the span's; CLIP
    tokens never cross a word boundary, so a word split into several tokens maps each of
    them to the same span. Start/end tokens, articles, "and" and punctuation map to ``None``.
    The list has one entry per token, aligned with ``Explanation.tokens`` and ``text_map``.
    """
    text = caption.text
    tokens = backend.tokenize([text]).tokens[0]
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"model {backend.name!r} has no tokenizer: token offsets are needed")
    limit = backend.geometry.context_length
    try:
        encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=limit)
    except NotImplementedError:  # slow tokenizers have no offsets
        raise ValueError("token_word_alignment needs a fast tokenizer (return_offsets_mapping)") from None
    ids = encoded["input_ids"]
    offsets = encoded["offset_mapping"]
    if len(offsets) != len(tokens):
        raise ValueError(f"the tokenizer gives {len(offsets)} offsets for {len(tokens)} tokens of {text!r}")
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[Span | None] = []
    for token_id, (start, end) in zip(ids, offsets):
        found = None
        if token_id not in specials and end > start:
            for span in caption.spans:
                if max(start, span.start) < min(end, span.end):
                    found = span
                    break
        out.append(found)
    return out


@dataclass(frozen=True)
class Pairs:
    """Scenes, one caption each, and the model's input tensors for them (checked to align)."""

    scenes: list[Scene]
    captions: list[Caption]
    pixel_values: torch.Tensor  # [n, 3, S, S]


def _model_pixels(backend: Backend, scenes: Sequence[Scene]) -> torch.Tensor:
    """Preprocess scenes once; fail if the model's preprocessing moves any pixel (then masks
    would not align with the maps)."""
    size = scene_size(backend)
    batch = backend.preprocess_images([s.to_pil() for s in scenes])
    rendered = torch.stack([s.image for s in scenes])
    if rendered.shape[-2:] != (size, size) or tuple(batch.pixel_values.shape[-2:]) != (size, size):
        raise ValueError(f"scenes are {tuple(rendered.shape[-2:])} but the model reads {(size, size)}")
    if batch.display is not None and not torch.allclose(batch.display.float(), rendered, atol=1e-6):
        raise ValueError(
            "the model's preprocessing changes scenes rendered at its input size "
            "(resize/crop settings differ from the input size): masks would not align"
        )
    return batch.pixel_values


def attribution_pairs(backend: Backend, n: int, split: str, kind: str) -> Pairs:
    """Scenes ``render_scene(split_seed(split, i), size, n_objects=(2, 4))``, i = 0..n-1, with
    ``make_caption(scene, kind)``."""
    check_split(split)
    check_n(n)
    size = scene_size(backend)
    scenes = [render_scene(split_seed(split, i), size=size, n_objects=ATTRIBUTION_OBJECTS) for i in range(n)]
    captions = [make_caption(scene, kind) for scene in scenes]
    return Pairs(scenes, captions, _model_pixels(backend, scenes))


def explain_pairs(
    backend: Backend, pairs: Pairs, modality: str, settings: dict | None, batch_size: int, progress: bool | None
):
    exps = api.explain(
        backend,
        None,
        [c.text for c in pairs.captions],
        pixel_values=pairs.pixel_values,
        modalities=(modality,),
        batch_size=batch_size,
        progress=progress,
        **(settings or {}),
    )
    return exps if isinstance(exps, list) else [exps]


def present_absent_margin(spans: Sequence[Span | None], text_map: torch.Tensor) -> float:
    """Present object's text score minus the absent object's (> 0 is a hit in :func:`m2ib_mixed`).

    ``spans`` is :func:`token_word_alignment`'s list and ``text_map`` the [T] token scores. A
    word's score is the mean over its tokens; an object's (present or absent) the mean over its
    words (colour and shape). In [-1, 1] for maps in [0, 1]; higher is better.
    """
    if len(spans) != text_map.shape[0]:
        raise ValueError(f"{len(spans)} aligned tokens but a text map of {text_map.shape[0]} scores")
    words: dict[Span, list[float]] = {}  # each colour/shape word: the scores of its tokens
    for t, sp in enumerate(spans):
        if sp is not None:
            words.setdefault(sp, []).append(float(text_map[t]))
    word_score = {sp: sum(v) / len(v) for sp, v in words.items()}
    present = [v for sp, v in word_score.items() if sp.present]
    absent = [v for sp, v in word_score.items() if not sp.present]
    if not present or not absent:
        raise ValueError("no token of the present object or none of the absent object")
    return sum(present) / len(present) - sum(absent) / len(absent)
