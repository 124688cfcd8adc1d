"""Explanation: the result of explaining one image-text pair, as tensors (a :class:`m2ib.results.Result`:
arrays, to_dict, figure, save)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from .errors import InputError
from .maps import minmax
from .results import Result, short

#: An image map above the middle of its range on at least this share of the pixels is flagged.
ALMOST_EVERYWHERE = 0.95
#: What the text panel's numbers are (printed on the figure): the JSON's ``word_scores``.
WORD_SCORES_LABEL = "numbers: JSON word_scores (a word's pieces averaged, min-max over the words)"


@dataclass(repr=False)
class Explanation(Result):
    """Attribution maps of one image-text pair, by one method (:func:`m2ib.explain` returns it).

    Maps are CPU float tensors. ``image_map`` is at the model's input resolution and
    ``image`` is the picture as the model saw it (resized and cropped), so they overlay.
    In a notebook it shows its figure (``_repr_png_``: the same PNG that :meth:`save` writes).

    Attributes:
        text: the text as given.
        tokens: readable tokens, start/end included, aligned with ``text_map`` (length T).
        image: [3, H, W] in [0, 1], the image as the model saw it.
        image_map: [H, W] in [0, 1] (min-max normalised); None when the image side was not explained.
        text_map: [T] in [0, 1], one score per token; None when the text side was not explained.
        image_map_raw: [H, W] before normalising (M2IB: the KL in nats, upsampled from the patch grid).
        image_grid: [rows, cols] raw per-patch scores, for methods that have them (M2IB's KL per patch).
        text_map_raw: [T] before normalising.
        special_tokens: indices of the start/end tokens in ``tokens``.
        word_ids: per token, the word it belongs to (-1: start/end); empty: a word per token.
        similarity: cosine similarity of the image and text embeddings.
        method: the method's registry name (``"m2ib"``, ``"gradcam"``, ...).
        settings: every setting actually used (layers resolved).
        model: the model's name.
        image_source: the image's path, or a description.
        info: method-specific numbers (M2IB: the final loss; with negatives: ``margin``).

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle")
        >>> exp.image_map.shape, exp.image_grid.shape, len(exp.text_map) == len(exp.tokens)
        (torch.Size([96, 96]), torch.Size([16, 16]), True)
        >>> sorted(exp.save("out/", "scene3"))  # doctest: +SKIP
        ['json', 'npz', 'png']
    """

    text: str  # the text as given
    tokens: list[str]  # readable tokens, start/end included, aligned with text_map
    image: torch.Tensor  # [3, H, W] in [0, 1]: the image as the model saw it
    image_map: torch.Tensor | None  # [H, W] in [0, 1] (min-max normalised); None if not explained
    text_map: torch.Tensor | None  # [T] in [0, 1], one score per token; None if not explained
    image_map_raw: torch.Tensor | None = None  # [H, W] before normalising (e.g. KL in nats, upsampled)
    image_grid: torch.Tensor | None = None  # [rows, cols] raw per-patch scores, when the method has them
    text_map_raw: torch.Tensor | None = None  # [T] before normalising
    special_tokens: tuple[int, ...] = ()  # indices of start/end tokens in ``tokens``
    word_ids: tuple[int, ...] = ()  # per token, the word it belongs to (-1: start/end); () = a word each
    similarity: float = float("nan")  # cosine similarity of the image and text embeddings
    method: str = "m2ib"
    settings: dict[str, Any] = field(default_factory=dict)  # the settings actually used
    model: str = ""  # the model's name
    image_source: str = ""  # path of the image, or a description
    info: dict[str, Any] = field(default_factory=dict)  # method-specific numbers (e.g. final loss)
    # a settings file's path ("mapping": given in code) whose values replaced the model's recommended ones
    settings_source: str | None = None

    default_stem: ClassVar[str] = "explanation"

    def map_of(self, side: Literal["image", "text"]) -> torch.Tensor:
        """The ``side`` map; InputError when the method was not asked to explain that side."""
        found = self.image_map if side == "image" else self.text_map
        if found is None:
            raise InputError(f"{self.method}: the {side} side was not explained; ask for it in the modalities")
        return found

    def summary(self) -> str:
        """The method, the text, the sides explained and the model, for ``repr``."""
        sides = [side for side, m in (("image", self.image_map), ("text", self.text_map)) if m is not None]
        return f"{self.method} of {short(self.text)!r} ({'+'.join(sides) or 'no side'}; {self.model})"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready. ``text_scores``: one per token (``text_map``);
        ``words`` and ``word_scores``: the words and the numbers the figure prints (:meth:`display_words`)."""
        words, shading, _ = self.display_words()
        return {
            "method": self.method,
            "model": self.model,
            "image": self.image_source,
            "text": self.text,
            "tokens": self.tokens,
            "special_tokens": list(self.special_tokens),
            "word_ids": list(self.word_ids),
            "similarity": self.similarity,
            "settings": self.settings,
            **({"settings_source": self.settings_source} if self.settings_source is not None else {}),
            "info": self.info,
            "text_scores": None if self.text_map is None else [round(float(v), 6) for v in self.text_map],
            "words": words,
            "word_scores": None if shading is None else [round(float(v), 6) for v in shading],
        }

    def figure(self, boxes: list[tuple[float, float, float, float]] | None = None):
        """The PIL figure: heatmap over the image beside the shaded tokens (needs matplotlib)."""
        from .viz.figure import explanation_figure

        subtitle = f"{self.method} · {self.model} · cosine similarity {self.similarity:.3f}"
        negatives = self.settings.get("negatives") or []
        if negatives:  # the maps explain a margin, not the plain similarity: say so on the figure
            subtitle += f" · target: margin over {len(negatives)} negative text{'s' if len(negatives) > 1 else ''}"
        words, shading, special = self.display_words()
        if shading is not None and special != tuple(range(len(words))) and not bool(shading.any()):
            subtitle += " · every word scored 0"  # an empty text row is a result, not a drawing failure
        if shading is not None:  # say what the printed numbers are: the JSON's word_scores, not text_scores
            subtitle += f" · {WORD_SCORES_LABEL}"
        return explanation_figure(
            self.image,
            self.image_map,
            words,
            shading,
            title=self.text,
            subtitle=subtitle,
            boxes=boxes,
            special_tokens=special,
        )

    def word_groups(self) -> list[list[int]]:
        """Token indices per shown word, in order: the pieces of one word together (a character
        split over byte pieces, a word split into sub-words), start/end tokens alone."""
        if len(self.word_ids) != len(self.tokens):
            return [[i] for i in range(len(self.tokens))]
        groups: list[list[int]] = []
        for i, word in enumerate(self.word_ids):
            if groups and word >= 0 and self.word_ids[groups[-1][-1]] == word:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def display_words(self) -> tuple[list[str], torch.Tensor | None, tuple[int, ...]]:
        """(words, shading, indices of start/end) for display and for the JSON's ``word_scores``.

        A word's raw score is the **mean** of its pieces' raw scores, then min-max over the words
        as in :meth:`word_shading`. The mean, not the sum: a word outside the vocabulary is split
        into many pieces (a rare word, a typo, a character over byte pieces), and a sum would rank
        it above a one-piece word with the same evidence per piece just for its length ("a blue
        line": *line* 1.00). The mean keeps every word on its pieces' scale. With one piece per
        word this is exactly the tokens and :meth:`word_shading`."""
        groups = self.word_groups()
        words = ["".join(self.tokens[i] for i in group) for group in groups]
        specials = set(self.special_tokens)
        special = tuple(k for k, group in enumerate(groups) if group[0] in specials)
        if self.text_map is None:
            return words, None, special
        raw = self.text_map_raw if self.text_map_raw is not None else self.text_map
        merged = torch.stack([raw[group].mean() for group in groups])
        shown = [k for k in range(len(groups)) if k not in set(special)]
        if not shown:
            return words, merged, special
        shading = torch.zeros_like(merged)
        shading[shown] = minmax(merged[shown][None])[0]
        return words, shading, special

    def problems(self) -> dict[str, str]:
        """Why the maps may rank nothing, by kind (``constant image``, ``broad image``, ``flat words``),
        one sentence each (empty when they look usable): a constant image map, an image map above the
        middle of its range almost everywhere (share :data:`ALMOST_EVERYWHERE`), or every word with the
        same score. Any method can produce them (a fit that compressed everything, gradients that
        vanish through a ReLU); ``m2ib.explain`` warns with them, so no such map passes without a word."""
        found = {}
        if self.image_map is not None:
            raw = self.image_map_raw if self.image_map_raw is not None else self.image_map
            share = float((self.image_map > 0.5).float().mean())
            if float(raw.max() - raw.min()) <= 1e-12 * max(float(raw.abs().max()), 1.0):
                found["constant image"] = (
                    f"the image map is constant ({float(raw.flatten()[0]):.3g} everywhere): it ranks nothing"
                )
            elif share >= ALMOST_EVERYWHERE:
                found["broad image"] = (
                    f"the image map is above the middle of its range on {share:.1%} of the "
                    "pixels: it singles out almost nothing"
                )
        words, shading, special = self.display_words()
        if shading is not None:  # None: no text map
            shown = [float(shading[k]) for k in range(len(words)) if k not in set(special)]
            if len(shown) > 1 and max(shown) == min(shown):
                found["flat words"] = (
                    f"every word gets the same score ({len(shown)} words at {shown[0]:.2f}): the text map ranks nothing"
                )
        return found

    def word_shading(self) -> torch.Tensor | None:
        """Token scores for display: min-max over the words only (start/end excluded), as in
        the paper's figures; the end token often dominates the raw map and would wash them out."""
        if self.text_map is None:
            return None
        words = [i for i in range(len(self.tokens)) if i not in set(self.special_tokens)]
        if not words:
            return self.text_map
        raw = self.text_map_raw if self.text_map_raw is not None else self.text_map
        shaded = torch.zeros_like(self.text_map)
        shaded[words] = minmax(raw[words][None])[0]
        return shaded

    def tensors(self) -> dict[str, torch.Tensor | None]:
        """The maps by the names ``save`` writes them under (None: not explained)."""
        return {
            "image": self.image,
            "image_map": self.image_map,
            "text_map": self.text_map,
            "image_map_raw": self.image_map_raw,
            "image_grid": self.image_grid,
            "text_map_raw": self.text_map_raw,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps that exist, as numpy arrays (the contents of ``STEM.npz``)."""
        return {k: v.numpy() for k, v in self.tensors().items() if v is not None}
