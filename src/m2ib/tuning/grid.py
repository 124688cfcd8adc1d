"""The grid of ``m2ib tune``: towers, layers, betas and bottleneck variants, parsed and checked.

A **variant** is a name for a set of M2IB setting overrides (:data:`VARIANTS`, the one place they
are declared): another bottleneck (e.g. AdaIB's ``objective="adaib"``) is one more line there.
The value ``REFERENCE`` stands for the reference set built from the tune data (its first
:data:`REFERENCE_ROWS` rows), filled in by the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

#: Stands for the tune data's own reference spec (see :func:`m2ib.tuning.data.reference_spec`).
REFERENCE = "<tune data>"
REFERENCE_ROWS = 64
#: variant name -> M2IB setting overrides. The published bottleneck overrides nothing.
VARIANTS: dict[str, dict[str, Any]] = {
    "published": {},
    "standardised": {"bottleneck": "standardised", "reference": REFERENCE},
    # AdaIB (docs/adaib.md) in its default form: f = 1 / L2 distance, g a learned MLP
    "adaib": {"objective": "adaib"},
}
#: Variants whose fit does not read beta (AdaIB's default g): one point per layer, at the first beta
#: of the grid, instead of copies that would give the same map.
BETA_FREE = frozenset({"adaib"})
TOWERS = ("image", "text")
#: The paper's beta (M2IB's default for both towers).
PUBLISHED_BETA = 0.1
DEFAULT_BETAS = (0.1, 1.0, 10.0)
PREFIX = {"image": "vision", "text": "text"}


@dataclass(frozen=True)
class Point:
    """One grid point of one tower."""

    tower: str
    variant: str
    layer: int
    beta: float

    @property
    def key(self) -> str:
        return f"{self.tower}|{self.variant}|{self.layer}|{self.beta:g}"

    def settings(self, reference: str | None) -> dict[str, Any]:
        """The M2IB settings of this point (``reference``: the spec that replaces :data:`REFERENCE`)."""
        out: dict[str, Any] = {f"{PREFIX[self.tower]}_layer": self.layer, f"{PREFIX[self.tower]}_beta": self.beta}
        for name, value in VARIANTS[self.variant].items():
            out[name] = reference if value == REFERENCE else value
        return out


def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise InputError(f"{flag} is empty: give one or more comma-separated values")
    if not all(items):
        raise InputError(f"{flag} {text!r} has an empty item")
    return items


def parse_towers(text: str) -> tuple[str, ...]:
    towers = _items(text, "--towers")
    for t in towers:
        if t not in TOWERS:
            raise InputError(f"--towers: unknown tower {t!r}; use image, text or image,text")
    return tuple(dict.fromkeys(towers))


def parse_layers(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    out = []
    for item in _items(text, flag):
        try:
            out.append(int(item))
        except ValueError:
            raise InputError(
                f"{flag}: {item!r} is not a block index (an integer; negative counts from the end)"
            ) from None
    return tuple(out)


def parse_betas(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    out = []
    for item in _items(text, "--betas"):
        try:
            value = float(item)
        except ValueError:
            raise InputError(f"--betas: {item!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"--betas: {item!r} must be a positive finite number")
        out.append(value)
    return tuple(dict.fromkeys(out))


def parse_variants(text: str) -> tuple[str, ...]:
    variants = _items(text, "--bottlenecks")
    for v in variants:
        if v not in VARIANTS:
            raise InputError(f"--bottlenecks: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(variants))


def default_layers(depth: int, published: int, recommended: int | None) -> tuple[int, ...]:
    """The middle block, the published layer and the model's recommended one. Not block 0: its fits run
    every block of the tower, over half the default grid's cost on a 12-block tower (docs/tune.md);
    ``--layers 0,...`` adds it."""
    layers = {(depth - 1) // 2, published}
    if recommended is not None:
        layers.add(recommended % depth)
    return tuple(sorted(layers))


def resolve_layers(layers: Sequence[int], depth: int, tower: str, flag: str) -> tuple[int, ...]:
    """Negative layers counted from the end; one outside the tower's ``depth`` blocks is an error."""
    out = []
    for layer in layers:
        if not -depth <= layer < depth:
            raise InputError(
                f"{flag}: block {layer} is outside the {tower} tower's {depth} blocks (0..{depth - 1}, or -{depth}..-1)"
            )
        out.append(layer % depth)
    return tuple(sorted(set(out)))


def points_of(tower: str, variants: Sequence[str], layers: Sequence[int], betas: Sequence[float]) -> list[Point]:
    """The tower's points in grid order: variant as given, then layer, then beta, ascending (a
    :data:`BETA_FREE` variant: the smallest beta only)."""
    return [
        Point(tower, v, layer, b)
        for v in variants
        for layer in sorted(layers)
        for b in (sorted(betas)[:1] if v in BETA_FREE else sorted(betas))
    ]
