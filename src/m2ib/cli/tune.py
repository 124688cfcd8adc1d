"""``m2ib tune``: its parser and handler (logic: :mod:`m2ib.tuning`). The grid flags are parsed and
checked before the model loads; layers against the towers' depths after the load, before any fit."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .. import preflight
from .common import COMMANDS, add_ray_flags, model_help, ray_config_from, status

#: The flags of the CLIP path that a generative tune refuses when given (flag, attribute, default).
CLIP_ONLY = (
    ("--towers", "towers", "image,text"),
    ("--image-layers", "image_layers", None),
    ("--text-layers", "text_layers", None),
    ("--bottlenecks", "bottlenecks", "published,standardised"),
    ("--batch-size", "batch_size", 16),
    ("--ray", "ray", None),
)


def run_answer_tune(args: argparse.Namespace) -> int:
    """A generative VLM's tune (docs/tune.md, "Generative models"): --layers are the image
    bottleneck's sites (0: the projector's output; l: decoder block l's output), --betas its betas."""
    from ..errors import InputError
    from ..tuning.answer_tune import AnswerTuneRequest, answer_tune
    from ..tuning.grid import parse_betas, parse_layers

    for flag, name, default in CLIP_ONLY:
        if getattr(args, name, default) != default:
            raise InputError(f"{flag} does not apply to a generative model's tune (its grid: --layers x --betas)")
    request = AnswerTuneRequest(
        model=str(args.model),
        data=args.data,
        out=args.out,
        layers=parse_layers(args.layers, "--layers"),
        betas=parse_betas(args.betas),
        rows=args.rows,
        seed=args.seed,
        device=args.device,
        command="m2ib " + shlex.join(getattr(args, "argv", [])),
        progress=not args.no_progress,
    )
    status(f"tuning M2IB on the answers of {args.data} with {args.model} ...")
    outcome = answer_tune(request)
    for line in outcome.lines:
        print(line)
    print(outcome.files["settings"])
    print(outcome.files["report"])
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from ..tuning.answer_tune import is_generative_model
    from ..tuning.grid import parse_betas, parse_layers, parse_towers, parse_variants
    from ..tuning.tune import TuneRequest, tune

    if args.generative or is_generative_model(str(args.model)):
        return run_answer_tune(args)
    preflight.check_installed(preflight.command_needs(args))

    towers = parse_towers(args.towers)
    layers, flags = {}, {}
    common = parse_layers(args.layers, "--layers")
    for tower in towers:
        own = parse_layers(getattr(args, f"{tower}_layers"), f"--{tower}-layers")
        chosen = own if own is not None else common
        if chosen is not None:
            layers[tower] = chosen
            flags[tower] = f"--{tower}-layers" if own is not None else "--layers"
    request = TuneRequest(
        model=args.model,
        data=args.data,
        out=args.out,
        towers=towers,
        layers=layers,
        layer_flags=flags,
        betas=parse_betas(args.betas),
        variants=parse_variants(args.bottlenecks),
        rows=args.rows,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        command="m2ib " + shlex.join(getattr(args, "argv", [])),
        progress=not args.no_progress,
        ray=None if args.ray is None else ray_config_from(args, batch_size=args.batch_size),
    )
    status(f"tuning M2IB on {args.data} with {args.model} ...")
    outcome = tune(request)
    for line in outcome.lines:
        print(line)
    print(outcome.files["settings"])
    print(outcome.files["report"])
    return 0


def add_tune(sub) -> None:
    """The ``tune`` subcommand's parser."""
    from ..models import DEFAULT_MODEL

    p = sub.add_parser(
        "tune",
        help=COMMANDS["tune"],
        description="Search each tower's M2IB layer, beta and bottleneck on your own pairs (no labels "
        "needed; ground-truth criteria are added when the data has masks, boxes or shapes captions). "
        "Each finished point is appended to OUT/points.jsonl; re-running the same command resumes. "
        "Writes OUT/m2ib.json (the recommended settings, in the shipped models' format) and "
        "OUT/report.html. The rule: docs/tune.md.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=model_help())
    p.add_argument(
        "--data", required=True, help="pairs as m2ib evaluate --data reads them (a TSV/CSV, a box CSV, shapes:SPLIT:N)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (one grid per folder)")
    p.add_argument("--towers", default="image,text", help="image, text or image,text (default)")
    p.add_argument(
        "--layers",
        default=None,
        help="blocks to try in every tower, e.g. 0,3,6,9 (negative: from the end); default: the "
        "middle block, the published layer and the model's recommended one",
    )
    p.add_argument("--image-layers", default=None, help="the image tower's blocks (overrides --layers)")
    p.add_argument("--text-layers", default=None, help="the text tower's blocks (overrides --layers)")
    p.add_argument("--betas", default=None, help="betas to try, e.g. 0.1,1,10 (default; plus the model's recommended)")
    p.add_argument(
        "--bottlenecks",
        default="published,standardised",
        help="bottleneck variants to try (default: published,standardised; standardised takes its "
        "statistics from the data's first 64 rows; adaib, AdaIB's default form, does not read beta: one "
        "point per layer)",
    )
    p.add_argument("--rows", type=int, default=None, metavar="N", help="use N rows drawn at random with --seed")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the rows drawn and of the fits (the second seed is SEED+1)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="bottleneck fits run together (default 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--generative",
        action="store_true",
        help="tune M2IB on a generative VLM's answers (automatic for a model folder whose config.json names a "
        "supported generative class; needed for a hub id): --data is then a TSV with columns image, prompt "
        "and answer, --layers the image bottleneck's sites (0 = the projector's output, l = the language "
        "model's block l; default 0 and the middle block); see docs/tune.md",
    )
    add_ray_flags(p)
