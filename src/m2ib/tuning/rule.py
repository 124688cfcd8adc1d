"""The selection rule of ``m2ib tune`` (docs/tune.md, fixed before any grid ran), as a pure function.

Per tower: the Pareto front over every criterion, then the qualifying front points (sane and
right), then the lowest mean rank of the criteria other than sanity; ties to the lower sanity
value, then to grid order. No qualifying point: no recommendation (the tower keeps its defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: A point is sane when its sanity value (mean |Spearman| with the randomised-above map) is at most this.
SANITY_LIMIT = 0.5
#: A point is right only when at most this share of its maps is constant.
CONSTANT_LIMIT = 0.1


@dataclass(frozen=True)
class Choice:
    """What the rule chose for one tower: ``index`` into the points (None: nothing qualifies)."""

    index: int | None
    front: tuple[int, ...]
    qualifying: tuple[int, ...]
    mean_ranks: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # why each front point does not qualify
    why: str = ""


def _value(values: Mapping[str, float | None], key: str, lower: bool) -> float:
    """The value with its sign set so that higher is better; NaN or missing: the worst value."""
    v = values.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return -math.inf
    return -float(v) if lower else float(v)


def used_criteria(points: Sequence[Mapping[str, float | None]], directions: Mapping[str, str]) -> list[str]:
    """The criteria defined (not None/NaN) for at least one point, in the order of ``directions``."""
    return [k for k, d in directions.items() if any(_value(p, k, d == "lower") > -math.inf for p in points)]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` at least as good as ``b`` everywhere and strictly better somewhere (higher is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the vectors no other vector dominates (higher is better in every place)."""
    return [i for i, v in enumerate(vectors) if not any(dominates(w, v) for j, w in enumerate(vectors) if j != i)]


def mean_ranks(vectors: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Per index, the mean over places of its rank (1 = best, higher is better; ties share their mean rank)."""
    out = {i: 0.0 for i in vectors}
    if not vectors:
        return out
    width = len(next(iter(vectors.values())))
    for k in range(width):
        for i, v in vectors.items():
            better = sum(1 for w in vectors.values() if w[k] > v[k])
            equal = sum(1 for w in vectors.values() if w[k] == v[k])
            out[i] += better + (equal + 1) / 2
    return {i: r / width if width else 0.0 for i, r in out.items()}


def why_not_right(values: Mapping[str, float | None], chance: Mapping[str, float]) -> str:
    """'' when the point is sane and right; else the first reason it is not."""
    sanity = values.get("sanity")
    if sanity is None or math.isnan(sanity) or sanity > SANITY_LIMIT:
        return f"not sane (sanity {_fmt(sanity)} > {SANITY_LIMIT})"
    faithfulness = values.get("faithfulness")
    if faithfulness is None or math.isnan(faithfulness) or faithfulness <= 0:
        return f"not right (faithfulness {_fmt(faithfulness)} <= 0)"
    constant = values.get("constant")
    if constant is not None and constant > CONSTANT_LIMIT:
        return f"not right ({constant:.0%} constant maps > {CONSTANT_LIMIT:.0%})"
    for key, level in chance.items():
        v = values.get(key)
        if v is not None and not math.isnan(v) and v <= level:
            return f"not right ({key} {v:.3f} <= chance {level:.3f})"
    return ""


def _fmt(v: float | None) -> str:
    return "undefined" if v is None or math.isnan(v) else f"{v:.3f}"


def choose(
    points: Sequence[Mapping[str, float | None]],
    directions: Mapping[str, str],
    chance: Mapping[str, float] | None = None,
) -> Choice:
    """Apply the rule to one tower's ``points`` (criterion -> value, in grid order).

    ``directions``: criterion -> "lower" or "higher" (must include "sanity"); ``chance``:
    ground-truth criterion -> chance level it must exceed for a point to be right."""
    keys = used_criteria(points, directions)
    vectors = [[_value(p, k, directions[k] == "lower") for k in keys] for p in points]
    front = pareto_front(vectors)
    reasons = {i: why_not_right(points[i], chance or {}) for i in front}
    qualifying = [i for i in front if not reasons[i]]
    reasons = {i: r for i, r in reasons.items() if r}
    if not qualifying:
        why = "no front point is both sane and right: no recommendation, the defaults stay"
        return Choice(None, tuple(front), (), {}, reasons, why)
    others = [j for j, k in enumerate(keys) if k != "sanity"]
    ranks = mean_ranks({i: [vectors[i][j] for j in others] for i in qualifying})
    best = min(qualifying, key=lambda i: (ranks[i], -_value(points[i], "sanity", True), i))
    tied = [i for i in qualifying if ranks[i] == ranks[best]]
    why = f"best mean rank {ranks[best]:.2f} over {', '.join(k for k in keys if k != 'sanity') or 'no criterion'}"
    why += f" among {len(qualifying)} qualifying front point(s) of {len(front)}"
    if len(tied) > 1:
        why += f"; tied with {len(tied) - 1} other(s), broken by lower sanity, then grid order"
    return Choice(best, tuple(front), tuple(qualifying), ranks, reasons, why)
