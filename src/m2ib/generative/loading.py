"""Loading a generative VLM and its processor by name: a ``save_pretrained`` directory or a hub id.

The directory's ``config.json`` names the model class (``architectures``); a registered family
must claim it (:attr:`GenerativeFamily.model_class`), else one line lists the supported ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends import hub
from ..backends.hf_loading import quiet_transformers
from ..errors import InputError
from .base import GENERATIVE_FAMILIES, GenerativeBackend, generative_backend


def model_directory(spec: str) -> Path:
    """The local directory of ``spec``: itself, or the cached (else downloaded) hub snapshot."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError(f"{spec}: no such model directory (give a save_pretrained folder or a hub id)")
    return hub.hub_snapshot(spec)


def model_class(directory: Path) -> str:
    """The model class a supported family loads for ``directory``; one line otherwise."""
    config = directory / "config.json"
    if not config.is_file():
        raise InputError(f"{directory}: no config.json; give the folder a model was saved to with save_pretrained")
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise InputError(f"{config}: unreadable ({exc})") from None
    supported = [f.model_class for f in GENERATIVE_FAMILIES.values() if f.model_class]
    found = next((a for a in architectures if a in supported), None)
    if found is None:
        raise InputError(
            f"{directory}: {', '.join(architectures) or 'no architecture'} is not a supported generative model "
            f"(supported: {', '.join(supported)})"
        )
    return found


def is_generative(spec: object) -> bool:
    """Whether ``spec`` is a generative VLM: a :class:`GenerativeBackend`, or a folder whose
    ``config.json`` names a model class a registered family loads (what :func:`load_generative`
    reads); anything else (a built-in CLIP name, a CLIP folder, a hub id) is not, without an error."""
    if isinstance(spec, GenerativeBackend):
        return True
    if not isinstance(spec, (str, Path)):
        return False
    config = Path(spec).expanduser() / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    except (OSError, ValueError, AttributeError):  # unreadable, or not a JSON object: not a generative folder
        return False
    supported = {f.model_class for f in GENERATIVE_FAMILIES.values() if f.model_class}
    return any(a in supported for a in architectures)


def load_generative(spec: str, device: str | None = None) -> GenerativeBackend:
    """The backend of the generative VLM at ``spec`` (float32, eval mode, on ``device``)."""
    import transformers

    directory = model_directory(spec)
    name = model_class(directory)
    try:
        with quiet_transformers():
            model = getattr(transformers, name).from_pretrained(directory, dtype=torch.float32).eval()
            processor = transformers.AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError, ImportError) as exc:  # ImportError: SmolVLM's processor needs num2words
        raise InputError(f"{spec}: cannot load the model or its processor: {str(exc).splitlines()[0]}") from None
    if device is not None:
        model = model.to(device)
    return generative_backend(model, processor)


__all__ = ["is_generative", "load_generative", "model_class", "model_directory"]
