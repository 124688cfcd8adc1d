"""The rule applied to a finished grid, per tower, and the recommended settings it gives.

M2IB's ``bottleneck`` and ``reference`` settings are one for both towers. When the towers' chosen
variants need different values for them, the first tower of ``--towers`` keeps its choice and the
other tower is chosen again by the same rule among its points of that variant only (none
qualifying there: no recommendation for it, and it then runs at its default layer and beta under
that variant). docs/tune.md states this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .criteria import directions_of
from .grid import PREFIX, VARIANTS
from .rule import Choice, choose


@dataclass
class TowerChoice:
    tower: str
    records: list[dict[str, Any]]  # the tower's points, in grid order
    choice: Choice
    chance: dict[str, float]
    note: str = ""

    @property
    def chosen(self) -> dict[str, Any] | None:
        return None if self.choice.index is None else self.records[self.choice.index]


def _shared(variant: str) -> dict[str, Any]:
    return {k: v for k, v in VARIANTS[variant].items()}


def choose_tower(tower: str, records: list[dict[str, Any]], chance: dict[str, float]) -> Choice:
    return choose([r["criteria"] for r in records], directions_of(tower), chance)  # type: ignore[arg-type]


def choose_all(per_tower: dict[str, list[dict[str, Any]]], chance: dict[str, dict[str, float]]) -> list[TowerChoice]:
    """Each tower's choice (towers in ``per_tower``'s order), the shared settings reconciled."""
    out: list[TowerChoice] = []
    fixed: str | None = None  # the variant the first chosen tower fixed
    for tower, records in per_tower.items():
        c = TowerChoice(tower, records, choose_tower(tower, records, chance[tower]), chance[tower])
        if c.chosen is not None and fixed is not None and _shared(c.chosen["variant"]) != _shared(fixed):
            kept = [i for i, r in enumerate(records) if _shared(r["variant"]) == _shared(fixed)]
            sub = choose_tower(tower, [records[i] for i in kept], chance[tower])
            note = (
                f"its own choice ({c.chosen['variant']}) needs other bottleneck settings than the {fixed} "
                f"variant already chosen; chosen again among its {fixed} points"
            )
            c = TowerChoice(tower, records, remap(sub, kept), chance[tower], note)
        if c.chosen is not None and fixed is None:
            fixed = c.chosen["variant"]
        out.append(c)
    return out


def remap(c: Choice, kept: list[int]) -> Choice:
    """A choice made on the points ``kept`` (indices into the full list), in full-list indices."""
    return Choice(
        None if c.index is None else kept[c.index],
        tuple(kept[i] for i in c.front),
        tuple(kept[i] for i in c.qualifying),
        {kept[i]: r for i, r in c.mean_ranks.items()},
        {kept[i]: r for i, r in c.reasons.items()},
        c.why,
    )


def recommended(choices: list[TowerChoice]) -> dict[str, Any]:
    """The M2IB settings to recommend: each chosen tower's layer and beta, and its variant's overrides."""
    out: dict[str, Any] = {}
    for c in choices:
        if c.chosen is not None:
            prefix = PREFIX[c.tower]
            out[f"{prefix}_layer"] = c.chosen["layer"]
            out[f"{prefix}_beta"] = c.chosen["beta"]
            out.update({k: v for k, v in c.chosen["settings"].items() if not k.startswith(prefix + "_")})
    return out
