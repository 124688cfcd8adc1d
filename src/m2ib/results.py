"""The one protocol every explain result follows, first-order (:class:`m2ib.Explanation`, a
:class:`m2ib.comparison.Comparison` of several methods) or interaction
(:class:`m2ib.interactions.Interaction`), and the save logic they share, written once.

A result is tensors plus a record: ``arrays()`` (name -> array, the ``.npz``), ``to_dict()``
(JSON-ready, the ``.json``), ``figure(...)`` (a PIL image, the ``.png``). :meth:`Result.save`
writes the three, each atomically (a temporary file renamed over the name), the JSON LAST: the
JSON is the record that a result is complete, so a run killed half way leaves a result without
one, and ``m2ib explain`` redoes it. In a notebook a result shows its figure (``_repr_png_``,
the same figure as ``save``, scaled down past :data:`REPR_MAX_SIDE`); ``repr`` is one short line.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .fileio import atomic_write, writable_files, writable_folder

#: Largest side, in pixels, of the figure a notebook shows (the saved PNG is never scaled).
REPR_MAX_SIDE = 2000
#: The files of one saved result, in the order written: the JSON marks the result complete.
SUFFIXES = ("npz", "png", "json")


class Result(ABC):
    """What an explain result offers (implementations are dataclasses of CPU tensors).

    :class:`~m2ib.explanation.Explanation`, :class:`~m2ib.comparison.Comparison`,
    :class:`~m2ib.interactions.result.Interaction` and
    :class:`~m2ib.generative.result.AnswerExplanation` implement the four abstract methods;
    :meth:`save`, ``_repr_png_`` (a notebook shows the figure) and ``repr`` come from here.

    Attributes:
        default_stem: the file name :meth:`save` uses when given no ``stem`` (``"explanation"``, ...).

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.results import Result
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="chefer")
        >>> isinstance(exp, Result), sorted(exp.arrays())
        (True, ['image', 'image_grid', 'image_map', 'image_map_raw', 'text_map', 'text_map_raw'])
        >>> exp.to_dict()["method"], exp.figure().mode  # the figure needs matplotlib
        ('chefer', 'RGB')
        >>> sorted(exp.save(tempfile.mkdtemp()))  # explanation.npz, .png, then .json
        ['json', 'npz', 'png']
        >>> exp
        <Explanation chefer of 'an orange triangle' (image+text; shapes)>
    """

    default_stem: ClassVar[str] = "result"

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors by name, as numpy arrays (the contents of ``STEM.npz``)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready (the contents of ``STEM.json``)."""

    @abstractmethod
    def figure(self, boxes: list[tuple[float, float, float, float]] | None = None) -> Any:
        """The PIL figure (needs matplotlib); ``boxes`` (x, y, w, h) in the model's input pixels."""

    @abstractmethod
    def summary(self) -> str:
        """A few words for ``repr``: what was explained, by what (never the tensors)."""

    def save(
        self,
        directory: str | os.PathLike,
        stem: str | None = None,
        figure: bool | None = None,
        boxes: list[tuple[float, float, float, float]] | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> dict[str, Path]:
        """Write ``STEM.npz`` (:meth:`arrays`), ``STEM.png`` (:meth:`figure`) and ``STEM.json``
        (:meth:`to_dict`, plus ``record`` when given), each atomically, the JSON last.

        ``figure=None`` writes the figure when matplotlib is installed (``pip install
        'm2ib[figures]'``) and warns otherwise; ``True`` requires it; ``False`` writes none.
        Returns the paths written by kind (``npz``, ``png``, ``json``).
        """
        out = writable_folder(directory, "directory")  # a file in its place: one line naming it, before any write
        stem = stem or self.default_stem
        writable_files(out, [f"{stem}.{s}" for s in SUFFIXES if figure is not False or s != "png"], "stem")
        paths = {"npz": save_npz(out / f"{stem}.npz", self.arrays())}
        png = save_figure(out / f"{stem}.png", lambda: self.figure(boxes), figure)
        if png is not None:
            paths["png"] = png
        data = self.to_dict() if record is None else {**self.to_dict(), **record}
        paths["json"] = save_json(out / f"{stem}.json", data)
        return paths

    def _repr_png_(self) -> bytes | None:
        """The figure for notebooks (None without matplotlib: the notebook shows ``repr``)."""
        try:
            picture = self.figure()
        except ImportError:
            return None
        if max(picture.size) > REPR_MAX_SIDE:
            picture = picture.copy()
            picture.thumbnail((REPR_MAX_SIDE, REPR_MAX_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.summary()}>"


def short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a repr or a title (an ellipsis says it was cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz``, atomically."""
    named: dict[str, Any] = dict(arrays)  # Any: numpy's stub would match a name to allow_pickle
    return atomic_write(Path(path), lambda f: np.savez_compressed(f, **named))


def save_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically; tensors and numpy numbers become lists and numbers."""
    text = json.dumps(data, indent=2, default=jsonable)
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


PNG_LEVEL = 1  # zlib compression of the figures: fastest (see save_figure)


def save_figure(path: str | os.PathLike, draw: Callable[[], Any], figure: bool | None = None) -> Path | None:
    """Write the PIL image ``draw()`` returns as a PNG, atomically.

    ``figure=False`` writes nothing; ``None`` warns and writes nothing when matplotlib is
    missing; ``True`` lets the ImportError through. Returns the path written, or None.
    """
    if figure is False:
        return None
    try:
        picture = draw()
    except ImportError:
        if figure:
            raise
        warnings.warn("figure not written: install matplotlib (pip install 'm2ib[figures]')", stacklevel=3)
        return None
    # zlib level 1: the same pixels (PNG is lossless) in a quarter of the default level's time (0.06 s
    # instead of 0.25 s for the README's figure, 1304 x 565), for a file about 16 % larger
    return atomic_write(Path(path), lambda f: picture.save(f, format="PNG", compress_level=PNG_LEVEL))


def jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default``: tensors to lists, numpy numbers to numbers, the rest to text."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
