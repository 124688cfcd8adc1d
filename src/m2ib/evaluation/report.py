"""Summaries and plots of an evaluation run's records (``results.jsonl``).

* ``summary.csv``: one line per (method, metric): n, mean, the 95 % confidence interval of the
  mean (Student's t: ``mean +- t(0.975, n - 1) * sd / sqrt(n)``) and which way is better.
* ``summary.md``: the provenance, tables per metric group (mean +- CI half-width; the best mean
  of each column in bold), ROAR+ accuracies, bad rows.
* ``plots/``: mean deletion and insertion curves per side, mean sanity cascades, ROAR+
  accuracy against k, and a bar chart (mean with CI) per metric. PNG, matplotlib's Figure API
  (no pyplot state), each file written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, atomic_write_text
from ..metrics import direction
from ..metrics.roar import RANDOM

# Student's t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Confidence, protocol `m2ib` (the public reference's, exactly)",
     ("image_drop_m2ib", "image_increase_m2ib", "text_drop_m2ib", "text_increase_m2ib")),
    ("Confidence, protocol `mask` (corrected)",
     ("image_drop_mask", "image_increase_mask", "text_drop_mask", "text_increase_mask")),
    ("Deletion / insertion (area under the cosine-similarity curve)",
     ("image_deletion_auc", "image_insertion_auc", "text_deletion_auc", "text_insertion_auc")),
    ("ROAD (noisy linear imputation; score change, mean over 10..90 %)",
     ("image_road_morf", "image_road_lerf", "image_road_combined")),
    ("Localisation (shares of pairs / of map mass)",
     ("image_pointing", "image_energy", "image_iou", "text_pointing")),
    ("Sanity: cascading randomisation (similarity to the trained model's map, mean over the cascade)",
     ("image_sanity_spearman", "image_sanity_ssim", "text_sanity_spearman")),
)


def t975(df: int) -> float:
    """Student's t 0.975 quantile (a table to 30 degrees of freedom, then a Cornish-Fisher series)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


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
    known = [k for _, group in GROUPS for k in group]
    keys = [k for k in known if k in keys] + [k for k in keys if k not in known]
    rows = []
    for method in order:
        mine = [r for r in pairs if r["method"] == method]
        for key in keys:
            values = [r["metrics"].get(key) for r in mine if key in r["metrics"]]
            if not values:
                continue
            n, mean, half = mean_ci(values)
            rows.append({"method": method, "metric": key, "n": n, "mean": mean, "ci_low": mean - half,
                         "ci_high": mean + half, "better": direction(key)})
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "metric", "n", "mean", "ci95_low", "ci95_high", "better"])
    for r in rows:
        writer.writerow([r["method"], r["metric"], r["n"], repr(r["mean"]), repr(r["ci_low"]), repr(r["ci_high"]),
                         r["better"]])
    return buf.getvalue()


def _roar_order(roar: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    found = list(dict.fromkeys(r["method"] for r in roar if r["k"] > 0))
    order = [m for m in methods if m in found] + [m for m in found if m not in methods and m != RANDOM]
    return order + [m for m in found if m == RANDOM]


def roar_table(records: Sequence[dict[str, Any]], methods: Sequence[str] = ()) -> str:
    """The ROAR+ records as a Markdown table: ``methods`` first in their order, then any other
    method found (a run resumed method by method), the random control last."""
    roar = [r for r in records if r.get("kind") == "roar"]
    if not roar:
        return ""
    ks = sorted({r["k"] for r in roar if r["k"] > 0})
    base = next((r["accuracy"] for r in roar if r["k"] == 0), None)
    budget = roar[0].get("budget", "?")
    base_colour = next((r.get("colour_accuracy") for r in roar if r["k"] == 0), None)
    lines = [f"ROAR+ (budget `{budget}`): accuracy of a model retrained on images with the top k % pixels "
             f"removed by linear imputation, as exact class / colour only; lower is better. k = 0 (nothing "
             f"removed): {_fmt(base)} / {_fmt(base_colour)}.", "",
             "| method | " + " | ".join(f"k = {k} %" for k in ks) + " | mean |",
             "| --- | " + " | ".join("---" for _ in ks) + " | --- |"]
    for m in _roar_order(roar, methods):
        acc = {r["k"]: (r["accuracy"], r.get("colour_accuracy")) for r in roar if r["method"] == m}
        cells, exact, colour = [], [], []
        for k in ks:
            a, c = acc.get(k, (None, None))
            cells.append(f"{_fmt(a)} / {_fmt(c)}")
            exact += [a] if a is not None else []
            colour += [c] if c is not None else []
        mean = f"{_fmt(sum(exact) / len(exact)) if exact else '-'} / {_fmt(sum(colour) / len(colour)) if colour else '-'}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def summary_markdown(header: dict[str, Any] | None, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                     bad: Sequence[dict[str, str]], methods: Sequence[str],
                     requested: Sequence[str] | None = None) -> str:
    header = header or {}
    pairs = [r for r in records if r.get("kind") == "pair" and r.get("method") in methods]
    lines = ["# Evaluation summary", ""]
    if header:
        v = header.get("versions", {})
        lines += [f"- model: `{header.get('model')}` (weights sha256 `{header.get('weights_sha256', '')[:16]}...`)",
                  f"- data: `{header.get('data')}` ({header.get('rows')} rows drawn of {header.get('rows_in_source')}),"
                  f" seed {header.get('seed')}",
                  f"- m2ib {v.get('m2ib')}, torch {v.get('torch')}, transformers {v.get('transformers')}",
                  f"- command: `{header.get('command')}`"]
    n_rows = len({r["row"] for r in pairs})
    of = f" of {len(requested)} requested" if requested is not None else ""
    partial = " (**partial run**: re-run the same command to finish)" if requested is not None and \
        n_rows + len(bad) < len(requested) else ""
    if pairs or requested is not None:
        lines.append(f"- rows summarised: {n_rows}{of}, each with all {len(methods)} methods ({len(pairs)} records); "
                     f"bad rows: {len(bad)}{partial}")
    lines.append("")
    if rows:
        lines += ["Each cell: mean +- half-width of the 95 % confidence interval over pairs (Student's t). "
                  "Arrows: which way is better. Bold: the best mean of the column. Drops and increases are in "
                  "%-points and %; shares are in [0, 1].", ""]
    index = {(r["method"], r["metric"]): r for r in rows}
    for title, keys in GROUPS:
        present = [k for k in keys if any((m, k) in index for m in methods)]
        if not present:
            continue
        lines += [f"## {title}", "",
                  "| method | " + " | ".join(f"{k} {'↓' if direction(k) == 'lower' else '↑'}" for k in present) + " |",
                  "| --- | " + " | ".join("---" for _ in present) + " |"]
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
    roar = roar_table(records, methods)
    if roar:
        lines += ["## ROAR+", "", roar, ""]
    if bad:
        lines += ["## Bad rows", "", f"{len(bad)} row(s) could not be used (not evaluated):", ""]
        lines += [f"- {b['row']}: {b['reason']}" for b in bad[:50]]
        if len(bad) > 50:
            lines.append(f"- ... and {len(bad) - 50} more (see bad_rows.csv)")
        lines.append("")
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


_MARKERS = "osD^vP*Xph"


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One colour and marker per method, the same in every plot of a run (the marker tells
    lines apart where colours repeat); the random control grey and dashed."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"].colors
    colours = [*tab10[:7], *tab10[8:], (0.1, 0.1, 0.1)]  # grey is the random control's alone
    out = {}
    for i, name in enumerate(n for n in names if n != RANDOM):
        out[name] = {"color": colours[i % len(colours)], "marker": _MARKERS[i % len(_MARKERS)]}
    out[RANDOM] = {"color": "0.45", "marker": "o", "linestyle": "--"}
    return out


def _label(name: str) -> str:
    """A method's display name for plots (its registry title), the random control spelt out."""
    from ..methods import REGISTRY

    if name == RANDOM:
        return "random control"
    return REGISTRY[name].title if name in REGISTRY else name


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _mean_curve(curves: list[list[float | None]]) -> list[float]:
    width = max(len(c) for c in curves)
    out = []
    for j in range(width):
        vals = [c[j] for c in curves if j < len(c) and c[j] is not None]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


def write_plots(out: Path, records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                methods: Sequence[str]) -> dict[str, Path]:
    """The PNG plots (needs matplotlib); returns name -> path."""
    from matplotlib.figure import Figure

    plots = out / "plots"
    files: dict[str, Path] = {}
    pairs = [r for r in records if r.get("kind") == "pair"]
    roar = [r for r in records if r.get("kind") == "roar"]
    style = _styles([*methods, *_roar_order(roar, methods)])
    for side in ("image", "text"):
        if not any(f"{side}_deletion" in r["curves"] for r in pairs):
            continue
        fig = Figure(figsize=(10, 4))
        for ax, kind in zip(fig.subplots(1, 2), ("deletion", "insertion")):
            for m in methods:
                curves = [r["curves"][f"{side}_{kind}"] for r in pairs if r["method"] == m
                          and f"{side}_{kind}" in r["curves"]]
                if curves:
                    y = _mean_curve(curves)
                    x = [j / (len(y) - 1) for j in range(len(y))]
                    ax.plot(x, y, label=_label(m), color=style[m]["color"])
            better = "lower" if kind == "deletion" else "higher"
            ax.set_title(f"{side} {kind} (area: {better} is better)")
            ax.set_xlabel("fraction of " + ("pixels" if side == "image" else "words") +
                          (" removed" if kind == "deletion" else " inserted"))
            ax.set_ylabel("cosine similarity")
        _legend(fig.axes[1])
        files[f"{side}_deletion_insertion"] = _save(fig, plots / f"{side}_deletion_insertion.png")
    for side in ("image", "text"):
        key = f"{side}_sanity_spearman"
        if not any(key in r["curves"] for r in pairs):
            continue
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        labels: list[str] = []
        for m in methods:
            mine = [r for r in pairs if r["method"] == m and key in r["curves"]]
            if mine:
                labels = mine[0]["curves"].get(f"sanity_steps_{side}", labels)
                ax.plot(range(len(labels) or len(mine[0]["curves"][key])), _mean_curve([r["curves"][key] for r in mine]),
                        label=_label(m), **style[m])
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("randomised down to (cumulative, from the top)")
        ax.set_ylabel("Spearman with the trained model's map")
        ax.set_title(f"{side}: cascading randomisation (top down; lower is better)")
        _legend(ax)
        files[f"{side}_sanity"] = _save(fig, plots / f"{side}_sanity.png")
    if roar:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        key = "colour_accuracy" if all("colour_accuracy" in r for r in roar) else "accuracy"
        base = next((r[key] for r in roar if r["k"] == 0), None)
        for m in _roar_order(roar, methods):
            pts = sorted((r["k"], r[key]) for r in roar if r["method"] == m)
            if base is not None:
                pts = [(0, base)] + pts
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_label(m), **style[m])
        ax.set_xlabel("k: % of pixels removed (top-ranked first)")
        ax.set_ylabel(key.replace("_", " ") + " after retraining")
        ax.set_title(f"ROAR+ (budget {roar[0].get('budget')}; lower is better)")
        _legend(ax)
        files["roar"] = _save(fig, plots / "roar.png")
    for key in dict.fromkeys(r["metric"] for r in rows):
        mine = [r for r in rows if r["metric"] == key]
        fig = Figure(figsize=(max(4.0, 0.6 * len(mine) + 1.5), 3.5))
        ax = fig.subplots()
        means = [r["mean"] for r in mine]
        errs = [(r["ci_high"] - r["ci_low"]) / 2 if math.isfinite(r["ci_high"] - r["ci_low"]) else 0.0 for r in mine]
        ax.bar(range(len(mine)), means, yerr=errs, capsize=3,  # colours as in the line plots
               color=[style[r["method"]]["color"] if r["method"] in style else "#4c72b0" for r in mine])
        ax.set_xticks(range(len(mine)), [_label(r["method"]) for r in mine], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{key} ({direction(key)} is better; 95 % CI)", fontsize=9)
        files[f"bar_{key}"] = _save(fig, plots / f"bar_{key}.png")
    return files


def complete_records(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The pair records of rows that every method has finished (so every method is summarised on
    the same pairs), plus every non-pair record."""
    done: dict[str, set[str]] = {}
    for r in records:
        if r.get("kind") == "pair":
            done.setdefault(r["row"], set()).add(r["method"])
    full = {row for row, ms in done.items() if set(methods) <= ms}
    return [r for r in records if r.get("kind") != "pair" or r["row"] in full]


def write_report(out: str | Path, header: dict[str, Any] | None, records: Sequence[dict[str, Any]],
                 bad: Sequence[dict[str, str]], methods: Sequence[str],
                 requested: Sequence[str] | None = None) -> dict[str, Path]:
    """summary.csv, summary.md, bad_rows.csv (when any) and plots/ (when matplotlib is installed).

    Only rows that every method has finished are summarised; ``requested`` (row ids) lets the
    Markdown say how many of the requested rows that is.
    """
    import warnings

    out = Path(out)
    records = complete_records(records, methods)
    rows = summarise(records, methods)
    files = {"csv": atomic_write_text(out / "summary.csv", summary_csv(rows)),
             "md": atomic_write_text(out / "summary.md", summary_markdown(header, rows, records, bad, methods,
                                                                          requested))}
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
