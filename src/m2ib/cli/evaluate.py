"""``m2ib evaluate``: its parser, the checks that need no model, then the run
(:mod:`m2ib.evaluation.runner` locally, :mod:`m2ib.evaluation.distributed` on Ray) and the summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import (
    COMMANDS,
    EXIT_UNFINISHED,
    add_ray_flags,
    add_settings_flag,
    freeze_startup,
    interactions,
    model_help,
    ray_config_from,
    settings_file,
    status,
)

SAMPLES_NOTE = (
    "--samples sets the methods' own 'samples' setting (M2IB: noise copies per step; Kernel SHAP: "
    "coalitions), as in m2ib explain; to evaluate N rows drawn at random, use --rows N"
)


def reproducing(argv: list[str]) -> list[str]:
    """The arguments without ``--time-limit``: it decides when a run pauses, not its results, and
    the recorded command is the one that reproduces them."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--time-limit":
            skip = True
        elif not arg.startswith("--time-limit="):
            out.append(arg)
    return out


def evaluation_settings(methods: list[str], args: argparse.Namespace) -> tuple[int, dict[str, dict[str, Any]]]:
    """(seed, settings by method) from the setting flags and ``--setting METHOD.NAME=VALUE``."""
    from ..evaluation.phrases import make_settings, method_registry
    from ..methods import Settings
    from ..settings import (
        check_seed,
        fields_of,
        given_settings,
        parse_assignment,
        settings_per_method,
    )

    registry = method_registry()  # first-order and interaction methods
    given = given_settings(args, registry)
    seed_field = next(f for f in fields_of(Settings) if f.name == "seed")
    seed = seed_field.parse(given.pop("seed", 0))  # the run's seed: rows drawn, and every method's
    check_seed(seed, "--seed")
    per_method = settings_per_method(methods, given, registry) if given else {}
    for item in args.setting:
        method, name, value = parse_assignment(item, methods, registry)
        per_method.setdefault(method, {})[name] = value
    for method, values in per_method.items():
        make_settings(None, method, values)  # bad values: one line, before the model loads
    return seed, per_method


def chosen_metrics(args: argparse.Namespace) -> dict[str, Any]:
    """The metrics of ``--metrics``, each with its options from the option flags (``--deletion-steps``)
    and ``--metric-setting METRIC.NAME=VALUE``; an option of a metric not chosen is one error line."""
    from ..metrics import REGISTRY, choose
    from ..settings import fields_of, given_owned, owned_flags, parse_assignment

    names = REGISTRY.select(args.metrics, "--metrics")
    registry = dict(REGISTRY.items())  # name -> metric class, as the settings helpers read it
    options = given_owned(args, registry)
    for item in args.metric_setting:
        metric, name, value = parse_assignment(
            item, list(registry), registry, option="--metric-setting", owner="METRIC"
        )
        options.setdefault(metric, {})[name] = value
    for metric, given in options.items():
        if metric not in names:
            flag = owned_flags(metric, next(f for f in fields_of(REGISTRY[metric].Settings) if f.name in given))[0]
            raise InputError(
                f"{flag} is an option of metric {metric}, which --metrics does not choose "
                f"({', '.join(names)}): add {metric} to --metrics or leave the option out"
            )
    return choose({name: options.get(name, {}) for name in names})


def run_evaluate(args: argparse.Namespace) -> int:
    """``m2ib evaluate``: check everything cheap, load the model, run locally or on Ray, summarise."""
    import shlex

    from .. import preflight
    from ..api import load
    from ..datasets.tables import load_table
    from ..evaluation.phrases import check_phrase_metrics, evaluated_methods
    from ..evaluation.runner import run_evaluation
    from ..fileio import folder_lock
    from ..metrics.base import in_registry_order

    methods = evaluated_methods(args.methods, "--methods")
    metrics = chosen_metrics(args)
    seed, per_method = evaluation_settings(methods, args)
    from_file = settings_file(args.settings)
    if any(a == "--samples" or a.startswith("--samples=") for a in args.argv):
        print(f"m2ib: note: {SAMPLES_NOTE}", file=sys.stderr)  # its meaning changed: never silently
    preflight.check_device(args.device)
    preflight.check_numeric_flags(args)  # the metrics' own options were checked by their settings above
    preflight.check_installed(preflight.command_needs(args))
    check_phrase_metrics(methods, in_registry_order(metrics))
    preflight.prepare_output_dir(args.out)
    with folder_lock(args.out, "m2ib evaluate"):  # a run already writing there is refused now, not after the load
        pass
    # A data file is read now; shapes rows are rendered at the model's size, after the load.
    shapes = args.data.strip().startswith(("shapes:", "shapes-collage:", "shapes-two:"))
    table = None if shapes else load_table(args.data, samples=args.rows, seed=seed)
    status(f"loading model {args.model} ...")
    backend = load(args.model, device=args.device, settings=from_file)
    freeze_startup()
    if table is None:
        table = load_table(args.data, size=backend.geometry.image_size[0], samples=args.rows, seed=seed)
    command = "m2ib " + shlex.join(reproducing(args.argv))
    if args.ray is None:
        result = run_evaluation(
            backend,
            table,
            methods,
            metrics,
            per_method,
            seed,
            args.out,
            command=command,
            time_limit=args.time_limit,
            batch_size=args.batch_size or 1,
        )
    else:
        from ..evaluation.distributed import RayConfig, run_evaluation_ray

        ray_config = ray_config_from(args, batch_size=args.batch_size or RayConfig.batch_size)
        result = run_evaluation_ray(
            backend,
            args.model,
            table,
            methods,
            metrics,
            per_method,
            seed,
            args.out,
            ray_config,
            device=args.device,
            command=command,
            time_limit=args.time_limit,
        )
    if result.bad:
        print(
            f"m2ib: {len(result.bad)} of {table.total} row(s) could not be used; see {args.out / 'summary.md'}",
            file=sys.stderr,
        )
    print(result.files.get("md", args.out / "summary.md"))
    return 0 if result.finished else EXIT_UNFINISHED


def add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand's parser (logic: m2ib.evaluation.runner)."""
    from ..methods import REGISTRY
    from ..metrics import DEFAULT_METRICS, METRIC_NAMES, REGISTRY as METRICS
    from ..models import DEFAULT_MODEL
    from ..settings import add_owned_flags, add_setting_flags

    ev = sub.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description="Explain every pair of --data with every method and measure the metrics. Each "
        "finished (pair, method) is appended to OUT/results.jsonl at once (with provenance); "
        "re-running the same command resumes. At the end: OUT/summary.md, OUT/summary.csv "
        "(mean and 95% CI per method and metric) and OUT/plots/*.png. Note: " + SAMPLES_NOTE + ".",
    )
    ev.add_argument(
        "--data",
        required=True,
        help="TSV/CSV of caption and image path (the M2IB reference's "
        "format, or a header with image and text/caption columns), an MS-CXR-style CSV (image, "
        "phrase, x, y, w, h), shapes:SPLIT:N[:KIND] (e.g. shapes:test:200), shapes-collage:SPLIT:N "
        "(2x2 collages; metric collage), or shapes-two:SPLIT:N (two-object captions with per-object "
        "masks; metric grounding)",
    )
    ev.add_argument(
        "--methods",
        default="m2ib",
        metavar="NAME[,NAME...]|all",
        help="methods to compare (default: m2ib); when resuming, some of the run's methods "
        "only, to finish those first; word-region interaction methods "
        f"({', '.join(interactions())}) are measured by --metrics grounding",
    )
    ev.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        metavar="NAME[,NAME...]|all",
        help=f"of {', '.join(METRIC_NAMES)} (default: {','.join(DEFAULT_METRICS)}; roar needs shapes data)",
    )
    ev.add_argument("--model", default=DEFAULT_MODEL, help=model_help())
    add_settings_flag(ev)
    ev.add_argument("--out", type=Path, required=True, help="output directory")
    ev.add_argument(
        "--rows",
        type=int,
        default=None,
        metavar="N",
        help="evaluate N rows drawn at random with "
        "--seed (default: every row); before this flag existed, --samples meant this",
    )
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    ev.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="one method's setting only, e.g. rise.masks=500 or kernelshap.samples=512 (repeatable; "
        "the plain setting flags apply to every method that has the setting)",
    )
    ev.add_argument(
        "--metric-setting",
        action="append",
        default=[],
        metavar="METRIC.NAME=VALUE",
        help="one metric's option, e.g. deletion.steps=10 or road.percentiles=10,50,90 (repeatable; "
        "the same as its flag below)",
    )
    ev.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new pair after "
        f"this long; the summary covers what is done (exit status {EXIT_UNFINISHED}; re-run to go on)",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows explained together by the batched path "
        "(default: 1 locally, 8 with --ray); the numbers do not change beyond float rounding",
    )
    add_ray_flags(ev)
    add_setting_flags(ev, {**REGISTRY, **interactions()})
    add_owned_flags(
        ev, dict(METRICS.items()), "metric options (flag: --METRIC-OPTION; each applies to its metric only)"
    )
    ev.add_argument(
        "--method-samples",
        dest="samples",
        default=None,
        metavar="N",
        help="the same as --samples (the methods' own 'samples' setting); kept for older commands",
    )
