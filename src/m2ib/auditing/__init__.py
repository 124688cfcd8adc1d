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
    """What :func:`audit` found and wrote.

    In a notebook it shows its overview (``_repr_png_``): the mean map with its regions above the
    word chart, the same two figures that ``report.html`` embeds (:meth:`figure`).

    Examples:
        >>> import tempfile, m2ib
        >>> result = m2ib.audit("shapes", "shapes:test:4", tempfile.mkdtemp(), steps=2, samples=2, progress=False)
        >>> result  # doctest: +ELLIPSIS
        <AuditResult 4 pairs in ...>
    """

    out: Path  #: the run folder
    summary: Summary  #: the word table, the mean map (``prior``) and its regions, one row per pair
    records: list[dict[str, Any]]  #: the stored pair records (raw patch grid and token scores of each pair)
    bad: list[dict[str, str]]  #: rows skipped: ``{"row": ..., "reason": ...}``
    explained: int = 0  # pairs explained by this call
    skipped: int = 0  # pairs found done in ``out`` (a resumed run)
    finished: bool = True  # False when ``time_limit`` stopped it (the same call resumes)
    files: dict[str, Path] = field(default_factory=dict)

    def figure(self) -> Any:
        """The overview as a PIL image: the report's mean-map figure (when the image side was
        explained) above its word chart, each rendered as ``report.html`` embeds it (needs matplotlib)."""
        from .report import overview_figure

        return overview_figure(self.summary)

    def _repr_png_(self) -> bytes | None:
        """The overview for notebooks (None without matplotlib: the notebook shows ``repr``)."""
        import io

        try:
            picture = self.figure()
        except ImportError:
            return None
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        flagged = [w.word for w in self.summary.words if w.flag]
        return (
            f"<AuditResult {len(self.records)} pairs in {str(self.out)!r}: {len(self.summary.regions)} region(s), "
            f"flagged words {flagged[:5]}, {len(self.bad)} bad row(s)>"
        )


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
        method: the attribution method (default M2IB with the model's settings: Wang, Rudner and
            Wilson, NeurIPS 2023, https://arxiv.org/abs/2312.17174; M2IB needs no labels, the other
            modality is the target).
        seed: the methods' seed and the draw of ``rows``.
        device: device for a model given by name.
        progress: show a progress bar.
        report: write ``report.html`` (needs matplotlib).
        command: the command line to record in the run's provenance.
        settings_file: a settings file (or mapping) whose values replace the model's recommended
            ones, as :func:`m2ib.load`'s ``settings``.
        **settings: the method's settings (e.g. ``steps=10``); they win over the file's.

    Returns:
        An :class:`AuditResult`; files ``words.csv``, ``pairs.csv``, ``regions.csv``, ``image_prior.npz`` and
        (with ``report``) ``report.html`` in ``out``. ``summary.prior`` is the [rows, cols] mean map
        over the patch grid (each pair's map first made to add up to 1), ``summary.regions`` its hot
        regions, ``summary.words`` the word table (flagged words: ``flag``).

    Examples:
        >>> import tempfile, m2ib
        >>> result = m2ib.audit("shapes", "shapes:test:4", tempfile.mkdtemp(), steps=2, samples=2, progress=False)
        >>> result.summary.prior.shape, len(result.records), sorted(result.files)
        (torch.Size([16, 16]), 4, ['pairs', 'prior', 'regions', 'report', 'words'])
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
