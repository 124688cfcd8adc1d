"""Explaining every pair of an audit: batched, resumable and crash-safe, on the evaluation store.

The run folder is an evaluation run folder (:mod:`m2ib.evaluation.store`): ``results.jsonl`` opens
with the provenance record, then one ``"kind": "pair"`` line per explained row, appended with flush
and fsync, so a killed run loses at most the batch in flight and the same call resumes it. Each
line keeps the maps compactly: the raw patch grid (``grid``, [rows][cols]) and the raw token scores
(``token_scores``, with ``tokens`` and the start/end positions ``special``), never full-size images,
and the same maps of the pair under the audit's control (``"control"``: similarity, tokens, special,
token_scores, grid; absent with no control), written in the same line, so a resumed run is the
uninterrupted one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..datasets.tables import PairTable, Row
from ..errors import InputError
from ..evaluation.pairs import readable_rows
from ..evaluation.runner import Clock, batches, pending
from ..evaluation.store import RESULTS, ResultsWriter, open_run
from ..explanation import Explanation
from ..fileio import folder_lock
from .image import to_grid

AUDIT_FORMAT = 2  # 2: each record carries the control's maps (m2ib.auditing.control)


def audit_protocol(control: str) -> dict[str, Any]:
    """What stands in a results file's ``metrics`` field for an audit: no metric, the record format
    and the control (:mod:`m2ib.auditing.control`). An evaluation folder is thus never resumed as an
    audit, nor an audit with another control."""
    return {"audit": AUDIT_FORMAT, "names": [], "maps": "patch grid + token scores", "control": control}


@dataclass
class Explained:
    """The per-pair part of an audit: records in table order, the bad rows, what this call did."""

    out: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    bad: list[dict[str, str]] = field(default_factory=list)
    explained: int = 0  # rows explained by this call
    skipped: int = 0  # rows found done in the folder
    finished: bool = True  # False when stopped by time_limit


def explain_rows(
    backend: Backend,
    rows: Sequence[Row],
    method: str,
    settings: dict[str, Any] | None,
    seed: int,
    control: Backend | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Explain ``rows`` in one batched call (:func:`m2ib.api.explain`), and again under ``control``:
    (records, bad rows).

    A row whose image cannot be read is a bad row ``{"row", "reason"}``, never raised.
    """
    from ..api import explain

    good, pictures, bad = readable_rows(rows)
    if not good:
        return [], bad
    own = {"seed": int(seed), **(settings or {})}
    exps = explain(
        backend, pictures, [row.text for row in good], method=method, batch_size=len(good), progress=False, **own
    )
    exps = exps if isinstance(exps, list) else [exps]
    records = [pair_record(row, method, exp, backend) for row, exp in zip(good, exps)]
    if control is not None:
        again = explain(
            control, pictures, [row.text for row in good], method=method, batch_size=len(good), progress=False, **own
        )
        again = again if isinstance(again, list) else [again]
        for record, row, exp in zip(records, good, again):
            mine = pair_record(row, method, exp, control)
            record["control"] = {k: mine[k] for k in ("similarity", "tokens", "special", "token_scores", "grid")}
    return records, bad


def pair_record(row: Row, method: str, exp: Explanation, backend: Backend) -> dict[str, Any]:
    """One results line: the pair, its similarity and its compact maps (None for a side not explained)."""
    grid = exp.image_grid
    if grid is None and exp.image_map_raw is not None:
        grid = to_grid(exp.image_map_raw, backend.geometry.patch_grid)
    scores = exp.text_map_raw if exp.text_map_raw is not None else exp.text_map
    return {
        "kind": "pair",
        "row": row.id,
        "method": method,
        "image": row.source,
        "text": row.text,
        "similarity": round(float(exp.similarity), 6),
        "tokens": list(exp.tokens),
        "special": list(exp.special_tokens),
        "token_scores": None if scores is None else [round(float(v), 6) for v in scores],
        "grid": None if grid is None else [[round(float(v), 7) for v in line] for line in grid],
    }


def explain_all(
    backend: Backend,
    table: PairTable,
    method: str,
    settings: dict[str, Any] | None,
    seed: int,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    progress: bool = True,
    command: str | None = None,
    time_limit: float | None = None,
    control: Backend | None = None,
    control_spec: str = "none",
) -> Explained:
    """Explain every row of ``table`` not yet in ``out/results.jsonl`` (and under ``control``, recorded
    as ``control_spec``), appending as each batch ends."""
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be a positive integer")
    out = Path(out)
    settings = dict(settings or {})
    protocol = audit_protocol(control_spec)
    if control is not None and control_spec != "randomised":  # a named control: resumed only with its weights
        from ..evaluation.provenance import weights_hash

        protocol["control_weights_sha256"] = weights_hash(control.model)
    header, records = open_run(backend, table, [method], protocol, {method: settings}, seed, out, command)
    todo = pending(table, [method], records)
    result = Explained(out, header, list(records), list(table.bad), skipped=len(table.rows) - len(todo))
    clock = Clock(time_limit)
    with (
        ResultsWriter(out / RESULTS) as writer,
        tqdm(total=len(todo), desc="audit", unit="pair", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for rows, _ in batches(todo, batch_size):
            if clock.out_of_time():
                result.finished = False
                break
            new, bad = explain_rows(backend, rows, method, settings, seed, control)
            for record in new:
                writer.write(record)
            result.records.extend(new)
            result.explained += len(new)
            for b in bad:
                result.bad.append(b)
                tqdm.write(f"m2ib: skipped row {b['row']}: {b['reason']}", file=sys.stderr)
            bar.update(len(rows))
    order = {row.id: i for i, row in enumerate(table.rows)}
    result.records = sorted(
        (r for r in result.records if r.get("kind") == "pair" and r.get("row") in order), key=lambda r: order[r["row"]]
    )
    return result


def locked(out: str | os.PathLike):
    """The folder lock an audit holds while it writes ``out`` (one run per folder)."""
    return folder_lock(out, "m2ib audit")
