"""Comparison: one image-text pair explained by several methods (a :class:`m2ib.results.Result`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import InputError
from .explanation import Explanation
from .results import Result, short


@dataclass(repr=False)
class Comparison(Result):
    """The Explanations of one pair by several methods, in the order compared (:func:`m2ib.compare`).

    ``failures`` holds the methods that failed on the pair (a one-line reason each): they get an
    empty row in the figure and a line in the JSON, so one failing method does not lose the others.
    In a notebook it shows its figure, one row per method (the same PNG that :meth:`save` writes);
    the ``.npz`` holds every map under ``METHOD/NAME`` keys (``chefer/image_map``).

    Attributes:
        methods: every method compared, in row order.
        explanations: by method name, the :class:`~m2ib.explanation.Explanation` of each that succeeded.
        failures: by method name, why each failed method failed.

    Examples:
        >>> import m2ib
        >>> cmp = m2ib.compare("shapes", "examples/scene1.png", "a yellow star", methods="chefer,saliency")
        >>> cmp.methods, cmp.failures
        (['chefer', 'saliency'], {})
    """

    methods: list[str]  # every method compared, in row order
    explanations: dict[str, Explanation]  # by method name: those that succeeded
    failures: dict[str, str] = field(default_factory=dict)  # by method name: why it failed

    default_stem: ClassVar[str] = "comparison"

    def __post_init__(self) -> None:
        if not self.explanations:
            reasons = "; ".join(f"{m}: {why}" for m, why in self.failures.items())
            raise InputError("every method failed" + (f": {reasons}" if reasons else ""))
        done, failed = set(self.explanations), set(self.failures)
        if done & failed or done | failed != set(self.methods) or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} must each have one explanation or one failure")

    @property
    def first(self) -> Explanation:
        """The first method's explanation (its image, tokens and similarity are the pair's)."""
        return next(iter(self.explanations.values()))

    def summary(self) -> str:
        """The methods, the text, the model and any failed method, for ``repr``."""
        failed = f"; failed: {', '.join(self.failures)}" if self.failures else ""
        return f"{', '.join(self.methods)} of {short(self.first.text)!r} ({self.first.model}{failed})"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready: the pair, then each method's settings and scores."""
        first = self.first
        out = {
            "image": first.image_source,
            "text": first.text,
            "tokens": first.tokens,
            "model": first.model,
            "similarity": first.similarity,
            "methods": {m: exp.to_dict() for m, exp in self.explanations.items()},
        }
        if self.failures:
            out["failed"] = dict(self.failures)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """``METHOD/image_map``, ``METHOD/text_map``, ... for each method, and the pair's ``image``."""
        arrays = {
            f"{m}/{k}": v for m, exp in self.explanations.items() for k, v in exp.arrays().items() if k != "image"
        }
        arrays["image"] = self.first.image.numpy()
        return arrays

    def figure(self, boxes: Sequence[tuple[float, float, float, float]] | None = None):
        """The PIL figure: a row per method, failed ones empty (needs matplotlib)."""
        from .methods import REGISTRY
        from .viz.figure import comparison_figure

        rows = []
        for method in self.methods:
            title = REGISTRY[method].title if method in REGISTRY else method
            exp = self.explanations.get(method)
            rows.append(
                (f"{title} (failed)", None, None) if exp is None else (title, exp.image_map, exp.display_words()[1])
            )
        first = self.first
        words, _, special = first.display_words()
        return comparison_figure(
            first.image, rows, words, title=first.text, special_tokens=special, boxes=list(boxes) if boxes else None
        )
