"""``m2ib tune``'s run: every grid point scored once and recorded, then the rule and the outputs.

Order of work (cheapest sharing first): per tower, per layer, the prefix R once and the randomised
copy once; per variant, three batched fits over every beta still to do (the maps, the second seed's
maps, the randomised copy's maps); then each beta's criteria, one synced record per point.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, Modality
from .criteria import criteria
from .data import TuneData
from .fits import fit_maps, point_settings, prefix_hidden, randomised_above, with_seed
from .grid import Point
from .store import Store

#: Pairs whose maps are kept in the records for the report.
PREVIEW = 4


@dataclass
class Grid:
    """The points of each tower, in grid order (the rule's tie order)."""

    towers: dict[str, list[Point]]
    reference: str | None = None  # the standardised variant's reference spec

    def __len__(self) -> int:
        return sum(len(p) for p in self.towers.values())

    def done(self, store: Store) -> int:
        return sum(1 for pts in self.towers.values() for p in pts if p.key in store.points)

    def todo(self, store: Store) -> list[tuple[Modality, int, list[Point]]]:
        """Per tower and layer (ascending), the points not yet in ``store``."""
        out = []
        for tower, points in self.towers.items():
            for layer in sorted({p.layer for p in points}):
                todo = [p for p in points if p.layer == layer and p.key not in store.points]
                if todo:
                    out.append((tower, layer, todo))
        return out  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        return {
            tower: {
                "variants": list(dict.fromkeys(p.variant for p in pts)),
                "layers": sorted({p.layer for p in pts}),
                "betas": sorted({p.beta for p in pts}),
            }
            for tower, pts in self.towers.items()
        }


@dataclass
class Progress:
    """A tqdm bar over the grid's points (or nothing)."""

    total: int
    done: int
    enabled: bool = True
    bar: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, unit="point", desc="m2ib tune", dynamic_ncols=True)

    def update(self, n: int, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def preview(maps: Sequence[Any], tower: str) -> list[list[float]] | list[list[list[float]]]:
    """The first :data:`PREVIEW` maps, rounded (image maps pooled to at most 32 x 32), for the report."""
    import torch.nn.functional as F

    out: list[Any] = []
    for m in list(maps)[:PREVIEW]:
        m = m.detach().float().cpu()
        if tower == "image" and max(m.shape) > 32:
            m = F.adaptive_avg_pool2d(m[None, None], (32, 32))[0, 0]
        out.append([[round(float(v), 4) for v in row] for row in m] if m.ndim == 2 else [round(float(v), 4) for v in m])
    return out


def score_grid(
    backend: Backend, data: TuneData, grid: Grid, store: Store, seed: int, batch_size: int, progress: bool = True
) -> None:
    """Score every point of ``grid`` not yet in ``store``, recording each as it finishes."""
    bar = Progress(len(grid), grid.done(store), progress)
    try:
        for tower, layer, todo in grid.todo(store):
            shared = LayerInputs.of(backend, data, tower, layer, seed, batch_size)
            for points in by_variant(todo):
                for record in variant_records(
                    backend, data, tower, layer, points, grid.reference, seed, batch_size, shared
                ):
                    store.append(record)
                    bar.update(1, describe(record))
    finally:
        bar.close()


def by_variant(points: list[Point]) -> list[list[Point]]:
    """``points`` grouped by variant, in grid order (each group is one batched fit)."""
    return [[p for p in points if p.variant == v] for v in dict.fromkeys(p.variant for p in points)]


def describe(record: dict[str, Any]) -> str:
    return f"{record['tower']} {record['variant']} layer {record['layer']} beta {record['beta']:g}"


@dataclass
class LayerInputs:
    """What every point at one tower's layer shares: the prefix's output R (the trained blocks below
    the bottleneck; the randomised copy keeps them too) and the copy randomised above it."""

    tower: str
    layer: int
    hidden: Any
    randomised: Backend

    @classmethod
    def of(
        cls, backend: Backend, data: TuneData, tower: Modality, layer: int, seed: int, batch_size: int
    ) -> LayerInputs:
        hidden = prefix_hidden(backend, data, tower, layer, batch_size)
        return cls(tower, layer, hidden, randomised_above(backend, tower, layer, seed=seed))


def variant_records(
    backend: Backend,
    data: TuneData,
    tower: Modality,
    layer: int,
    points: list[Point],
    reference: str | None,
    seed: int,
    batch_size: int,
    shared: LayerInputs,
) -> list[dict[str, Any]]:
    """The records of one variant's points at one layer: three batched fits over their betas (the
    maps, the second seed's maps, the randomised copy's maps), then each point's criteria."""
    betas = [p.beta for p in points]
    start, cpu = time.perf_counter(), time.process_time()
    s = point_settings(points[0].settings(reference), seed)
    maps = fit_maps(backend, data, tower, layer, betas, s, shared.hidden, batch_size)
    second = fit_maps(backend, data, tower, layer, betas, with_seed(s, seed + 1), shared.hidden, batch_size)
    rand = fit_maps(shared.randomised, data, tower, layer, betas, s, shared.hidden, batch_size)
    fitted, fitted_cpu = time.perf_counter() - start, time.process_time() - cpu
    records = []
    for p, m, m2, mr in zip(points, maps, second, rand):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        values = criteria(backend, data, tower, m, m2, mr)
        records.append(
            {
                "key": p.key,
                "tower": p.tower,
                "variant": p.variant,
                "layer": p.layer,
                "beta": p.beta,
                "settings": p.settings(reference),
                "criteria": values,
                "preview": preview(m, tower),
                "seconds": round(fitted / len(points) + time.perf_counter() - begin, 3),
                "cpu_seconds": round(fitted_cpu / len(points) + time.process_time() - begin_cpu, 3),
            }
        )
    return records
