"""Word-region interactions: which caption tokens go with which image patches (issue 20).

``interact(model, image, text, method="exclip")`` (or, on model inputs,
``REGISTRY.get(name)().interact(backend, image_batch, text_batch, settings)``) gives an
:class:`Interaction`; the methods register themselves on import.
"""

from __future__ import annotations

from . import (
    exclip as _exclip,  # noqa: F401  (registers)
    fixlip as _fixlip,  # noqa: F401  (registers; shapiq is imported on first use)
    phrase as _phrase,  # noqa: F401  (registers)
)
from .api import interact
from .base import REGISTRY, InteractionMethod, register
from .result import Interaction, load_interaction

__all__ = ["REGISTRY", "Interaction", "InteractionMethod", "interact", "load_interaction", "register"]
