"""Cheap checks that run before any model loads, so that bad input costs the user a second, not
the minutes of a model load and a computation (each raises :class:`InputError` on one line).

Nothing here imports torch at module level: the CLI calls these before it imports a model library.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
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


def prepare_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder and prove it is writable, before any work (an existing file, an
    unwritable or uncreatable place is an error now, not after minutes of computation)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{flag} {path}: {parent} is a file, not a folder; pick another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".m2ib-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); pick a writable folder") from None
    return path


def check_image_files(paths: Iterable[str | os.PathLike]) -> None:
    """Every path is a file Pillow can decode (header and data checked, pixels not kept)."""
    from .inputs import load_image

    for path in paths:
        load_image(path)


def check_text(text: str, what: str = "text") -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} {text!r} is empty: give the words to explain")
