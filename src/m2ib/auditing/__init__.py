"""Auditing a model on a dataset without labels: what it looks at and reads across the data.

:func:`audit` explains every pair (:mod:`m2ib.auditing.run`, on the evaluation runner's store:
resumable, crash-safe), aggregates the stored maps (:mod:`m2ib.auditing.aggregate`: words from
:mod:`m2ib.auditing.words`, the image prior from :mod:`m2ib.auditing.image`) and writes
``words.csv``, ``pairs.csv``, ``image_prior.npz`` (:mod:`m2ib.auditing.outputs`) and a
self-contained ``report.html`` (:mod:`m2ib.auditing.report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings_file import SettingsFile, SettingsSource
from .aggregate import Summary, summarise

__all__ = ["audit", "AuditResult", "Summary", "summarise"]


@dataclass
class AuditResult:
    out: Path
    summary: Summary
    records: list[dict[str, Any]]
    bad: list[dict[str, str]]
    explained: int = 0  # pairs explained by this call
    skipped: int = 0  # pairs found done in ``out`` (a resumed run)
    finished: bool = True  # False when ``time_limit`` stopped it (the same call resumes)
    files: dict[str, Path] = field(default_factory=dict)


def audit(
    model: Any,
    data: Any,
    out: str | os.PathLike,
    *,
    method: str = "m2ib",
    rows: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
    time_limit: float | None = None,
    command: str | None = None,
    control: Any = "randomised",
    settings_file: SettingsSource | SettingsFile | None = None,
    **settings: Any,
) -> AuditResult:
    """Explain every pair of ``data`` with ``method`` and write the audit into ``out``.

    Args:
        model: what :func:`m2ib.load` accepts.
        data: a TSV/CSV of pairs or ``shapes:SPLIT:N[:KIND]`` (:func:`m2ib.datasets.tables.load_table`),
            or a loaded :class:`~m2ib.datasets.tables.PairTable`.
        out: the run folder; the same call on it resumes (a killed run loses at most one batch).
        rows: audit N rows drawn at random with ``seed`` (default: all).
        batch_size: pairs explained together (the maps do not depend on it).
        time_limit: seconds after which no new batch starts (``finished`` is then False).
        control: what each pair is explained again under, to tell method artefacts from findings
            (:mod:`m2ib.auditing.control`): ``"randomised"`` (default: the model randomised above
            the method's layers), a model (what :func:`m2ib.load` accepts) or ``"none"``. A folder is
            resumed only with the control it was started with.
        settings_file: a settings file (or mapping) whose values replace the model's recommended
            ones, as :func:`m2ib.load`'s ``settings``.
        **settings: the method's settings (e.g. ``steps=10``); they win over the file's.

    Returns:
        An :class:`AuditResult`; files ``words.csv``, ``pairs.csv``, ``image_prior.npz`` and
        (with ``report``) ``report.html`` in ``out``.
    """
    from ..api import load
    from ..datasets.tables import PairTable, load_table
    from .control import check_control, check_same_control, load_control
    from .outputs import write_outputs
    from .run import explain_all, locked

    out = Path(out)
    spec = check_control(control)
    with locked(out):
        check_same_control(out, spec)  # before the model loads
        backend = load(model, device=device, settings=settings_file)
        table = (
            data
            if isinstance(data, PairTable)
            else load_table(str(data), size=backend.geometry.image_size[0], samples=rows, seed=seed)
        )
        own = dict(settings)
        checked = load_control(control, backend, method, own, seed, device)
        done = explain_all(
            backend,
            table,
            method,
            settings,
            seed,
            out,
            batch_size=batch_size,
            progress=progress,
            command=command,
            time_limit=time_limit,
            control=checked,
            control_spec=spec,
        )
        summary = summarise(done.records)
        files = write_outputs(out, summary)
        if report:
            from .report import write_report

            files["report"] = write_report(out, backend, summary, done.header, done.records, table.rows, done.bad)
    return AuditResult(out, summary, done.records, done.bad, done.explained, done.skipped, done.finished, files)
