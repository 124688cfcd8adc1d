"""``m2ib serve``: the command line of the web viewer (:mod:`m2ib.serve`)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .. import preflight
from ..errors import M2IBError
from ..serve.answer import registered_answer_methods
from ..serve.app import build_app, launch
from ..serve.callbacks import registered_methods
from ..serve.environment import INSTALL_HINT
from ..serve.interplay import registered_interactions
from ..serve.limits import MAX_MEGAPIXELS, MAX_UPLOAD_MB
from .common import add_settings_flag, settings_file

log = logging.getLogger("m2ib.serve")


def build_parser() -> argparse.ArgumentParser:
    from ..models import DEFAULT_MODEL, builtin_names

    parser = argparse.ArgumentParser(
        prog="m2ib serve",
        description="Explain image-text pairs in a web page on this machine (needs "
        f"{INSTALL_HINT}). Offline and private by default: no analytics, no hub access, 127.0.0.1 only.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name ({', '.join(builtin_names())}), Hugging Face hub id (cached; set "
        f"HF_HUB_OFFLINE=0 to download) or a local directory (default: {DEFAULT_MODEL}); a generative VLM "
        f"({', '.join(builtin_names(generative=True))}, or a save_pretrained folder of LLaVA, PaliGemma, Idefics3, "
        "Qwen2-VL, InternVL, ...) gets the Answer tab instead of the CLIP tabs (docs/guide/viewer.md)",
    )
    add_settings_flag(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to your network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also create a temporary public link through Gradio's share servers (off by default)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=MAX_UPLOAD_MB,
        help=f"largest image file accepted, in MB (default: {MAX_UPLOAD_MB:g})",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help=f"largest image accepted, in megapixels (default: {MAX_MEGAPIXELS:g})",
    )
    return parser


def _stop_on_sigterm() -> Any:
    """SIGTERM (e.g. from a service manager) stops the server like Ctrl+C, so that its temporary
    files are removed; returns the previous handler (None when it could not be set)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, stop)
    except (ValueError, OSError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``m2ib serve``; returns the exit code (2 for bad input or a missing extra)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:  # every cheap check before the model loads
        preflight.check_numeric_flags(args)
        from_file = settings_file(args.settings)
        preflight.check_installed([("gradio", "m2ib serve")])
    except M2IBError as exc:
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()  # one line per request on stderr, while this command runs
    handler.setFormatter(logging.Formatter("m2ib serve: %(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    previous_sigterm = _stop_on_sigterm()
    try:
        demo = build_app(
            args.model,
            args.device,
            max_upload_mb=args.max_upload_mb,
            max_megapixels=args.max_megapixels,
            settings=from_file,
        )
        if demo.m2ib_generative:
            log.info(
                "generative model %s on %s; answer methods: %s",
                args.model,
                demo.m2ib_backend.device,
                ", ".join(registered_answer_methods()),
            )
        else:
            log.info(
                "model %s on %s; methods: %s; interaction methods: %s",
                demo.m2ib_backend.name,
                demo.m2ib_backend.device,
                ", ".join(registered_methods()),
                ", ".join(registered_interactions()),
            )
        launch(demo, args.host, args.port, share=args.share, block=True, max_upload_mb=args.max_upload_mb)
    except M2IBError as exc:
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        print(
            f"m2ib: error: cannot serve on {args.host}:{args.port} ({reason}): choose another --port, or check --host",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("m2ib: stopped", file=sys.stderr)
        return 130
    finally:
        if previous_sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, previous_sigterm)
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    return 0
