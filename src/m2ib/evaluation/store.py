"""A run folder's results: ``results.jsonl`` (appended line by line, torn tails repaired), the
part files of a Ray run, and opening a run to start or resume it.

``results.jsonl`` holds one JSON object per line. The first is the provenance record
(``"kind": "provenance"``, :mod:`m2ib.evaluation.provenance`). Then ``"kind": "pair"`` records
(one per row and method) and the records of whole-run metrics (``"kind": "roar"``). A crash or
Ctrl-C can leave at most a torn last line: on resume it is detected (no newline, or not valid
JSON), cut off, and that pair is done again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..datasets.tables import PairTable
from ..errors import InputError
from ..fileio import atomic_write_text
from ..metrics import base as metric_registry
from .provenance import check_same_run, provenance

RESULTS = "results.jsonl"
PARTS = "parts"  # part files of a Ray run (m2ib.evaluation.distributed)


def read_results(path: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(provenance record or None, the other records) of a results file.

    A last line with no newline, or one that is not a JSON object (a write cut short), is
    ignored; with ``repair=True`` it is also cut off the file so that appending can go on.

    Args:
        path: a ``results.jsonl`` (``m2ib evaluate``'s ``OUT/results.jsonl``); a missing file
            reads as no records.
        repair: cut a torn last line off the file; default ``False`` (the file is only read).

    Returns:
        ``(header, records)``: the run's provenance record (data, model, methods, settings,
        metrics, seed) or None, and every other record as a dict, in file order.

    Examples:
        >>> import tempfile, m2ib
        >>> from pathlib import Path
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> from m2ib.evaluation.store import read_results
        >>> out = Path(tempfile.mkdtemp())
        >>> rows = load_table("shapes:test:2", size=96)
        >>> model = m2ib.load("shapes")
        >>> _ = run_evaluation(model, rows, ["gradcam"], ["localisation"], None, 0, out, progress=False, report=False)
        >>> header, records = read_results(out / "results.jsonl")
        >>> header["kind"], len(records), records[0]["method"], records[0]["metrics"]["text_pointing"]
        ('provenance', 2, 'gradcam', 1.0)
    """
    path = Path(path)
    if not path.exists():
        return None, []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            break  # a torn tail: no newline
        try:
            record = json.loads(data[position:end])
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = None
        if record is not None:
            records.append(record)
            good_end = end + 1
        position = end + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    header = records[0] if records and records[0].get("kind") == "provenance" else None
    return header, [r for r in records if r.get("kind") != "provenance"]


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, allow_nan=False, separators=(",", ":"), default=str) + "\n"


class ResultsWriter:
    """Appends one JSON line per record, flushed and fsynced before the next one starts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = open(self.path, "ab")  # noqa: SIM115 - held open by the writer, closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(_line(record).encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_key(record: dict[str, Any]) -> tuple:
    """What a record is the result of: (kind, row, method) for pairs; a whole-run metric's records
    say it themselves (ROAR+: (kind, method, k))."""
    kind = record.get("kind")
    owner = metric_registry.REGISTRY[kind] if isinstance(kind, str) and kind in metric_registry.REGISTRY else None
    if owner is not None and not owner.per_pair:
        return owner().record_key(record)
    return record.get("kind"), record.get("row"), record.get("method")


def part_name(records: Sequence[dict[str, Any]]) -> str:
    """A part file's name, from the (row, method) keys it holds: the same batch always gets the
    same name, so a batch done twice (a retried actor) overwrites itself instead of adding a copy."""
    keys = "\n".join(sorted(f"{r['row']}\t{r['method']}" for r in records))
    return f"part-{hashlib.sha256(keys.encode()).hexdigest()[:20]}.jsonl"


def write_part(out: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``records`` as one part file ``OUT/parts/part-*.jsonl``, atomically (temporary name,
    fsync, rename): it exists whole or not at all. Used by the Ray actors; None when empty."""
    if not records:
        return None
    return atomic_write_text(Path(out) / PARTS / part_name(records), "".join(_line(r) for r in records))


def read_run(out: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(provenance, records) of a run folder: ``results.jsonl`` and any ``parts/part-*.jsonl``
    written by a Ray run, without duplicates (a record in both counts once)."""
    out = Path(out)
    header, records = read_results(out / RESULTS, repair=repair)
    seen = {record_key(r) for r in records}
    for part in sorted((out / PARTS).glob("part-*.jsonl")):
        _, more = read_results(part)  # parts are written whole; a stray partial line is ignored all the same
        for record in more:
            if record_key(record) not in seen:
                seen.add(record_key(record))
                records.append(record)
    return header, records


def open_run(
    backend: Backend,
    table: PairTable,
    methods: Sequence[str],
    protocol: dict[str, Any],
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
    out: Path,
    command: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start ``out/results.jsonl`` with its provenance record, or check that the run found there
    is this one (same data, weights, methods, settings, metrics, seed) and return its records.
    ``protocol``: what is measured and how (:func:`m2ib.metrics.base.metrics_record`, or an audit's)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    header = provenance(backend, table, methods, protocol, settings, seed, command)
    old, records = read_run(out, repair=True)
    if old is None:
        if records:
            raise InputError(f"{out} holds results without a provenance record: use another --out")
        if path.exists() and path.stat().st_size:
            path.unlink()  # only a torn first line: nothing to keep
        with ResultsWriter(path) as w:
            w.write(header)
        return header, []
    check_same_run(old, header, path)
    if old.get("versions") != header["versions"]:
        print(
            f"m2ib: note: {path} was started with {old.get('versions')}; this run uses {header['versions']}",
            file=sys.stderr,
        )
    return old, records
