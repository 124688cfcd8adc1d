"""``m2ib tune`` as a function: check the request (before the model loads where possible), build
the grid, score it (resumable), apply the rule, write ``m2ib.json`` and ``report.html``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .grid import DEFAULT_BETAS, PREFIX, PUBLISHED_BETA, Point, default_layers, points_of, resolve_layers

OUTPUTS = ("points.jsonl", "m2ib.json", "report.html", "reference.tsv")
_SHAPES_N = re.compile(r"^shapes(?:-collage|-two)?:(?:train|val|test):(\d+)")


@dataclass(frozen=True)
class TuneRequest:
    """What ``m2ib tune`` was asked (the grid flags already parsed by :mod:`.grid`)."""

    model: str
    data: str
    out: Path
    towers: tuple[str, ...] = ("image", "text")
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tower -> layers (missing: default)
    layer_flags: dict[str, str] = field(default_factory=dict)  # tower -> the flag that gave its layers
    betas: tuple[float, ...] | None = None
    variants: tuple[str, ...] = ("published", "standardised")
    rows: int | None = None
    seed: int = 0
    batch_size: int = 16
    device: str | None = None
    command: str = ""
    progress: bool = True
    ray: Any = None  # a RayConfig (m2ib.evaluation.distributed): score the grid on Ray; None: here


def check_request(req: TuneRequest) -> None:
    """Every check that needs no model: sizes, the data's pair count where known, --out over an input."""
    from ..settings import check_seed

    check_seed(req.seed, "--seed")
    check_seed(req.seed + 1, "--seed")  # the agreement criterion's second seed
    if req.rows is not None and req.rows < 2:
        raise InputError(f"--rows {req.rows}: tune needs 2 or more pairs")
    if req.batch_size < 1:
        raise InputError(f"--batch-size {req.batch_size}: must be a positive integer")
    match = _SHAPES_N.match(req.data.strip())
    if match and int(match.group(1)) < 2:
        raise InputError(f"--data {req.data}: {match.group(1)} pair(s); tune needs 2 or more")
    out = req.out.resolve()
    inputs = [Path(p).resolve() for p in (req.data, req.model) if Path(p).exists()]
    for path in inputs:  # the data file, or the model's folder (its own m2ib.json)
        if out == path or any((out / name) == path for name in OUTPUTS):
            raise InputError(f"--out {req.out}: would write over the input {path}; pick another folder")


def build_points(backend: Any, req: TuneRequest, recommended: dict[str, Any]) -> dict[str, list[Point]]:
    """Each tower's points in grid order; layers checked against the tower's depth (before any fit)."""
    from ..methods.layered import default_layer

    out = {}
    for tower in req.towers:
        depth = backend.num_layers(tower)
        given = req.layers.get(tower)
        flag = req.layer_flags.get(tower, "--layers")
        if given is None:
            layers = default_layers(depth, default_layer(depth), recommended.get(f"{PREFIX[tower]}_layer"))
        else:
            layers = resolve_layers(given, depth, tower, flag)
        betas = req.betas
        if betas is None:
            extra = recommended.get(f"{PREFIX[tower]}_beta")
            betas = tuple(sorted({*DEFAULT_BETAS, *([float(extra)] if extra else [])}))
        out[tower] = points_of(tower, req.variants, layers, betas)
    return out


def published_key(backend: Any, tower: str) -> str:
    """The key of the published point (M2IB with no setting on this model family: the paper's
    relative depth, beta 0.1, published bottleneck)."""
    from ..methods.layered import default_layer

    return Point(tower, "published", default_layer(backend.num_layers(tower)), PUBLISHED_BETA).key


@dataclass
class TuneOutcome:
    files: dict[str, Path]
    lines: list[str]
    recommended: dict[str, Any]


def tune(req: TuneRequest) -> TuneOutcome:
    """Run ``m2ib tune`` end to end (see the module docstring)."""
    from .. import preflight
    from ..api import load
    from ..datasets.tables import load_table
    from ..fileio import folder_lock
    from .choice import choose_all
    from .criteria import chance_levels
    from .data import reference_spec, tune_data
    from .outputs import summary_lines, write_settings
    from .report import write_report
    from .run import Grid, score_grid
    from .store import open_store

    check_request(req)
    preflight.check_device(req.device)
    shapes = bool(_SHAPES_N.match(req.data.strip()))
    table = None if shapes else load_table(req.data, samples=req.rows, seed=req.seed)
    if table is not None and len(table.rows) < 2:
        raise InputError(f"--data {req.data}: {len(table.rows)} pair(s); tune needs 2 or more")
    out = preflight.prepare_output_dir(req.out)
    with folder_lock(out, "m2ib tune"):
        backend = load(req.model, device=req.device)
        if table is None:
            table = load_table(req.data, size=backend.geometry.image_size[0], samples=req.rows, seed=req.seed)
        recommended = dict(backend.recommended.get("m2ib", {}))
        grid = Grid(build_points(backend, req, recommended))
        if "standardised" in req.variants:
            grid.reference = reference_spec(req.data, table, out)
        data = tune_data(backend, table.rows, req.seed)
        identity = {
            "model": req.model,
            "data": req.data,
            "rows": req.rows,
            "pairs": len(data),
            "seed": req.seed,
            "grid": grid.as_dict(),
            "reference": grid.reference,
        }
        store = open_store(out, identity)
        if req.ray is None:
            score_grid(backend, data, grid, store, req.seed, req.batch_size, req.progress)
        else:
            from .distributed import score_grid_ray

            score_grid_ray(
                backend, req.model, data.rows, grid, store, req.seed, req.batch_size, req.ray, req.device, req.progress
            )
        per_tower = {t: [store.points[p.key] for p in pts] for t, pts in grid.towers.items()}
        choices = choose_all(per_tower, {t: chance_levels(data, t) for t in grid.towers})  # type: ignore[arg-type]
        run = {"command": req.command, **identity}
        files = {"settings": write_settings(out, choices, run), "records": store.path}
        published = {t: published_key(backend, t) for t in grid.towers}
        display = (
            data.images.display if data.images.display is not None else backend.display_images(data.images.pixel_values)
        )
        tokens = [list(t) for t in data.texts.tokens] if data.texts.tokens else []
        files["report"] = write_report(
            out, choices, run, published, display.detach().float().cpu(), tokens, [r.text for r in data.rows]
        )
        from .choice import recommended as recommended_settings

        lines = summary_lines(choices)
        if data.bad:
            lines.append(f"{len(data.bad)} row(s) left out, their image unreadable: {data.bad[0]['reason']}")
        return TuneOutcome(files, lines, recommended_settings(choices))
