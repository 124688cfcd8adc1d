"""The baseline to beat: the first-order image map of a phrase explained alone.

For a phrase of the caption (e.g. "red circle" of "a red circle and a blue star"), a registered
first-order method (``first_order``) explains the image against the phrase's own text; its raw image
map is the phrase's map. This uses no interaction at all: it shows how much a plain map of the
words already grounds them. As an :class:`~m2ib.interactions.Interaction`, each word's tokens
share its map (averaged to the patch grid, split evenly among the word's tokens), so
``span_map`` of one word is that word's map; start/end tokens score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, TextBatch
from ..errors import InputError
from ..methods.base import Settings, setting
from .base import InteractionMethod, check_one_pair, new_interaction, register, token_offsets


@dataclass(frozen=True)
class PhraseAloneSettings(Settings):
    """Settings of the first-order baseline."""

    first_order: str = setting("gradeclip", "the first-order method that explains the image against the phrase alone")

    def validate(self) -> None:
        super().validate()
        from ..methods import REGISTRY

        if self.first_order not in REGISTRY or "image" not in REGISTRY[self.first_order].modalities:
            raise InputError(f"first_order={self.first_order!r}: use a registered method that explains images")


def words_of(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Per token, the character span of the whitespace-separated word it lies in (None: start/end)."""
    out: list[tuple[int, int] | None] = []
    for a, b in offsets:
        if b <= a:
            out.append(None)
            continue
        start = text.rfind(" ", 0, a) + 1
        end = text.find(" ", b)
        out.append((start, len(text) if end < 0 else end))
    return out


@register
class PhraseAlone(InteractionMethod):
    """First-order map of each phrase explained alone (the baseline)."""

    name = "phrase-alone"
    title = "First-order map of the phrase alone (baseline)"
    Settings = PhraseAloneSettings

    def phrase_maps(
        self,
        backend: Backend,
        image: ImageBatch,
        text: TextBatch,
        spans: Sequence[tuple[int, int]],
        settings: PhraseAloneSettings,
    ) -> torch.Tensor:
        check_one_pair(image, text)
        phrases = [text.texts[0][a:b] for a, b in spans]
        if any(not p.strip() for p in phrases):
            raise InputError(f"spans {list(spans)} include an empty phrase of {text.texts[0]!r}")
        from ..methods import REGISTRY as METHODS

        method = METHODS.get(settings.first_order)()
        chosen = method.make_settings(backend, seed=settings.seed)
        exps = method.explain(
            backend, image.repeat_interleave(len(phrases)), backend.tokenize(phrases), chosen, ("image",)
        )
        maps = []
        for e in exps:
            if e.image_map_raw is None:
                raise InputError(
                    f"first_order {settings.first_order!r} gives no raw image map; choose a method that does"
                )
            maps.append(e.image_map_raw)
        return torch.stack(maps)

    def interact(self, backend: Backend, image: ImageBatch, text: TextBatch, settings: PhraseAloneSettings):
        check_one_pair(image, text)
        offsets = token_offsets(backend, text)
        if offsets is None:
            raise InputError(f"{self.name} needs token offsets (a fast tokenizer) to find each token's word")
        per_token = words_of(text.texts[0], offsets)
        words = list(dict.fromkeys(w for w in per_token if w is not None))
        rows, cols = backend.token_grid("image", backend.num_layers("image") - 1)
        matrix = torch.zeros(len(per_token), rows, cols)
        if words:
            grids = F.adaptive_avg_pool2d(
                self.phrase_maps(backend, image, text, words, settings)[:, None].float(), (rows, cols)
            )[:, 0].cpu()
            for i, word in enumerate(per_token):
                if word is not None:
                    matrix[i] = grids[words.index(word)] / per_token.count(word)
        return new_interaction(self, backend, image, text, matrix, settings, {"first_order": settings.first_order})
