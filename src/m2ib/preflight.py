"""Cheap checks that run before any model loads, so that bad input costs the user a second, not
the minutes of a model load and a computation (each raises :class:`InputError` on one line).

Nothing here imports torch at module level: the CLI calls these before it imports a model library.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import InputError

_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")


def available_devices() -> list[str]:
    """The devices torch can use on this machine, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | None) -> None:
    """``None`` (keep the model's device) or a device torch has here; else one line naming what is."""
    if device is None:
        return
    match = _DEVICE.match(str(device).strip())
    if match is None:
        raise InputError(f"--device {device!r} is not a device name: use cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return
    have = available_devices()
    if kind == "cuda":
        count = sum(d.startswith("cuda") for d in have)
        if count and (index is None or int(index[1:]) < count):
            return
    elif kind in have:
        return
    raise InputError(f"--device {device}: not available on this machine (available: {', '.join(have)})")


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise InputError(f"{flag} {value}: must be a positive integer")


#: Every numeric flag of the commands (argparse dest -> flag, minimum, whether the minimum itself is
#: refused, maximum or None): :func:`check_numeric_flags` checks those a command has, before any work.
NUMERIC_FLAGS: dict[str, tuple[str, float, bool, float | None]] = {
    "batch_size": ("--batch-size", 1, False, None),
    "rows": ("--rows", 1, False, None),
    "time_limit": ("--time-limit", 0, False, None),  # 0: start nothing, write the summary of what is done
    "ray_actors": ("--ray-actors", 1, False, None),
    "ray_cpus_per_actor": ("--ray-cpus-per-actor", 0, True, None),
    "ray_gpus_per_actor": ("--ray-gpus-per-actor", 0, False, None),
    "ray_object_store": ("--ray-object-store", 1, False, None),
    "port": ("--port", 0, False, 65535),
    "max_upload_mb": ("--max-upload-mb", 0, True, None),
    "max_megapixels": ("--max-megapixels", 0, True, None),
}


def check_numeric_flags(args: argparse.Namespace) -> None:
    """Each numeric flag the command has (:data:`NUMERIC_FLAGS`) is finite and in its range (None: not given)."""
    for dest, (flag, low, strict, high) in NUMERIC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        low_ok = value > low if strict else value >= low
        if isinstance(value, bool) or not math.isfinite(value) or not low_ok or (high is not None and value > high):
            rule = f"{'>' if strict else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
            raise InputError(f"{flag} {value}: must be a number {rule}")


#: What each optional feature imports, and the extra (pyproject.toml, README "Install") that installs it.
EXTRAS = {"matplotlib": "figures", "scipy": "evaluate", "ray": "ray", "gradio": "viewer", "shapiq": "interactions"}


def check_installed(needs: Sequence[tuple[str, str]]) -> None:
    """Every (module, what needs it) is importable; else one line with the pip command, before any model loads."""
    for module, why in needs:
        if importlib.util.find_spec(module) is None:
            raise InputError(f"{why} needs {module}, which is not installed: pip install 'm2ib[{EXTRAS[module]}]'")


def command_needs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(module, what needs it) for a parsed ``m2ib`` command, from its flags."""
    command = getattr(args, "command", None)
    methods = {m.strip() for m in str(getattr(args, "method", None) or getattr(args, "methods", "") or "").split(",")}
    needs = []
    if command == "explain" and not args.no_figure:
        needs.append(("matplotlib", "the figure of m2ib explain (or pass --no-figure)"))
    if command == "audit" and not args.no_report:
        needs.append(("matplotlib", "the report of m2ib audit (or pass --no-report)"))
    if command == "evaluate":
        metrics = {m.strip() for m in args.metrics.split(",")}
        if metrics & {"road", "all"}:
            needs.append(("scipy", "the road metric of m2ib evaluate"))
        if args.ray is not None:
            needs.append(("ray", "m2ib evaluate --ray"))
    if command == "tune":
        needs.append(("matplotlib", "the report of m2ib tune"))
        if args.ray is not None:
            needs.append(("ray", "m2ib tune --ray"))
    if "fixlip" in methods:
        needs.append(("shapiq", "the fixlip method"))
    return needs


def prepare_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder and prove it is writable, before any work (an existing file, an
    unwritable or uncreatable place is an error now, not after minutes of computation)."""
    from .fileio import writable_folder

    return writable_folder(path, flag)


def check_image_files(paths: Iterable[str | os.PathLike]) -> None:
    """Every path is a file Pillow can decode (header and data checked, pixels not kept)."""
    from .inputs import load_image

    for path in paths:
        load_image(path)


def check_boxes(boxes: Sequence[tuple[float, float, float, float]], image: str | os.PathLike) -> None:
    """Every box (x, y, w, h, in the original image's pixels) lies inside ``image``, read from its header
    (EXIF rotation applied, as the explanation reads it), so no box silently falls off the figure."""
    if not boxes:
        return
    from PIL import Image

    with Image.open(image) as opened:
        width, height = opened.size
        if opened.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that swap the sides
            width, height = height, width
    for x, y, w, h in boxes:
        if x + w > width or y + h > height:
            raise InputError(
                f"--box {x:g},{y:g},{w:g},{h:g} reaches outside {image} ({width}x{height} pixels): "
                "give X+W <= width and Y+H <= height, in the original image's pixels"
            )


def check_text(text: str, what: str = "text") -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} {text!r} is empty: give the words to explain")
