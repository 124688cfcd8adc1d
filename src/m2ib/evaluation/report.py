"""Summaries and plots of an evaluation run's records (``results.jsonl``).

* ``summary.csv``: one line per (method, metric): n, mean, the 95 % confidence interval of the
  mean (Student's t: ``mean +- t(0.975, n - 1) * sd / sqrt(n)``) and which way is better.
* ``summary.md``: the provenance, the summary tables of the registered metrics (mean +- CI
  half-width; the best mean of each column in bold; arrows from each key's direction), the
  metrics' own sections (ROAR+ accuracies), bad rows.
* ``plots/`` (:mod:`m2ib.evaluation.plots`): each metric's own plots (deletion and insertion
  curves, sanity cascades, ROAR+ accuracy against k) and a bar chart (mean with CI) per key.

Metrics, keys, directions and tables all come from the registry (:mod:`m2ib.metrics.base`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..metrics import base as metric_registry
from ..metrics.base import direction, summary_tables
from ..metrics.roar import roar_table  # noqa: F401 (its summary section; imported from here by older code)
from .plots import write_plots

# Student's t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """Student's t 0.975 quantile (a table to 30 degrees of freedom, then a Cornish-Fisher series)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[int, float, float]:
    """(n, mean, 95 % CI half-width) of the finite values (half-width NaN for n < 2)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return 0, float("nan"), float("nan")
    mean = sum(xs) / n
    if n < 2:
        return n, mean, float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return n, mean, t975(n - 1) * sd / math.sqrt(n)


def summarise(records: Sequence[dict[str, Any]], methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows ``{"method", "metric", "n", "mean", "ci_low", "ci_high", "better"}`` of the pair records."""
    pairs = [r for r in records if r.get("kind") == "pair"]
    order = list(methods) if methods else list(dict.fromkeys(r["method"] for r in pairs))
    keys: list[str] = []
    for r in pairs:
        for k in r["metrics"]:
            if k not in keys:
                keys.append(k)
    known = [k for table in summary_tables() for k in table.keys]
    keys = [k for k in known if k in keys] + [k for k in keys if k not in known]
    rows = []
    for method in order:
        mine = [r for r in pairs if r["method"] == method]
        for key in keys:
            values = [r["metrics"].get(key) for r in mine if key in r["metrics"]]
            if not values:
                continue
            n, mean, half = mean_ci(values)
            rows.append(
                {
                    "method": method,
                    "metric": key,
                    "n": n,
                    "mean": mean,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "better": direction(key),
                }
            )
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "metric", "n", "mean", "ci95_low", "ci95_high", "better"])
    for r in rows:
        writer.writerow(
            [r["method"], r["metric"], r["n"], repr(r["mean"]), repr(r["ci_low"]), repr(r["ci_high"]), r["better"]]
        )
    return buf.getvalue()


def summary_markdown(
    header: dict[str, Any] | None,
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    bad: Sequence[dict[str, str]],
    methods: Sequence[str],
    requested: Sequence[str] | None = None,
) -> str:
    header = header or {}
    pairs = [r for r in records if r.get("kind") == "pair" and r.get("method") in methods]
    lines = ["# Evaluation summary", ""]
    if header:
        v = header.get("versions", {})
        lines += [
            f"- model: `{header.get('model')}` (weights sha256 `{header.get('weights_sha256', '')[:16]}...`)",
            f"- data: `{header.get('data')}` ({header.get('rows')} rows drawn of {header.get('rows_in_source')}),"
            f" seed {header.get('seed')}",
            f"- m2ib {v.get('m2ib')}, torch {v.get('torch')}, transformers {v.get('transformers')}",
            f"- command: `{header.get('command')}`",
        ]
    n_rows = len({r["row"] for r in pairs})
    of = f" of {len(requested)} requested" if requested is not None else ""
    partial = (
        " (**partial run**: re-run the same command to finish)"
        if requested is not None and n_rows + len(bad) < len(requested)
        else ""
    )
    if pairs or requested is not None:
        lines.append(
            f"- rows summarised: {n_rows}{of}, each with all {len(methods)} methods ({len(pairs)} records); "
            f"bad rows: {len(bad)}{partial}"
        )
    lines.append("")
    if rows:
        lines += [
            "Each cell: mean +- half-width of the 95 % confidence interval over pairs (Student's t). "
            "Arrows: which way is better. Bold: the best mean of the column. Drops and increases are in "
            "%-points and %; shares are in [0, 1].",
            "",
        ]
    index = {(r["method"], r["metric"]): r for r in rows}
    for table in summary_tables():
        title, keys = table.title, table.keys
        present = [k for k in keys if any((m, k) in index for m in methods)]
        if not present:
            continue
        lines += [
            f"## {title}",
            "",
            "| method | " + " | ".join(f"{k} {'↓' if direction(k) == 'lower' else '↑'}" for k in present) + " |",
            "| --- | " + " | ".join("---" for _ in present) + " |",
        ]
        best = {}
        for k in present:
            means = [index[(m, k)]["mean"] for m in methods if (m, k) in index and math.isfinite(index[(m, k)]["mean"])]
            if means:
                best[k] = min(means) if direction(k) == "lower" else max(means)
        for m in methods:
            cells = []
            for k in present:
                r = index.get((m, k))
                if r is None:
                    cells.append("n/a")
                    continue
                cell = f"{_fmt(r['mean'])} ± {_fmt((r['ci_high'] - r['ci_low']) / 2)}"
                if k in best and r["mean"] == best[k] and len(methods) > 1:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        ns = sorted({index[(m, k)]["n"] for m in methods for k in present if (m, k) in index})
        lines += ["", f"n per cell: {', '.join(map(str, ns))}", ""]
    for metric in metric_registry.REGISTRY.values():  # sections of their own (ROAR+'s table)
        section = metric().summary_section(records, methods)
        if section is not None:
            lines += [f"## {section[0]}", "", section[1], ""]
    if bad:
        lines += ["## Bad rows", "", f"{len(bad)} row(s) could not be used (not evaluated):", ""]
        lines += [f"- {b['row']}: {b['reason']}" for b in bad[:50]]
        if len(bad) > 50:
            lines.append(f"- ... and {len(bad) - 50} more (see bad_rows.csv)")
        lines.append("")
    return "\n".join(lines)


def complete_records(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The pair records of rows that every method has finished (so every method is summarised on
    the same pairs), plus every non-pair record."""
    done: dict[str, set[str]] = {}
    for r in records:
        if r.get("kind") == "pair":
            done.setdefault(r["row"], set()).add(r["method"])
    full = {row for row, ms in done.items() if set(methods) <= ms}
    return [r for r in records if r.get("kind") != "pair" or r["row"] in full]


def write_report(
    out: str | Path,
    header: dict[str, Any] | None,
    records: Sequence[dict[str, Any]],
    bad: Sequence[dict[str, str]],
    methods: Sequence[str],
    requested: Sequence[str] | None = None,
) -> dict[str, Path]:
    """summary.csv, summary.md, bad_rows.csv (when any) and plots/ (when matplotlib is installed).

    Only rows that every method has finished are summarised; ``requested`` (row ids) lets the
    Markdown say how many of the requested rows that is.
    """
    import warnings

    out = Path(out)
    records = complete_records(records, methods)
    rows = summarise(records, methods)
    files = {
        "csv": atomic_write_text(out / "summary.csv", summary_csv(rows)),
        "md": atomic_write_text(out / "summary.md", summary_markdown(header, rows, records, bad, methods, requested)),
    }
    if bad:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["row", "reason"])
        for b in bad:
            w.writerow([b["row"], b["reason"]])
        files["bad"] = atomic_write_text(out / "bad_rows.csv", buf.getvalue())
    try:
        files.update(write_plots(out, records, rows, methods))
    except ImportError:
        warnings.warn("plots not written: install matplotlib (pip install 'm2ib[figures]')", stacklevel=2)
    return files
