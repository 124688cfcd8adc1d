"""``python -m m2ib.training``: TrainConfig fields become flags; exit status 0, 2, 3 or 130."""

from __future__ import annotations

import argparse
import shlex
import sys
import typing
from dataclasses import fields, replace

from ..errors import M2IBError
from ..settings import check_number, check_positive_int
from .config import QUICK, TrainConfig
from .loop import train
from .state import CHECKPOINT, checkpoint_step

EXIT_UNFINISHED = 3  # main(): stopped early (--stop-after / --time-limit), checkpoint kept


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a small CLIP on the shapes world (sigmoid loss with exact multi-positive labels) "
        "into a directory m2ib.load() reads. Rerunning the same command resumes from "
        "DIR/checkpoint.pt.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where the model (and checkpoint) goes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="start from the tiny QUICK config instead of the default")
    parser.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint.pt exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep DIR/checkpoint.pt after the final save")
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help=f"stop after N steps in all, keeping the checkpoint (exit status {EXIT_UNFINISHED})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help=f"stop after this long, keeping the checkpoint (exit status {EXIT_UNFINISHED})",
    )
    group = parser.add_argument_group("training config (TrainConfig fields; defaults: TrainConfig() or QUICK)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f"{f.default!r}"
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if kind is bool or (args and args[0] is bool):
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default: {default}: on for CUDA only)" if f.name == "amp" else None,
            )
        elif typing.get_origin(kind) is tuple:
            group.add_argument(
                flag,
                dest=f.name,
                type=int,
                nargs=2,
                metavar=("LOW", "HIGH"),
                default=None,
                help=f"(default: {default})",
            )
        else:
            group.add_argument(
                flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=f"(default: {default})"
            )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m m2ib.training") -> int:
    """``python -m m2ib.training``: returns 0 when the model is saved, 2 on bad input, 3 when
    stopped early with a checkpoint (--stop-after, --time-limit), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    base = QUICK if args.quick else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    if "n_objects" in overrides:
        overrides["n_objects"] = tuple(overrides["n_objects"])
    try:
        if args.time_limit is not None:  # range-checked like every numeric flag: never a silent 1-step run
            check_number(args.time_limit, "--time-limit", strict=True)
        if args.stop_after is not None:
            check_positive_int(args.stop_after, "--stop-after")
        config = replace(base, **overrides)
        out = train(
            config,
            args.out,
            device=args.device,
            resume=not args.no_resume,
            progress=not args.no_progress,
            command=f"{prog} " + shlex.join(argv),
            keep_checkpoint=args.keep_checkpoint,
            stop_after=args.stop_after,
            time_limit=args.time_limit,
        )
    except M2IBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    done = checkpoint_step(out) in (None, config.steps) and (out / "model.safetensors").exists()
    if not done:
        print(f"unfinished: {out / CHECKPOINT} (run the same command again to go on)")
        return EXIT_UNFINISHED
    print(f"model saved to {out} (load it with m2ib.load({str(out)!r}))")
    return 0
