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
    total = sum(len(p) for p in grid.towers.values())
    bar = Progress(total, sum(1 for pts in grid.towers.values() for p in pts if p.key in store.points), progress)
    try:
        for tower, points in grid.towers.items():
            for layer in sorted({p.layer for p in points}):
                todo = [p for p in points if p.layer == layer and p.key not in store.points]
                if todo:
                    _score_layer(backend, data, tower, layer, todo, grid, store, seed, batch_size, bar)  # type: ignore[arg-type]
    finally:
        bar.close()


def _score_layer(
    backend: Backend,
    data: TuneData,
    tower: Modality,
    layer: int,
    todo: list[Point],
    grid: Grid,
    store: Store,
    seed: int,
    batch_size: int,
    bar: Progress,
) -> None:
    hidden = prefix_hidden(backend, data, tower, layer, batch_size)
    randomised = randomised_above(backend, tower, layer, seed=seed)
    for variant in dict.fromkeys(p.variant for p in todo):
        points = [p for p in todo if p.variant == variant]
        betas = [p.beta for p in points]
        start, cpu = time.perf_counter(), time.process_time()
        s = point_settings(points[0].settings(grid.reference), seed)
        maps = fit_maps(backend, data, tower, layer, betas, s, hidden, batch_size)
        second = fit_maps(backend, data, tower, layer, betas, with_seed(s, seed + 1), hidden, batch_size)
        rand = fit_maps(randomised, data, tower, layer, betas, s, hidden, batch_size)
        fitted, fitted_cpu = time.perf_counter() - start, time.process_time() - cpu
        for p, m, m2, mr in zip(points, maps, second, rand):
            begin, begin_cpu = time.perf_counter(), time.process_time()
            values = criteria(backend, data, tower, m, m2, mr)
            store.append(
                {
                    "key": p.key,
                    "tower": p.tower,
                    "variant": p.variant,
                    "layer": p.layer,
                    "beta": p.beta,
                    "settings": p.settings(grid.reference),
                    "criteria": values,
                    "preview": preview(m, tower),
                    "seconds": round(fitted / len(points) + time.perf_counter() - begin, 3),
                    "cpu_seconds": round(fitted_cpu / len(points) + time.process_time() - begin_cpu, 3),
                }
            )
            bar.update(1, f"{tower} {variant} layer {layer} beta {p.beta:g}")
