"""The interaction-method interface and its registry (separate from first-order methods).

An interaction method turns one image-text pair into an :class:`~m2ib.interactions.Interaction`
(token x patch scores). ``phrase_maps`` gives the image maps of character spans of the text;
by default they are the matrix's ``span_map``s, and a method that has no matrix of its own
(the first-order baseline) overrides it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, TextBatch
from ..errors import InputError
from ..methods.base import Configurable, Settings
from ..registry import Registry
from .result import Interaction


class InteractionMethod(Configurable, ABC):
    """Base class: ``interact`` one pair; ``phrase_maps`` of spans of its text. Its settings are
    made as a first-order method's (:meth:`m2ib.methods.base.Configurable.make_settings`)."""

    Settings: ClassVar[type[Settings]] = Settings  # redeclared: ``interact``'s settings are each method's own
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")  # both sides at once: token x patch

    # The hooks' ``settings`` is typed Any: each method narrows it to its own class, which a parameter
    # typed with the base class would forbid (mypy's override rule); in this body ``Settings`` is the ClassVar.
    @abstractmethod
    def interact(self, backend: Backend, image: ImageBatch, text: TextBatch, settings: Any) -> Interaction:
        """Token x patch scores of the pair ``(image[0], text[0])``."""

    def phrase_maps(
        self, backend: Backend, image: ImageBatch, text: TextBatch, spans: Sequence[tuple[int, int]], settings: Any
    ) -> torch.Tensor:
        """Image maps [S, H, W] of the character ``spans`` of the pair's text."""
        result = self.interact(backend, image, text, settings)
        return torch.stack([result.span_map(span) for span in spans])


REGISTRY: Registry[type[InteractionMethod]] = Registry("interaction method")
#: Class decorator: make an interaction method available by its ``name``.
register = REGISTRY.register


def check_one_pair(image: ImageBatch, text: TextBatch) -> None:
    if len(image) != 1 or len(text) != 1:
        raise InputError(f"an interaction explains one pair at a time: got {len(image)} images, {len(text)} texts")


def token_offsets(backend: Backend, text: TextBatch) -> list[tuple[int, int]] | None:
    """Each token's character span in the text (start/end tokens: (0, 0)); None without a fast tokenizer."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not text.texts:
        return None
    try:
        enc = tokenizer(
            text.texts[0], return_offsets_mapping=True, truncation=True, max_length=backend.geometry.context_length
        )
    except (NotImplementedError, TypeError, ValueError):
        return None
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return offsets if len(offsets) == len(text.tokens[0]) else None


def similarity(backend: Backend, image: ImageBatch, text: TextBatch) -> float:
    with torch.no_grad():
        a = F.normalize(backend.embed("image", image).float(), dim=-1)
        b = F.normalize(backend.embed("text", text).float(), dim=-1)
    return float((a * b).sum())


def display_image(backend: Backend, image: ImageBatch) -> torch.Tensor:
    shown = image.display if image.display is not None else backend.display_images(image.pixel_values)
    return shown[0].detach().float().cpu()


def new_interaction(
    method: InteractionMethod,
    backend: Backend,
    image: ImageBatch,
    text: TextBatch,
    matrix: torch.Tensor,
    settings: Settings,
    info: dict[str, Any],
) -> Interaction:
    """The Interaction of one pair with everything but the matrix read from the inputs."""
    return Interaction(
        text=text.texts[0] if text.texts else "",
        tokens=list(text.tokens[0]) if text.tokens else [],
        image=display_image(backend, image),
        matrix=matrix.detach().float().cpu(),
        offsets=token_offsets(backend, text),
        special_tokens=tuple(text.special[0]) if text.special else (),
        similarity=similarity(backend, image, text),
        method=method.name,
        settings=settings.as_dict(),
        model=backend.name,
        image_source=image.sources[0] if image.sources else "",
        info=info,
    )
