"""How much memory a device can give, asked before a large allocation, so that work which cannot
fit is refused on one line instead of failing minutes later (an allocation error, a swap storm)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..errors import InputError

GIB = 2**30


def meminfo_available(text: str) -> int | None:
    """``MemAvailable`` of a Linux ``/proc/meminfo`` text, in bytes (None when absent)."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def memory_available(device: torch.device) -> int | None:
    """Bytes that ``device`` can give (None where it cannot be asked). On Linux, MemAvailable:
    free pages alone leave out the page cache, which the kernel gives back on demand."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            available = meminfo_available(f.read())
        if available is not None:
            return available
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(needed: int, device: torch.device, what: str, advice: str, settings: Sequence[str] = ()) -> None:
    """Raise one InputError line when ``what`` needs more than the ``needed`` bytes ``device`` can
    give now (nothing where the device cannot be asked); ``advice`` says what to lower, naming
    ``settings``."""
    free = memory_available(device)
    if free is not None and needed > free:
        raise InputError(
            f"{what} needs about {needed / GIB:.1f} GiB, more than the {free / GIB:.1f} GiB free on {device}: {advice}",
            settings=settings,
        )
