"""The base of methods that read one block of each tower: M2IB, Grad-CAM, NIB.

Such a method's settings name the block per tower (``vision_layer``, ``text_layer``: 0-based,
negative from the end, ``None`` for the method's default); :class:`LayerMethod` owns the default
(M2IB's rule unless a method overrides :meth:`LayerMethod.default_layer`), its resolution for a
model's towers, and the pick of each side's batch and block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..settings import check_layer
from .base import Method, Settings, setting

S = TypeVar("S", bound=Settings)


class TowerLayers(Protocol):
    """Settings naming one block per tower (a :class:`LayerSettings` or a method's own fields)."""

    @property
    def vision_layer(self) -> int | None: ...

    @property
    def text_layer(self) -> int | None: ...


def default_layer(num_layers: int) -> int:
    """The block read in a tower of ``num_layers`` blocks when none is named.

    M2IB's paper uses the output of block 9 (0-based) of CLIP's 12-block towers, leaving two
    blocks after it. Other depths keep the same relative depth: round(10/12 * L) - 1.
    """
    return max(0, min(num_layers - 1, round(10 * num_layers / 12) - 1))


def with_tower_layers(backend: Backend, settings: S, default: Callable[[int], int]) -> S:
    """``settings`` with ``vision_layer`` / ``text_layer`` resolved for this model's towers:
    ``None`` becomes ``default(number of blocks)``, negatives count from the end, and an index
    outside the tower is an error giving the valid range."""
    layers = {}
    towers: tuple[tuple[Modality, str], ...] = (("image", "vision_layer"), ("text", "text_layer"))
    for modality, name in towers:
        value = getattr(settings, name)
        if value is None:
            value = default(backend.num_layers(modality))
        layers[name] = backend.resolve_layer(modality, value, name)
    return dataclasses.replace(settings, **layers)


@dataclass(frozen=True)
class LayerSettings(Settings):
    """Settings with one block per tower; a method redeclares the two fields for its own help."""

    vision_layer: int | None = setting(
        None, "image tower block read (0-based, negative from the end); default: the method's rule"
    )
    text_layer: int | None = setting(None, "text tower block read; default as for vision_layer")

    def validate(self) -> None:
        super().validate()
        check_layer(self.vision_layer, "vision_layer")
        check_layer(self.text_layer, "text_layer")


class LayerMethod(Method):
    """A method reading the output of one block per tower (settings: a :class:`LayerSettings`)."""

    def default_layer(self, num_layers: int) -> int:
        """The block read when the settings name none. Hook: M2IB's rule by default."""
        return default_layer(num_layers)

    def resolved(self, backend: Backend, settings: S) -> S:
        return with_tower_layers(backend, settings, self.default_layer)

    @staticmethod
    def side(
        modality: Modality, images: ImageBatch, texts: TextBatch, settings: TowerLayers
    ) -> tuple[ImageBatch | TextBatch, int]:
        """The explained side's batch and (resolved) block."""
        layer = settings.vision_layer if modality == "image" else settings.text_layer
        if layer is None:
            raise InputError(f"the {modality} tower's block is unset: resolve the settings first (Method.resolved)")
        return (images if modality == "image" else texts), layer
