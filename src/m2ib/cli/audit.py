"""``m2ib audit``: its parser, the checks that need no model, then the audit (:func:`m2ib.auditing.audit`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import COMMANDS, EXIT_UNFINISHED, add_settings_flag, model_help, settings_file
from .evaluate import evaluation_settings, reproducing


def add_audit(sub) -> None:
    """The ``audit`` subcommand's parser (logic: m2ib.auditing)."""
    from ..methods import REGISTRY
    from ..models import DEFAULT_MODEL
    from ..settings import add_setting_flags

    au = sub.add_parser(
        "audit",
        help=COMMANDS["audit"],
        description="Explain every pair of --data with one method and aggregate: OUT/words.csv "
        "(which words carry the match, and which too often), OUT/regions.csv (where the mean map "
        "singles out patches), OUT/pairs.csv (one row per pair), OUT/image_prior.npz (the mean map "
        "and its regions) and OUT/report.html; a flag the --control shares is a 'method artefact' "
        "(docs/auditing.md). Each explained pair is appended to OUT/results.jsonl at once; re-running "
        "the same command resumes.",
    )
    au.add_argument(
        "--data",
        required=True,
        help="TSV/CSV of caption and image path (or a header with image and "
        "text/caption columns), or shapes:SPLIT:N[:KIND] (e.g. shapes:test:200)",
    )
    au.add_argument("--model", default=DEFAULT_MODEL, help=model_help())
    add_settings_flag(au)
    au.add_argument("--out", type=Path, required=True, help="output directory")
    au.add_argument("--method", default="m2ib", choices=list(REGISTRY), help="attribution method (default: m2ib)")
    au.add_argument(
        "--rows",
        type=int,
        default=None,
        metavar="N",
        help="audit N rows drawn at random with --seed (default: every row)",
    )
    au.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    au.add_argument("--batch-size", type=int, default=8, help="pairs explained together (default: 8)")
    au.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"start no new batch after this long (exit status {EXIT_UNFINISHED}; re-run to go on)",
    )
    au.add_argument(
        "--control",
        default="randomised",
        metavar="MODEL",
        help="explain every pair again under this model and call what it flags as much a 'method artefact': "
        "'randomised' (default: the model with its head and blocks above the method's layers randomised), "
        "a model as --model takes, or 'none'",
    )
    au.add_argument("--no-report", action="store_true", help="write the CSV and npz files only")
    au.set_defaults(setting=[])
    add_setting_flags(au, {**REGISTRY})


def run_audit(args: argparse.Namespace) -> int:
    """``m2ib audit``: check everything cheap, then explain every pair and aggregate (:func:`m2ib.auditing.audit`)."""
    import shlex

    from .. import preflight
    from ..auditing import audit
    from ..auditing.control import check_control, check_same_control
    from ..auditing.run import locked

    seed, per_method = evaluation_settings([args.method], args)  # checked before the model loads
    from_file = settings_file(args.settings)
    preflight.check_device(args.device)
    preflight.check_numeric_flags(args)
    preflight.check_installed(preflight.command_needs(args))
    data = args.data.strip()
    if not data.startswith("shapes:") and not Path(data).is_file():
        raise InputError(f"--data {data}: no such file (give a TSV/CSV of pairs or shapes:SPLIT:N)")
    control = check_control(args.control)
    preflight.prepare_output_dir(args.out)
    with locked(args.out):  # a run already writing there is refused now, not after the load
        check_same_control(args.out, control)
    result = audit(
        args.model,
        data,
        args.out,
        method=args.method,
        rows=args.rows,
        seed=seed,
        batch_size=args.batch_size,
        device=args.device,
        report=not args.no_report,
        time_limit=args.time_limit,
        command="m2ib " + shlex.join(reproducing(args.argv)),
        control=control,
        settings_file=from_file,
        **per_method.get(args.method, {}),
    )
    if result.bad:
        print(f"m2ib: {len(result.bad)} row(s) could not be used (listed in the report)", file=sys.stderr)
    print(result.files.get("report", result.files.get("pairs")))
    return 0 if result.finished else EXIT_UNFINISHED
