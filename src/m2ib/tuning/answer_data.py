"""The rows of ``m2ib tune`` on a generative VLM: a VQA-style table, read and checked before any model loads.

The format: a tab-separated file with a header line naming the columns ``image`` (a path, relative
to the file's folder or absolute), ``prompt`` (in the model's chat format, with its image
placeholder; a literal ``\\n`` in the cell is read as a line break) and, optionally, ``answer``
(the text to explain; an empty cell, or no such column: the model's own greedy answer) and
``mask`` (a ground-truth mask of the object the answer names: an image of the same size as the
row's image, white inside; an empty cell or no column: none). Other columns are ignored. Rows
without an image or a prompt are errors, not skipped.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

MIN_ROWS = 2
COLUMNS = ("image", "prompt")


@dataclass(frozen=True)
class VQARow:
    """One row: its id (``row N``, 1-based line of the data after the header), the image's path,
    the prompt, the answer ('' for the model's own) and the mask's path ('' for none)."""

    id: str
    image: str
    prompt: str
    answer: str
    mask: str = ""


def _cell(row: dict[str, str | None], key: str) -> str:
    return (row.get(key) or "").strip()


def read_vqa(path: str | Path, rows: int | None = None, seed: int = 0) -> list[VQARow]:
    """The rows of the table at ``path`` (``rows``: that many drawn at random with ``seed``, in file
    order); one line for a missing file, a missing column, a row without image or prompt, a missing
    image file, or fewer than :data:`MIN_ROWS` rows."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--data {path}: no such file (a TSV with columns image, prompt and answer)")
    try:
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            table = list(reader)
            header = [(h or "").strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--data {path}: unreadable ({exc})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"--data {path}: no {', '.join(missing)} column (a generative tune reads a TSV with columns "
            "image, prompt and answer)"
        )
    out = []
    for number, row in enumerate(table, 1):
        row = {(k or "").strip(): v for k, v in row.items()}
        image, prompt = _cell(row, "image"), _cell(row, "prompt").replace("\\n", "\n")
        if not image or not prompt:
            raise InputError(f"--data {path}: row {number} has no {'image' if not image else 'prompt'}")
        mask = _cell(row, "mask")
        out.append(
            VQARow(f"row {number}", _path(file, image), prompt, _cell(row, "answer"), mask and _path(file, mask))
        )
    if len(out) < MIN_ROWS:
        raise InputError(f"--data {path}: {len(out)} row(s); tune needs {MIN_ROWS} or more")
    if rows is not None and rows < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), rows))
        out = [out[i] for i in keep]
    absent = next((r for r in out if not Path(r.image).is_file()), None)
    if absent is not None:
        raise InputError(f"--data {path}: {absent.id}: no image file {absent.image}")
    for r in out:
        if r.mask:
            check_mask(r, path)
    return out


def _path(table: Path, cell: str) -> str:
    return str(Path(cell) if Path(cell).is_absolute() else table.parent / cell)


def check_mask(row: VQARow, path: str | Path) -> None:
    """The row's mask file exists, is an image and has its image's size (headers read only)."""
    from PIL import Image

    if not Path(row.mask).is_file():
        raise InputError(f"--data {path}: {row.id}: no mask file {row.mask}")
    try:
        with Image.open(row.mask) as m, Image.open(row.image) as i:
            sizes = m.size, i.size
    except OSError as exc:
        raise InputError(f"--data {path}: {row.id}: unreadable image or mask ({exc})") from None
    if sizes[0] != sizes[1]:
        raise InputError(f"--data {path}: {row.id}: the mask is {sizes[0]}, its image {sizes[1]}: give the same size")


__all__ = ["MIN_ROWS", "VQARow", "read_vqa"]
