"""``m2ib evaluate`` behind its parser (:mod:`m2ib.cli`): the checks that need no model, then the run
(:mod:`.runner` locally, :mod:`.distributed` on Ray) and the summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InputError

EXIT_UNFINISHED = 3  # --time-limit: stopped early, results kept
SAMPLES_NOTE = ("--samples sets the methods' own 'samples' setting (M2IB: noise copies per step; Kernel SHAP: "
                "coalitions), as in m2ib explain; to evaluate N rows drawn at random, use --rows N")


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
    from ..methods import Settings
    from ..settings import fields_of, given_settings, parse_assignment, settings_per_method
    from .phrases import make_settings, method_registry

    registry = method_registry()  # first-order and interaction methods
    given = given_settings(args, registry)
    seed_field = next(f for f in fields_of(Settings) if f.name == "seed")
    seed = seed_field.parse(given.pop("seed", 0))  # the run's seed: rows drawn, and every method's
    per_method = settings_per_method(methods, given, registry) if given else {}
    for item in args.setting:
        method, name, value = parse_assignment(item, methods, registry)
        per_method.setdefault(method, {})[name] = value
    for method, values in per_method.items():
        make_settings(None, method, values)  # bad values: one line, before the model loads
    if any(a == "--samples" or a.startswith("--samples=") for a in args.argv):
        print(f"m2ib: note: {SAMPLES_NOTE}", file=sys.stderr)  # its meaning changed: never silently
    return seed, per_method


def run_evaluate(args: argparse.Namespace) -> int:
    """``m2ib evaluate``: check everything cheap, load the model, run locally or on Ray, summarise."""
    import shlex

    from .. import preflight
    from ..api import load
    from ..datasets.tables import load_table
    from ..fileio import folder_lock
    from ..metrics import METRIC_NAMES
    from ..metrics.base import in_registry_order
    from .phrases import check_phrase_metrics, evaluated_methods
    from .runner import MetricConfig, run_evaluation

    methods = evaluated_methods(args.methods, "--methods")
    names = list(METRIC_NAMES) if args.metrics.strip() == "all" else \
        [m.strip() for m in args.metrics.split(",") if m.strip()]
    config = MetricConfig(names=tuple(dict.fromkeys(names)),
                          protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
                          deletion_steps=args.deletion_steps, iou_k=args.iou_k, sanity_steps=args.sanity_steps,
                          roar_budget=args.roar_budget)
    seed, per_method = evaluation_settings(methods, args)
    preflight.check_device(args.device)
    for value, flag in ((args.batch_size, "--batch-size"), (args.rows, "--rows"), (args.ray_actors, "--ray-actors")):
        preflight.check_positive(value, flag)
    unknown = sorted(set(config.names) - set(METRIC_NAMES))
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)} or all")
    check_phrase_metrics(methods, in_registry_order(config.names))
    preflight.prepare_output_dir(args.out)
    with folder_lock(args.out, "m2ib evaluate"):  # a run already writing there is refused now, not after the load
        pass
    # A data file is read now; shapes rows are rendered at the model's size, after the load.
    shapes = args.data.strip().startswith(("shapes:", "shapes-collage:", "shapes-two:"))
    table = None if shapes else load_table(args.data, samples=args.rows, seed=seed)
    backend = load(args.model, device=args.device)
    if table is None:
        table = load_table(args.data, size=backend.geometry.image_size[0], samples=args.rows, seed=seed)
    command = "m2ib " + shlex.join(reproducing(args.argv))
    if args.ray is None:
        result = run_evaluation(backend, table, methods, config, per_method, seed, args.out, command=command,
                                time_limit=args.time_limit, batch_size=args.batch_size or 1)
    else:
        from .distributed import RayConfig, run_evaluation_ray

        store = None if args.ray_object_store is None else args.ray_object_store * 2 ** 20
        ray_config = RayConfig(address=None if args.ray == "local" else args.ray, actors=args.ray_actors,
                               batch_size=args.batch_size or RayConfig.batch_size,
                               cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor,
                               object_store_memory=store)
        result = run_evaluation_ray(backend, args.model, table, methods, config, per_method, seed, args.out,
                                    ray_config, device=args.device, command=command, time_limit=args.time_limit)
    if result.bad:
        print(f"m2ib: {len(result.bad)} of {table.total} row(s) could not be used; see {args.out / 'summary.md'}",
              file=sys.stderr)
    print(result.files.get("md", args.out / "summary.md"))
    return 0 if result.finished else EXIT_UNFINISHED
