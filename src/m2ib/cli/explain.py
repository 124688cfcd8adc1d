"""``m2ib explain``: its parser and the checks that need no model, then :mod:`m2ib.pairs` (first-order
methods) or :mod:`.interact` (an interaction method)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import COMMANDS, EXIT_BAD_INPUT, interactions, model_help


def add_explain(sub) -> None:
    """The ``explain`` subcommand's parser (logic: m2ib.pairs, m2ib.interactions)."""
    from ..methods import REGISTRY
    from ..models import DEFAULT_MODEL
    from ..settings import add_setting_flags

    ex = sub.add_parser("explain", help=COMMANDS["explain"],
                        description="Explain one image-text pair (IMAGE TEXT) or many (--pairs FILE). Writes "
                        "STEM.png (figure), STEM.npz (maps) and STEM.json (settings, scores) into --out.")
    ex.add_argument("image", nargs="?", help="image file")
    ex.add_argument("text", nargs="?", help="text to explain against the image")
    ex.add_argument("--pairs", type=Path, help="TSV/CSV of pairs: columns 'image' and 'text' (or 'caption') "
                    "with a header, or caption then image path without one (the M2IB reference format); "
                    "relative paths are read from the file's folder")
    ex.add_argument("--model", default=DEFAULT_MODEL, help=model_help())
    ex.add_argument("--method", default="m2ib", metavar="NAME[,NAME...]|all",
                    help=f"attribution method: one of {', '.join(REGISTRY)}; a comma list or 'all' writes one "
                    "comparison figure per pair with a row per method (default: m2ib); or one word-region "
                    f"interaction method: {', '.join(interactions())}")
    ex.add_argument("--modalities", default=None, help="sides to explain: image,text | image | text (default: "
                    "every side the method can explain)")
    ex.add_argument("--negative", action="append", default=[], metavar="TEXT",
                    help="a text to tell the pair apart from (repeatable): the target becomes the margin of the "
                    "image's similarity to TEXT over its mean similarity to the negatives (off by default)")
    ex.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ex.add_argument("--batch-size", type=int, default=16, help="pairs fitted together (default: 16)")
    ex.add_argument("--box", action="append", default=[], metavar="X,Y,W,H",
                    help="draw a box on the figure, in the original image's pixels (repeatable)")
    ex.add_argument("--no-figure", action="store_true", help="write maps and JSON only")
    ex.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs exist (else skipped)")
    add_setting_flags(ex, {**REGISTRY, **interactions()})


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers X,Y,W,H") from None
    if not all(map(math.isfinite, (x, y, w, h))) or min(x, y) < 0 or min(w, h) <= 0:
        raise InputError(f"--box {text}: X,Y must be >= 0 and W,H > 0 (pixels of the original image)")
    return x, y, w, h


def _method_settings(methods: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each method's share of the setting flags, checked now (before any model is loaded)."""
    from ..methods import REGISTRY
    from ..settings import given_settings, settings_per_method

    per_method = settings_per_method(methods, given_settings(args, REGISTRY), REGISTRY)
    for method, values in per_method.items():
        REGISTRY[method]().make_settings(None, **values)  # unknown names and bad ranges: one line, exit 2
    return per_method


def run_explain(args: argparse.Namespace) -> int:
    from .. import preflight
    from ..api import load
    from ..methods import REGISTRY as METHODS
    from ..pairs import PairsJob, explain_pairs, output_stem, read_pairs
    from .common import check_negatives, status

    preflight.check_numeric_flags(args)  # then the extras the flags need, before any model loads
    preflight.check_installed(preflight.command_needs(args))
    if args.method.strip() in interactions():  # word-region interactions (m2ib.interactions)
        from ..methods import REGISTRY
        from .interact import explain_interaction

        outcome, total = explain_interaction(args, {**REGISTRY, **interactions()})
        return _explained(outcome, total, args.out)
    # Everything that can be checked without the model is checked first (a load takes seconds).
    methods = METHODS.select(args.method, "--method")
    check_negatives(methods, args.negative)
    settings = _method_settings(methods, args)
    modalities = _modalities(args.modalities)
    if args.pairs is not None:
        if args.image or args.text:
            raise InputError("give IMAGE TEXT or --pairs FILE, not both")
        pairs = read_pairs(args.pairs)
        stems = [output_stem(i, image) for i, (image, _) in enumerate(pairs)]
    else:
        if args.image is None or args.text is None:
            raise InputError("give an IMAGE and a TEXT (or --pairs FILE); see m2ib explain --help")
        preflight.check_text(args.text)
        preflight.check_image_files([args.image])
        preflight.check_boxes([_parse_box(b) for b in args.box], args.image)
        pairs = [(args.image, args.text)]
        stems = [output_stem(None, args.image)]
    for negative in args.negative:
        preflight.check_text(negative, "--negative")
    preflight.check_device(args.device)
    preflight.check_positive(args.batch_size, "--batch-size")
    job = PairsJob(methods=methods, settings=settings, out=args.out, modalities=modalities,
                   negatives=list(args.negative) or None, boxes=[_parse_box(b) for b in args.box],
                   figure=not args.no_figure, overwrite=args.overwrite, batch_size=args.batch_size)
    preflight.prepare_output_dir(args.out)
    status(f"loading model {args.model} ...")  # the seconds before the first result are never silent
    backend = load(args.model, device=args.device)
    status(f"explaining {len(pairs)} pair(s) with {', '.join(methods)} ...")
    outcome = explain_pairs(backend, pairs, stems, job)
    return _explained(outcome, len(pairs), args.out)


def _explained(outcome: Any, total: int, out: Path) -> int:
    """Print what ``explain`` wrote (one pair: its paths) and skipped; 2 when any row failed."""
    if outcome.already_done:
        print(f"m2ib: {outcome.already_done} pair(s) already in {out}, skipped (--overwrite to redo)",
              file=sys.stderr)
    if total == 1:
        for paths in outcome.written:
            print(*paths.values(), sep="\n")
    if outcome.failed:
        print(f"m2ib: {outcome.failed} of {total} pair(s) failed (see above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _modalities(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    sides = tuple(m.strip() for m in text.split(",") if m.strip())
    wrong = [m for m in sides if m not in ("image", "text")]
    if wrong or not sides:
        raise InputError(f"--modalities {text!r}: use image,text, image or text")
    return sides
