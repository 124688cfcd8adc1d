"""``DIR/m2ib.json``: the recommended settings in the shipped models' format (``{"recommended":
{"m2ib": {...}}}``, as ``src/m2ib/models/shapes/m2ib.json``) plus a ``"tune"`` entry that records
the run: the command, the grid, the rule, every point's criteria, the choices and why."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from .choice import TowerChoice, recommended
from .criteria import directions_of
from .rule import CONSTANT_LIMIT, SANITY_LIMIT

RULE = (
    "docs/tune.md: per tower, the Pareto front over every criterion; qualifying front points are sane "
    f"(sanity <= {SANITY_LIMIT}) and right (faithfulness > 0, at most {CONSTANT_LIMIT:.0%} constant maps, "
    "ground truth above chance); among them the lowest mean rank of the criteria other than sanity; ties "
    "to the lower sanity, then grid order; none qualifying: no recommendation (defaults stay)"
)


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def tower_entry(c: TowerChoice) -> dict[str, Any]:
    keys = [r["key"] for r in c.records]
    return {
        "chosen": None if c.chosen is None else c.chosen["key"],
        "why": c.choice.why,
        "note": c.note,
        "directions": directions_of(c.tower),  # type: ignore[arg-type]
        "chance": c.chance,
        "front": [keys[i] for i in c.choice.front],
        "qualifying": [keys[i] for i in c.choice.qualifying],
        "not_qualifying": {keys[i]: why for i, why in c.choice.reasons.items()},
        "mean_ranks": {keys[i]: r for i, r in c.choice.mean_ranks.items()},
        "points": [{k: r[k] for k in ("key", "variant", "layer", "beta", "settings", "criteria")} for r in c.records],
    }


def settings_document(choices: list[TowerChoice], run: dict[str, Any]) -> dict[str, Any]:
    return clean(
        {
            "recommended": {"m2ib": recommended(choices)},
            "tune": {**run, "rule": RULE, "towers": {c.tower: tower_entry(c) for c in choices}},
        }
    )


def write_settings(out: Path, choices: list[TowerChoice], run: dict[str, Any]) -> Path:
    text = json.dumps(settings_document(choices, run), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(out / "m2ib.json", text)


def summary_lines(choices: list[TowerChoice]) -> list[str]:
    """One line per tower for the terminal."""
    lines = []
    for c in choices:
        if c.chosen is None:
            lines.append(f"{c.tower}: no recommendation ({c.choice.why})")
        else:
            r = c.chosen
            lines.append(
                f"{c.tower}: {r['variant']} bottleneck, layer {r['layer']}, beta {r['beta']:g} ({c.choice.why})"
            )
        if c.note:
            lines.append(f"  note: {c.note}")
    return lines
