"""Evaluation runs: the local scheduler, and the run's public names in one place.

* :func:`run_evaluation` is the local scheduler: a progress bar with ETA, one JSON line per
  finished (row, method) appended to ``OUT/results.jsonl`` with flush + fsync, resumption, bad
  rows counted, then the whole-run metrics (ROAR+) and the summary and plots
  (:mod:`m2ib.evaluation.report`). :func:`plan_run` and :func:`finish_run` are the steps it
  shares with the Ray scheduler (:mod:`m2ib.evaluation.distributed`).
* The per-pair work: :func:`~m2ib.evaluation.pairs.evaluate_rows` (one batch) and
  :func:`~m2ib.evaluation.pairs.evaluate_pair` (one row).
* The results file, part files and resumption: :mod:`m2ib.evaluation.store`; the provenance
  record: :mod:`m2ib.evaluation.provenance`; which metrics and how: metric names, or each with
  its options (:data:`m2ib.metrics.base.Chosen`; the options are each metric's ``Settings``).

Re-running the same command skips the (row, method) pairs already in the file or in a Ray
run's part files (``OUT/parts/``, see :func:`~m2ib.evaluation.store.read_run`); a run with other
settings in the same folder is refused, and so is a second run while one is writing there
(:func:`m2ib.fileio.folder_lock`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..datasets.tables import PairTable, Row
from ..errors import InputError
from ..fileio import folder_lock
from ..metrics import DEFAULT_METRICS
from ..metrics.base import Chosen, RunContext, choose, in_registry_order, metrics_record, per_pair
from ..metrics.localisation import ground_truth_mask, relevant_tokens
from ..metrics.roar import ROAR_MAPS
from .pairs import evaluate_pair, evaluate_rows
from .phrases import check_phrase_metrics
from .provenance import FORMAT, SAME_RUN, provenance, resolved_settings, weights_hash
from .store import PARTS, RESULTS, ResultsWriter, open_run, part_name, read_results, read_run, record_key, write_part

__all__ = [
    "run_evaluation",
    "plan_run",
    "finish_run",
    "merge_parts",
    "pending",
    "batches",
    "Plan",
    "RunResult",
    "Clock",
    "evaluate_rows",
    "evaluate_pair",
    "DEFAULT_METRICS",
    "read_results",
    "read_run",
    "write_part",
    "part_name",
    "record_key",
    "open_run",
    "ResultsWriter",
    "RESULTS",
    "PARTS",
    "ROAR_MAPS",
    "FORMAT",
    "SAME_RUN",
    "provenance",
    "resolved_settings",
    "weights_hash",
    "ground_truth_mask",
    "relevant_tokens",
]


def pending(table: PairTable, methods: Sequence[str], records: Sequence[dict[str, Any]]) -> list[tuple[Row, list[str]]]:
    """Each row with the methods it still needs, in table order (rows with none left out)."""
    done = {(r["row"], r["method"]) for r in records if r.get("kind") == "pair"}
    out = []
    for row in table.rows:
        missing = [m for m in methods if (row.id, m) not in done]
        if missing:
            out.append((row, missing))
    return out


def batches(todo: Sequence[tuple[Row, list[str]]], size: int) -> list[tuple[list[Row], list[str]]]:
    """Up to ``size`` consecutive rows that need the same methods, as (rows, methods)."""
    out: list[tuple[list[Row], list[str]]] = []
    for row, missing in todo:
        if out and out[-1][1] == missing and len(out[-1][0]) < size:
            out[-1][0].append(row)
        else:
            out.append(([row], missing))
    return out


# ---------------------------------------------------------------------------------------------
# The local scheduler
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`run_evaluation` did: the records, what it measured and skipped, the files.

    Attributes:
        out: the run's folder.
        records: every record of the run, resumed ones included (one per row and method).
        bad: rows whose image could not be read, ``{"row": id, "reason": ...}`` each.
        evaluated: (row, method) pairs measured by this call.
        skipped: (row, method) pairs found done in the results file.
        finished: False when stopped by ``time_limit`` before every pair was done.
        files: the report's files by name (summary Markdown and CSV, plots).
        nodes: Ray node ids that did the work (Ray runs only).

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model, out = m2ib.load("shapes"), tempfile.mkdtemp()
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(model, rows, ["gradcam"], ["localisation"], None, 0, out, progress=False, report=False)
        >>> run.evaluated, run.skipped, run.finished, len(run.records)
        (2, 0, True, 2)
    """

    out: Path
    records: list[dict[str, Any]]
    bad: list[dict[str, str]] = field(default_factory=list)
    evaluated: int = 0  # (row, method) pairs measured by this call
    skipped: int = 0  # (row, method) pairs found done in the results file
    finished: bool = True  # False when stopped by ``time_limit`` before every pair was done
    files: dict[str, Path] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # Ray node ids that did the work (Ray runs only)


class Clock:
    """Says when a run's ``time_limit`` (seconds, None: none) is spent."""

    def __init__(self, time_limit: float | None):
        self.limit, self.started = time_limit, time.perf_counter()

    def out_of_time(self) -> bool:
        return self.limit is not None and time.perf_counter() - self.started >= self.limit


def run_evaluation(
    backend: Backend,
    table: PairTable,
    methods: Sequence[str],
    metrics: Chosen,
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
    out: str | os.PathLike,
    *,
    command: str | None = None,
    progress: bool = True,
    report: bool = True,
    time_limit: float | None = None,
    batch_size: int = 1,
) -> RunResult:
    """Evaluate every row of ``table`` with every method, appending to ``out/results.jsonl``.

    ``m2ib evaluate`` as a function. Resumes a run found in ``out`` (same data, model weights,
    methods, settings, metrics and seed; from either scheduler), skipping the (row, method) pairs
    already there; each record is written as soon as it is measured, so a kill loses at most the
    batch in flight. Rows whose image is missing or unreadable are counted in ``RunResult.bad``
    and reported, never raised. :func:`m2ib.evaluation.distributed.run_evaluation_ray` runs the
    same work on Ray.

    Args:
        backend: the model, from :func:`m2ib.load`.
        table: the pairs, from :func:`~m2ib.datasets.tables.load_table`.
        methods: method names (``m2ib.list_methods()``).
        metrics: metric names (each with its default options), or name -> options
            (``{"deletion": {"steps": 4}}``) or name -> settings object.
        settings: per method, settings that replace the model's recommended ones
            (``{"m2ib": {"vision_beta": 0.1}}``), or None.
        seed: the run's seed (each pair's own seed comes from it and the row's id).
        out: the run's folder (created; ``results.jsonl``, then the report).
        command: the command line recorded in the provenance record; default ``None``.
        progress: show a tqdm bar; default ``True``.
        report: write the summary (Markdown, CSV) and the plots at the end (needs matplotlib);
            default ``True``.
        time_limit: seconds after which no new batch starts (``RunResult.finished`` is then
            False; the summary covers what is done, and the same call resumes); default ``None``.
        batch_size: rows explained together (the batched path: faster on a GPU, the same numbers
            up to float rounding); default ``1``.

    Returns:
        A :class:`RunResult`. Each record holds the row, the method, the similarity and
        ``"metrics"``: the metrics' per-pair values (``m2ib.metrics`` lists the keys).

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model, out = m2ib.load("shapes"), tempfile.mkdtemp()
        >>> rows = load_table("shapes:test:2", size=96)
        >>> metrics = {"deletion": {"steps": 4}}
        >>> methods = ["gradcam", "saliency"]
        >>> run = run_evaluation(model, rows, methods, metrics, None, 0, out, progress=False, report=False)
        >>> run.evaluated, sorted(run.records[0]["metrics"])
        (4, ['image_deletion_auc', 'image_insertion_auc', 'text_deletion_auc', 'text_insertion_auc'])
        >>> again = run_evaluation(model, rows, methods, metrics, None, 0, out, progress=False, report=False)  # resumes
        >>> again.evaluated, again.skipped
        (0, 4)
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be a positive integer")
    with folder_lock(out, "m2ib evaluate"):  # one run writes a folder at a time
        plan = plan_run(backend, table, methods, metrics, settings, seed, out, command, time_limit)
        metrics, methods, result, clock = plan.metrics, plan.methods, plan.result, plan.clock
        with ResultsWriter(result.out / RESULTS) as writer:
            if per_pair(metrics):
                with tqdm(
                    total=plan.total, desc="evaluate", unit="pair", disable=not progress, dynamic_ncols=True
                ) as bar:
                    for rows, missing in batches(plan.todo, batch_size):
                        if clock.out_of_time():
                            result.finished = False
                            break
                        new, bad = evaluate_rows(backend, rows, missing, metrics, settings, seed)
                        for record in new:
                            writer.write(record)
                            result.records.append(record)
                        result.evaluated += len(new)
                        for b in bad:
                            result.bad.append(b)
                            tqdm.write(f"m2ib: skipped row {b['row']}: {b['reason']}", file=sys.stderr)
                        bar.update(len(rows) * len(missing))
            finish_run(plan, backend, writer, progress, report)
    return result


@dataclass
class Plan:
    """A run's resolved inputs and what is left to do (shared by both schedulers)."""

    table: PairTable
    metrics: dict[str, Any]  # metric name -> its settings object (m2ib.metrics.base.choose)
    methods: list[str]
    settings: dict[str, dict[str, Any]] | None  # per method, as given
    seed: int
    header: dict[str, Any]  # the provenance record (the one in the file when resuming)
    todo: list[tuple[Row, list[str]]]  # rows with the methods they still need
    total: int  # (row, method) pairs to do
    result: RunResult
    clock: Clock


def plan_run(
    backend: Backend,
    table: PairTable,
    methods: Sequence[str],
    metrics: Chosen,
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
    out: str | os.PathLike,
    command: str | None = None,
    time_limit: float | None = None,
) -> Plan:
    """Open (or resume) the run in ``out`` and list what is left: the first step of both schedulers."""
    chosen = choose(metrics)
    methods = list(dict.fromkeys(methods))
    check_phrase_metrics(methods, in_registry_order(chosen))
    for metric in in_registry_order(chosen):
        metric.check_rows(table.rows, table.spec)  # e.g. grounding without per-object masks: one line
    out = Path(out)
    header, records = open_run(backend, table, methods, metrics_record(chosen), settings, seed, out, command)
    todo = pending(table, methods, records)
    total = sum(len(missing) for _, missing in todo)
    result = RunResult(out, records, list(table.bad), skipped=len(table.rows) * len(methods) - total)
    return Plan(table, chosen, methods, settings, seed, header, todo, total, result, Clock(time_limit))


def finish_run(plan: Plan, backend: Backend, writer: ResultsWriter, progress: bool, report: bool) -> None:
    """What follows the per-pair work in both schedulers: the whole-run metrics asked for (ROAR+;
    only once every pair is done) and the summary and plots."""
    result, metrics, methods, clock, table = plan.result, plan.metrics, plan.methods, plan.clock, plan.table
    settings, seed = plan.settings, plan.seed
    everyone = list(plan.header.get("methods") or methods)  # the whole run's, when resuming some of them
    merge_parts(result.out, writer, result, table, everyone)
    records = result.records
    whole_run = [m for m in in_registry_order(metrics) if not m.per_pair]
    if whole_run and result.finished:  # only once every pair is done; ROAR+ retrains, so it runs here

        def emit(record: dict[str, Any]) -> None:
            writer.write(record)
            records.append(record)

        context = RunContext(
            backend, table.kind, list(methods), settings, seed, result.out, records, emit, clock.out_of_time, progress
        )
        for metric in whole_run:
            metric.measure_run(context)
        if clock.out_of_time():
            result.finished = False
    if report:
        from .report import write_report

        # over this command's methods: a command that resumes some of them summarises those
        result.files = write_report(
            result.out,
            plan.header,
            records,
            result.bad,
            methods,
            requested=[row.id for row in table.rows] if per_pair(metrics) else None,
        )


def merge_parts(out: Path, writer: ResultsWriter, result: RunResult, table: PairTable, methods: Sequence[str]) -> None:
    """Append the part files' records to results.jsonl in table order, then remove the parts.

    A crash in between leaves records in both places; :func:`read_run` counts them once."""
    if not (out / PARTS).is_dir():
        return  # a local run with no Ray parts: nothing to read again
    _, everything = read_run(out)
    _, in_file = read_results(out / RESULTS)
    known = {record_key(r) for r in in_file}
    held = {record_key(r) for r in result.records}
    order = {row.id: i for i, row in enumerate(table.rows)}
    rank = {m: i for i, m in enumerate(methods)}
    new = [r for r in everything if record_key(r) not in known and r.get("kind") == "pair"]
    new.sort(key=lambda r: (order.get(r["row"], len(order)), rank.get(r["method"], len(rank))))
    for record in new:
        writer.write(record)
        if record_key(record) not in held:
            result.records.append(record)
    for part in [*(out / PARTS).glob("part-*.jsonl"), *(out / PARTS).glob(".part-*.tmp")]:
        part.unlink()  # the .tmp files: writes that a killed actor left half done
    if (out / PARTS).is_dir() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
