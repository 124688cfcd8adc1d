"""Python's cyclic garbage collector, paused while long-lived objects are made.

Importing torch and transformers and building a model create about a million objects that live
until the process ends; each full collection on the way walks all of them, for nothing (about
0.6 s of CPU time of the README's main command, torch and transformers imported, the shipped
model loaded). :func:`gc_paused` turns the collector off for such a block and back as it was.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off for the block, back as it was after (reference counting still frees
    what the block drops)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["gc_paused"]
