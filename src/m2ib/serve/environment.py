"""Gradio, imported privately: the privacy variables first, then the optional extra."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from typing import Any

from ..errors import M2IBError

# Set before gradio (and huggingface_hub) are imported, unless the user set them.
PRIVATE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # without it Gradio looks up outside hosts at start-up
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
INSTALL_HINT = 'pip install "m2ib[viewer]"'


def private_environment(environ: typing.MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the privacy variables that the user did not set; returns those it set."""
    added = {}
    for key, value in PRIVATE_ENV.items():
        if key not in environ:
            environ[key] = value
            added[key] = value
    return added


def import_gradio():
    """``gradio``, imported after :func:`private_environment`; a missing extra says how to install it."""
    private_environment()
    try:
        import gradio
    except ImportError as exc:
        raise M2IBError(
            f"the web viewer needs Gradio ({exc.name or 'gradio'} is not installed): {INSTALL_HINT}"
        ) from None
    if _major(gradio) < 6:  # Gradio 5's page loads a script from a CDN (measured by the browser test)
        raise M2IBError(
            f"the web viewer needs Gradio 6 or newer (found {gradio.__version__}, whose page "
            f"loads a script from another host): {INSTALL_HINT}"
        )
    return gradio


def _major(gr) -> int:
    try:
        return int(gr.__version__.split(".")[0])
    except (AttributeError, ValueError):
        return 0


def accepted(factory: Callable, **kwargs: Any) -> dict[str, Any]:
    """Only the keyword arguments ``factory`` accepts (they differ between Gradio releases)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
