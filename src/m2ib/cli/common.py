"""What the command's modules share: exit codes, the subcommands' one-line help, the model help
and the interaction methods (a light module: no model or method library is imported here)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_UNFINISHED = 3  # evaluate and audit --time-limit: stopped early, results kept

COMMANDS = {
    "explain": "explain image-text pairs and write figures and maps",
    "list": "list methods, interaction methods, metrics, model families and built-in models",
    "evaluate": "measure attribution metrics over a dataset (resumable)",
    "audit": "what a model looks at and reads across a dataset, no labels needed (resumable; report.html)",
    "tune": "choose M2IB's layer, beta and bottleneck per tower on your own pairs, no labels needed (resumable)",
    "serve": "web viewer on 127.0.0.1 (pip install 'm2ib[viewer]'; see m2ib serve --help)",
    "train-shapes": "train a small CLIP on the synthetic shapes world (see m2ib train-shapes --help)",
}


def model_help() -> str:
    """The help of every --model flag: what names a model."""
    from ..models import DEFAULT_MODEL, builtin_names

    names = ", ".join(builtin_names())
    return (
        f"built-in name ({names}), Hugging Face hub id (e.g. openai/clip-vit-base-patch32, or hf:ID), a local "
        f"directory, open_clip:ARCH@TAG / open_clip:hf-hub:ORG/REPO, clip:ViT-B/32 / clip:FILE.pt "
        f"(@random: random weights; see README, Model families) (default: {DEFAULT_MODEL})"
    )


def interactions() -> dict:
    """The word-region interaction methods by name (imported on first use)."""
    from ..interactions import REGISTRY as INTERACTIONS

    return dict(INTERACTIONS)


def status(message: str) -> None:
    """One line on a terminal's stderr saying what a long step is doing (``m2ib: loading model shapes ...``);
    nothing when stderr is a file or a pipe, where an error stays the one line it promises."""
    if sys.stderr.isatty():
        print(f"m2ib: {message}", file=sys.stderr, flush=True)


SETTINGS_HELP = (
    'a settings file: an m2ib.json as the shipped models have ("recommended": {method: {setting: value}}) '
    "or a bare {method: {setting: value}}; its values replace the model's recommended ones for the "
    "methods it names (setting flags still win)"
)


def add_settings_flag(parser) -> None:
    """The ``--settings FILE`` flag of explain, evaluate, audit and serve."""
    parser.add_argument("--settings", default=None, metavar="FILE", help=SETTINGS_HELP)


def settings_file(path: str | None):
    """The checked ``--settings`` file (None without the flag): one line naming the file and the key
    when it is missing, not JSON, or names an unknown method or setting; before any model loads."""
    if path is None:
        return None
    from ..interactions import REGISTRY as INTERACTIONS
    from ..methods import REGISTRY
    from ..settings_file import read_settings

    return read_settings(path, {**REGISTRY, **INTERACTIONS})


def freeze_startup() -> None:
    """Once the model is loaded: what exists now (torch, transformers, the model) lives till the command
    ends, so the collections during the work leave it out (``gc.freeze``; :func:`m2ib.cli.main`
    unfreezes on return, so an in-process caller keeps its own collector as it was)."""
    import gc

    gc.freeze()


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--ray*`` flags of ``evaluate`` and ``tune``."""
    ray = parser.add_argument_group("Ray (pip install 'm2ib[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS starts a local instance; 'auto' or ray://HOST:PORT joins a "
        "cluster (--out must then be a path every node can write)",
    )
    ray.add_argument(
        "--ray-actors", type=int, default=2, help="actor pool size; each actor loads the model once (default: 2)"
    )
    ray.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=1.0,
        help="logical CPUs per actor, also its torch threads (default: 1)",
    )
    ray.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )
    ray.add_argument(
        "--ray-object-store",
        type=int,
        default=None,
        metavar="MB",
        help="object store of a local instance (default: Ray's)",
    )


def ray_config_from(args: argparse.Namespace, batch_size: int) -> Any:
    """The :class:`~m2ib.evaluation.distributed.RayConfig` of the ``--ray*`` flags."""
    from ..errors import InputError
    from ..evaluation.distributed import RayConfig

    if args.ray_actors < 1:
        raise InputError(f"--ray-actors {args.ray_actors}: must be a positive integer")
    if args.ray_cpus_per_actor <= 0:
        raise InputError(f"--ray-cpus-per-actor {args.ray_cpus_per_actor:g}: must be positive")
    if args.ray_gpus_per_actor is not None and args.ray_gpus_per_actor < 0:
        raise InputError(f"--ray-gpus-per-actor {args.ray_gpus_per_actor:g}: must be 0 or more")
    if args.ray_object_store is not None and args.ray_object_store < 1:
        raise InputError(f"--ray-object-store {args.ray_object_store}: must be a positive number of MB")
    store = None if args.ray_object_store is None else args.ray_object_store * 2**20
    return RayConfig(
        address=None if args.ray == "local" else args.ray,
        actors=args.ray_actors,
        batch_size=batch_size,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        object_store_memory=store,
    )
