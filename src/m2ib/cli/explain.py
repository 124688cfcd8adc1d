"""``m2ib explain``: its parser and the checks that need no model, then :mod:`m2ib.pairs` (one pipeline
for first-order and interaction methods).

Every flag works for every method or is refused in one line before the model loads. An interaction
method (exCLIP, FIxLIP, ...) explains one pair at a time, both sides at once, and has no target:
``--negative``, ``--modalities`` other than image,text and ``--batch-size`` are refused for it;
``--box`` is drawn on each of its panels. A first-order method that has no target (attention
rollout) refuses ``--negative``, and one that cannot explain a side refuses ``--modalities`` naming it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .common import COMMANDS, EXIT_BAD_INPUT, add_settings_flag, interactions, model_help, settings_file

if TYPE_CHECKING:
    from ..backends.base import Modality


def add_explain(sub) -> None:
    """The ``explain`` subcommand's parser (logic: m2ib.pairs, m2ib.interactions)."""
    from ..generative.methods import ANSWER_METHODS as answer_methods
    from ..methods import REGISTRY
    from ..models import DEFAULT_MODEL
    from ..settings import add_setting_flags

    ex = sub.add_parser(
        "explain",
        help=COMMANDS["explain"],
        description="Explain one image-text pair (IMAGE TEXT) or many (--pairs FILE). Writes "
        "STEM.png (figure), STEM.npz (maps) and STEM.json (settings, scores) into --out.",
    )
    ex.add_argument("image", nargs="?", help="image file")
    ex.add_argument("text", nargs="?", help="text to explain against the image")
    ex.add_argument(
        "--pairs",
        type=Path,
        help="TSV/CSV of pairs: columns 'image' and 'text' (or 'caption') "
        "with a header, or caption then image path without one (the M2IB reference format); "
        "relative paths are read from the file's folder",
    )
    ex.add_argument("--model", default=DEFAULT_MODEL, help=model_help())
    add_settings_flag(ex)
    ex.add_argument(
        "--method",
        default="m2ib",
        metavar="NAME[,NAME...]|all",
        help=f"attribution method: one of {', '.join(REGISTRY)}; a comma list or 'all' writes one "
        "comparison figure per pair with a row per method (default: m2ib); or one word-region "
        f"interaction method: {', '.join(interactions())}; with --answer, one answer method: "
        f"{', '.join(answer_methods)} (docs/generative.md)",
    )
    ex.add_argument(
        "--modalities",
        default=None,
        help="sides to explain: image,text | image | text (default: every side the method can explain)",
    )
    ex.add_argument(
        "--negative",
        action="append",
        default=[],
        metavar="TEXT",
        help="a text to tell the pair apart from (repeatable): the target becomes the margin of the "
        "image's similarity to TEXT over its mean similarity to the negatives (off by default; with "
        "several methods, those that have a target use it; refused for methods without one)",
    )
    ex.add_argument(
        "--answer",
        default=None,
        metavar="TEXT",
        help="explain a generative VLM's answer TEXT to the prompt (without --answer, a generative --model "
        "such as shapes-vqa or a model folder explains its own answer, generated first; TEXT is then the prompt, in the "
        "family's form: LLaVA (1.5, NeXT, OneVision) and Idefics3 <image>, Qwen2-VL <|image_pad|>, "
        "InternVL <IMG_CONTEXT>, PaliGemma plain text); --model: its save_pretrained folder or hub id "
        "(LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, PaliGemma, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, "
        "InternVL: m2ib list); M2IB's settings: --vision-beta (its beta), --steps, ..., --image-layer, "
        "--[no-]per-word, --[no-]prompt-side; see docs/generative.md",
    )
    ex.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ex.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pairs fitted together (default: 16; first-order "
        "methods only: an interaction method explains one pair at a time)",
    )
    ex.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="X,Y,W,H",
        help="draw a box on the figure, in the original image's pixels (repeatable)",
    )
    ex.add_argument("--no-figure", action="store_true", help="write maps and JSON only")
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="redo pairs whose outputs exist (else a pair done by "
        "the same command is skipped, and one made with another text, image, method, setting or model "
        "is refused)",
    )
    from .answer import add_answer_switches, answer_flag_methods, describe_answer_site

    add_setting_flags(ex, {**REGISTRY, **interactions(), **answer_flag_methods()})
    describe_answer_site(ex)
    add_answer_switches(ex)


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers X,Y,W,H") from None
    if not all(map(math.isfinite, (x, y, w, h))) or min(x, y) < 0 or min(w, h) <= 0:
        raise InputError(f"--box {text}: X,Y must be >= 0 and W,H > 0 (pixels of the original image)")
    return x, y, w, h


def _methods(text: str) -> tuple[list[str], bool]:
    """The methods ``--method`` names, and whether it is an interaction method (which runs alone)."""
    from ..methods import REGISTRY

    names = [n.strip() for n in text.split(",")]
    found = [n for n in names if n in interactions()]
    if found and len(names) > 1:
        raise InputError(f"--method {text}: an interaction method ({found[0]}) runs alone; give it without others")
    if found:
        return found, True
    return REGISTRY.select(text, "--method"), False


def _method_settings(methods: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each method's share of the setting flags, checked now (before any model is loaded); a flag
    of a method not chosen is refused, not ignored."""
    from ..methods import REGISTRY
    from ..settings import given_settings, settings_per_method

    registry = {**REGISTRY, **interactions()}
    per_method = settings_per_method(methods, given_settings(args, registry), registry)
    for method, values in per_method.items():
        registry[method]().make_settings(None, **values)  # unknown names and bad ranges: one line, exit 2
    return per_method


def _check_flags(
    methods: list[str], interaction: bool, args: argparse.Namespace, modalities: tuple[str, ...] | None
) -> None:
    """Refuse, in one line, a flag the chosen method(s) would ignore."""
    from ..methods import REGISTRY

    if args.box and args.no_figure:
        raise InputError("--box is drawn on the figure, and --no-figure writes none: drop one of them")
    if interaction:
        name = methods[0]
        if args.negative:
            raise InputError(
                f"--negative: {name} is an interaction method and has no target to contrast; drop --negative"
            )
        if modalities is not None and set(modalities) != {"image", "text"}:
            raise InputError(
                f"--modalities {args.modalities}: {name} explains image and text together; drop --modalities"
            )
        if args.batch_size is not None:
            raise InputError(
                f"--batch-size: {name} explains one pair at a time (its settings size its own "
                "batches); drop --batch-size"
            )
        return
    classes = [REGISTRY[m] for m in methods]
    if args.negative and not any(c.uses_target for c in classes):
        raise InputError(
            f"--negative: {', '.join(methods)} {'has' if len(methods) == 1 else 'have'} no target "
            "(the map does not depend on the text compared with); drop --negative"
        )
    if modalities is not None and not any(set(modalities) & set(c.modalities) for c in classes):
        raise InputError(
            f"--modalities {args.modalities}: {', '.join(methods)} cannot explain the {' and '.join(modalities)} side"
        )
    if modalities is not None and len(methods) == 1 and not set(modalities) <= set(classes[0].modalities):
        raise InputError(
            f"--modalities {args.modalities}: {methods[0]} explains only the "
            f"{' and '.join(classes[0].modalities)} side; use --modalities "
            f"{','.join(classes[0].modalities)}"
        )


def run_explain(args: argparse.Namespace) -> int:
    from .. import preflight
    from ..api import load
    from ..pairs import PairRows, PairsJob, explain_pairs, read_pairs, stems_of
    from .common import freeze_startup, status

    preflight.check_numeric_flags(args)  # then the extras the flags need, before any model loads
    from ..generative.loading import is_generative

    if args.answer is not None or is_generative(args.model):  # a generative VLM's answer: its own short route
        from .answer import run_answer

        return run_answer(args)
    from .answer import refuse_answer_flags

    refuse_answer_flags(args)
    preflight.check_installed(preflight.command_needs(args))
    # Everything that can be checked without the model is checked first (a load takes seconds).
    methods, interaction = _methods(args.method)
    settings = _method_settings(methods, args)
    from_file = settings_file(args.settings)
    modalities = _modalities(args.modalities)
    _check_flags(methods, interaction, args, modalities)
    boxes = [_parse_box(b) for b in args.box]
    if args.pairs is not None:
        if args.image or args.text:
            raise InputError("give IMAGE TEXT or --pairs FILE, not both")
        rows = read_pairs(args.pairs)
    else:
        if args.image is None or args.text is None:
            raise InputError("give an IMAGE and a TEXT (or --pairs FILE); see m2ib explain --help")
        preflight.check_text(args.text)
        preflight.check_image_files([args.image])
        preflight.check_boxes(boxes, args.image)
        rows = PairRows([(args.image, args.text)])
    for negative in args.negative:
        preflight.check_text(negative, "--negative")
    preflight.check_device(args.device)
    preflight.check_positive(args.batch_size, "--batch-size")
    job = PairsJob(
        methods=methods,
        settings=settings,
        out=args.out,
        model=str(args.model),
        interaction=interaction,
        modalities=modalities,
        negatives=list(args.negative) or None,
        boxes=boxes,
        figure=not args.no_figure,
        overwrite=args.overwrite,
        batch_size=16 if args.batch_size is None else args.batch_size,
        inputs=() if args.pairs is None else (args.pairs,),
        settings_file={m: v for m, v in from_file.values.items() if m in methods} or None if from_file else None,
    )

    def load_model() -> Any:  # called only when some pair is left to do; the seconds before it are never silent
        status(f"loading model {args.model} ...")
        backend = load(args.model, device=args.device, settings=from_file)
        freeze_startup()
        status(f"explaining {len(rows.pairs)} pair(s) with {', '.join(methods)} ...")
        return backend

    outcome = explain_pairs(load_model, rows, stems_of(rows, job, numbered=args.pairs is not None), job)
    return _explained(outcome, len(rows.pairs), args.out)


def _explained(outcome: Any, total: int, out: Path) -> int:
    """Print what ``explain`` wrote (one pair: its paths) and skipped; 2 when any row failed."""
    if outcome.already_done:
        print(f"m2ib: {outcome.already_done} pair(s) already in {out}, skipped (--overwrite to redo)", file=sys.stderr)
    if total == 1:
        for paths in outcome.written:
            print(*paths.values(), sep="\n")
    if outcome.failed:
        print(f"m2ib: {outcome.failed} of {total} pair(s) failed (see above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


_SIDES: dict[str, Modality] = {"image": "image", "text": "text"}


def _modalities(text: str | None) -> tuple[Modality, ...] | None:
    if text is None:
        return None
    words = [m.strip() for m in text.split(",") if m.strip()]
    wrong = [m for m in words if m not in _SIDES]
    if wrong or not words:
        raise InputError(f"--modalities {text!r}: use image,text, image or text")
    return tuple(_SIDES[m] for m in words)
