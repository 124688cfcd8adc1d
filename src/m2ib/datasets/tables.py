"""Evaluation rows read from files (local image paths) or from the shapes world.

Four sources, one :class:`Row` type:

* a TSV/CSV of pairs: ``caption<TAB>image`` per line with no header (the public M2IB
  reference's format for Conceptual Captions), or a header naming ``image`` and ``text`` /
  ``caption`` columns. Unlike the reference, the first line is data unless it is such a header.
* an MS-CXR-style CSV with a header: image path (``image``, ``path``, ``image_path`` or
  ``image_id``), phrase (``phrase``, ``label_text`` or ``text``) and a box as ``x, y, w, h``
  columns (in the original image's pixels); rows with the same image and phrase are one pair
  with several boxes. A ``boxes`` column ``"x,y,w,h;x,y,w,h"`` works too.
* ``shapes-collage:SPLIT:N``: 2x2 collages of single-object scenes (:mod:`.collage`), captioned
  with the object of one quadrant; the row's mask and box are that quadrant.
* ``shapes:SPLIT:N[:KIND]``: scenes ``render_scene(split_seed(SPLIT, i), size, n_objects=(2, 4))``
  for i < N at the model's input size, captioned ``make_caption(scene, KIND)`` (KIND ``single``
  by default), with the exact mask of the named present objects and the character spans of
  their words.
* ``shapes-two:SPLIT:N``: two-object scenes ``render_scene(split_seed(SPLIT, i), size,
  n_objects=(2, 2))`` captioned "a C1 S1 and a C2 S2" (``make_caption(scene, "all")``), with
  each object's phrase ("C1 S1") and its own exact mask (:attr:`Row.phrases`,
  :attr:`Row.object_masks`): the rows of the ``grounding`` metric.

Relative image paths are read from the table's folder. A line that cannot be parsed is
counted in :attr:`PairTable.bad` with its reason, never raised; a missing or unreadable image is
found (and counted) when the pair is evaluated.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from .shapes import Caption

BoxT = tuple[float, float, float, float]


@dataclass(frozen=True)
class Row:
    """One image-text pair to evaluate, with its ground truth when the data has some.

    Attributes:
        id: stable key: the line number in the file, or ``"shapes:SPLIT:i"``.
        image: a path, or an image tensor [3, H, W] in [0, 1] (shapes rows).
        text: the caption or phrase.
        boxes: ground-truth boxes (x, y, w, h) in the original image's pixels.
        mask: ground-truth bool mask [H, W] at the model's input size (shapes rows), or None.
        relevant: character spans of the words that name what is shown (text pointing).
        phrases: character spans of each object's phrase ("red circle"; shapes-two rows).
        object_masks: per phrase, its object's bool mask [H, W] at the input size.

    Examples:
        >>> from m2ib.datasets.tables import load_table
        >>> row = load_table("shapes:test:1", size=96).rows[0]
        >>> row.id, row.text, row.image.shape, row.mask.shape
        ('shapes:test:0', 'a yellow star', torch.Size([3, 96, 96]), torch.Size([96, 96]))
        >>> row.boxes, [row.text[a:b] for a, b in row.relevant]
        (((46.0, 75.0, 19.0, 17.0),), ['yellow', 'star'])
    """

    id: str  # stable key: the line number in the file, or "shapes:SPLIT:i"
    image: Any  # a path, or an image tensor [3, H, W] in [0, 1] (shapes)
    text: str
    boxes: tuple[BoxT, ...] = ()  # ground-truth boxes (x, y, w, h) in the original image's pixels
    mask: torch.Tensor | None = None  # ground-truth bool mask [H, W] at the model's input size
    relevant: tuple[tuple[int, int], ...] = ()  # character spans of the words that name what is shown
    phrases: tuple[tuple[int, int], ...] = ()  # character spans of each object's phrase ("red circle")
    object_masks: tuple[torch.Tensor, ...] = ()  # per phrase, its object's bool mask [H, W] (input size)

    @property
    def source(self) -> str:
        """The image's path, or the row's id for an image given as a tensor."""
        return str(self.image) if isinstance(self.image, (str, Path)) else self.id


@dataclass
class PairTable:
    """The image-text pairs to evaluate (rows) and the lines that could not be read.

    Attributes:
        spec: the data as given (a path or ``shapes:SPLIT:N``).
        kind: ``"pairs"``, ``"mscxr"`` (a table with boxes), ``"shapes"``, ``"collage"`` or ``"shapes-two"``.
        rows: the :class:`Row` s, in file order (after sampling).
        bad: the lines that could not be read, ``{"row": id, "reason": ...}`` each.
        total: rows in the source before sampling.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from m2ib.datasets.tables import load_table
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "pairs.tsv").write_text("image\\ttext\\nscene.png\\ta red circle\\n\\tno image\\n")
        >>> table = load_table(str(folder / "pairs.tsv"))
        >>> table.kind, [r.text for r in table.rows], table.bad[0]["reason"]
        ('pairs', ['a red circle'], 'line 3: expected a caption and an image path')
    """

    spec: str
    kind: str  # "pairs", "mscxr", "shapes", "collage" or "shapes-two"
    rows: list[Row]
    bad: list[dict[str, str]] = field(default_factory=list)  # {"row": id, "reason": ...}
    total: int = 0  # rows in the source before sampling


_SHAPES = re.compile(r"^shapes:(train|val|test):(\d+)(?::(single|subset|all|mixed))?$")
_COLLAGE = re.compile(r"^shapes-collage:(train|val|test):(\d+)$")
_TWO = re.compile(r"^shapes-two:(train|val|test):(\d+)$")


def load_table(spec: str, *, size: int | None = None, samples: int | None = None, seed: int = 0) -> PairTable:
    """Rows from ``spec`` (a file path or ``shapes:SPLIT:N[:KIND]``): the data of ``m2ib evaluate --data``.

    Args:
        spec: a TSV (``.tsv``, ``.txt``) or CSV file, either with a header naming an image column
            (``image``, ``path``, ``image_path`` or ``image_id``) and a text column (``text``,
            ``caption``, ``phrase`` or ``label_text``), plus boxes (``x, y, w, h`` or ``boxes``)
            for a grounding table, or without a header as ``caption, image`` lines; image paths
            relative to the file. Or generated shapes scenes: ``shapes:SPLIT:N[:KIND]`` (SPLIT
            ``train``/``val``/``test``, KIND ``single`` by default, or ``subset``, ``all``,
            ``mixed``), ``shapes-collage:SPLIT:N`` or ``shapes-two:SPLIT:N``.
        size: the model's input side in pixels (``backend.geometry.image_size[0]``); needed for
            shapes scenes, unused for files. Default ``None``.
        samples: draw that many rows at random without replacement (kept in file order);
            default ``None``: every row.
        seed: the seed of that draw; default ``0``.

    Returns:
        A :class:`PairTable`. Lines that cannot be read are in its ``bad`` list, not raised;
        a missing file or a malformed spec is an :class:`~m2ib.errors.InputError`.

    Examples:
        >>> from m2ib.datasets.tables import load_table
        >>> table = load_table("shapes:test:10", size=96, samples=3, seed=1)
        >>> table.kind, table.total, [row.id for row in table.rows]
        ('shapes', 10, ['shapes:test:1', 'shapes:test:2', 'shapes:test:4'])
    """
    match = _SHAPES.match(spec.strip())
    if match:
        if size is None:
            raise InputError("shapes rows need the model's input size")
        table = _shapes_table(spec.strip(), match.group(1), int(match.group(2)), match.group(3) or "single", size)
    elif match := _COLLAGE.match(spec.strip()):
        if size is None:
            raise InputError("shapes-collage rows need the model's input size")
        table = _collage_table(spec.strip(), match.group(1), int(match.group(2)), size)
    elif match := _TWO.match(spec.strip()):
        if size is None:
            raise InputError("shapes-two rows need the model's input size")
        table = _two_object_table(spec.strip(), match.group(1), int(match.group(2)), size)
    elif spec.startswith("shapes-two:"):
        raise InputError(f"{spec!r}: use shapes-two:SPLIT:N, e.g. shapes-two:test:200")
    elif spec.startswith("shapes-collage:"):
        raise InputError(f"{spec!r}: use shapes-collage:SPLIT:N, e.g. shapes-collage:test:200")
    elif spec.startswith("shapes:"):
        raise InputError(
            f"{spec!r}: use shapes:SPLIT:N[:KIND], e.g. shapes:test:200 (KIND single, subset, all or mixed)"
        )
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"{path}: data file not found")
        if path.is_dir():
            raise InputError(f"{path}: is a directory; give a TSV/CSV file or shapes:SPLIT:N")
        table = _file_table(path)
    table.total = len(table.rows)
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise InputError(f"samples={samples!r} must be a positive integer")
        if samples < len(table.rows):
            keep = sorted(random.Random(seed).sample(range(len(table.rows)), samples))
            table.rows = [table.rows[i] for i in keep]
    return table


def _shapes_table(spec: str, split: str, n: int, kind: str, size: int) -> PairTable:
    from .shapes import make_caption, render_scene, split_seed

    if n <= 0:
        raise InputError(f"{spec!r}: N must be positive")
    rows = []
    for i in range(n):
        scene = render_scene(split_seed(split, i), size=size, n_objects=(2, 4))
        caption = make_caption(scene, kind)
        mask = torch.zeros(size, size, dtype=torch.bool)
        for obj in caption.objects:
            mask |= scene.masks[obj]
        spans = tuple((sp.start, sp.end) for sp in caption.spans if sp.present)
        boxes = tuple(_float_box(scene.objects[obj].box) for obj in caption.objects)
        rows.append(Row(f"shapes:{split}:{i}", scene.image, caption.text, boxes, mask, spans))
    return PairTable(spec, "shapes", rows)


def _float_box(box: tuple[int, int, int, int]) -> BoxT:
    x, y, w, h = box
    return float(x), float(y), float(w), float(h)


def object_phrases(caption: Caption) -> list[tuple[tuple[int, int], int]]:
    """A shapes caption's object phrases: ((start, end) from the colour word to the shape word,
    object index), one per present object, in caption order."""
    out: list[tuple[tuple[int, int], int]] = []
    start: int | None = None
    for span in caption.spans:
        if span.role == "colour":
            start = span.start
        elif span.present:
            if start is None:
                raise ValueError(f"caption {caption.text!r}: the shape {span.word!r} has no colour span before it")
            out.append(((start, span.end), span.object_index))
    return out


def _two_object_table(spec: str, split: str, n: int, size: int) -> PairTable:
    from .shapes import make_caption, render_scene, split_seed

    if n <= 0:
        raise InputError(f"{spec!r}: N must be positive")
    rows = []
    for i in range(n):
        scene = render_scene(split_seed(split, i), size=size, n_objects=(2, 2))
        caption = make_caption(scene, "all")
        phrases = object_phrases(caption)
        masks = tuple(scene.masks[obj].bool() for _, obj in phrases)
        boxes = tuple(_float_box(scene.objects[obj].box) for _, obj in phrases)
        spans = tuple((sp.start, sp.end) for sp in caption.spans if sp.present)
        rows.append(
            Row(
                f"shapes-two:{split}:{i}",
                scene.image,
                caption.text,
                boxes,
                masks[0] | masks[1],
                spans,
                tuple(span for span, _ in phrases),
                masks,
            )
        )
    return PairTable(spec, "shapes-two", rows)


def _collage_table(spec: str, split: str, n: int, size: int) -> PairTable:
    from .collage import render_collage

    if n <= 0:
        raise InputError(f"{spec!r}: N must be positive")
    rows = []
    for i in range(n):
        collage = render_collage(split, i, size)
        spans = tuple((sp.start, sp.end) for sp in collage.caption.spans if sp.present)
        rows.append(
            Row(f"shapes-collage:{split}:{i}", collage.image, collage.caption.text, (collage.box,), collage.mask, spans)
        )
    return PairTable(spec, "collage", rows)


def _read(path: Path) -> list[list[str]]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return [r for r in csv.reader(f, delimiter=delimiter)]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text table ({exc.reason})") from None


def _image_path(table: Path, value: str) -> str:
    image = Path(value.strip())
    return str(image if image.is_absolute() else table.parent / image)


def _file_table(path: Path) -> PairTable:
    lines = _read(path)
    numbered = [(n, r) for n, r in enumerate(lines, 1) if r and any(c.strip() for c in r)]
    if not numbered:
        raise InputError(f"{path}: no rows")
    header = [c.strip().lower() for c in numbered[0][1]]
    box_cols = all(c in header for c in ("x", "y", "w", "h")) or "boxes" in header
    image_col = next((c for c in ("image", "path", "image_path", "image_id") if c in header), None)
    text_col = next((c for c in ("text", "caption", "phrase", "label_text") if c in header), None)
    if image_col and text_col:
        numbered = numbered[1:]
        i_img, i_txt = header.index(image_col), header.index(text_col)
        if box_cols:
            return _mscxr(path, header, numbered, i_img, i_txt)
    else:
        i_txt, i_img = 0, 1  # the reference's order: caption, then image
    rows, bad = [], []
    for n, r in numbered:
        if len(r) <= max(i_img, i_txt) or not r[i_img].strip() or not r[i_txt].strip():
            bad.append({"row": str(n), "reason": f"line {n}: expected a caption and an image path"})
            continue
        rows.append(Row(str(n), _image_path(path, r[i_img]), r[i_txt].strip()))
    return PairTable(str(path), "pairs", rows, bad)


def _mscxr(path: Path, header: list[str], numbered, i_img: int, i_txt: int) -> PairTable:
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    bad = []
    for n, r in numbered:
        try:
            if len(r) < len(header):
                raise ValueError(f"{len(r)} columns, expected {len(header)}")
            image, text = r[i_img].strip(), r[i_txt].strip()
            if not image or not text:
                raise ValueError("empty image or phrase")
            if "boxes" in header:
                value = r[header.index("boxes")].strip()
                boxes = [tuple(float(v) for v in b.split(",")) for b in value.split(";") if b.strip()]
            else:
                boxes = [tuple(float(r[header.index(c)]) for c in ("x", "y", "w", "h"))]
            if any(len(b) != 4 or b[2] <= 0 or b[3] <= 0 for b in boxes):
                raise ValueError("a box needs x, y and a positive w, h")
        except ValueError as exc:
            bad.append({"row": str(n), "reason": f"line {n}: {exc}"})
            continue
        entry = grouped.setdefault((image, text), {"line": n, "boxes": []})
        entry["boxes"].extend(boxes)
    rows = [
        Row(str(e["line"]), _image_path(path, image), text, tuple(e["boxes"])) for (image, text), e in grouped.items()
    ]
    return PairTable(str(path), "mscxr", rows, bad)
