"""``m2ib tune`` on a generative VLM as a function: choose the site and beta of M2IB on an answer.

The grid is sites x betas for the one image bottleneck (``image_layer`` x ``beta`` of
:class:`~m2ib.generative.m2ib.AnswerM2IBSettings`); the points are scored by :mod:`.answer_fits`,
recorded by :mod:`.store` (resumable), chosen by the same rule as the CLIP path (:mod:`.rule`,
through :func:`.choice.choose_all`, one tower named ``image``), and written as ``m2ib.json`` (the
recommended settings under ``{"recommended": {"answer_m2ib": {...}}}``, read back by
:func:`read_answer_settings`) and ``report.html`` (:mod:`.report`, unchanged). docs/tune.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .answer_data import MIN_ROWS, VQARow, read_vqa
from .grid import DEFAULT_BETAS, PUBLISHED_BETA, Point, points_of
from .tune import OUTPUTS, TuneOutcome

#: The key of ``m2ib.json``'s recommended settings for M2IB on an answer.
SETTINGS_KEY = "answer_m2ib"


@dataclass(frozen=True)
class AnswerTuneRequest:
    """What ``m2ib tune`` was asked for a generative VLM.

    Attributes:
        model: a generative model's ``save_pretrained`` folder or hub id (as ``m2ib explain --answer``).
        data: a TSV with columns image, prompt and answer (:mod:`m2ib.tuning.answer_data`); 2 rows or more.
        out: the output folder (``points.jsonl``, ``m2ib.json``, ``report.html``); not an input.
        layers: the sites to try: 0 = the projector's output (the published place), l = decoder
            block l's output at the image positions (below the last block); default ``None``: 0
            and the middle block.
        betas: the betas to try; default ``None``: 0.1, 1 and 10.
        rows: use that many rows drawn at random with ``seed``; default ``None``: every row.
        seed: the seed of the rows drawn and of the fits (agreement also uses ``seed + 1``); default ``0``.
        settings: M2IB settings fixed for the run (``steps``, ``samples``, ``lr``, ``var``,
            ``init_alpha``); default ``{}``: the paper's.
        max_new_tokens: the longest answer generated for a row without one; default ``32``.
        device: ``"cpu"``, ``"cuda"``, ...; default ``None``: where the model loads.
        command: the command line recorded in the outputs; default ``''``.
        progress: show a tqdm bar; default ``True``.
    """

    model: str
    data: str
    out: Path
    layers: tuple[int, ...] | None = None
    betas: tuple[float, ...] | None = None
    rows: int | None = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 32
    device: str | None = None
    command: str = ""
    progress: bool = True


def is_generative_model(spec: str) -> bool:
    """Whether ``spec`` is a model folder whose ``config.json`` names a supported generative VLM class
    (no weights read; a hub id is not looked up: ``m2ib tune --generative`` says so)."""
    from ..generative.loading import model_class

    if not (Path(spec) / "config.json").is_file():
        return False
    try:
        model_class(Path(spec))
    except InputError:
        return False
    return True


def config_depth(spec: str) -> int | None:
    """The language model's block count from a model folder's ``config.json`` (no weights read); None
    when it is not a folder or does not say."""
    config = Path(spec) / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text = data["text_config"] if isinstance(data.get("text_config"), dict) else data
    depth = text.get("num_hidden_layers", data.get("num_hidden_layers"))
    return depth if isinstance(depth, int) and depth > 0 else None


def check_sites(layers: tuple[int, ...], depth: int | None) -> None:
    """Each site an integer 0 .. depth - 1 (after the last block the image states reach no answer token)."""
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise InputError(
                f"--layers: {layer!r} is not a site (0 = the projector's output, l = the language model's block l)"
            )
        if depth is not None and layer >= depth:
            raise InputError(
                f"--layers: {layer} is not a site of the language model's {depth} blocks (0 .. {depth - 1}: "
                "after the last block the image states reach no answer token)"
            )


def check_answer_request(req: AnswerTuneRequest) -> list[VQARow]:
    """Every check that needs no model (the sites against the depth ``config.json`` gives, when it
    does), then the rows: one line for the first problem."""
    from ..generative.m2ib import AnswerM2IBSettings
    from ..settings import check_seed
    from .answer_fits import POINT_SETTINGS

    check_seed(req.seed, "--seed")
    check_seed(req.seed + 1, "--seed")
    if req.layers is not None and not req.layers:
        raise InputError("the grid is empty: give one or more --layers")
    if req.betas is not None and not req.betas:
        raise InputError("the grid is empty: give one or more --betas")
    for beta in req.betas or ():
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise InputError(f"--betas: {beta!r} must be a positive finite number")
    check_sites(req.layers or (), config_depth(req.model))
    fixed = sorted(set(req.settings) & set(POINT_SETTINGS))
    if fixed:
        raise InputError(f"settings: {', '.join(fixed)} are set by the grid or the run, not fixed")
    AnswerM2IBSettings(**req.settings)  # unknown or bad values: one line
    if req.rows is not None and req.rows < MIN_ROWS:
        raise InputError(f"--rows {req.rows}: tune needs {MIN_ROWS} or more rows")
    if isinstance(req.max_new_tokens, bool) or not isinstance(req.max_new_tokens, int) or req.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {req.max_new_tokens!r}")
    out = req.out.resolve()
    for path in [Path(p).resolve() for p in (req.data, req.model) if Path(p).exists()]:
        if out == path or any((out / name) == path for name in OUTPUTS):
            raise InputError(f"--out {req.out}: would write over the input {path}; pick another folder")
    return read_vqa(req.data, req.rows, req.seed)


def recommended_answer(choices: list[Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The chosen point's settings (``image_layer``, ``beta``) with the run's fixed ones; {} when none qualifies."""
    chosen = choices[0].chosen
    return {} if chosen is None else {**fixed, **chosen["settings"]}


def write_answer_settings(out: Path, choices: list[Any], run: dict[str, Any], fixed: dict[str, Any]) -> Path:
    """``out/m2ib.json``: the recommendation under ``recommended.answer_m2ib`` and the run under
    ``tune`` (as the CLIP path's :func:`~m2ib.tuning.outputs.settings_document`)."""
    from ..fileio import atomic_write_text
    from .outputs import RULE, clean, tower_entry

    document = clean(
        {
            "recommended": {SETTINGS_KEY: recommended_answer(choices, fixed)},
            "tune": {**run, "rule": RULE, "towers": {c.tower: tower_entry(c) for c in choices}},
        }
    )
    return atomic_write_text(out / "m2ib.json", json.dumps(document, indent=2, allow_nan=False) + "\n")


def read_answer_settings(path: str | Path) -> dict[str, Any]:
    """The settings ``m2ib tune`` recommended for M2IB on an answer, from its ``m2ib.json``: pass
    them to :func:`m2ib.explain_answer` as ``**settings`` ({} when it recommended none)."""
    from ..generative.m2ib import AnswerM2IBSettings

    try:
        document = json.loads(Path(path).read_text())
        settings = dict(document["recommended"][SETTINGS_KEY])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not the m2ib.json of a generative m2ib tune ({exc!r})") from None
    AnswerM2IBSettings(**settings)  # a damaged file: one line
    return settings


def summary(choices: list[Any]) -> list[str]:
    c = choices[0]
    if c.chosen is None:
        return [f"answer: no recommendation ({c.choice.why})"]
    return [f"answer: image_layer {c.chosen['layer']}, beta {c.chosen['beta']:g} ({c.choice.why})"]


def answer_tune(req: AnswerTuneRequest) -> TuneOutcome:
    """Run ``m2ib tune`` on a generative VLM end to end (docs/tune.md, "Generative models"): check the
    request and read the rows (before the model loads), score every (site, beta) point of the grid
    resumably, apply the rule, write ``m2ib.json`` and ``report.html``."""
    from .. import preflight
    from ..fileio import folder_lock
    from ..generative.loading import load_generative
    from ..generative.m2ib import decoder_blocks
    from .answer_fits import chance_levels, prepare_items, score_answer_grid
    from .choice import choose_all
    from .report import write_report
    from .run import Grid
    from .store import open_store

    rows = check_answer_request(req)
    preflight.check_device(req.device)
    out = preflight.prepare_output_dir(req.out)
    with folder_lock(out, "m2ib tune"):
        backend = load_generative(req.model, device=req.device)
        depth = len(decoder_blocks(backend, "--layers"))
        layers = tuple(sorted(set(req.layers))) if req.layers is not None else tuple(sorted({0, depth // 2}))
        check_sites(layers, depth)
        betas = tuple(sorted(set(req.betas or DEFAULT_BETAS)))
        grid = Grid({"image": points_of("image", ("published",), layers, betas)})
        items = prepare_items(backend, rows, req.max_new_tokens)
        identity = {
            "model": req.model,
            "data": req.data,
            "rows": req.rows,
            "pairs": len(items),
            "seed": req.seed,
            "grid": grid.as_dict(),
            "generative": {
                "settings": req.settings,
                "answers": [it.answer for it in items],
                "masks": sum(it.mask is not None for it in items),
            },
        }
        store = open_store(out, identity)
        score_answer_grid(backend, items, grid, store, req.seed, dict(req.settings), req.progress)
        records = [store.points[p.key] for p in grid.towers["image"]]
        choices = choose_all({"image": records}, {"image": chance_levels(items)})
        run = {"command": req.command, **identity}
        files = {"settings": write_answer_settings(out, choices, run, dict(req.settings)), "records": store.path}
        published = {"image": Point("image", "published", 0, PUBLISHED_BETA).key}
        pictures = [it.query.display.detach().float().cpu() for it in items]
        captions = [f"{it.answer[:40]} ({it.source})" for it in items]
        files["report"] = write_report(out, choices, run, published, pictures, [], captions)
        return TuneOutcome(files, summary(choices), recommended_answer(choices, dict(req.settings)))


__all__ = [
    "SETTINGS_KEY",
    "AnswerTuneRequest",
    "answer_tune",
    "check_answer_request",
    "config_depth",
    "is_generative_model",
    "read_answer_settings",
]
