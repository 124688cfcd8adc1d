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
    """What ``m2ib tune`` was asked (the grid flags already parsed by :mod:`.grid`).

    Attributes:
        model: anything ``m2ib.load`` takes by name: a built-in name, a hub id, a directory.
        data: the pairs, as ``m2ib evaluate --data`` reads them (a TSV/CSV or ``shapes:SPLIT:N``);
            2 or more.
        out: the output folder (``points.jsonl``, ``m2ib.json``, ``report.html``); it must not be an input.
        towers: the towers to tune, ``"image"`` and/or ``"text"``; default ``('image', 'text')``.
        layers: tower -> the blocks to try (negative from the end); a tower not named gets the
            middle block, the published layer and the model's recommended one. Default ``{}``.
        layer_flags: tower -> the flag that gave its layers (``--layers``, ``--image-layers``),
            for error messages; default ``{}``.
        betas: the betas to try; default ``None``: 0.1, 1 and 10 (:data:`~m2ib.tuning.grid.DEFAULT_BETAS`)
            and the model's recommended beta. The paper's: 0.1.
        variants: the bottlenecks to try (:data:`~m2ib.tuning.grid.VARIANTS`); default
            ``('published', 'standardised')``.
        rows: use that many rows drawn at random with ``seed``; default ``None``: every row.
        seed: the seed of the rows drawn and of the fits (the agreement criterion also uses
            ``seed + 1``); default ``0``.
        batch_size: bottleneck fits run together; default ``16``.
        device: ``"cpu"``, ``"cuda"``, ...; default ``None``: where the model loads.
        command: the command line recorded in the outputs; default ``''``.
        progress: show tqdm bars; default ``True``.
        ray: a :class:`~m2ib.evaluation.distributed.RayConfig` to score the grid on Ray; default
            ``None``: here.

    Examples:
        >>> from pathlib import Path
        >>> from m2ib.tuning.tune import TuneRequest, check_request
        >>> request = TuneRequest(model="shapes", data="shapes:val:64", out=Path("tuned"), towers=("image",))
        >>> request.variants, request.betas
        (('published', 'standardised'), None)
        >>> check_request(TuneRequest(model="shapes", data="shapes:val:1", out=Path("tuned")))  # before any model loads
        Traceback (most recent call last):
        ...
        m2ib.errors.InputError: --data shapes:val:1: 1 pair(s); tune needs 2 or more
    """

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
    """What :func:`tune` wrote and chose.

    Attributes:
        files: the files written by name: ``settings`` (``m2ib.json``), ``records``
            (``points.jsonl``), ``report`` (``report.html``).
        lines: the summary ``m2ib tune`` prints: one line per tower, and one about unreadable rows if any.
        recommended: the chosen M2IB settings (``{"vision_layer": 3, "vision_beta": 0.1}``), as
            ``m2ib.json`` records them under ``"recommended"``.

    Examples:
        See :func:`tune`.
    """

    files: dict[str, Path]
    lines: list[str]
    recommended: dict[str, Any]


def tune(req: TuneRequest) -> TuneOutcome:
    """Run ``m2ib tune`` end to end: choose M2IB's layer, beta and bottleneck per tower on your pairs.

    Checks the request (:func:`check_request`, before the model loads), builds the grid (each
    tower's layers x betas x bottleneck variants), fits M2IB at every point and scores it on the
    label-free criteria (sanity, faithfulness, agreement across two seeds, constant maps) and,
    where the rows carry ground truth, pointing and energy (:mod:`m2ib.tuning.criteria`),
    resumably (``points.jsonl``: a killed run goes on where it stopped), applies
    the selection rule and writes ``m2ib.json`` (pass it to ``m2ib.load(..., settings=...)``)
    and ``report.html``. How it chooses: docs/tune.md. The report needs matplotlib.

    Args:
        req: the request; see :class:`TuneRequest` for each field and its default.

    Returns:
        A :class:`TuneOutcome`: the files written, the summary lines, the chosen settings.

    Examples:
        >>> import m2ib, tempfile
        >>> from pathlib import Path
        >>> from m2ib.tuning.tune import TuneRequest, tune
        >>> out = Path(tempfile.mkdtemp()) / "tuned"
        >>> request = TuneRequest(
        ...     model="shapes", data="shapes:val:4", out=out, towers=("image",), layers={"image": (3, 4)},
        ...     betas=(0.1, 1.0), variants=("published",), progress=False,
        ... )
        >>> outcome = tune(request)  # doctest: +SKIP
        >>> sorted(outcome.files), outcome.recommended  # doctest: +SKIP
        (['records', 'report', 'settings'], {'vision_layer': 3, 'vision_beta': 0.1})
        >>> model = m2ib.load("shapes", settings=out / "m2ib.json")  # doctest: +SKIP

        The run is skipped here: about two minutes on a CPU for these 4 grid points.
    """
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
