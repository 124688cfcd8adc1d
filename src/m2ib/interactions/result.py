"""Interaction: which words go with which image regions, for one image-text pair.

One matrix of scores, one row per caption token and one column per image patch. From it,
``span_map`` gives the image map of a phrase (the sum of its tokens' rows, upsampled to the
model's input) and ``region_scores`` the words' scores for a region (each patch weighted by
the share of it the region covers). Scores are signed: positive means the token and the patch
raise the similarity together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..results import Result, short

Box = tuple[float, float, float, float]  # (x, y, w, h) in the model's input pixels


#: Words the default figure leaves out: they name nothing in the image.
FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "of", "with", "in", "on", ",", "."})


@dataclass(repr=False)
class Interaction(Result):
    """Token x patch interaction scores of one pair (CPU float tensors), from
    :func:`m2ib.interactions.interact`: exCLIP (Möller et al., TMLR 2025), FIxLIP (Baniecki et al.,
    NeurIPS 2025) or the phrase-alone baseline. In a notebook it shows its figure, one panel per
    content word (the same PNG that :meth:`save` writes).

    Attributes:
        text: the text as given.
        tokens: readable tokens, start/end included (T of them): the rows of ``matrix``.
        image: [3, H, W] in [0, 1], the image as the model saw it.
        matrix: [T, rows, cols] signed scores, one grid of patches per token (positive: the token and
            the patch raise the similarity together).
        offsets: per token, its character span in ``text`` ((0, 0): none); None when unknown.
        special_tokens: indices of the start/end tokens.
        similarity: cosine similarity of the image and text embeddings.
        method: the interaction method's registry name.
        settings: every setting used.
        info: method-specific numbers (exCLIP: the completeness terms the matrix sums to).

    Examples:
        >>> import m2ib
        >>> from m2ib.interactions import interact
        >>> pair = interact("shapes", "examples/scene3.png", "an orange triangle and a yellow circle", text_layer=0)
        >>> pair.matrix.shape, pair.span_map("orange triangle").shape, pair.region_scores((46, 65, 27, 24)).shape
        (torch.Size([9, 16, 16]), torch.Size([96, 96]), torch.Size([9]))
    """

    text: str  # the text as given
    tokens: list[str]  # readable tokens, start/end included; rows of ``matrix``
    image: torch.Tensor  # [3, H, W] in [0, 1]: the image as the model saw it
    matrix: torch.Tensor  # [T, rows, cols] signed scores, one grid of patches per token
    offsets: list[tuple[int, int]] | None = None  # per token, its character span in ``text`` ((0, 0): none)
    special_tokens: tuple[int, ...] = ()  # indices of start/end tokens
    similarity: float = float("nan")  # cosine similarity of the image and text embeddings
    method: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    image_source: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # method-specific numbers (e.g. completeness terms)

    default_stem: ClassVar[str] = "interaction"

    def __post_init__(self) -> None:
        if self.matrix.ndim != 3 or self.matrix.shape[0] != len(self.tokens):
            raise ValueError(f"matrix {tuple(self.matrix.shape)} must be [tokens={len(self.tokens)}, rows, cols]")
        if self.offsets is not None and len(self.offsets) != len(self.tokens):
            raise ValueError(f"{len(self.offsets)} offsets for {len(self.tokens)} tokens")

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's input, the size of every image map."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def words(self) -> list[int]:
        """Token positions that are not start/end tokens."""
        special = set(self.special_tokens)
        return [i for i in range(len(self.tokens)) if i not in special]

    # --- selecting tokens ------------------------------------------------------------------
    def token_positions(self, selection: str | tuple[int, int] | Sequence[int]) -> list[int]:
        """Tokens a selection names: a phrase of the text (its first occurrence), a character span
        ``(start, end)`` or a list of token positions."""
        if isinstance(selection, str):
            start = self.text.find(selection)
            if not selection.strip() or start < 0:
                raise InputError(f"{selection!r} is not part of the text {self.text!r}")
            return self.char_span_tokens(start, start + len(selection))
        if isinstance(selection, tuple) and len(selection) == 2 and not isinstance(selection[0], bool):
            return self.char_span_tokens(int(selection[0]), int(selection[1]))
        positions = [int(i) for i in selection]
        bad = [i for i in positions if not 0 <= i < len(self.tokens)]
        if bad or not positions:
            raise InputError(f"token positions {positions} must be non-empty and within 0..{len(self.tokens) - 1}")
        return positions

    def char_span_tokens(self, start: int, end: int) -> list[int]:
        """Token positions whose characters overlap ``text[start:end]``."""
        if self.offsets is None:
            raise InputError("this model's tokenizer gives no character offsets: select tokens by position")
        found = [i for i, (a, b) in enumerate(self.offsets) if b > a and max(a, start) < min(b, end)]
        if not found:
            raise InputError(f"characters {start}..{end} of {self.text!r} cover no token")
        return found

    # --- the two views -----------------------------------------------------------------------
    def span_grid(self, selection: str | tuple[int, int] | Sequence[int]) -> torch.Tensor:
        """The patch grid [rows, cols] of a phrase: the sum of its tokens' rows."""
        return self.matrix[self.token_positions(selection)].sum(0)

    def span_map(self, selection: str | tuple[int, int] | Sequence[int]) -> torch.Tensor:
        """The image map [H, W] of a phrase (signed, upsampled bilinearly from the patch grid)."""
        grid = self.span_grid(selection)
        return F.interpolate(grid[None, None].float(), size=self.image_size, mode="bilinear", align_corners=False)[0, 0]

    def region_scores(self, region: Box | torch.Tensor) -> torch.Tensor:
        """The tokens' scores [T] for a region: a box ``(x, y, w, h)`` in input pixels or a bool mask
        [H, W]. Each patch counts with the share of its pixels inside the region."""
        if isinstance(region, torch.Tensor):
            if tuple(region.shape) != self.image_size:
                raise InputError(f"mask {tuple(region.shape)} must be the model's input size {self.image_size}")
            mask = region.bool()
        else:
            from ..metrics.localisation import boxes_to_mask

            if len(region) != 4 or region[2] <= 0 or region[3] <= 0:
                raise InputError(f"box {region!r} must be (x, y, w, h) with w, h > 0")
            mask = boxes_to_mask([region], self.image_size)
        rows, cols = self.matrix.shape[1:]
        weight = F.adaptive_avg_pool2d(mask[None, None].float(), (rows, cols))[0, 0]
        return (self.matrix * weight).sum((1, 2))

    # --- saving ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready."""
        return {
            "method": self.method,
            "model": self.model,
            "image": self.image_source,
            "text": self.text,
            "tokens": self.tokens,
            "offsets": self.offsets,
            "special_tokens": list(self.special_tokens),
            "grid": list(self.matrix.shape[1:]),
            "similarity": self.similarity,
            "settings": self.settings,
            "info": self.info,
            "token_totals": [round(float(v), 6) for v in self.matrix.sum((1, 2))],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """``matrix`` [T, rows, cols] and ``image`` [3, H, W], as numpy arrays (the ``.npz``)."""
        return {"matrix": self.matrix.numpy(), "image": self.image.numpy()}

    def content_words(self) -> list[str | list[int]]:
        """The caption's words that name something (as text; tokens by position without offsets):
        the default panels of :meth:`figure`."""
        if self.offsets is None:
            return [[i] for i in self.words]
        words: list[str | list[int]] = []
        for word in self.text.split():
            stripped = word.strip(",.;:!?")
            if stripped and stripped.lower() not in FUNCTION_WORDS and stripped not in words:
                words.append(stripped)
        return words

    def figure(self, boxes: list[Box] | None = None, phrases: Sequence[str | Sequence[int]] | None = None):
        """The PIL figure: one image panel per phrase (default: :meth:`content_words`), each titled
        with the sum of its scores; ``boxes`` (x, y, w, h, input pixels) on every panel. Needs matplotlib."""
        from ..viz.interaction import interaction_figure

        chosen: list[str | Sequence[int]] = list(phrases if phrases is not None else self.content_words())
        if not chosen:
            chosen = [self.words or list(range(len(self.tokens)))]
        panels = []
        for phrase in chosen:
            selection = phrase if isinstance(phrase, str) else list(phrase)
            label = phrase if isinstance(phrase, str) else " ".join(self.tokens[i] for i in phrase)
            panels.append((f"{label} (sum {float(self.span_grid(selection).sum()):+.3g})", self.span_map(selection)))
        return interaction_figure(
            self.image, panels, self.text, f"{self.method} · {self.model} · cosine {self.similarity:.3f}", boxes
        )

    def summary(self) -> str:
        """The method, the text, the matrix's shape and the model, for ``repr``."""
        rows, cols = self.matrix.shape[1:]
        return (
            f"{self.method} of {short(self.text)!r} ({len(self.tokens)} tokens x {rows}x{cols} patches; {self.model})"
        )


def load_interaction(stem: str | os.PathLike) -> Interaction:
    """Read what :meth:`Interaction.save` wrote (``STEM.npz`` and ``STEM.json``).

    Args:
        stem: the saved result's path without its suffix (``out/interaction``).

    Returns:
        The :class:`Interaction`, its matrix and image as saved.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from m2ib.interactions import interact
        >>> from m2ib.interactions.result import load_interaction
        >>> pair = interact("shapes", "examples/scene3.png", "an orange triangle", text_layer=0)
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = pair.save(out, figure=False)
        >>> again = load_interaction(out / "interaction")
        >>> torch.equal(again.matrix, pair.matrix), again.tokens == pair.tokens
        (True, True)
    """
    import json

    stem = Path(stem)
    meta = json.loads(stem.with_suffix(".json").read_text())
    with np.load(stem.with_suffix(".npz")) as arrays:
        matrix, image = torch.from_numpy(arrays["matrix"]), torch.from_numpy(arrays["image"])
    offsets = None if meta["offsets"] is None else [tuple(o) for o in meta["offsets"]]
    return Interaction(
        meta["text"],
        list(meta["tokens"]),
        image,
        matrix,
        offsets,
        tuple(meta["special_tokens"]),
        float("nan") if meta["similarity"] is None else meta["similarity"],
        meta["method"],
        meta["settings"],
        meta["model"],
        meta["image"],
        meta["info"],
    )
