"""The ``m2ib`` command (also ``python -m m2ib``): argument parsing and dispatch.

Each subcommand is one module holding its parser and its handler (the checks that need no model,
then the room's logic): :mod:`.explain` (over :mod:`m2ib.pairs`, for both kinds of method),
:mod:`.evaluate` (:mod:`m2ib.evaluation`), :mod:`.audit` (:mod:`m2ib.auditing`)
and :mod:`.serve` (:mod:`m2ib.serve`, its own parser); ``train-shapes`` has its own parser in
:mod:`m2ib.training`. Method settings become flags through :mod:`m2ib.settings`, so a setting is
declared once, with its help text, in its method's file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any

from ..collector import gc_paused
from ..errors import M2IBError, spelled
from ..registry import Registry
from .audit import add_audit, run_audit
from .common import COMMANDS, EXIT_BAD_INPUT
from .evaluate import add_evaluate, run_evaluate
from .explain import add_explain, run_explain
from .tune import add_tune, run_tune

__all__ = ["main", "build_parser", "EXIT_BAD_INPUT"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (not the whole usage) and exits 2."""

    def error(self, message: str) -> typing.NoReturn:
        if "expected one argument" in message and "--box" in message:
            message += " (a box starting with '-' is written --box=X,Y,W,H)"
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's flags are built (the others are named
    with their help only), so ``m2ib --help`` and ``m2ib list`` import no method or model library."""
    parser = OneLineParser(
        prog="m2ib", description="Explain why a CLIP-style model matches an image with a text (M2IB and baselines)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    full = {"explain": add_explain, "evaluate": add_evaluate, "audit": add_audit, "tune": add_tune}
    for name, helptext in COMMANDS.items():
        if name in full and command in (None, name):
            full[name](sub)
        else:
            sub.add_parser(name, add_help=name not in ("serve", "train-shapes"), help=helptext)
    return parser


def _list(_: argparse.Namespace) -> int:
    """Every registered method, interaction method, metric, model family and generative family (plugins' too), then the
    built-in models: one line each, with its sides and paper link."""
    from ..backends.registry import FAMILIES
    from ..generative import GENERATIVE_FAMILIES
    from ..interactions import REGISTRY as INTERACTIONS
    from ..methods import REGISTRY as METHODS
    from ..metrics import REGISTRY as METRICS
    from ..models import BUILTIN_MODELS

    headings: dict[str, Registry[Any]] = {
        "methods": METHODS,
        "interaction methods": INTERACTIONS,
        "metrics": METRICS,
        "model families": FAMILIES,
        "generative model families (m2ib.explain_answer)": GENERATIVE_FAMILIES,
    }
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


def _in_flags(problem: object) -> str:
    """An error's or warning's text with the settings it names as flags (text_beta: --text-beta)."""
    return spelled(problem, lambda name: "--" + name.replace("_", "-"))


@contextlib.contextmanager
def _one_line_warnings() -> typing.Iterator[None]:
    """Warnings as ``m2ib: warning: ...`` lines (not file:line plus a source line), each once."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"m2ib: warning: {_in_flags(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``m2ib`` command; returns the exit status (2: bad input, one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-shapes"]:  # its own parser: every TrainConfig field is a flag
        from ..training import main as train_main

        return train_main(argv[1:], prog="m2ib train-shapes")
    if argv[:1] == ["serve"]:  # its own parser; gradio is an optional extra
        from .serve import main as serve_main

        return serve_main(argv[1:])
    try:
        with gc_paused():  # the parser imports torch and the methods: objects that live till exit
            args = build_parser(argv[0] if argv else "").parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return int(exc.code or 0)
    except M2IBError as exc:  # the flags come from the registries: a broken plugin fails here
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.argv = argv  # what `evaluate` records as the run's command
    handlers: dict[str, Any] = {
        "explain": run_explain,
        "list": _list,
        "evaluate": run_evaluate,
        "audit": run_audit,
        "tune": run_tune,
    }
    try:
        with _one_line_warnings():
            code = handlers[args.command](args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below, not at exit
        return code
    except M2IBError as exc:
        print(f"m2ib: error: {_in_flags(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("m2ib: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`m2ib list | head -1`): nothing left to say
        _silence_stdout()
        return 0
    finally:
        gc.unfreeze()  # what a handler froze after its model loaded (common.loaded) is collectable again


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
