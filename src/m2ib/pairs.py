"""Explaining many image-text pairs into a folder: STEM.png / .npz / .json per pair, batched
and resumable (what ``m2ib explain`` does with IMAGE TEXT or ``--pairs FILE``)."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, Modality
from .comparison import Comparison
from .errors import InputError

Box = tuple[float, float, float, float]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(image path, text) rows of a TSV/CSV: columns ``image`` and ``text`` (or ``caption``) under
    a header, or caption then image path without one (the M2IB reference's format); relative
    paths are read from the file's folder."""
    if not path.exists():
        raise InputError(f"{path}: pairs file not found")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: no rows")
    header = [c.strip().lower() for c in rows[0]]
    if "image" in header and ("text" in header or "caption" in header):
        i_img, i_txt = header.index("image"), header.index("text" if "text" in header else "caption")
        rows = rows[1:]
    else:
        i_txt, i_img = 0, 1  # the M2IB reference's order: caption, then image
    pairs = []
    for n, row in enumerate(rows, 1):
        if len(row) <= max(i_img, i_txt):
            raise InputError(f"{path}: row {n} has {len(row)} column(s); expected an image and a text")
        image = Path(row[i_img].strip())
        pairs.append((str(image if image.is_absolute() else path.parent / image), row[i_txt]))
    if not pairs:
        raise InputError(f"{path}: no rows after the header; add one image and text per line")
    return pairs


def output_stem(index: int | None, image: str) -> str:
    """The files' stem for a pair: the image's name (letters of any script kept), numbered by its
    row counted from 1, as in the messages, when there are many (``index`` is 0-based)."""
    name = re.sub(r"[^\w.-]+", "_", Path(image).stem).strip("_") or "image"
    return name if index is None else f"{index + 1:05d}_{name}"


@dataclass(frozen=True)
class PairsJob:
    """What to explain each pair with, and where to write it."""

    methods: list[str]  # one: an Explanation per pair; several: a Comparison per pair
    settings: Mapping[str, Mapping[str, Any]]  # by method
    out: Path
    modalities: tuple[Modality, ...] | None = None
    negatives: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)  # in the original image's pixels
    figure: bool = True
    overwrite: bool = False
    batch_size: int = 16


@dataclass
class PairsOutcome:
    written: list[dict[str, Path]] = field(default_factory=list)  # each pair's files, in order
    already_done: int = 0  # pairs skipped because their files exist
    failed: int = 0  # rows skipped because their image could not be read


def explain_pairs(backend: Backend, pairs: Sequence[tuple[str, str]], stems: Sequence[str],
                  job: PairsJob) -> PairsOutcome:
    """Explain ``pairs`` in batches, writing each pair's files as soon as its batch is done.

    Pairs whose JSON exists are skipped (unless ``job.overwrite``). With several pairs an
    unreadable image skips its row with a line on stderr; with one it raises."""
    from tqdm.auto import tqdm

    from .inputs import load_image

    outcome = PairsOutcome()
    todo = [i for i in range(len(pairs)) if job.overwrite or not (job.out / f"{stems[i]}.json").exists()]
    outcome.already_done = len(pairs) - len(todo)
    # Several methods: a step per method and batch (ten methods on one pair take minutes); one method:
    # a step per pair, shown when there are several.
    several = len(job.methods) > 1
    total, unit = (len(todo) * len(job.methods), "method·pair") if several else (len(todo), "pair")
    with tqdm(total=total, desc=",".join(job.methods) if not several else job.methods[0], unit=unit,
              disable=not several and len(todo) < 2) as bar:
        for start in range(0, len(todo), job.batch_size):
            rows, images = [], []
            for i in todo[start:start + job.batch_size]:
                try:
                    image, _ = load_image(pairs[i][0])
                except InputError as exc:
                    if len(pairs) == 1:
                        raise
                    outcome.failed += 1
                    bar.set_postfix(failed=outcome.failed)
                    tqdm.write(f"m2ib: skipped row {i + 1}: {exc}", file=sys.stderr)
                    continue
                rows.append(i)
                images.append(image)
            skipped = len(todo[start:start + job.batch_size]) - len(rows)
            if rows:
                results = _explain_batch(backend, images, [pairs[i][1] for i in rows], job, bar)
                for result, i, image in zip(results, rows, images):
                    outcome.written.append(_save(result, pairs[i][0], stems[i], image.size, backend, job))
            bar.update(skipped * len(job.methods) if several else len(todo[start:start + job.batch_size]))
    return outcome


def _explain_batch(backend: Backend, images: list, texts: list[str], job: PairsJob, bar: Any) -> list:
    """An Explanation per pair (one method) or a Comparison per pair (several, advancing ``bar``
    by the batch's pairs as each method finishes)."""
    from .api import compare, explain
    from .methods import REGISTRY

    if len(job.methods) == 1:
        method = job.methods[0]
        negatives = job.negatives if REGISTRY[method].uses_target else None  # as compare() does
        return explain(backend, images, texts, method=method, modalities=job.modalities, negatives=negatives,
                       batch_size=job.batch_size, progress=False, **job.settings.get(method, {}))
    done = []

    def on_method(index: int, name: str) -> None:
        if done:
            bar.update(len(images))
        done.append(name)
        bar.set_description(name)

    out = compare(backend, images, texts, methods=job.methods, settings=job.settings, modalities=job.modalities,
                  negatives=job.negatives, batch_size=job.batch_size, on_method=on_method)
    bar.update(len(images) * (len(job.methods) - max(len(done) - 1, 0)))  # the last, and any left out
    return out


def _save(result: Any, source: str, stem: str, size: tuple[int, int], backend: Backend,
          job: PairsJob) -> dict[str, Path]:
    shown = [backend.preprocessing.map_box(b, size) for b in job.boxes] if job.boxes else None
    explanations = result.explanations.values() if isinstance(result, Comparison) else [result]
    for exp in explanations:
        exp.image_source = source
    return result.save(job.out, stem, figure=None if job.figure else False, boxes=shown)
