"""The ``m2ib`` command (also ``python -m m2ib``): argument parsing and dispatch only.

``explain`` runs :mod:`m2ib.pairs` (over :mod:`m2ib.api`), ``evaluate`` runs
:mod:`m2ib.evaluation`, ``serve`` and ``train-shapes`` have their own parsers
(:mod:`m2ib.serve`, :mod:`m2ib.training`). Method settings become flags through
:mod:`m2ib.settings`, so a setting is declared once, with its help text, in its method's file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import typing
import warnings
from collections.abc import Sequence
import math
from pathlib import Path
from typing import Any

from .errors import InputError, M2IBError

from .evaluation.command import EXIT_UNFINISHED, SAMPLES_NOTE  # no model library: a light module

EXIT_BAD_INPUT = 2


def _model_help() -> str:
    from .models import BUILTIN_MODELS, DEFAULT_MODEL

    names = ", ".join(BUILTIN_MODELS)
    return (f"built-in name ({names}), Hugging Face hub id (e.g. openai/clip-vit-base-patch32, or hf:ID), a local "
            f"directory, open_clip:ARCH@TAG / open_clip:hf-hub:ORG/REPO, clip:ViT-B/32 / clip:FILE.pt "
            f"(@random: random weights; see README, Model families) (default: {DEFAULT_MODEL})")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (not the whole usage) and exits 2."""

    def error(self, message: str) -> typing.NoReturn:
        if "expected one argument" in message and "--box" in message:
            message += " (a box starting with '-' is written --box=X,Y,W,H)"
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's flags are built (the others are named
    with their help only), so ``m2ib --help`` and ``m2ib list`` import no method or model library."""
    parser = OneLineParser(prog="m2ib", description="Explain why a CLIP-style model matches an image "
                           "with a text (M2IB and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)
    full = {"explain": _add_explain, "evaluate": _add_evaluate, "audit": _add_audit}
    for name, helptext in COMMANDS.items():
        if name in full and command in (None, name):
            full[name](sub)
        else:
            sub.add_parser(name, add_help=name not in ("serve", "train-shapes"), help=helptext)
    return parser


COMMANDS = {
    "explain": "explain image-text pairs and write figures and maps",
    "list": "list methods, interaction methods, metrics, model families and built-in models",
    "evaluate": "measure attribution metrics over a dataset (resumable)",
    "audit": "what a model looks at and reads across a dataset, no labels needed (resumable; report.html)",
    "serve": "web viewer on 127.0.0.1 (pip install 'm2ib[viewer]'; see m2ib serve --help)",
    "train-shapes": "train a small CLIP on the synthetic shapes world (see m2ib train-shapes --help)",
}


def _add_explain(sub) -> None:
    from .methods import REGISTRY
    from .models import DEFAULT_MODEL
    from .settings import add_setting_flags

    ex = sub.add_parser("explain", help=COMMANDS["explain"],
                        description="Explain one image-text pair (IMAGE TEXT) or many (--pairs FILE). Writes "
                        "STEM.png (figure), STEM.npz (maps) and STEM.json (settings, scores) into --out.")
    ex.add_argument("image", nargs="?", help="image file")
    ex.add_argument("text", nargs="?", help="text to explain against the image")
    ex.add_argument("--pairs", type=Path, help="TSV/CSV of pairs: columns 'image' and 'text' (or 'caption') "
                    "with a header, or caption then image path without one (the M2IB reference format); "
                    "relative paths are read from the file's folder")
    ex.add_argument("--model", default=DEFAULT_MODEL, help=_model_help())
    ex.add_argument("--method", default="m2ib", metavar="NAME[,NAME...]|all",
                    help=f"attribution method: one of {', '.join(REGISTRY)}; a comma list or 'all' writes one "
                    "comparison figure per pair with a row per method (default: m2ib); or one word-region "
                    f"interaction method: {', '.join(_interactions())}")
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
    add_setting_flags(ex, {**REGISTRY, **_interactions()})


def _interactions() -> dict:
    from .interactions import REGISTRY as INTERACTIONS

    return dict(INTERACTIONS)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand's parser (logic: m2ib.evaluation.runner)."""
    from .methods import REGISTRY
    from .metrics import METRIC_NAMES, PROTOCOLS
    from .metrics.roar import BUDGETS
    from .models import DEFAULT_MODEL
    from .settings import add_setting_flags

    ev = sub.add_parser("evaluate", help=COMMANDS["evaluate"],
                        description="Explain every pair of --data with every method and measure the metrics. Each "
                        "finished (pair, method) is appended to OUT/results.jsonl at once (with provenance); "
                        "re-running the same command resumes. At the end: OUT/summary.md, OUT/summary.csv "
                        "(mean and 95% CI per method and metric) and OUT/plots/*.png. Note: " + SAMPLES_NOTE + ".")
    ev.add_argument("--data", required=True, help="TSV/CSV of caption and image path (the M2IB reference's "
                    "format, or a header with image and text/caption columns), an MS-CXR-style CSV (image, "
                    "phrase, x, y, w, h), shapes:SPLIT:N[:KIND] (e.g. shapes:test:200), shapes-collage:SPLIT:N "
                    "(2x2 collages; metric collage), or shapes-two:SPLIT:N (two-object captions with per-object "
                    "masks; metric grounding)")
    ev.add_argument("--methods", default="m2ib", metavar="NAME[,NAME...]|all",
                    help="methods to compare (default: m2ib); when resuming, some of the run's methods "
                    "only, to finish those first; word-region interaction methods "
                    f"({', '.join(_interactions())}) are measured by --metrics grounding")
    ev.add_argument("--metrics", default="confidence,deletion,road,localisation", metavar="NAME[,NAME...]|all",
                    help=f"of {', '.join(METRIC_NAMES)} (default: confidence,deletion,road,localisation; "
                    "roar needs shapes data)")
    ev.add_argument("--protocols", default=",".join(PROTOCOLS), help="confidence protocols: m2ib (the public "
                    "reference's, exactly) and/or mask (corrected) (default: both)")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=_model_help())
    ev.add_argument("--out", type=Path, required=True, help="output directory")
    ev.add_argument("--rows", type=int, default=None, metavar="N", help="evaluate N rows drawn at random with "
                    "--seed (default: every row); before this flag existed, --samples meant this")
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    ev.add_argument("--deletion-steps", type=int, default=20, help="steps of the deletion/insertion curves "
                    "(default: 20)")
    ev.add_argument("--iou-k", type=float, default=None, help="share of pixels in the top-k region for the IoU "
                    "(default: the ground-truth mask's own area)")
    ev.add_argument("--sanity-steps", type=int, default=None, help="cascade points of the sanity check, evenly "
                    "spaced from the head down (default: every block)")
    ev.add_argument("--roar-budget", default="tiny", choices=list(BUDGETS), help="ROAR+ scale: tiny and small "
                    "run on a CPU (reduced: few scenes, a tiny retrained model), full needs a GPU (default: tiny)")
    ev.add_argument("--setting", action="append", default=[], metavar="METHOD.NAME=VALUE",
                    help="one method's setting only, e.g. rise.masks=500 or kernelshap.samples=512 (repeatable; "
                    "the plain setting flags apply to every method that has the setting)")
    ev.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="start no new pair after "
                    f"this long; the summary covers what is done (exit status {EXIT_UNFINISHED}; re-run to go on)")
    ev.add_argument("--batch-size", type=int, default=None, help="rows explained together by the batched path "
                    "(default: 1 locally, 8 with --ray); the numbers do not change beyond float rounding")
    _add_ray(ev)
    add_setting_flags(ev, {**REGISTRY, **_interactions()})
    ev.add_argument("--method-samples", dest="samples", default=None, metavar="N",
                    help="the same as --samples (the methods' own 'samples' setting); kept for older commands")


def _add_audit(sub) -> None:
    """The ``audit`` subcommand's parser (logic: m2ib.auditing)."""
    from .methods import REGISTRY
    from .models import DEFAULT_MODEL
    from .settings import add_setting_flags

    au = sub.add_parser("audit", help=COMMANDS["audit"],
                        description="Explain every pair of --data with one method and aggregate: OUT/words.csv "
                        "(which words carry the match, and which too often), OUT/pairs.csv (one row per pair), "
                        "OUT/image_prior.npz (the mean map and its regions) and OUT/report.html. Each explained "
                        "pair is appended to OUT/results.jsonl at once; re-running the same command resumes.")
    au.add_argument("--data", required=True, help="TSV/CSV of caption and image path (or a header with image and "
                    "text/caption columns), or shapes:SPLIT:N[:KIND] (e.g. shapes:test:200)")
    au.add_argument("--model", default=DEFAULT_MODEL, help=_model_help())
    au.add_argument("--out", type=Path, required=True, help="output directory")
    au.add_argument("--method", default="m2ib", choices=list(REGISTRY), help="attribution method (default: m2ib)")
    au.add_argument("--rows", type=int, default=None, metavar="N", help="audit N rows drawn at random with --seed "
                    "(default: every row)")
    au.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    au.add_argument("--batch-size", type=int, default=8, help="pairs explained together (default: 8)")
    au.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="start no new batch after "
                    f"this long (exit status {EXIT_UNFINISHED}; re-run to go on)")
    au.add_argument("--no-report", action="store_true", help="write the CSV and npz files only")
    au.set_defaults(setting=[])
    add_setting_flags(au, REGISTRY)


def _audit(args: argparse.Namespace) -> int:
    from .auditing.command import run_audit

    return run_audit(args)


def _add_ray(ev: argparse.ArgumentParser) -> None:
    ray = ev.add_argument_group("Ray (pip install 'm2ib[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run on Ray: no ADDRESS starts a local instance; 'auto' or ray://HOST:PORT joins a "
                     "cluster (--out must then be a path every node can write)")
    ray.add_argument("--ray-actors", type=int, default=2, help="actor pool size; each actor loads the model once "
                     "(default: 2)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="logical CPUs per actor, also its "
                     "torch threads (default: 1)")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 when the "
                     "cluster has GPUs, else 0)")
    ray.add_argument("--ray-object-store", type=int, default=None, metavar="MB", help="object store of a local "
                     "instance (default: Ray's)")


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
    from .methods import REGISTRY
    from .settings import given_settings, settings_per_method

    per_method = settings_per_method(methods, given_settings(args, REGISTRY), REGISTRY)
    for method, values in per_method.items():
        REGISTRY[method]().make_settings(None, **values)  # unknown names and bad ranges: one line, exit 2
    return per_method


def _explain(args: argparse.Namespace) -> int:
    from . import preflight
    from .api import load
    from .methods import REGISTRY as METHODS
    from .pairs import PairsJob, explain_pairs, output_stem, read_pairs

    if args.method.strip() in _interactions():  # word-region interactions (m2ib.interactions)
        from .interactions.command import explain_interaction
        from .methods import REGISTRY

        outcome, total = explain_interaction(args, {**REGISTRY, **_interactions()})
        return _explained(outcome, total, args.out)
    # Everything that can be checked without the model is checked first (a load takes seconds).
    methods = METHODS.select(args.method, "--method")
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
    outcome = explain_pairs(load(args.model, device=args.device), pairs, stems, job)
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


def _list(_: argparse.Namespace) -> int:
    """Every registered method, interaction method, metric and model family (plugins' too), then the
    built-in models: one line each, with its sides and paper link."""
    from .backends.registry import FAMILIES
    from .interactions import REGISTRY as INTERACTIONS
    from .methods import REGISTRY as METHODS
    from .metrics import REGISTRY as METRICS
    from .models import BUILTIN_MODELS

    headings = {"methods": METHODS, "interaction methods": INTERACTIONS, "metrics": METRICS,
                "model families": FAMILIES}
    for heading, registry in headings.items():
        print(f"{heading}:")
        for name in registry.names():
            entry = registry.describe(name)
            sides = f" ({', '.join(entry.sides)})" if entry.sides else ""
            print(f"  {name:18s} {entry.title}{sides} {entry.paper}".rstrip())
    print("built-in models:")
    for name, spec in BUILTIN_MODELS.items():
        print(f"  {name:18s} {spec.description}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.command import run_evaluate

    return run_evaluate(args)


@contextlib.contextmanager
def _one_line_warnings() -> typing.Iterator[None]:
    """Warnings as ``m2ib: warning: ...`` lines (not file:line plus a source line), each once."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"m2ib: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``m2ib`` command; returns the exit status (2: bad input, one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-shapes"]:  # its own parser: every TrainConfig field is a flag
        from .training import main as train_main

        return train_main(argv[1:], prog="m2ib train-shapes")
    if argv[:1] == ["serve"]:  # its own parser; gradio is an optional extra
        from .serve import main as serve_main

        return serve_main(argv[1:])
    try:
        args = build_parser(argv[0] if argv else "").parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return int(exc.code or 0)
    except M2IBError as exc:  # the flags come from the registries: a broken plugin fails here
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.argv = argv  # what `evaluate` records as the run's command
    handlers: dict[str, Any] = {"explain": _explain, "list": _list, "evaluate": _evaluate, "audit": _audit}
    try:
        with _one_line_warnings():
            return handlers[args.command](args)
    except M2IBError as exc:
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("m2ib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
