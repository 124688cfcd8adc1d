"""The explain pipeline: image-text pairs into a folder, STEM.npz / STEM.png / STEM.json per pair,
for every kind of method (what ``m2ib explain`` does with IMAGE TEXT or ``--pairs FILE``).

One loop for both kinds; it dispatches on the method's result: a first-order method gives an
:class:`~m2ib.Explanation` per pair (several methods: a :class:`~m2ib.comparison.Comparison`),
fitted ``batch_size`` pairs at a time; an interaction method gives an
:class:`~m2ib.interactions.Interaction`, one pair at a time (its stems end in ``_METHOD``).

What the outputs promise (checked before the model loads):

* **Outputs never touch inputs**: a run whose files would have the path of an input image or
  of the pairs file is refused.
* **Results are keyed by what made them**: each JSON records its ``request`` (image path and
  content hash, text, methods, settings given, a settings file's values, model, negatives, sides,
  boxes). A re-run of the same command skips the pairs that are done; a re-run into a folder whose results were made
  otherwise is refused, naming the difference and the way out (another ``--out``, or
  ``--overwrite``). Refused rather than written beside under hashed names: the file names stay
  the ones a user and their scripts expect (``x.png`` for ``x.png``), and a folder never holds
  two results of one image that only a hash tells apart.
* **A pair is done only when all its files are**: each file is written atomically, the JSON
  (which lists the files) last; a pair whose JSON is missing, or any of whose files is, is redone.
* **No empty folder**: the output folder is created when the work starts and removed again if
  the run leaves nothing in it.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, Modality
from .comparison import Comparison
from .errors import InputError
from .results import SUFFIXES, Result, jsonable

Box = tuple[float, float, float, float]
#: The column names a pairs file's header may use.
COLUMNS = ("image", "text", "caption")


@dataclass
class PairRows:
    """The rows of a pairs file: ``pairs[i]`` is data row ``i + 1`` (header and blank lines not
    counted, as the stems number them); ``problems[i]`` says why a row cannot run."""

    pairs: list[tuple[str, str]]
    problems: dict[int, str] = field(default_factory=dict)


def read_pairs(path: Path) -> PairRows:
    """(image path, text) rows of a TSV/CSV (UTF-8, a byte-order mark allowed): columns ``image``
    and ``text`` (or ``caption``) under a header, or caption then image path without one (the
    M2IB reference's format); relative paths are read from the file's folder.

    An unknown header or column is refused; a row without an image or a text is kept as a
    problem (skipped and named by the loop), so the other rows run."""
    if path.is_dir():
        raise InputError(f"--pairs {path}: is a folder; give a TSV/CSV file of image and text columns")
    if not path.exists():
        raise InputError(f"{path}: pairs file not found")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a UTF-8 {'TSV' if delimiter == chr(9) else 'CSV'} file ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    i_img, i_txt, width, rows = _columns(path, rows)
    out = PairRows([])
    for n, row in enumerate(rows):
        cells = [c.strip() for c in row]
        image = Path(cells[i_img]) if len(cells) > i_img else Path()
        out.pairs.append(
            (str(image if image.is_absolute() else path.parent / image), row[i_txt] if len(row) > i_txt else "")
        )
        if len(row) != width:
            out.problems[n] = f"{len(row)} column(s); expected {width} (an image and a text)"
        elif not cells[i_img]:
            out.problems[n] = "no image path"
        elif not row[i_txt].strip():
            out.problems[n] = f"text {row[i_txt]!r} is empty: give the words to explain"
    if not out.pairs:
        raise InputError(f"{path}: no rows after the header; add one image and text per line")
    return out


def _columns(path: Path, rows: list[list[str]]) -> tuple[int, int, int, list[list[str]]]:
    """(image column, text column, columns per row, the data rows) of a pairs file's rows."""
    header = [c.strip().lower() for c in rows[0]]
    if any(c in COLUMNS for c in header):
        unknown = [c for c in header if c not in COLUMNS]
        if unknown or len(set(header)) != len(header) or "image" not in header or set(header) == {"image"}:
            raise InputError(
                f"{path}: header {', '.join(map(repr, rows[0]))}: unknown or repeated column(s) "
                f"{', '.join(map(repr, unknown or header))}; use the columns image and text (or caption)"
            )
        return header.index("image"), header.index("text" if "text" in header else "caption"), len(header), rows[1:]
    first_image = Path(rows[0][1].strip()) if len(rows[0]) > 1 else Path()
    if not first_image.suffix and not (path.parent / first_image).is_file():  # names, not a caption and a file
        raise InputError(
            f"{path}: header {', '.join(map(repr, rows[0]))}: unknown column names; use the "
            "columns image and text (or caption), or no header with caption then image path"
        )
    return 1, 0, 2, rows  # the M2IB reference's order: caption, then image


def output_stem(index: int | None, image: str) -> str:
    """The files' stem for a pair: the image's name (letters of any script kept), numbered by its
    row counted from 1, as in the messages, when there are many (``index`` is 0-based)."""
    name = re.sub(r"[^\w.-]+", "_", Path(image).stem).strip("_") or "image"
    return name if index is None else f"{index + 1:05d}_{name}"


@dataclass(frozen=True)
class PairsJob:
    """What to explain each pair with, and where to write it."""

    methods: list[str]  # one: a result per pair; several (first-order): a Comparison per pair
    settings: Mapping[str, Mapping[str, Any]]  # by method: the values given (the rest: defaults)
    out: Path
    model: str = ""  # as given, for the record of what made the results
    interaction: bool = False  # an interaction method (one pair at a time, no target, both sides)
    modalities: tuple[Modality, ...] | None = None
    negatives: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)  # in the original image's pixels
    figure: bool = True
    overwrite: bool = False
    batch_size: int = 16
    inputs: tuple[Path, ...] = ()  # files besides the images that no output may replace (the pairs file)
    # a settings file's values for these methods (replacing the model's recommended ones); None: no file
    settings_file: Mapping[str, Mapping[str, Any]] | None = None

    def request(self, image: str, text: str) -> dict[str, Any]:
        """What makes a pair's result, as its JSON records it (compared on a re-run)."""
        request = {
            "image": str(Path(image).resolve()),
            "image_sha256": _file_hash(image),
            "text": text,
            "methods": self.methods,
            "settings": self.settings,
            "settings_file": self.settings_file,
            "model": self.model,
            "negatives": self.negatives or [],
            "modalities": self.modalities,
            "boxes": self.boxes,
        }
        return json.loads(json.dumps(request, default=jsonable))  # as the JSON holds it (tuples as lists)


@dataclass
class PairsOutcome:
    written: list[dict[str, Path]] = field(default_factory=list)  # each pair's files, in order
    already_done: int = 0  # pairs skipped because their files exist and were made the same way
    failed: int = 0  # rows skipped because their image or text could not be used


def stems_of(rows: PairRows, job: PairsJob, numbered: bool) -> list[str]:
    """Each pair's stem: the image's name (numbered by row with ``numbered``), ``_METHOD`` after
    it for an interaction method."""
    tail = f"_{job.methods[0]}" if job.interaction else ""
    return [output_stem(i if numbered else None, image) + tail for i, (image, _) in enumerate(rows.pairs)]


def explain_pairs(load: Callable[[], Backend], rows: PairRows, stems: Sequence[str], job: PairsJob) -> PairsOutcome:
    """Explain every row into ``job.out``; ``load()`` gives the model, called only when a pair is
    left to do. Clashes with inputs and stale results are refused before it is called.

    With several rows a row that cannot run is skipped with a line on stderr and counted; with
    one it raises."""
    check_no_clash(rows, stems, job)
    outcome = PairsOutcome()
    todo = pending(rows, stems, job)
    outcome.already_done = len(rows.pairs) - len(todo)
    if not todo:
        return outcome
    if job.figure and not draws(job):
        warnings.warn("figures not written: install matplotlib (pip install 'm2ib[figures]')", stacklevel=2)
    with output_folder(job.out):
        _run(load(), rows, stems, job, todo, outcome)
    return outcome


def check_no_clash(rows: PairRows, stems: Sequence[str], job: PairsJob) -> None:
    """Refuse a run any of whose files would have the path of an input (an image or ``job.inputs``)."""
    refuse_over_inputs(job.out, stems, [*(image for image, _ in rows.pairs), *map(str, job.inputs)])


def refuse_over_inputs(out: Path, stems: Sequence[str], inputs: Sequence[str]) -> None:
    """One line when a file ``out/STEM.{png,npz,json}`` would have the path of one of ``inputs``."""
    resolved = {Path(p).resolve(): p for p in inputs}
    for stem in stems:
        for suffix in SUFFIXES:
            target = (out / f"{stem}.{suffix}").resolve()
            if target in resolved:
                raise InputError(
                    f"--out {out}: would write {out / f'{stem}.{suffix}'} over the input "
                    f"{resolved[target]}; pick another --out"
                )


def pending(rows: PairRows, stems: Sequence[str], job: PairsJob) -> list[int]:
    """The rows to do: all with ``job.overwrite``; else those not done. A row whose JSON was made
    otherwise (another text, image, method, setting, model ...) is refused, naming the first
    difference."""
    if job.overwrite:
        return list(range(len(rows.pairs)))
    todo, stale = [], []
    for i, (image, text) in enumerate(rows.pairs):
        record = _record(job.out / f"{stems[i]}.json")
        if record is None or i in rows.problems:
            todo.append(i)
            continue
        difference = _difference(record.get("request"), job.request(image, text))
        if difference:
            stale.append((job.out / f"{stems[i]}.json", difference))
        elif not _complete(job.out, record, job):
            todo.append(i)
    if stale:
        (path, why), more = stale[0], f" (and {len(stale) - 1} more pair(s))" if len(stale) > 1 else ""
        raise InputError(
            f"{path} holds a result made with {why}{more}: use another --out, or --overwrite to replace it"
        )
    return todo


def _record(path: Path) -> dict[str, Any] | None:
    """A result's JSON, or None when there is none (or it cannot be read: the pair is redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _difference(old: Any, new: dict[str, Any]) -> str:
    """The first field in which a recorded request differs from this run's ('' when none)."""
    if not isinstance(old, dict):
        return "no record of what made it (not written by m2ib explain)"
    for key, value in new.items():
        if old.get(key) != value:
            if key == "image_sha256":
                return "another picture in the image file (it changed since)"
            return f"{key} {old.get(key)!r} (this run: {value!r})"
    return ""


def _complete(out: Path, record: dict[str, Any], job: PairsJob) -> bool:
    """Every file the JSON lists is there, and the figure if this run wants one and can draw it."""
    files = record.get("files")
    if not isinstance(files, list) or not all((out / str(name)).is_file() for name in files):
        return False
    return not draws(job) or any(str(name).endswith(".png") for name in files)


def _file_hash(path: str) -> str | None:
    """The first 16 hex digits of the file's SHA-256 (None: unreadable; its row fails later)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()[:16]


def draws(job: PairsJob) -> bool:
    """Whether this run writes figures: asked for, and matplotlib is installed."""
    return job.figure and importlib.util.find_spec("matplotlib") is not None


@contextmanager
def output_folder(path: Path) -> Iterator[None]:
    """Create ``path`` (checked writable) for the block; remove the folders it created if the
    block leaves them empty (a failed run leaves no empty --out behind)."""
    from . import preflight

    created = [p for p in (path, *path.parents) if not p.exists()]
    preflight.prepare_output_dir(path)
    try:
        yield
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


def _run(
    backend: Backend, rows: PairRows, stems: Sequence[str], job: PairsJob, todo: list[int], outcome: PairsOutcome
) -> None:
    """The loop: load a batch's images, explain them, write each pair's files at once."""
    from tqdm.auto import tqdm

    from .inputs import load_image

    # Several methods: a step per method and batch (ten methods on one pair take minutes); else a
    # step per pair, shown when there are several.
    several = len(job.methods) > 1
    total, unit = (len(todo) * len(job.methods), "method·pair") if several else (len(todo), "pair")
    size = 1 if job.interaction else job.batch_size  # an interaction explains one pair at a time

    def skip(i: int, why: Any) -> None:
        if len(rows.pairs) == 1:
            raise why if isinstance(why, InputError) else InputError(why)
        outcome.failed += 1
        bar.set_postfix(failed=outcome.failed)
        tqdm.write(f"m2ib: skipped row {i + 1}: {why}", file=sys.stderr)

    with tqdm(
        total=total,
        desc=",".join(job.methods) if not several else job.methods[0],
        unit=unit,
        disable=not several and len(todo) < 2,
    ) as bar:
        for start in range(0, len(todo), size):
            chunk, ready, images = todo[start : start + size], [], []
            for i in chunk:
                try:
                    if i in rows.problems:
                        raise InputError(rows.problems[i])
                    images.append(load_image(rows.pairs[i][0])[0])
                    ready.append(i)
                except InputError as exc:
                    skip(i, exc)
            if ready:
                results = _explain_batch(backend, images, [rows.pairs[i][1] for i in ready], job, bar)
                for result, i, image in zip(results, ready, images):
                    if isinstance(result, InputError):
                        skip(i, result)
                    else:
                        outcome.written.append(_save(result, rows.pairs[i], stems[i], image.size, backend, job))
            bar.update((len(chunk) - len(ready)) * len(job.methods) if several else len(chunk))


def _explain_batch(
    backend: Backend, images: list, texts: list[str], job: PairsJob, bar: Any
) -> Sequence[Result | InputError]:
    """Dispatch on the kind: an Interaction per pair (an InputError for a pair it cannot do), an
    Explanation per pair (one method) or a Comparison per pair (several, advancing ``bar`` by the
    batch's pairs as each method finishes)."""
    from .api import compare, explain
    from .methods import REGISTRY

    if job.interaction:
        return [_interact(backend, image, text, job) for image, text in zip(images, texts)]
    if len(job.methods) == 1:
        method = job.methods[0]
        negatives = job.negatives if REGISTRY[method].uses_target else None  # as compare() does
        return explain(
            backend,
            images,
            texts,
            method=method,
            modalities=job.modalities,
            negatives=negatives,
            batch_size=job.batch_size,
            progress=False,
            **job.settings.get(method, {}),
        )
    done: list[str] = []

    def on_method(index: int, name: str) -> None:
        if done:
            bar.update(len(images))
        done.append(name)
        bar.set_description(name)

    out = compare(
        backend,
        images,
        texts,
        methods=job.methods,
        settings=job.settings,
        modalities=job.modalities,
        negatives=job.negatives,
        batch_size=job.batch_size,
        on_method=on_method,
    )
    bar.update(len(images) * (len(job.methods) - max(len(done) - 1, 0)))  # the last, and any left out
    return out


def _interact(backend: Backend, image: Any, text: str, job: PairsJob) -> Result | InputError:
    from .interactions import REGISTRY as INTERACTIONS

    method = INTERACTIONS.get(job.methods[0])()
    try:
        return method.interact(
            backend,
            backend.preprocess_images([image]),
            backend.tokenize([text]),
            method.make_settings(**job.settings.get(method.name, {})),
        )
    except InputError as exc:
        return exc


def _save(
    result: Any, pair: tuple[str, str], stem: str, size: tuple[int, int], backend: Backend, job: PairsJob
) -> dict[str, Path]:
    shown = None
    if job.boxes:
        mapper = getattr(backend, "preprocessing", None)  # a towers backend's; maps input boxes to the model's
        if mapper is None:
            raise InputError(
                f"boxes: {type(backend).__name__} has no image preprocessing to map them with; leave them out"
            )
        shown = [mapper.map_box(b, size) for b in job.boxes]
    for part in result.explanations.values() if isinstance(result, Comparison) else [result]:
        part.image_source = pair[0]
    figure = draws(job)
    files = [f"{stem}.npz"] + ([f"{stem}.png"] if figure else [])
    return result.save(
        job.out, stem, figure=figure, boxes=shown, record={"request": job.request(*pair), "files": files}
    )
