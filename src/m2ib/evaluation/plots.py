"""The run's PNG plots: each metric's own (its ``plots`` hook) and a bar chart (mean with 95 % CI)
per key. matplotlib's Figure API (no pyplot state); each file written atomically."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..metrics import base as metric_registry
from ..metrics.base import CONTROL, direction

_MARKERS = "osD^vP*Xph"


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One colour and marker per method, the same in every plot of a run (the marker tells
    lines apart where colours repeat); the random control grey and dashed."""
    from matplotlib import colormaps

    tab10 = [colormaps["tab10"](i)[:3] for i in range(10)]  # its 10 listed colours, RGB
    colours = [*tab10[:7], *tab10[8:], (0.1, 0.1, 0.1)]  # grey is the random control's alone
    out = {}
    for i, name in enumerate(n for n in names if n != CONTROL):
        out[name] = {"color": colours[i % len(colours)], "marker": _MARKERS[i % len(_MARKERS)]}
    out[CONTROL] = {"color": "0.45", "marker": "o", "linestyle": "--"}
    return out


class ReportCanvas:
    """What a metric draws its plots with (:class:`m2ib.metrics.base.PlotCanvas`): new figures,
    one style and label per method for the whole run, and atomic PNG files in ``out/plots``."""

    def __init__(self, out: Path, names: Sequence[str]):
        self.folder = out / "plots"
        self.styles = _styles(names)

    def figure(self, figsize: tuple[float, float]) -> Any:
        from matplotlib.figure import Figure

        return Figure(figsize=figsize)

    def style(self, method: str) -> dict[str, Any]:
        return self.styles[method]

    def label(self, method: str) -> str:
        """A method's display name (its registry title), the random control spelt out."""
        from ..methods import REGISTRY

        if method == CONTROL:
            return "random control"
        return REGISTRY[method].title if method in REGISTRY else method

    def legend(self, ax: Any) -> None:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    def save(self, fig: Any, name: str) -> Path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        return atomic_write(
            self.folder / f"{name}.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        )


def write_plots(
    out: Path, records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], methods: Sequence[str]
) -> dict[str, Path]:
    """The PNG plots (needs matplotlib); returns name -> path."""
    metrics = [cls() for cls in metric_registry.REGISTRY.values()]
    extra = [name for metric in metrics for name in metric.plot_names(records, methods)]
    canvas = ReportCanvas(out, [*methods, *extra])
    files: dict[str, Path] = {}
    for metric in metrics:
        files.update(metric.plots(records, methods, canvas))
    for key in dict.fromkeys(r["metric"] for r in rows):
        files[f"bar_{key}"] = _bar_chart(canvas, key, [r for r in rows if r["metric"] == key])
    return files


def _bar_chart(canvas: ReportCanvas, key: str, mine: Sequence[dict[str, Any]]) -> Path:
    """One key's mean per method with its 95 % CI, in the methods' colours."""
    fig = canvas.figure((max(4.0, 0.6 * len(mine) + 1.5), 3.5))
    ax = fig.subplots()
    means = [r["mean"] for r in mine]
    errs = [(r["ci_high"] - r["ci_low"]) / 2 if math.isfinite(r["ci_high"] - r["ci_low"]) else 0.0 for r in mine]
    ax.bar(
        range(len(mine)),
        means,
        yerr=errs,
        capsize=3,  # colours as in the line plots
        color=[canvas.styles[r["method"]]["color"] if r["method"] in canvas.styles else "#4c72b0" for r in mine],
    )
    ax.set_xticks(range(len(mine)), [canvas.label(r["method"]) for r in mine], rotation=45, ha="right", fontsize=8)
    ax.set_title(f"{key} ({direction(key)} is better; 95 % CI)", fontsize=9)
    return canvas.save(fig, f"bar_{key}")
